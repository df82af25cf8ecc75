"""evaluate.py: the numbers of finetune.py (zero-shot and final test) for any checkpoint form, without training."""

from __future__ import annotations

import json

import pytest
import torch

from recformer import RecformerForSeqRec, RecformerTokenizer, load_checkpoint
from recformer.args import FinetuneArgs
from recformer.cli import evaluate as evaluate_cli
from recformer.data.finetune_reader import load_finetune_data
from recformer.devices import InferenceSettings
from recformer.inference.evaluation import encode_items, evaluate
from recformer.model.item_tokens import tokenize_catalogue
from recformer.train.finetune import Finetuner

from .finetune_fixtures import finetune_config, make_dataset, make_model_folder, make_pretrained_checkpoint

EVAL_BATCH = 32  # finetune.py's evaluation batch for --batch_size 8


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One finetuning run on the tiny dataset: its inputs, metrics and output folder."""
    root = tmp_path_factory.mktemp("evalcli")
    assets = {"model": make_model_folder(root), "ckpt": make_pretrained_checkpoint(root), "data": make_dataset(root)}
    args = FinetuneArgs(
        pretrain_ckpt=str(assets["ckpt"]), data_path=str(assets["data"]), model_name_or_path=str(assets["model"]),
        output_dir=str(root / "out"), num_train_epochs=2, verbose=1, batch_size=8, gradient_accumulation_steps=2,
        finetune_negative_sample_size=-1, warmup_steps=2, learning_rate=1e-3, device="cpu", progress=False,
    )  # fmt: skip
    metrics = Finetuner(args).run()
    return {**assets, "root": root, "metrics": metrics, "folder": root / "out" / "Tiny"}


def evaluate_main(run, capsys, tmp_path, ckpt, *extra, model=True):
    out = tmp_path / "metrics.json"
    argv = ["--ckpt", str(ckpt), "--data_path", str(run["data"]), "--device", "cpu", "--batch_size", str(EVAL_BATCH),
            "--no_progress", "--output", str(out), *extra]  # fmt: skip
    if model:
        argv += ["--model_name_or_path", str(run["model"])]
    code = evaluate_cli.main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(out.read_text()), captured.out


def test_the_start_checkpoint_gives_finetune_zero_shot_numbers(run, capsys, tmp_path):
    result, stdout = evaluate_main(run, capsys, tmp_path, run["ckpt"])
    assert result["metrics"] == pytest.approx(run["metrics"]["zero_shot_test"], abs=1e-6)
    assert result["item_table"] == "encoded" and result["split"] == "test" and result["users"] == 40
    assert "Tiny test" in stdout and "NDCG@10" in stdout and "Recall@50" in stdout
    assert f"{result['metrics']['NDCG@10']:.4f}" in stdout


def test_a_finetuned_checkpoint_uses_its_item_table_and_gives_the_final_test(run, capsys, tmp_path):
    result, _ = evaluate_main(run, capsys, tmp_path, run["folder"] / "best_model.bin")
    assert result["item_table"] == "checkpoint"
    assert result["metrics"] == pytest.approx(run["metrics"]["test"], abs=1e-6)
    # the save_pretrained folder finetune.py exports carries config and tokenizer: no --model_name_or_path
    result, _ = evaluate_main(run, capsys, tmp_path, run["folder"] / "best_model", model=False)
    assert result["item_table"] == "checkpoint"
    assert result["metrics"] == pytest.approx(run["metrics"]["test"], abs=1e-6)
    # the dev split of the best checkpoint is the best dev evaluation of the run
    result, _ = evaluate_main(run, capsys, tmp_path, run["folder"] / "best_model.bin", "--split", "val")
    best_dev = {k: v for k, v in run["metrics"]["best_dev"].items() if k not in ("stage", "epoch", "step")}
    assert result["metrics"] == pytest.approx(best_dev, abs=1e-6)


def test_compile_compiles_the_encoder_and_keeps_the_numbers(run, capsys, tmp_path, monkeypatch):
    from recformer.model.modeling import RecformerModel

    compiled = []
    original = RecformerModel.compile
    monkeypatch.setattr(RecformerModel, "compile", lambda self, *a, **k: compiled.append(self) or original(self, *a, **k))
    result, _ = evaluate_main(run, capsys, tmp_path, run["ckpt"], "--compile")
    assert len(compiled) == 1 and compiled[0]._compiled_call_impl is not None
    assert result["metrics"] == pytest.approx(run["metrics"]["zero_shot_test"], abs=1e-6)


@pytest.mark.parametrize("exclude", [False, True])
def test_reencode_items_rebuilds_the_table_with_the_checkpoint_encoder(run, capsys, tmp_path, exclude):
    best = run["folder"] / "best_model.bin"
    flags = ["--reencode_items", *(["--exclude_history"] if exclude else []), "--metric_ks", "5", "10"]
    result, _ = evaluate_main(run, capsys, tmp_path, best, *flags)
    assert result["item_table"] == "encoded" and result["exclude_history"] is exclude

    data = load_finetune_data(run["data"])
    config = finetune_config()
    tokenizer = RecformerTokenizer.from_pretrained(str(run["model"]), config)
    model = RecformerForSeqRec(config)
    load_checkpoint(model, best)
    saved_table = model.item_embedding.weight.clone()
    table = tokenize_catalogue(tokenizer, data.items, progress=False)
    cpu = torch.device("cpu")
    model.init_item_embedding(encode_items(model.longformer, tokenizer, table, InferenceSettings(cpu, batch_size=EVAL_BATCH, progress=False)))
    assert not torch.allclose(model.item_embedding.weight, saved_table)  # stage 2 trained past its table
    expected = evaluate(model, data.test_pairs(), tokenizer, table, InferenceSettings(cpu, batch_size=EVAL_BATCH, progress=False),
                        [5, 10], exclude_history=exclude)
    assert result["metrics"] == pytest.approx(expected, abs=1e-6)


def test_refusals_name_the_problem(run, capsys, tmp_path):
    other = make_dataset(tmp_path, name="Bigger", items=31)
    code = evaluate_cli.main(["--ckpt", str(run["folder"] / "best_model.bin"), "--data_path", str(other),
                              "--model_name_or_path", str(run["model"]), "--device", "cpu", "--no_progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "best_model.bin: its item table has 30 items but" in err and "has 31; pass --reencode_items" in err
    code = evaluate_cli.main(["--ckpt", str(run["ckpt"]), "--data_path", str(tmp_path / "nothing"), "--no_progress",
                              "--output", str(tmp_path / "m.json")])  # fmt: skip
    assert code == 2 and "nothing: data folder not found" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()
    with pytest.raises(SystemExit):
        evaluate_cli.main(["--ckpt", "x", "--data_path", "y", "--split", "dev"])
    assert "invalid choice: 'dev'" in capsys.readouterr().err


def test_a_checkpoint_in_a_run_folder_takes_the_run_s_model_and_tokenizer(run, capsys, tmp_path):
    import shutil

    result, _ = evaluate_main(run, capsys, tmp_path, run["folder"] / "best_model.bin", model=False)
    assert result["metrics"] == pytest.approx(run["metrics"]["test"], abs=1e-6)
    # a run folder without best_model/ (say, still running): the model its args.json names
    copy = tmp_path / "copy"
    shutil.copytree(run["folder"], copy, ignore=shutil.ignore_patterns("best_model", "cache", "tensorboard"))
    result, _ = evaluate_main(run, capsys, tmp_path, copy / "best_model.bin", model=False)
    assert result["metrics"] == pytest.approx(run["metrics"]["test"], abs=1e-6)


def test_offline_without_the_model_is_one_line_naming_the_flag(run, capsys, tmp_path, monkeypatch):
    import time

    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    start = time.perf_counter()
    code = evaluate_cli.main(["--ckpt", str(run["ckpt"]), "--data_path", str(run["data"]), "--device", "cpu",
                              "--no_progress"])  # fmt: skip
    assert code == 2 and time.perf_counter() - start < 5
    assert capsys.readouterr().err == (
        "error: allenai/longformer-base-4096: not a local folder, and HF_HUB_OFFLINE=1 forbids downloading it (the "
        "Hugging Face cache does not hold it); pass --model_name_or_path with a local model folder that holds the "
        "config and tokenizer\n"
    )


def test_a_missing_ckpt_fails_at_once_naming_it(tmp_path, capsys, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("tried the network"))
    code = evaluate_cli.main(["--ckpt", str(tmp_path / "nope.bin"), "--data_path", str(tmp_path), "--no_progress"])
    assert code == 2 and capsys.readouterr().err == f"error: --ckpt {tmp_path / 'nope.bin'}: no such file or folder\n"


def test_the_output_is_checked_before_any_input_is_read(tmp_path, capsys):
    ckpt = tmp_path / "ckpt.bin"
    ckpt.write_bytes(b"not read")
    (tmp_path / "file").write_text("x")
    base = ["--ckpt", str(ckpt), "--data_path", str(tmp_path / "nothing"), "--no_progress", "--output"]
    code = evaluate_cli.main([*base, str(tmp_path / "file" / "m.json")])
    assert code == 2 and capsys.readouterr().err == (
        f"error: {tmp_path / 'file' / 'm.json'}: cannot be created: {tmp_path / 'file'} is a file, not a folder\n"
    )
    code = evaluate_cli.main([*base, str(ckpt)])
    assert code == 2 and capsys.readouterr().err == f"error: --output {ckpt}: is also --ckpt; writing it would destroy that input\n"
    code = evaluate_cli.main([*base, "/dev/full"])
    assert code == 2 and capsys.readouterr().err.startswith("error: /dev/full: is a special file")
    assert ckpt.read_bytes() == b"not read"


def test_metrics_go_to_stdout_for_output_dash(tmp_path, capsys):
    model, ckpt, data = make_model_folder(tmp_path), make_pretrained_checkpoint(tmp_path), make_dataset(tmp_path)
    code = evaluate_cli.main(["--ckpt", str(ckpt), "--data_path", str(data), "--model_name_or_path", str(model),
                              "--device", "cpu", "--no_progress", "--output", "-"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)  # stdout holds the metrics JSON only
    assert result["users"] == 40 and "NDCG@10" in result["metrics"] and "NDCG@10" in captured.err
