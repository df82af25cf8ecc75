"""Tiny Longformer masked-LM folders and synthetic pretraining corpora (also used by bench/)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from .conftest import TINY_TOKENIZER_DIR, WINDOWS, tiny_config
from .finetune_fixtures import MODEL_FIELDS

TINY_MAX_POSITIONS = 300
TINY_FIELD_FLAGS = ["--max_token_num", "256", "--attention_window", *map(str, WINDOWS)]

THEMES = {
    "coffee": ["grinder", "kettle", "mug", "filter", "bean", "press"],
    "garden": ["hose", "seed", "shovel", "glove", "pot", "rake"],
    "camera": ["lens", "tripod", "strap", "card", "flash", "bag"],
    "guitar": ["string", "pick", "capo", "tuner", "strap", "case"],
}
BRANDS = ["acme", "zen", "nova", "orbit", "polar"]
ADJECTIVES = ["red", "blue", "soft", "warm", "small", "large", "steel", "wool"]


def longformer_config(**overrides):
    """A plain `LongformerConfig` with the tiny sizes of `tiny_config` (overridable), one token type."""
    from transformers import LongformerConfig

    config = tiny_config(**{"max_position_embeddings": TINY_MAX_POSITIONS, **overrides})
    return LongformerConfig(type_vocab_size=1, **{k: getattr(config, k) for k in MODEL_FIELDS})


def make_longformer_folder(root: Path, **overrides) -> Path:
    """A randomly initialised `LongformerForMaskedLM` (tiny unless overridden) saved with save_pretrained + the tiny tokenizer."""
    import torch
    from transformers import LongformerForMaskedLM

    folder = Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    LongformerForMaskedLM(longformer_config(**overrides)).save_pretrained(folder)
    copy_tokenizer(folder)
    return folder


def copy_tokenizer(folder: Path) -> None:
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(TINY_TOKENIZER_DIR / name, folder / name)


def write_corpus(root: Path, n_items: int = 120, n_train: int = 200, n_dev: int = 40, max_len: int = 8, seed: int = 0) -> dict[str, Path]:
    """meta_data.json + train.json + dev.json: themed items, sequences that mostly stay in one theme."""
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
