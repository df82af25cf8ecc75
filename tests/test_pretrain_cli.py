"""End-to-end CPU runs of the pretraining CLIs: start point, training, resume, conversion, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

pytest.importorskip("pytorch_lightning")

from recformer import (  # noqa: E402
    RecformerConfig,
    RecformerForPretraining,
    RecformerForSeqRec,
    RecformerModel,
    RecformerTokenizer,
    load_checkpoint,
)
from recformer.train.lightning_module import PretrainDataModule, PretrainFiles  # noqa: E402

from .pretrain_fixtures import TINY_FIELD_FLAGS, make_longformer_folder, write_corpus  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STEPS, MORE_STEPS = 30, 8
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd or ROOT, env=ENV, capture_output=True, text=True)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def pretrain_args(ws: dict, output_dir: Path, *extra: str) -> list[str]:
    return [
        ROOT / "lightning_pretrain.py", "--model_name_or_path", ws["longformer"], "--longformer_ckpt", ws["start"],
        "--train_file", ws["data"]["train"], "--dev_file", ws["data"]["dev"], "--item_attr_file", ws["data"]["meta"],
        "--output_dir", output_dir, "--batch_size", "8", "--gradient_accumulation_steps", "1", "--learning_rate", "1e-3", "--device", "cpu",
        "--valid_step", "10", "--log_step", "5", "--dataloader_num_workers", "0", "--no_progress",
        *TINY_FIELD_FLAGS, *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict:
    """Tiny Longformer, start point, corpus (with a missing asin and a 1-item sequence), one training run."""
    root = tmp_path_factory.mktemp("pretrain")
    longformer = make_longformer_folder(root / "longformer-tiny")
    data = write_corpus(root / "data", n_items=120, n_train=240, n_dev=40)
    train = json.loads(data["train"].read_text())
    train += [["B00001", "NOT-IN-META", "B00005"], ["B00002"]]
    data["train"].write_text(json.dumps(train))
    start = root / "start" / "longformer-tiny.bin"
    ws = {"root": root, "longformer": longformer, "data": data, "start": start}
    ws["start_log"] = ok(run(ROOT / "save_longformer_ckpt.py", "--model_name_or_path", longformer, "--output", start,
                             *TINY_FIELD_FLAGS))  # fmt: skip
    ws["out"] = root / "run"
    ws["train_log"] = ok(run(*pretrain_args(ws, ws["out"], "--max_steps", str(STEPS))))
    return ws


def test_save_longformer_ckpt_writes_file_and_folder(ws):
    start, folder = ws["start"], ws["start"].with_name(ws["start"].stem)
    state = torch.load(start, weights_only=True)
    assert len(state) == 58 and state["longformer.embeddings.token_type_embeddings.weight"].shape == (4, 32)
    assert {"config.json", "tokenizer_config.json"} <= {p.name for p in folder.iterdir()}
    config = RecformerConfig.from_pretrained(folder)
    assert (config.max_token_num, config.max_item_embeddings, config.attention_window) == (256, 51, [4, 8])
    model = RecformerForPretraining.from_pretrained(folder)
    assert torch.equal(model.lm_head.dense.weight, state["lm_head.dense.weight"])
    for word in ("copied:", "reshaped: 1", "new: 2", "item_position_embeddings"):
        assert word in ws["start_log"]


def dev_loss(ws: dict, model: RecformerForPretraining) -> float:
    """Mean loss over the dev set with the deterministic dev batches."""
    folder = ws["start"].with_name(ws["start"].stem)
    tokenizer = RecformerTokenizer.from_pretrained(str(folder), model.config)
    data = ws["data"]
    files = PretrainFiles(data["train"], data["dev"], data["meta"])
    dm = PretrainDataModule(tokenizer, files, batch_size=8, progress=False)
    dm.load()
    model.eval()
    with torch.no_grad():
        losses = [model(**batch).loss.item() for batch in dm.val_dataloader()]
    return sum(losses) / len(losses)


def test_training_lowers_the_loss_and_writes_its_outputs(ws):
    out, log = ws["out"], ws["train_log"]
    checkpoints = out / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file()
    assert len(list(checkpoints.glob("step=*-acc=*.ckpt"))) == 3  # validations at 10, 20, 30
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert json.loads((out / "args.json").read_text())["max_steps"] == STEPS
    assert "strategy: a plain Lightning strategy" in log and "resolved arguments:" in log
    run_log = (out / "run.log").read_text()  # the console's copy: log lines too, no progress-bar redraws
    assert "resolved arguments:" in run_log and "done: 30 optimizer steps" in run_log and "\r" not in run_log
    saved = json.loads((out / "args.json").read_text())
    assert "overwrite_output_dir" not in saved and saved["strategy"] == "auto"  # the flags as given: a --config file
    assert "1 asins missing from the metadata skipped; 1 sequences with fewer than 2 items skipped" in log
    assert "weights_only" not in log  # last.ckpt is saved saying what it holds; Lightning does not guess
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["global_step"] == STEPS and summary["tokens_per_s"] > 0
    assert 0.0 <= summary["best_val_accuracy"] <= 1.0
    config = RecformerConfig.from_pretrained(ws["start"].with_name(ws["start"].stem))
    start = RecformerForPretraining(config)
    load_checkpoint(start, ws["start"])
    trained = RecformerForPretraining(config)
    load_checkpoint(trained, checkpoints / "last.ckpt")
    before, after = dev_loss(ws, start), dev_loss(ws, trained)
    assert after < before - 0.1, (before, after)


def test_packed_batches_train_the_model_too(ws, tmp_path):
    """--pack_train_batches on: the run packs both sides and their MLM copies into rows and learns as well."""
    out = tmp_path / "packed"
    log = ok(run(*pretrain_args(ws, out, "--max_steps", str(STEPS), "--pack_train_batches", "on")))
    assert "pack_train_batches: on" in log and "done: 30 optimizer steps" in (out / "run.log").read_text()
    config = RecformerConfig.from_pretrained(ws["start"].with_name(ws["start"].stem))
    start, trained = RecformerForPretraining(config), RecformerForPretraining(config)
    load_checkpoint(start, ws["start"])
    load_checkpoint(trained, out / "checkpoints" / "last.ckpt")
    before, after = dev_loss(ws, start), dev_loss(ws, trained)
    assert after < before - 0.1, (before, after)


def test_valid_step_counts_optimizer_steps_as_max_steps_and_log_step_do(ws, tmp_path):
    out = tmp_path / "accumulated"
    ok(run(*pretrain_args(ws, out, "--max_steps", "4", "--gradient_accumulation_steps", "3", "--valid_step", "2",
                          "--log_step", "2")))  # fmt: skip
    # 12 batches, 4 optimizer steps: validations after steps 2 and 4 (not after every 2 batches)
    steps = sorted(int(p.name.split("-")[0].split("=")[1]) for p in (out / "checkpoints").glob("step=*-acc=*.ckpt"))
    assert steps == [2, 4]
    assert json.loads((out / "train_summary.json").read_text())["global_step"] == 4


def test_resume_continues_the_step_count(ws):
    out = ws["root"] / "resumed"
    log = ok(run(*pretrain_args(ws, out, "--max_steps", str(STEPS + MORE_STEPS), "--ckpt",
                                ws["out"] / "checkpoints" / "last.ckpt")))  # fmt: skip
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["global_step"] == STEPS + MORE_STEPS
    assert summary["batches_trained"] == MORE_STEPS, log[-2000:]
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == STEPS + MORE_STEPS and ckpt["optimizer_states"] and ckpt["lr_schedulers"]


def check_released(out: Path, config: RecformerConfig) -> dict[str, torch.Tensor]:
    model_state = torch.load(out / "recformer_ckpt.bin", weights_only=True)
    RecformerModel(config).load_state_dict(model_state, strict=True)
    seqrec_state = torch.load(out / "recformer_seqrec_ckpt.bin", weights_only=True)
    result = RecformerForSeqRec(config).load_state_dict(seqrec_state, strict=False)
    assert result.missing_keys == [] and {k.split(".")[0] for k in result.unexpected_keys} == {"lm_head"}
    assert len(result.unexpected_keys) == 7
    for folder in ("recformer", "recformer_seqrec"):
        assert (out / folder / "config.json").is_file() and (out / folder / "tokenizer_config.json").is_file()
    RecformerModel.from_pretrained(out / "recformer")
    return seqrec_state


def test_convert_lightning_checkpoint(ws):
    out = ws["root"] / "released"
    log = ok(run(ROOT / "convert_pretrain_ckpt.py", "--lightning_ckpt", ws["out"] / "checkpoints" / "last.ckpt",
                 "--longformer_ckpt", ws["start"], "--output_dir", out))  # fmt: skip
    assert "Lightning checkpoint" in log and "strict load into RecformerModel OK" in log
    config = RecformerConfig.from_pretrained(ws["start"].with_name(ws["start"].stem))
    seqrec_state = check_released(out, config)
    trained = torch.load(ws["out"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    key = "longformer.encoder.layer.1.attention.self.value_global.weight"
    assert torch.equal(seqrec_state[key], trained["model." + key])
    # finetune.py takes it directly
    seqrec = RecformerForSeqRec(config)
    load_checkpoint(seqrec, out / "recformer_seqrec_ckpt.bin")


@pytest.fixture(scope="module")
def zero2(ws) -> Path:
    """A real ZeRO-2 checkpoint folder written by DeepSpeed's engine on CPU (gloo), in a subprocess."""
    pytest.importorskip("deepspeed")
    folder = ws["root"] / "ds" / "last.ckpt"
    ok(run("-m", "tests.zero2_checkpoint", ws["start"].with_name(ws["start"].stem), ws["data"]["train"].parent, folder))
    assert (folder / "latest").is_file() and list(folder.glob("checkpoint/*optim_states.pt"))
    return folder


def test_convert_deepspeed_zero2_folder(ws, zero2):
    folder = zero2
    out = ws["root"] / "released-ds"
    log = ok(run(ROOT / "convert_pretrain_ckpt.py", "--lightning_ckpt", folder, "--longformer_ckpt", ws["start"],
                 "--output_dir", out))  # fmt: skip
    assert "DeepSpeed checkpoint folder" in log and "restored: 1" in log
    config = RecformerConfig.from_pretrained(ws["start"].with_name(ws["start"].stem))
    seqrec_state = check_released(out, config)
    expected = torch.load(folder.with_suffix(".expected.pt"), weights_only=True)
    start = torch.load(ws["start"], weights_only=True)
    for key, value in seqrec_state.items():
        if key == "longformer.embeddings.word_embeddings.weight":  # frozen: restored from the start point
            assert torch.equal(value, start[key])
        elif value.is_floating_point():
            assert torch.allclose(value, expected["model." + key].float(), atol=1e-6), key
        else:
            assert torch.equal(value, expected["model." + key]), key
    assert not torch.equal(seqrec_state["lm_head.dense.weight"], start["lm_head.dense.weight"])  # it trained


def test_bad_train_file(ws, tmp_path):
    bad = tmp_path / "train.json"
    bad.write_text(json.dumps({"user": ["B00001"]}))
    args = pretrain_args(ws, tmp_path / "out", "--max_steps", "1")
    args[args.index("--train_file") + 1] = bad
    result = run(*args)
    assert result.returncode == 2
    assert f"error: {bad}: expected a JSON list of asin lists" in result.stderr
    assert "Traceback" not in result.stderr


def test_wrong_size_longformer_checkpoint(ws, tmp_path):
    other = make_longformer_folder(tmp_path / "longformer-48", hidden_size=48, intermediate_size=40)
    wrong = tmp_path / "wrong.bin"
    ok(run(ROOT / "save_longformer_ckpt.py", "--model_name_or_path", other, "--output", wrong, *TINY_FIELD_FLAGS))
    args = pretrain_args(ws, tmp_path / "out", "--max_steps", "1")
    args[args.index("--longformer_ckpt") + 1] = wrong
    result = run(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "longformer.embeddings.word_embeddings.weight: checkpoint (275, 48) vs model (275, 32)" in result.stderr


def test_neither_checkpoint_format(ws, tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    result = run(ROOT / "convert_pretrain_ckpt.py", "--lightning_ckpt", junk, "--longformer_ckpt", ws["start"],
                 "--output_dir", tmp_path / "out")  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{junk}: is neither a DeepSpeed checkpoint folder, a Lightning .ckpt nor a consolidated state dict" in result.stderr
    folder = tmp_path / "empty.ckpt"
    folder.mkdir()
    result = run(ROOT / "convert_pretrain_ckpt.py", "--lightning_ckpt", folder, "--longformer_ckpt", ws["start"],
                 "--output_dir", tmp_path / "out")  # fmt: skip
    assert result.returncode == 2 and "without DeepSpeed *_model_states.pt files" in result.stderr


def test_finetune_takes_the_converted_checkpoint(ws, tmp_path):
    """The three pretraining commands, then finetune.py --pretrain_ckpt on their output."""
    from .finetune_fixtures import make_dataset

    released = ws["root"] / "released"
    if not (released / "recformer_seqrec_ckpt.bin").is_file():
        ok(run(ROOT / "convert_pretrain_ckpt.py", "--lightning_ckpt", ws["out"] / "checkpoints" / "last.ckpt",
               "--longformer_ckpt", ws["start"], "--output_dir", released))  # fmt: skip
    data = make_dataset(tmp_path, users=20, items=15)
    log = ok(run(ROOT / "finetune.py", "--pretrain_ckpt", released / "recformer_seqrec_ckpt.bin", "--data_path", data,
                 "--model_name_or_path", released / "recformer_seqrec", "--output_dir", tmp_path / "ft",
                 "--device", "cpu", "--num_train_epochs", "1", "--batch_size", "8", "--gradient_accumulation_steps", "1", "--no_progress"))  # fmt: skip
    assert "zero-shot test" in log and "NDCG@10" in log


def test_real_checkpoints_hold_only_the_allow_listed_python_types(ws, zero2):
    """What weights-only loading must allow: nothing for a Lightning .ckpt, `deepspeed_checkpoint_types` for ZeRO."""
    from torch.serialization import get_unsafe_globals_in_checkpoint

    from recformer.io.checkpoint_files import deepspeed_checkpoint_types

    assert get_unsafe_globals_in_checkpoint(ws["out"] / "checkpoints" / "last.ckpt") == []
    found = {name for f in zero2.glob("checkpoint/*_states.pt") for name in get_unsafe_globals_in_checkpoint(f)}
    allowed = {f"{t.__module__}.{t.__qualname__}" for t in deepspeed_checkpoint_types()}
    assert found and found <= allowed, found - allowed


def refused(result: subprocess.CompletedProcess, path: Path) -> str:
    """The one error line of a command that refused a crafted checkpoint file."""
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {path}: refused: it holds Python objects"), result.stderr
    assert "weights_only" not in result.stdout + result.stderr
    return errors[0]


def test_convert_refuses_a_crafted_lightning_checkpoint(ws, tmp_path):
    from .helpers import crafted_checkpoint

    marker = tmp_path / "code-ran"
    trained = torch.load(ws["out"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    crafted = crafted_checkpoint(tmp_path / "crafted.ckpt", marker, trained)
    result = run(ROOT / "convert_pretrain_ckpt.py", "--lightning_ckpt", crafted, "--longformer_ckpt", ws["start"],
                 "--output_dir", tmp_path / "out")  # fmt: skip
    refused(result, crafted)
    assert not marker.exists() and not (tmp_path / "out" / "recformer_ckpt.bin").exists()


@pytest.mark.parametrize("shard", ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"])
def test_convert_refuses_a_crafted_deepspeed_folder(ws, zero2, tmp_path, shard):
    import shutil

    from .helpers import crafted_checkpoint

    marker = tmp_path / "code-ran"
    folder = tmp_path / "last.ckpt"
    shutil.copytree(zero2, folder)
    path = folder / "checkpoint" / shard
    crafted_checkpoint(path, marker, torch.load(path, map_location="cpu", weights_only=False))  # our own real file
    result = run(ROOT / "convert_pretrain_ckpt.py", "--lightning_ckpt", folder, "--longformer_ckpt", ws["start"],
                 "--output_dir", tmp_path / "out")  # fmt: skip
    refused(result, path)
    assert not marker.exists()


def test_trust_checkpoint_help_says_what_it_risks():
    from recformer.cli.convert_pretrain_ckpt import build_parser

    text = " ".join(build_parser().format_help().split())
    assert "--trust_checkpoint" in text and "runs any code it likes while it loads" in text


def test_resume_refuses_a_crafted_checkpoint(ws, tmp_path):
    """Lightning would unpickle --ckpt fully (weights_only defaults to False there)."""
    from .helpers import crafted_checkpoint

    marker = tmp_path / "code-ran"
    trained = torch.load(ws["out"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    crafted = crafted_checkpoint(tmp_path / "last.ckpt", marker, trained)
    result = run(*pretrain_args(ws, tmp_path / "resumed", "--max_steps", str(STEPS + 1), "--ckpt", crafted))
    refused(result, crafted)
    assert not marker.exists()


def test_a_folder_that_holds_a_pretraining_run_is_refused_unless_overwritten(tmp_path, capsys):
    from recformer.cli import pretrain as pretrain_cli

    from .finetune_fixtures import make_model_folder

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "args.json").write_text("{}")
    (out / "cache").mkdir()
    missing = tmp_path / "train.json"
    argv = ["--model_name_or_path", str(make_model_folder(tmp_path)), "--train_file", str(missing), "--dev_file",
            str(missing), "--item_attr_file", str(missing), "--output_dir", str(out), "--device", "cpu", "--no_progress"]  # fmt: skip
    assert pretrain_cli.main(argv) == 2
    resume = out / "checkpoints" / "last.ckpt"
    assert capsys.readouterr().err == (f"error: {out}: holds a pretraining run (checkpoints, args.json); pass --ckpt "
                                       f"{resume} to continue it or --overwrite_output_dir to replace it\n")  # fmt: skip
    assert not (out / "run.log").exists()
    # accepted with --overwrite_output_dir; the earlier run is removed only once this one's inputs are read
    assert pretrain_cli.main([*argv, "--overwrite_output_dir"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "holds a pretraining run" not in err
    assert (out / "args.json").is_file() and err.strip() in (out / "run.log").read_text()


def test_clear_run_folder_removes_the_outputs_of_a_run_and_keeps_the_cache(tmp_path):
    from recformer.train.pretraining import RUN_OUTPUTS, clear_run_folder

    for name in RUN_OUTPUTS:
        (tmp_path / name).mkdir() if "." not in name else (tmp_path / name).write_text("{}")
    (tmp_path / "checkpoints" / "last.ckpt").write_text("x")
    (tmp_path / "cache").mkdir()
    clear_run_folder(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


@pytest.mark.parametrize(
    "flag, device, packed",
    [("auto", "cuda", True), ("auto", "cpu", False), ("on", "cpu", True), ("off", "cuda", False)],
)
def test_pack_sides_follows_the_flag_and_the_device(monkeypatch, flag, device, packed):
    """--pack_sides auto packs both sides in one pass on CUDA (measured faster there) and not on CPU."""
    from recformer.args import PretrainArgs
    from recformer.train import pretraining

    from .conftest import tiny_config

    model = RecformerForPretraining(tiny_config())
    monkeypatch.setattr(pretraining, "build_pretraining_model", lambda args, config: model)
    args = PretrainArgs(model_name_or_path="m", train_file="t", dev_file="d", item_attr_file="i", output_dir="o",
                        pack_sides=flag)  # fmt: skip
    data = types.SimpleNamespace(pack_tokens="unset")
    assert pretraining._setup_model(args, model.config, torch.device(device), data) is model
    assert model.config.pack_sides is packed
    assert data.pack_tokens is None  # --pack_train_batches off by default: padded batches


@pytest.mark.parametrize(
    "flag, attention, pack_tokens",
    [("off", "sdpa", None), ("on", "sdpa", 256), ("auto", "sdpa", 256), ("auto", "eager", None), ("on", "eager", "refused")],
)
def test_pack_train_batches_sets_the_data_modules_row_budget(monkeypatch, flag, attention, pack_tokens):
    """--pack_train_batches packs the pretraining batches into rows of max_token_num tokens where the attention
    can keep the sequences apart; `on` with the eager attention is refused in one line."""
    from recformer.args import PretrainArgs
    from recformer.train import pretraining

    from .conftest import tiny_config

    model = RecformerForPretraining(tiny_config())
    monkeypatch.setattr(pretraining, "build_pretraining_model", lambda args, config: model)
    args = PretrainArgs(model_name_or_path="m", train_file="t", dev_file="d", item_attr_file="i", output_dir="o",
                        pack_train_batches=flag, attn_implementation=attention)  # fmt: skip
    data = types.SimpleNamespace(pack_tokens="unset")
    if pack_tokens == "refused":
        with pytest.raises(ValueError, match="^--pack_train_batches on needs --attn_implementation sdpa, flex_attention"):
            pretraining._setup_model(args, model.config, torch.device("cpu"), data)
        return
    pretraining._setup_model(args, model.config, torch.device("cpu"), data)
    assert data.pack_tokens == pack_tokens
