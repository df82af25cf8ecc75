"""Tiny Longformer masked-LM folders and synthetic pretraining corpora (the makers are in tests/synthetic.py)."""

from __future__ import annotations

from pathlib import Path

from .conftest import TINY_TOKENIZER_DIR, WINDOWS, tiny_config
from .finetune_fixtures import MODEL_FIELDS
from .synthetic import make_longformer_folder as _make_longformer_folder
from .synthetic import write_corpus

__all__ = ["TINY_FIELD_FLAGS", "TINY_MAX_POSITIONS", "longformer_config", "make_longformer_folder", "write_corpus"]

TINY_MAX_POSITIONS = 300
TINY_FIELD_FLAGS = ["--max_token_num", "256", "--attention_window", *map(str, WINDOWS)]


def _longformer_fields(**overrides) -> dict:
    config = tiny_config(**{"max_position_embeddings": TINY_MAX_POSITIONS, **overrides})
    return {"type_vocab_size": 1, **{k: getattr(config, k) for k in MODEL_FIELDS}}


def longformer_config(**overrides):
    """A plain `LongformerConfig` with the tiny sizes of `tiny_config` (overridable), one token type."""
    from transformers import LongformerConfig

    return LongformerConfig(**_longformer_fields(**overrides))


def make_longformer_folder(root: Path, **overrides) -> Path:
    """A randomly initialised tiny `LongformerForMaskedLM` folder with the tiny tokenizer."""
    return _make_longformer_folder(root, TINY_TOKENIZER_DIR, **_longformer_fields(**overrides))
