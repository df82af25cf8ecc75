"""Shared tiny configurations and fixtures (CPU, seconds)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

from recformer import RecformerConfig, RecformerTokenizer

FIXTURES = Path(__file__).parent / "fixtures"
TINY_TOKENIZER_DIR = FIXTURES / "tiny_tokenizer"

# Tiny model sizes (named constants, as transformers' model testers do).
VOCAB_SIZE = 275  # the tiny tokenizer's vocabulary
HIDDEN = 32
LAYERS = 2
HEADS = 4
FFN = 37
WINDOWS = [4, 8]
MAX_POSITIONS = 300


def tiny_config(**overrides) -> RecformerConfig:
    fields = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        max_position_embeddings=MAX_POSITIONS,
        attention_window=list(WINDOWS),
        layer_norm_eps=1e-5,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_attr_num=3,
        max_attr_length=32,
        max_item_embeddings=51,
        max_token_num=256,
        type_vocab_size=1,
    )
    fields.update(overrides)
    return RecformerConfig(**fields)


@pytest.fixture(autouse=True)
def seed():
    random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def highest_matmul_precision():
    """Full fp32 matrix products (no TF32) for the exactness comparisons."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(previous)


@pytest.fixture
def config() -> RecformerConfig:
    return tiny_config()


@pytest.fixture
def tokenizer(config) -> RecformerTokenizer:
    return RecformerTokenizer.from_pretrained(str(TINY_TOKENIZER_DIR), config)


@pytest.fixture
def read_only_dir(tmp_path) -> Path:
    """A folder no file can be created in: a chmod-ed one, or sysfs where permissions do not bind (root)."""
    from recformer.io.output_paths import OutputPathError, check_output_dir

    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)
        return
    folder = Path("/sys")
    try:
        check_output_dir(folder / "recformer-test")
    except OutputPathError:
        yield folder
    else:  # pragma: no cover - a system where even sysfs is writable
        pytest.skip("no folder is read-only for root here")
