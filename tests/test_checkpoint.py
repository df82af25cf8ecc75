"""Every known checkpoint form loads; anything else fails naming keys; save_pretrained round trips."""

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
    with pytest.raises(CheckpointError, match="junk.bin: cannot be read"):
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
