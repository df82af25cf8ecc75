"""Tiny processed finetuning datasets and model folders for the finetuning tests."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch
from transformers import LongformerConfig

from recformer import RecformerForPretraining

from .conftest import TINY_TOKENIZER_DIR, tiny_config

WORDS = ["red", "shoe", "brand", "title", "blue", "hat", "sock", "wool", "warm", "soft"]
MODEL_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "max_position_embeddings", "layer_norm_eps", "attention_window",
)


def make_model_folder(root: Path) -> Path:
    """A plain Longformer config + the tiny tokenizer: what `--model_name_or_path` points to."""
    folder = root / "longformer-tiny"
    folder.mkdir(parents=True, exist_ok=True)
    config = tiny_config(max_position_embeddings=1030)
    LongformerConfig(**{k: getattr(config, k) for k in MODEL_FIELDS}).save_pretrained(folder)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(TINY_TOKENIZER_DIR / name, folder)
    return folder


def finetune_config(**overrides):
    """The config finetune.py builds for the tiny model folder (reference Recformer values)."""
    fields = dict(attention_window=[64, 64], max_token_num=1024, max_position_embeddings=1030)
    fields.update(overrides)
    return tiny_config(**fields)


def make_pretrained_checkpoint(root: Path, seed: int = 0, **overrides) -> Path:
    """A released-SeqRec-form file (`longformer.*` + `lm_head.*`).

    Weights are drawn with a wide spread (std 0.5) so that, like a trained model, items get clearly
    different vectors; at std 0.02 every cosine is ~1 and ranks hinge on float rounding.
    """
    torch.manual_seed(seed)
    model = RecformerForPretraining(finetune_config(initializer_range=0.5, **overrides))
    path = root / f"seqrec-{seed}.bin"
    torch.save(model.state_dict(), path)
    return path


def make_dataset(root: Path, name: str = "Tiny", users: int = 40, items: int = 30, seed: int = 0) -> Path:
    rng = random.Random(seed)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        f"B{i:09d}": {"title": " ".join(rng.sample(WORDS, 2)) + f" {i}", "brand": rng.choice(WORDS), "category": "x y"}
        for i in range(items)
    }
    smap = {asin: i for i, asin in enumerate(meta)}
    train, val, test = {}, {}, {}
    for u in range(users):
        seq = [rng.randrange(items) for _ in range(rng.randint(4, 8))]
        train[str(u)], val[str(u)], test[str(u)] = seq[:-2], [seq[-2]], [seq[-1]]
    umap = {f"U{u}": u for u in range(users)}
    for file, obj in (("meta_data.json", meta), ("smap.json", smap), ("umap.json", umap), ("train.json", train),
                      ("val.json", val), ("test.json", test)):
        (folder / file).write_text(json.dumps(obj))
    return folder
