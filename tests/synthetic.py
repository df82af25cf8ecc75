"""Synthetic inputs for tests, benchmarks and smoke runs: a randomly initialised Longformer masked-LM
folder and a themed pretraining corpus. Nothing here is used by training itself."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

THEMES = {
    "coffee": ["grinder", "kettle", "mug", "filter", "bean", "press"],
    "garden": ["hose", "seed", "shovel", "glove", "pot", "rake"],
    "camera": ["lens", "tripod", "strap", "card", "flash", "bag"],
    "guitar": ["string", "pick", "capo", "tuner", "strap", "case"],
}
BRANDS = ["acme", "zen", "nova", "orbit", "polar"]
ADJECTIVES = ["red", "blue", "soft", "warm", "small", "large", "steel", "wool"]
TOKENIZER_FILES = ("vocab.json", "merges.txt")


def copy_tokenizer(tokenizer_dir: str | os.PathLike, folder: str | os.PathLike) -> None:
    """Copy a Longformer-format tokenizer (vocab.json + merges.txt) into `folder`."""
    for name in TOKENIZER_FILES:
        shutil.copy(Path(tokenizer_dir) / name, Path(folder) / name)


def make_longformer_folder(folder: str | os.PathLike, tokenizer_dir: str | os.PathLike, **config: Any) -> Path:
    """A randomly initialised `LongformerForMaskedLM` (seed 0) saved with `save_pretrained`, plus the
    tokenizer files of `tokenizer_dir`: what `--model_name_or_path` takes.

    Args:
        folder: where to write.
        tokenizer_dir: a folder with vocab.json and merges.txt.
        **config: `LongformerConfig` fields (sizes, attention windows, ...).
    """
    import torch
    from transformers import LongformerConfig, LongformerForMaskedLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    LongformerForMaskedLM(LongformerConfig(**config)).save_pretrained(folder)
    copy_tokenizer(tokenizer_dir, folder)
    return folder


def write_corpus(
    root: str | os.PathLike, n_items: int = 120, n_train: int = 200, n_dev: int = 40, max_len: int = 8, seed: int = 0
) -> dict[str, Path]:
    """meta_data.json + train.json + dev.json: themed items, sequences that mostly stay in one theme.

    Returns the three paths under the keys `meta`, `train`, `dev`.
    """
    rng = random.Random(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    themes = list(THEMES)
    meta, by_theme = {}, {t: [] for t in themes}
    for i in range(n_items):
        theme = themes[i % len(themes)]
        asin = f"B{i:05d}"
        noun = rng.choice(THEMES[theme])
        brand = rng.choice(BRANDS)
        meta[asin] = {
            "title": f"{brand} {rng.choice(ADJECTIVES)} {theme} {noun}",
            "brand": brand,
            "category": f"{theme} {noun}",
        }
        by_theme[theme].append(asin)

    def sequences(n: int) -> list[list[str]]:
        out = []
        for _ in range(n):
            theme = rng.choice(themes)
            length = rng.randint(2, max_len)
            out.append([rng.choice(by_theme[theme]) if rng.random() < 0.9 else rng.choice(list(meta)) for _ in range(length)])
        return out

    paths = {"meta": root / "meta_data.json", "train": root / "train.json", "dev": root / "dev.json"}
    paths["meta"].write_text(json.dumps(meta))
    paths["train"].write_text(json.dumps(sequences(n_train)))
    paths["dev"].write_text(json.dumps(sequences(n_dev)))
    return paths
