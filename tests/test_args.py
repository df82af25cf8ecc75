"""Argument dataclasses: the flags they make (names and defaults of the reference scripts) and validation."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, replace

import pytest

from recformer.argparsing import build_parser, parse_args
from recformer.args import FinetuneArgs, PretrainArgs

CORES = len(os.sched_getaffinity(0))  # the worker flags default to at most the cores of the machine
RECFORMER_FIELDS = {"max_attr_num": None, "max_attr_length": None, "max_item_embeddings": None,
                    "attention_window": None, "max_token_num": None}  # fmt: skip
PRETRAIN_REQUIRED = ["--train_file", "t.json", "--dev_file", "d.json", "--item_attr_file", "m.json", "--output_dir", "o"]
PRETRAIN_DEFAULTS = {
    "model_name_or_path": "allenai/longformer-base-4096", "longformer_ckpt": "longformer_ckpt/longformer-base-4096.bin",
    "train_file": "t.json", "dev_file": "d.json", "item_attr_file": "m.json", "output_dir": "o", "ckpt": None,
    "num_train_epochs": 10, "max_steps": -1, "gradient_accumulation_steps": 8, "batch_size": 2, "learning_rate": 5e-5,
    "weight_decay": 0.0, "warmup_steps": 0, "max_grad_norm": 1.0, "mlm_probability": 0.15, "mlm_weight": None,
    "temp": None, "fix_word_embedding": False, "valid_step": 250, "log_step": 2000, "preprocessing_num_workers": min(8, CORES),
    "dataloader_num_workers": min(2, CORES), "device": "auto", "accelerator": "auto", "strategy": "auto", "num_nodes": 1,
    "fp16": False, "precision": None, "attn_implementation": "auto", "pack_sides": "auto", "pack_train_batches": "off", "compile": False, "seed": 42, "cache_dir": None, "progress": True, "trust_checkpoint": False,
    "overwrite_output_dir": False,
    **RECFORMER_FIELDS,
}  # fmt: skip
FINETUNE_REQUIRED = ["--pretrain_ckpt", "c.bin", "--data_path", "data"]
FINETUNE_DEFAULTS = {
    "pretrain_ckpt": "c.bin", "data_path": "data", "model_name_or_path": None,
    "output_dir": "checkpoints", "ckpt": "best_model.bin", "train_file": "train.json", "dev_file": "val.json",
    "test_file": "test.json", "item2id_file": "smap.json", "meta_file": "meta_data.json", "num_train_epochs": 16,
    "gradient_accumulation_steps": 8, "global_batch_size": None, "finetune_negative_sample_size": 1000, "metric_ks": [10, 50], "batch_size": 16,
    "eval_batch_size": None, "learning_rate": 5e-5, "weight_decay": 0.0, "warmup_steps": 100, "stage2_schedule": "shared", "device": "auto",
    "fp16": False, "bf16": False, "attn_implementation": "auto", "pack_train_batches": "off", "compile": False, "fix_word_embedding": False, "verbose": 3, "preprocessing_num_workers": min(8, CORES),
    "dataloader_num_workers": 0, "seed": 42, "max_grad_norm": None, "exclude_history": False, "resume": False,
    "temp": None, "cache_dir": None, "progress": True, "overwrite_output_dir": False, **RECFORMER_FIELDS,
}  # fmt: skip


def flags(cls) -> set[str]:
    return {opt for action in build_parser(cls)._actions for opt in action.option_strings} - {"-h", "--help"}


@pytest.mark.parametrize(
    "cls, required, defaults",
    [(PretrainArgs, PRETRAIN_REQUIRED, PRETRAIN_DEFAULTS), (FinetuneArgs, FINETUNE_REQUIRED, FINETUNE_DEFAULTS)],
)
def test_flag_names_and_defaults_are_the_reference_scripts(cls, required, defaults):
    args = parse_args(cls, required)
    assert asdict(args) == defaults
    assert asdict(cls(**{k: v for k, v in defaults.items() if f"--{k}" in required})) == defaults  # API = CLI
    expected_flags = {f"--{k}" for k in defaults if k != "progress"} | {"--no_progress", "--config"}
    assert flags(cls) == expected_flags


def test_flag_values_are_parsed_into_fields():
    args = parse_args(PretrainArgs, [*PRETRAIN_REQUIRED, "--no_progress", "--attention_window", "8", "16",
                                     "--precision", "bf16-mixed", "--mlm_weight", "0.5", "--fp16"])  # fmt: skip
    assert (args.progress, args.attention_window, args.precision, args.mlm_weight, args.fp16) == (
        False, [8, 16], "bf16-mixed", 0.5, True)  # fmt: skip
    ft = parse_args(FinetuneArgs, [*FINETUNE_REQUIRED, "--metric_ks", "5", "10", "--device", "-1"])
    assert ft.metric_ks == [5, 10] and ft.device == "-1"


def test_parser_errors(capsys):
    with pytest.raises(SystemExit):
        parse_args(PretrainArgs, ["--train_file", "t.json"])
    assert "the following arguments are required: --dev_file, --item_attr_file, --output_dir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(PretrainArgs, [*PRETRAIN_REQUIRED, "--precision", "fp8"])
    assert "argument --precision: invalid choice: 'fp8'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(FinetuneArgs, [*FINETUNE_REQUIRED, "--verbose", "0"])
    assert "argument --verbose: must be >= 1, got 0" in capsys.readouterr().err


def base_pretrain() -> PretrainArgs:
    return PretrainArgs(train_file="t.json", dev_file="d.json", item_attr_file="m.json", output_dir="o")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"batch_size": 0}, "--batch_size must be >= 1, got 0"),
        ({"gradient_accumulation_steps": -2}, "--gradient_accumulation_steps must be >= 1, got -2"),
        ({"num_train_epochs": 0}, "--num_train_epochs must be >= 1, got 0"),
        ({"valid_step": 0}, "--valid_step must be >= 1, got 0"),
        ({"log_step": 0}, "--log_step must be >= 1, got 0"),
        ({"num_nodes": 0}, "--num_nodes must be >= 1, got 0"),
        ({"max_steps": 0}, "--max_steps must be -1 (no limit) or >= 1, got 0"),
        ({"learning_rate": 0.0}, "--learning_rate must be > 0, got 0.0"),
        ({"warmup_steps": -1}, "--warmup_steps must be >= 0, got -1"),
        ({"weight_decay": -0.1}, "--weight_decay must be >= 0, got -0.1"),
        ({"dataloader_num_workers": -1}, "--dataloader_num_workers must be >= 0, got -1"),
        ({"mlm_probability": 1.0}, "--mlm_probability must be in (0, 1), got 1.0"),
        ({"mlm_probability": 0.0}, "--mlm_probability must be in (0, 1), got 0.0"),
        ({"mlm_weight": -1.0}, "--mlm_weight must be >= 0, got -1.0"),
        ({"temp": 0.0}, "--temp must be > 0, got 0.0"),
        ({"precision": "fp8"}, "--precision must be one of 32-true, 16-mixed, bf16-mixed, got 'fp8'"),
        ({"fp16": True, "precision": "bf16-mixed"}, "--fp16 and --precision bf16-mixed are exclusive"),
    ],
)
def test_pretrain_validation_names_the_flag(changes, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        replace(base_pretrain(), **changes).validate()


def test_valid_pretrain_arguments_pass():
    base_pretrain().validate()
    replace(base_pretrain(), fp16=True, precision="16-mixed", max_steps=30, mlm_weight=0.0).validate()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"batch_size": 0}, "--batch_size must be >= 1, got 0"),
        ({"eval_batch_size": 0}, "--eval_batch_size must be >= 1, got 0"),
        ({"num_train_epochs": -1}, "--num_train_epochs must be >= 0, got -1"),
        ({"learning_rate": -1e-5}, "--learning_rate must be > 0, got -1e-05"),
        ({"fp16": True, "bf16": True}, "--fp16 and --bf16 are exclusive"),
        ({"metric_ks": [5, 50]}, "--metric_ks must include 10: model selection uses NDCG@10"),
        ({"metric_ks": [0, 10]}, "--metric_ks must be positive integers, got [0, 10]"),
        ({"global_batch_size": 0}, "--global_batch_size must be >= 1, got 0"),
    ],
)
def test_finetune_validation_names_the_flag(changes, message):
    args = FinetuneArgs(pretrain_ckpt="c.bin", data_path="data")
    args.validate()
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        replace(args, **changes).validate()


@pytest.mark.parametrize(
    "batch_size, accumulation, global_batch, world, layout",
    [
        (16, 8, None, 1, (16, 8, 128)),  # the reference: batch x accumulation x processes
        (16, 8, None, 4, (16, 8, 512)),
        (16, 8, 128, 1, (16, 8, 128)),  # --global_batch_size keeps 128 whatever the number of processes
        (16, 8, 128, 2, (16, 4, 128)),
        (16, 8, 128, 8, (16, 1, 128)),
        (16, 8, 128, 64, (2, 1, 128)),
        (20, 1, 96, 2, (16, 3, 96)),  # 48 per process in the fewest equal micro-batches of <= 20
        (7, 1, 22, 2, (1, 11, 22)),  # 11 per process: prime, so micro-batches of 1
    ],
)
def test_batch_layout(batch_size, accumulation, global_batch, world, layout):
    args = FinetuneArgs(pretrain_ckpt="c.bin", data_path="data", batch_size=batch_size,
                        gradient_accumulation_steps=accumulation, global_batch_size=global_batch)  # fmt: skip
    micro, accum, total = args.batch_layout(world)
    assert (micro, accum, total) == layout
    assert micro * accum * world == total and micro <= batch_size


def test_global_batch_not_divisible_by_the_world_size_is_refused():
    args = FinetuneArgs(pretrain_ckpt="c.bin", data_path="data", global_batch_size=128)
    with pytest.raises(ValueError, match=r"^--global_batch_size 128 is not divisible by the world size 3$"):
        args.batch_layout(3)


@pytest.mark.parametrize("cls", ["FinetuneArgs", "PretrainArgs", "EvaluateArgs", "RecommendArgs"])
def test_every_model_command_takes_attn_implementation_and_refuses_unknown_names(cls):
    import recformer.args as args_module

    cls = getattr(args_module, cls)
    assert "--attn_implementation" in flags(cls)
    help_text = build_parser(cls).format_help()
    assert "auto, eager, sdpa, flex_attention" in " ".join(help_text.split())
    required = {"FinetuneArgs": dict(pretrain_ckpt="c", data_path="d"), "EvaluateArgs": dict(ckpt="c", data_path="d"),
                "RecommendArgs": dict(ckpt="c", items="i", input="in", output="out"),
                "PretrainArgs": dict(train_file="t", dev_file="d", item_attr_file="m", output_dir="o")}[cls.__name__]
    for name in ("eager", "sdpa", "flex_attention", "auto"):
        cls(**required, attn_implementation=name).validate()
    message = "--attn_implementation: unknown attn_implementation 'fast'; valid names: auto, eager, sdpa, flex_attention"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        cls(**required, attn_implementation="fast").validate()
    with pytest.raises(ValueError, match="flash_attention_2' cannot run Recformer: flash-attn has no global tokens"):
        cls(**required, attn_implementation="flash_attention_2").validate()


def test_worker_defaults_never_exceed_the_cores(monkeypatch):
    from recformer import defaults

    monkeypatch.setattr(defaults.os, "sched_getaffinity", lambda pid: {0})
    assert defaults.available_cores() == 1 and defaults.capped_workers(8) == 1
    monkeypatch.setattr(defaults.os, "sched_getaffinity", lambda pid: set(range(64)))
    assert defaults.capped_workers(8) == 8


def test_stage2_schedule_takes_shared_or_restart(capsys):
    assert parse_args(FinetuneArgs, [*FINETUNE_REQUIRED, "--stage2_schedule", "restart"]).stage2_schedule == "restart"
    with pytest.raises(SystemExit):
        parse_args(FinetuneArgs, [*FINETUNE_REQUIRED, "--stage2_schedule", "cosine"])
    assert "argument --stage2_schedule: invalid choice: 'cosine'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"^--stage2_schedule must be one of shared, restart, got 'cosine'$"):
        FinetuneArgs(pretrain_ckpt="c.bin", data_path="data", stage2_schedule="cosine").validate()


def write_config(path, text: str):
    path.write_text(text)
    return str(path)


def test_a_yaml_config_gives_the_values_and_flags_override_it(tmp_path):
    config = write_config(tmp_path / "run.yaml", """
pretrain_ckpt: c.bin
data_path: data
learning_rate: 5e-5        # a string to YAML: parsed as the flag parses it
warmup_steps: 7
metric_ks: [10, 20]
progress: false
stage2_schedule: restart
attention_window: 64
""")
    args = parse_args(FinetuneArgs, ["--config", config])
    assert (args.pretrain_ckpt, args.data_path, args.learning_rate, args.warmup_steps) == ("c.bin", "data", 5e-5, 7)
    assert (args.metric_ks, args.progress, args.stage2_schedule, args.attention_window) == ([10, 20], False, "restart", [64])
    args = parse_args(FinetuneArgs, ["--learning_rate", "1e-4", "--config", config, "--metric_ks", "10", "--data_path", "x"])
    assert (args.learning_rate, args.metric_ks, args.data_path, args.warmup_steps) == (1e-4, [10], "x", 7)


def test_a_json_config_is_read_too(tmp_path):
    config = write_config(tmp_path / "run.json", json.dumps({"pretrain_ckpt": "c.bin", "data_path": "d", "batch_size": 4}))
    args = parse_args(FinetuneArgs, ["--config", config])
    assert asdict(args) == {**FINETUNE_DEFAULTS, "data_path": "d", "batch_size": 4}


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("run.yaml", "pretrain_ckpt: c\nlearn_rate: 0.1\n",
         "unknown key 'learn_rate': not a flag of this command (keys are flag names without '--')"),
        ("run.json", '{"batch_size": 0}', "batch_size: must be >= 1, got 0"),
        ("run.yaml", "stage2_schedule: cosine\n", "stage2_schedule must be one of shared, restart, got 'cosine'"),
        ("run.yaml", "fp16: 'yes'\n", "fp16 must be true or false, got 'yes'"),
        ("run.yaml", "learning_rate: fast\n", "learning_rate: could not convert string to float: 'fast'"),
        ("run.yaml", "data_path: [a, b]\n", "data_path takes one value, got a list"),
        ("run.yaml", "- a\n- b\n", "must hold a mapping of flag names to values, not a list"),
        ("run.json", "{", "not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
        ("run.toml", "", "--config takes a .json, .yaml or .yml file"),
        ("missing.yaml", None, "config file not found"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_it(tmp_path, capsys, name, text, message):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        parse_args(FinetuneArgs, ["--config", str(path), *FINETUNE_REQUIRED])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {path}: {message}\n"


def test_required_flags_missing_from_file_and_command_line_are_still_required(tmp_path, capsys):
    config = write_config(tmp_path / "run.yaml", "pretrain_ckpt: c.bin\n")
    with pytest.raises(SystemExit):
        parse_args(FinetuneArgs, ["--config", config])
    assert "the following arguments are required: --data_path" in capsys.readouterr().err


@pytest.mark.parametrize(
    "module, cls, required",
    [
        ("finetune", "FinetuneArgs", {"pretrain_ckpt": "c", "data_path": "d"}),
        ("evaluate", "EvaluateArgs", {"ckpt": "c", "data_path": "d"}),
        ("recommend", "RecommendArgs", {"ckpt": "c", "items": "i", "input": "in", "output": "out"}),
        ("pretrain", "PretrainArgs", {"train_file": "t", "dev_file": "d", "item_attr_file": "m", "output_dir": "o"}),
    ],
)
def test_every_model_command_takes_a_config_file(tmp_path, module, cls, required):
    import importlib

    import recformer.args as args_module
    from recformer.argparsing import parse_command_line

    cli = importlib.import_module(f"recformer.cli.{module}")
    cls = getattr(args_module, cls)
    assert "--config FILE" in cli.build_parser().format_help()
    config = write_config(tmp_path / "c.yaml", "\n".join(f"{k}: {v}" for k, v in {**required, "device": "cpu"}.items()))
    from_file = parse_command_line(cls, cli.build_parser(), ["--config", config, "--attn_implementation", "eager"])
    flags = [x for k, v in required.items() for x in (f"--{k}", v)]
    from_flags = parse_command_line(cls, cli.build_parser(), [*flags, "--device", "cpu", "--attn_implementation", "eager"])
    assert from_file == from_flags and from_file.device == "cpu"


def test_run_arguments_leave_out_what_to_do_with_the_folder():
    from recformer.args import run_arguments

    args = FinetuneArgs(pretrain_ckpt="c", data_path="d", resume=True, overwrite_output_dir=True)
    saved = run_arguments(args)
    assert "resume" not in saved and "overwrite_output_dir" not in saved
    assert FinetuneArgs(**saved) == replace(args, resume=False, overwrite_output_dir=False)
