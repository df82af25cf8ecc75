"""Key names and shapes of a longformer-base-sized model equal the reference list (built on the meta device)."""

import pytest
import torch

from recformer import RecformerForPretraining, RecformerForSeqRec, RecformerModel

from .helpers import base_config, reference_keys


def shapes(model) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def expected():
    keys = reference_keys()
    assert len(keys) == 278  # the list itself is complete: 271 encoder keys + 7 LM-head keys
    return keys


def test_pretraining_keys(expected):
    with torch.device("meta"):
        model = RecformerForPretraining(base_config())
    got = shapes(model)
    assert list(got) == list(expected)  # same names, same order
    assert got == expected


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
