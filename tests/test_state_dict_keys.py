"""Key names and shapes of a longformer-base-sized model equal the reference list (built on the meta device)."""

from pathlib import Path

import pytest
import torch

from recformer import RecformerConfig, RecformerForPretraining, RecformerForSeqRec, RecformerModel

KEYS_FILE = Path(__file__).resolve().parents[2] / "shared" / "spec" / "upstream_state_dict_keys.txt"
LOCAL_COPY = Path(__file__).parent / "fixtures" / "upstream_state_dict_keys.txt"


def reference_keys() -> dict[str, tuple[tuple[int, ...], str]]:
    path = KEYS_FILE if KEYS_FILE.is_file() else LOCAL_COPY
    keys = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, rest = line.split(" ", 1)
        shape, dtype = rest.rsplit(" ", 1)  # "[1, 4098] int64"
        keys[name] = (tuple(int(x) for x in shape.strip("[]").split(",")), dtype)
    return keys


def base_config() -> RecformerConfig:
    config = RecformerConfig(
        vocab_size=50265,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=4098,
        layer_norm_eps=1e-5,
        type_vocab_size=1,
    )
    config.max_attr_num = 3
    config.max_attr_length = 32
    config.max_item_embeddings = 51
    config.attention_window = [64] * 12
    config.max_token_num = 1024
    return config


def shapes(model) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def expected():
    return reference_keys()


def test_local_copy_of_the_key_list_is_current():
    if KEYS_FILE.is_file():
        assert LOCAL_COPY.read_text() == KEYS_FILE.read_text()


def test_pretraining_keys(expected):
    with torch.device("meta"):
        model = RecformerForPretraining(base_config())
    got = shapes(model)
    assert list(got) == list(expected)  # same names, same order
    assert got == expected
    assert len(got) == 278


def test_encoder_keys(expected):
    with torch.device("meta"):
        model = RecformerModel(base_config())
    want = {k[len("longformer."):]: v for k, v in expected.items() if k.startswith("longformer.")}
    assert shapes(model) == want
    assert len(want) == 271


def test_seqrec_keys(expected):
    config = base_config()
    with torch.device("meta"):
        model = RecformerForSeqRec(config)
    want = {k: v for k, v in expected.items() if k.startswith("longformer.")}
    assert shapes(model) == want
    with torch.device("meta"):
        model.init_item_embedding(torch.empty(1234, 768))
    assert shapes(model) == {**want, "item_embedding.weight": ((1234, 768), "float32")}
