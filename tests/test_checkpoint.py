"""Every known checkpoint form loads; anything else fails naming keys; save_pretrained round trips."""

import os
import pickle
import re

import numpy as np
import pytest
import torch

from recformer import (
    CheckpointError,
    RecformerForPretraining,
    RecformerForSeqRec,
    RecformerModel,
    load_checkpoint,
)

from .conftest import tiny_config
from .helpers import crafted_checkpoint


@pytest.fixture
def pretrain_state(config):
    torch.manual_seed(1)
    return RecformerForPretraining(config).state_dict()


def released_model_form(pretrain_state):
    return {k[len("longformer."):]: v.clone() for k, v in pretrain_state.items() if k.startswith("longformer.")}


def released_seqrec_form(pretrain_state):
    return {k: v.clone() for k, v in pretrain_state.items()}  # longformer.* + 7 lm_head.*


def test_released_model_file_loads_strictly(tmp_path, config, pretrain_state):
    path = tmp_path / "recformer_ckpt.bin"
    torch.save(released_model_form(pretrain_state), path)
    model = RecformerModel(config)
    result = model.load_state_dict(torch.load(path))
    assert not result.missing_keys and not result.unexpected_keys


def test_released_seqrec_file_with_strict_false_reports_only_lm_head(tmp_path, config, pretrain_state):
    path = tmp_path / "recformer_seqrec_ckpt.bin"
    torch.save(released_seqrec_form(pretrain_state), path)
    model = RecformerForSeqRec(config)
    result = model.load_state_dict(torch.load(path), strict=False)
    assert result.missing_keys == []
    assert sorted(result.unexpected_keys) == sorted(
        ["lm_head.bias", "lm_head.dense.weight", "lm_head.dense.bias", "lm_head.layer_norm.weight",
         "lm_head.layer_norm.bias", "lm_head.decoder.weight", "lm_head.decoder.bias"]
    )


def test_finetuned_state_dict_loads_strictly_after_init_item_embedding(config, pretrain_state):
    finetuned = RecformerForSeqRec(config)
    finetuned.init_item_embedding(torch.randn(11, config.hidden_size))
    state = finetuned.state_dict()
    assert "item_embedding.weight" in state
    fresh = RecformerForSeqRec(config)
    fresh.init_item_embedding(torch.zeros(11, config.hidden_size))
    fresh.load_state_dict(state, strict=True)
    torch.testing.assert_close(fresh.item_embedding.weight, finetuned.item_embedding.weight)


@pytest.mark.parametrize("form", ["model", "pretrain", "finetuned", "folder", "lightning"])
@pytest.mark.parametrize("target", [RecformerModel, RecformerForSeqRec, RecformerForPretraining])
def test_loader_accepts_every_known_form(tmp_path, config, pretrain_state, form, target):
    table = torch.randn(5, config.hidden_size)
    if form == "model":
        source = released_model_form(pretrain_state)
    elif form == "pretrain":
        source = released_seqrec_form(pretrain_state)
    elif form == "finetuned":
        source = {k: v for k, v in pretrain_state.items() if k.startswith("longformer.")}
        source["item_embedding.weight"] = table
    elif form == "lightning":
        source = tmp_path / "epoch=0.ckpt"
        torch.save({"state_dict": {"model." + k: v for k, v in pretrain_state.items()}, "epoch": 0}, source)
    else:
        source = tmp_path / "saved"
        original = RecformerForPretraining(config)
        original.load_state_dict(pretrain_state)
        original.save_pretrained(source)

    model = target(config)
    has_lm_head = form in ("pretrain", "folder", "lightning")
    if target is RecformerForPretraining and not has_lm_head:
        with pytest.raises(CheckpointError, match="missing keys: .*lm_head"):
            load_checkpoint(model, source)
        report = load_checkpoint(model, source, strict_lm_head=False)
    else:
        report = load_checkpoint(model, source)
    encoder = model if target is RecformerModel else model.longformer
    torch.testing.assert_close(
        encoder.embeddings.word_embeddings.weight, pretrain_state["longformer.embeddings.word_embeddings.weight"]
    )
    torch.testing.assert_close(
        encoder.encoder.layer[1].output.dense.weight,
        pretrain_state["longformer.encoder.layer.1.output.dense.weight"],
    )
    if target is RecformerForSeqRec and form == "finetuned":
        torch.testing.assert_close(model.item_embedding.weight, table)
        assert model.config.item_num == 5
    if target is RecformerForPretraining and has_lm_head:
        torch.testing.assert_close(model.lm_head.decoder.weight, pretrain_state["lm_head.decoder.weight"])
        assert model.lm_head.decoder.bias is model.lm_head.bias
    if target is not RecformerForPretraining and has_lm_head:
        assert "lm_head.dense.weight" in report.ignored


def test_unknown_form_names_the_keys(config):
    with pytest.raises(CheckpointError, match="not a Recformer checkpoint.*bert.embeddings.word_embeddings.weight"):
        load_checkpoint(RecformerModel(config), {"bert.embeddings.word_embeddings.weight": torch.zeros(2, 2)})


def test_missing_and_unexpected_keys_are_named(config, pretrain_state):
    state = released_model_form(pretrain_state)
    del state["encoder.layer.0.attention.self.query.weight"]
    state["encoder.layer.7.attention.self.query.weight"] = torch.zeros(32, 32)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(RecformerForSeqRec(config), state)
    message = str(err.value)
    assert "missing keys: [longformer.encoder.layer.0.attention.self.query.weight]" in message
    assert "unexpected keys: [encoder.layer.7.attention.self.query.weight]" in message


def test_shape_mismatch_names_key_and_both_shapes(config, pretrain_state):
    bigger = RecformerModel(tiny_config(hidden_size=48, num_attention_heads=4)).state_dict()
    with pytest.raises(CheckpointError, match=r"embeddings.word_embeddings.weight: checkpoint \(275, 48\) vs model \(275, 32\)"):
        load_checkpoint(RecformerModel(config), bigger)
    # plain torch strict loading also names key and shapes
    with pytest.raises(RuntimeError, match="size mismatch for embeddings.word_embeddings.weight"):
        RecformerModel(config).load_state_dict(bigger)


def test_missing_file_and_non_checkpoint_file(tmp_path, config):
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        load_checkpoint(RecformerModel(config), tmp_path / "nope.bin")
    junk = tmp_path / "junk.bin"
    junk.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk.bin: not a complete PyTorch checkpoint file \(damaged, truncated or another format\)$"):
        load_checkpoint(RecformerModel(config), junk)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="folder holds none of"):
        load_checkpoint(RecformerModel(config), tmp_path / "empty")


@pytest.mark.parametrize("cls", [RecformerModel, RecformerForSeqRec, RecformerForPretraining])
def test_save_pretrained_round_trip(tmp_path, cls, tokenizer):
    config = tiny_config(max_attr_length=7, temp=0.07, pooler_type="avg")
    model = cls(config).eval()
    if cls is RecformerForSeqRec:
        model.init_item_embedding(torch.randn(13, config.hidden_size))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    restored = cls.from_pretrained(tmp_path).eval()
    for name in ("max_attr_length", "temp", "pooler_type", "max_item_embeddings", "max_token_num", "attention_window"):
        assert getattr(restored.config, name) == getattr(config, name)
    original_state, restored_state = model.state_dict(), restored.state_dict()
    assert list(original_state) == list(restored_state)
    for k in original_state:
        torch.testing.assert_close(restored_state[k], original_state[k])
    if cls is RecformerForPretraining:
        assert restored.lm_head.decoder.bias is restored.lm_head.bias
    if cls is RecformerForSeqRec:
        assert restored.config.item_num == 13


@pytest.mark.parametrize("target", [RecformerModel, RecformerForSeqRec])
def test_unknown_extra_keys_fail_for_every_target(config, pretrain_state, target):
    state = dict(pretrain_state)
    state["classifier.weight"] = torch.zeros(2, 32)
    with pytest.raises(CheckpointError, match=r"unexpected keys: \[classifier.weight\]"):
        load_checkpoint(target(config), state)


# -- the form rules, one helper each ---------------------------------------------------------------

from recformer.io.checkpoint_files import (  # noqa: E402
    NEITHER,
    UntrustedCheckpointError,
    read_training_checkpoint,
    start_point_folder,
    torch_load,
    weights_only_loading,
)
from recformer.io.checkpoint_keys import (  # noqa: E402
    add_encoder_prefix,
    detect_form,
    fill_position_ids,
    split_encoder,
    strip_wrapper_prefixes,
    tie_lm_head_bias,
    unwrap_training_container,
)


def test_unwrap_training_container():
    weights = {"w": torch.zeros(1)}
    assert unwrap_training_container({"state_dict": weights, "epoch": 3}) == (weights, "Lightning checkpoint")
    assert unwrap_training_container({"module": weights, "global_steps": 1}) == (weights, "DeepSpeed model-states file")
    assert unwrap_training_container(weights) == (weights, None)
    assert unwrap_training_container({"state_dict": "not a dict"})[1] is None


def test_strip_wrapper_prefixes_only_when_every_key_shares_them():
    state = {"model.module.longformer.a": 1, "model.module.lm_head.b": 2}
    assert strip_wrapper_prefixes(state) == {"longformer.a": 1, "lm_head.b": 2}
    mixed = {"model.a": 1, "b": 2}
    assert strip_wrapper_prefixes(mixed) == mixed


def test_forms_and_encoder_split(pretrain_state):
    model_form = released_model_form(pretrain_state)
    finetuned = {k: v for k, v in pretrain_state.items() if k.startswith("longformer.")}
    finetuned["item_embedding.weight"] = torch.zeros(3, 32)
    assert detect_form(model_form) == "model" and detect_form(pretrain_state) == "pretrain"
    assert detect_form(finetuned) == "finetuned" and detect_form({"bert.x": torch.zeros(1)}) == "unknown"
    encoder, extra = split_encoder(pretrain_state)
    assert set(encoder) == set(model_form) and set(extra) == {k for k in pretrain_state if k.startswith("lm_head.")}
    encoder, extra = split_encoder({**model_form, "item_embedding.weight": torch.zeros(3, 32)})
    assert set(encoder) == set(model_form) and set(extra) == {"item_embedding.weight"}
    prefixed = add_encoder_prefix({**model_form, "lm_head.bias": torch.zeros(1)})
    assert set(prefixed) == {"longformer." + k for k in model_form} | {"lm_head.bias"}
    assert add_encoder_prefix(pretrain_state) == pretrain_state
    assert add_encoder_prefix({"encoder.weight": 1}) == {"encoder.weight": 1}  # not a Recformer form: untouched


def test_fill_position_ids():
    state = {"longformer.embeddings.position_embeddings.weight": torch.zeros(7, 4)}
    assert fill_position_ids(state, "longformer.") == ["longformer.embeddings.position_ids"]
    assert torch.equal(state["longformer.embeddings.position_ids"], torch.arange(7)[None])
    assert fill_position_ids(state, "longformer.") == []  # already there
    assert fill_position_ids({"embeddings.word_embeddings.weight": torch.zeros(1)}) == []  # no table to size it
    with torch.device("meta"):
        meta = {"embeddings.position_embeddings.weight": torch.empty(5, 4)}
    fill_position_ids(meta)
    assert meta["embeddings.position_ids"].device.type == "meta" and meta["embeddings.position_ids"].shape == (1, 5)


def test_tie_lm_head_bias_fills_either_name_with_the_same_tensor():
    bias = torch.randn(5)
    state = {"lm_head.bias": bias}
    assert tie_lm_head_bias(state) == ["lm_head.decoder.bias"] and state["lm_head.decoder.bias"] is bias
    state = {"lm_head.decoder.bias": bias}
    assert tie_lm_head_bias(state) == ["lm_head.bias"] and state["lm_head.bias"] is bias
    both = {"lm_head.bias": bias, "lm_head.decoder.bias": torch.zeros(5)}
    assert tie_lm_head_bias(both) == [] and not torch.equal(both["lm_head.decoder.bias"], bias)


def test_missing_position_ids_and_decoder_bias_are_filled_on_load(config, pretrain_state):
    state = {k: v for k, v in pretrain_state.items() if k not in ("longformer.embeddings.position_ids", "lm_head.decoder.bias")}
    model = RecformerForPretraining(config)
    report = load_checkpoint(model, state)
    assert "longformer.embeddings.position_ids" in report.filled
    assert "longformer.embeddings.position_ids" not in report.loaded
    assert torch.equal(model.longformer.embeddings.position_ids, torch.arange(config.max_position_embeddings)[None])
    assert torch.equal(model.lm_head.decoder.bias, pretrain_state["lm_head.bias"])


def test_load_checkpoint_takes_recformer_models_only(config, pretrain_state):
    with pytest.raises(TypeError, match="load_checkpoint expects a Recformer model, got Linear"):
        load_checkpoint(torch.nn.Linear(2, 2), pretrain_state)


def test_read_training_checkpoint_forms(tmp_path, pretrain_state):
    lightning = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"model." + k: v for k, v in pretrain_state.items()},
                "hyper_parameters": {"fix_word_embedding": True}}, lightning)  # fmt: skip
    state, hparams, form = read_training_checkpoint(lightning)
    assert form == "Lightning checkpoint" and hparams == {"fix_word_embedding": True} and len(state) == len(pretrain_state)
    states_file = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": dict(pretrain_state), "hyper_parameters": None}, states_file)
    assert read_training_checkpoint(states_file)[1:] == ({}, "DeepSpeed model-states file")
    plain = tmp_path / "consolidated.bin"
    torch.save(dict(pretrain_state), plain)
    assert read_training_checkpoint(plain)[1:] == ({}, "consolidated state dict")
    junk = tmp_path / "junk.ckpt"
    torch.save({"epoch": 3}, junk)
    with pytest.raises(CheckpointError, match=re.escape(f"junk.ckpt: {NEITHER}") + "$"):
        read_training_checkpoint(junk)
    text = tmp_path / "text.ckpt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match=r"text.ckpt: is neither .*: not a complete PyTorch checkpoint file"):
        read_training_checkpoint(text)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="without DeepSpeed \\*_model_states.pt files"):
        read_training_checkpoint(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nope.ckpt: not found"):
        read_training_checkpoint(tmp_path / "nope.ckpt")


def test_start_point_folder():
    assert str(start_point_folder("longformer_ckpt/longformer-base-4096.bin")) == "longformer_ckpt/longformer-base-4096"


def test_a_crafted_pickle_is_refused_and_runs_nothing(tmp_path, config, pretrain_state):
    marker = tmp_path / "code-ran"
    crafted = crafted_checkpoint(tmp_path / "crafted.ckpt", marker, {"state_dict": dict(pretrain_state)})
    expected = (
        rf"{re.escape(str(crafted))}: refused: it holds Python objects besides tensors and plain data "
        r"\(builtins.getattr, pathlib.Path, pathlib.PosixPath\), and unpickling them could run code$"
    )
    with pytest.raises(UntrustedCheckpointError, match=expected):
        read_training_checkpoint(crafted)
    with pytest.raises(UntrustedCheckpointError, match=expected):
        load_checkpoint(RecformerForPretraining(config), crafted)
    with pytest.raises(UntrustedCheckpointError, match=expected):
        torch_load(crafted)
    assert not marker.exists()
    # only an explicit trust unpickles it, and then its code runs: what --trust_checkpoint's help warns of
    read_training_checkpoint(crafted, trust=True)
    assert marker.exists()


def test_messages_never_suggest_loading_unsafely(tmp_path):
    ndarray = tmp_path / "ndarray.pt"
    torch.save({"x": np.zeros(2)}, ndarray)  # an object that weights-only loading refuses
    truncated = tmp_path / "truncated.pt"
    torch.save({"x": torch.zeros(2)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    for path in (ndarray, truncated):
        with pytest.raises(CheckpointError) as e:
            torch_load(path)
        assert "weights_only" not in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith(f"{path}: ")
    with pytest.raises(UntrustedCheckpointError, match=r"\(numpy\.(core|_core)\.multiarray\._reconstruct"):
        torch_load(ndarray)


def test_weights_only_loading_forces_callers_that_ask_for_pickle(tmp_path):
    """Third-party loaders (DeepSpeed's consolidation) call torch.load(weights_only=False) themselves."""
    marker = tmp_path / "code-ran"
    crafted = crafted_checkpoint(tmp_path / "crafted.pt", marker)
    with weights_only_loading(), pytest.raises(pickle.UnpicklingError):
        torch.load(crafted, weights_only=False)
    assert not marker.exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # the rule ends with the block
    torch.save({"ok": torch.ones(1)}, tmp_path / "plain.pt")
    with weights_only_loading():  # tensors and plain data still load for such a caller
        assert torch.load(tmp_path / "plain.pt", weights_only=False)["ok"].item() == 1.0
