"""Shared tiny configurations and fixtures (CPU, seconds)."""

from __future__ import annotations

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
def config() -> RecformerConfig:
    return tiny_config()


@pytest.fixture
def tokenizer(config) -> RecformerTokenizer:
    return RecformerTokenizer.from_pretrained(str(TINY_TOKENIZER_DIR), config)
