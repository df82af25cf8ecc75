"""Checkpoint conversions: Longformer -> start point, pretraining module -> released forms."""

from __future__ import annotations

import pytest
import torch
from transformers import LongformerConfig, LongformerForMaskedLM

from recformer import RecformerForPretraining, RecformerForSeqRec, RecformerModel
from recformer.io.conversion import (
    ConversionError,
    longformer_to_pretraining,
    pretraining_to_released,
    to_float32,
)

from .conftest import tiny_config
from .finetune_fixtures import MODEL_FIELDS
from .helpers import LONGFORMER_BASE, base_config, reference_keys
from .pretrain_fixtures import longformer_config


def tiny_longformer(config) -> LongformerForMaskedLM:
    return LongformerForMaskedLM(longformer_config(**{k: getattr(config, k) for k in MODEL_FIELDS}))


@pytest.fixture
def converted(config):
    longformer = tiny_longformer(config)
    source = longformer.state_dict()
    state, report = longformer_to_pretraining(source, config, generator=torch.Generator().manual_seed(0))
    return source, state, report


def test_start_point_copies_reshapes_and_initialises(config, converted):
    source, state, report = converted
    model = RecformerForPretraining(config)
    model.load_state_dict(state, strict=True)
    for key in ("longformer.embeddings.word_embeddings.weight", "longformer.encoder.layer.1.output.dense.weight",
                "longformer.encoder.layer.0.attention.self.query_global.bias", "lm_head.dense.weight"):  # fmt: skip
        assert torch.equal(state[key], source[key]), key
    token_types = state["longformer.embeddings.token_type_embeddings.weight"]
    assert token_types.shape == (4, config.hidden_size)
    for row in token_types:
        assert torch.equal(row, source["longformer.embeddings.token_type_embeddings.weight"][0])
    items = state["longformer.embeddings.item_position_embeddings.weight"]
    assert items.shape == (config.max_item_embeddings, config.hidden_size)
    assert abs(items.mean().item()) < 0.005 and 0.015 < items.std().item() < 0.025  # normal(0, 0.02)
    # Untied LM head: same values as the word embeddings, separate storage; decoder bias is the head bias.
    decoder = state["lm_head.decoder.weight"]
    assert torch.equal(decoder, state["longformer.embeddings.word_embeddings.weight"])
    assert decoder.data_ptr() != state["longformer.embeddings.word_embeddings.weight"].data_ptr()
    assert state["lm_head.decoder.bias"] is state["lm_head.bias"]
    assert torch.equal(state["longformer.embeddings.position_ids"], torch.arange(config.max_position_embeddings)[None])
    assert report.reshaped == ["longformer.embeddings.token_type_embeddings.weight"]
    assert set(report.new) == {"longformer.embeddings.item_position_embeddings.weight", "longformer.embeddings.position_ids"}
    assert len(report.copied) + len(report.reshaped) + len(report.new) + len(report.filled) == len(state)


def test_start_point_from_save_pretrained_form(config):
    """save_pretrained drops the tied decoder weight and the decoder bias: they are filled."""
    source = tiny_longformer(config).state_dict()
    source = {k: v for k, v in source.items() if k not in ("lm_head.decoder.weight", "lm_head.decoder.bias")}
    state, report = longformer_to_pretraining(source, config)
    assert "lm_head.decoder.weight" in report.filled
    assert torch.equal(state["lm_head.decoder.weight"], source["longformer.embeddings.word_embeddings.weight"])


def test_wrong_size_longformer_names_keys_and_shapes(config):
    source = tiny_longformer(tiny_config(hidden_size=48, intermediate_size=40)).state_dict()
    with pytest.raises(ConversionError) as e:
        longformer_to_pretraining(source, config)
    message = str(e.value)
    assert "longformer.embeddings.word_embeddings.weight: checkpoint (275, 48) vs Recformer config (275, 32)" in message


def test_foreign_keys_are_refused(config):
    source = dict(tiny_longformer(config).state_dict())
    source["classifier.weight"] = torch.zeros(2, 32)
    with pytest.raises(ConversionError, match="classifier.weight"):
        longformer_to_pretraining(source, config)


def test_base_size_on_meta_device():
    """longformer-base shapes, no memory: the start point and the SeqRec form have exactly the reference
    keys and shapes (278), the RecformerModel form their 271 encoder keys."""
    with torch.device("meta"):
        longformer = LongformerForMaskedLM(LongformerConfig(attention_window=[512] * 12, **LONGFORMER_BASE))
    config = base_config()
    state, report = longformer_to_pretraining(longformer.state_dict(), config)
    assert len(state) == 278
    assert all(v.device.type == "meta" for v in state.values())
    assert state["longformer.embeddings.token_type_embeddings.weight"].shape == (4, 768)
    assert state["longformer.embeddings.item_position_embeddings.weight"].shape == (51, 768)
    assert state["longformer.embeddings.position_ids"].shape == (1, 4098)
    model_state, seqrec_state, _ = pretraining_to_released({"model." + k: v for k, v in state.items()}, state, True)
    assert len(model_state) == 271 and len(seqrec_state) == 278
    listed = {k: shape for k, (shape, _) in reference_keys().items()}
    assert {k: tuple(v.shape) for k, v in state.items()} == listed
    assert {k: tuple(v.shape) for k, v in seqrec_state.items()} == listed
    assert {k: tuple(v.shape) for k, v in model_state.items()} == {
        k[len("longformer."):]: s for k, s in listed.items() if k.startswith("longformer.")
    }


def trained_state(config, converted):
    """A pretraining module's state dict as Lightning saves it, with every trainable weight moved."""
    _, start, _ = converted
    trained = {k: (v + 0.5 if v.is_floating_point() and "word_embeddings" not in k else v.clone()) for k, v in start.items()}
    trained["lm_head.decoder.bias"] = trained["lm_head.bias"]
    return start, {"model." + k: v for k, v in trained.items()}


def test_released_forms_load_into_the_models(config, converted):
    start, trained = trained_state(config, converted)
    model_state, seqrec_state, report = pretraining_to_released(trained, start)
    RecformerModel(config).load_state_dict(to_float32(model_state), strict=True)
    result = RecformerForSeqRec(config).load_state_dict(to_float32(seqrec_state), strict=False)
    assert result.missing_keys == [] and sorted(result.unexpected_keys) == sorted(
        ["lm_head.bias", "lm_head.dense.weight", "lm_head.dense.bias", "lm_head.layer_norm.weight",
         "lm_head.layer_norm.bias", "lm_head.decoder.weight", "lm_head.decoder.bias"]  # fmt: skip
    )
    assert torch.equal(model_state["encoder.layer.0.output.dense.weight"], trained["model.longformer.encoder.layer.0.output.dense.weight"])
    # auto: the word embeddings equal the start point's, so they were frozen and are restored
    assert report.restored == ["longformer.embeddings.word_embeddings.weight"]


def test_word_embeddings_restore_rules(config, converted):
    start, trained = trained_state(config, converted)
    key = "model.longformer.embeddings.word_embeddings.weight"
    words = start["longformer.embeddings.word_embeddings.weight"]
    # frozen in fp16 training: saved as the fp16 copy -> restored in full precision
    fp16 = dict(trained, **{key: words.half()})
    model_state, _, report = pretraining_to_released(fp16, start)
    assert report.restored and torch.equal(model_state["embeddings.word_embeddings.weight"], words)
    # trained: kept
    moved = dict(trained, **{key: words + 1.0})
    model_state, _, report = pretraining_to_released(moved, start)
    assert not report.restored and torch.equal(model_state["embeddings.word_embeddings.weight"], words + 1.0)
    # forced either way
    _, _, report = pretraining_to_released(moved, start, restore_word_embeddings=True)
    assert report.restored
    # absent (excluded frozen parameters) -> restored; without a start point -> a clear error
    absent = {k: v for k, v in trained.items() if k != key}
    model_state, _, report = pretraining_to_released(absent, start)
    assert torch.equal(model_state["embeddings.word_embeddings.weight"], words)
    with pytest.raises(ConversionError, match="no start point"):
        pretraining_to_released(absent, None)


def test_released_form_fills_position_ids_and_tied_bias(config, converted):
    start, trained = trained_state(config, converted)
    trained = {k: v for k, v in trained.items() if not k.endswith(("position_ids", "decoder.bias"))}
    model_state, seqrec_state, report = pretraining_to_released(trained, start)
    assert torch.equal(model_state["embeddings.position_ids"], torch.arange(config.max_position_embeddings)[None])
    assert torch.equal(seqrec_state["lm_head.decoder.bias"], seqrec_state["lm_head.bias"])
    assert {"longformer.embeddings.position_ids", "lm_head.decoder.bias"} <= set(report.filled)


def test_not_a_pretraining_state_dict(config):
    with pytest.raises(ConversionError, match="not a Recformer pretraining state dict"):
        pretraining_to_released({"encoder.weight": torch.zeros(2)})
