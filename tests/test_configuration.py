"""build_config: flags > a saved Recformer config's values > the reference scripts' values."""

from __future__ import annotations

import argparse

import pytest

from recformer.argparsing import add_recformer_field_args
from recformer.model.configuration import (
    REFERENCE_SCRIPT_VALUES,
    RecformerConfig,
    build_config,
    field_values,
)

from .finetune_fixtures import make_model_folder

FIELDS = tuple(REFERENCE_SCRIPT_VALUES)


def values(config) -> dict:
    return {name: getattr(config, name) for name in FIELDS}


@pytest.fixture
def longformer_folder(tmp_path):
    return make_model_folder(tmp_path)  # a plain LongformerConfig (2 layers, windows [4, 8]) + tokenizer


@pytest.fixture
def recformer_folder(tmp_path, longformer_folder):
    config = RecformerConfig.from_pretrained(longformer_folder)
    config.max_attr_num, config.max_attr_length, config.max_item_embeddings = 5, 16, 21
    config.attention_window, config.max_token_num = [8, 16], 512
    config.temp, config.finetune_negative_sample_size = 0.1, 7
    folder = tmp_path / "recformer"
    config.save_pretrained(folder)
    return folder


def test_plain_longformer_config_takes_the_reference_values(longformer_folder):
    config = build_config(longformer_folder)
    assert isinstance(config, RecformerConfig)
    assert values(config) == {**REFERENCE_SCRIPT_VALUES, "attention_window": [64, 64]}  # one window per layer
    assert (config.temp, config.mlm_weight, config.finetune_negative_sample_size) == (0.05, 0.1, 0)


def test_saved_recformer_config_keeps_its_own_values(recformer_folder):
    config = build_config(recformer_folder)
    assert values(config) == {"max_attr_num": 5, "max_attr_length": 16, "max_item_embeddings": 21,
                              "attention_window": [8, 16], "max_token_num": 512}  # fmt: skip
    assert (config.temp, config.finetune_negative_sample_size) == (0.1, 7)


@pytest.mark.parametrize("source", ["longformer", "recformer"])
def test_flags_win_over_both(source, longformer_folder, recformer_folder):
    folder = longformer_folder if source == "longformer" else recformer_folder
    fields = {"max_attr_num": 2, "attention_window": [32], "max_token_num": None}
    config = build_config(folder, fields, temp=0.2, mlm_weight=0.5, finetune_negative_sample_size=-1)
    assert config.max_attr_num == 2 and config.attention_window == [32, 32]
    assert config.max_token_num == (1024 if source == "longformer" else 512)  # None: not given
    assert (config.temp, config.mlm_weight, config.finetune_negative_sample_size) == (0.2, 0.5, -1)


def test_per_layer_windows_are_kept(longformer_folder):
    assert build_config(longformer_folder, {"attention_window": [16, 32]}).attention_window == [16, 32]


def test_bad_fields_are_refused_by_name(longformer_folder):
    with pytest.raises(ValueError, match="max_attr_num must be a positive integer, got 0"):
        build_config(longformer_folder, {"max_attr_num": 0})
    with pytest.raises(ValueError, match="max_token_num=2000 does not fit the position table"):
        build_config(longformer_folder, {"max_token_num": 2000})
    with pytest.raises(ValueError, match=r"unknown Recformer fields \['pooler'\]"):
        build_config(longformer_folder, {"pooler": "avg"})
    with pytest.raises(ValueError, match="temp must be > 0"):
        build_config(longformer_folder, temp=0.0)


def test_field_flags_and_field_values():
    parser = argparse.ArgumentParser()
    add_recformer_field_args(parser)
    ns = parser.parse_args(["--max_attr_num", "4", "--attention_window", "8", "16"])
    assert field_values(ns) == {"max_attr_num": 4, "max_attr_length": None, "max_item_embeddings": None,
                                "attention_window": [8, 16], "max_token_num": None}  # fmt: skip


def test_a_hub_id_offline_and_not_cached_is_one_line_naming_the_flag(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from recformer.model.configuration import check_model_source

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as error:
        check_model_source("allenai/longformer-base-4096")
    assert str(error.value) == (
        "allenai/longformer-base-4096: not a local folder, and TRANSFORMERS_OFFLINE=1 forbids downloading it (the "
        "Hugging Face cache does not hold it); pass --model_name_or_path with a local model folder that holds the "
        "config and tokenizer"
    )
    # in the cache: transformers reads it from there, offline
    repo = tmp_path / "models--allenai--longformer-base-4096"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text("{}")
    check_model_source("allenai/longformer-base-4096")
    # online, a hub id is left to transformers
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    check_model_source("someone/not-cached")
