"""CPU runs of the finetuning loop and finetune.py on a tiny processed dataset with a tiny model."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from recformer import RecformerForSeqRec, RecformerModel, RecformerTokenizer, load_checkpoint, ranking_metrics
from recformer.args import FinetuneArgs
from recformer.cli import finetune as finetune_cli
from recformer.data.finetune_reader import load_finetune_data
from recformer.devices import InferenceSettings
from recformer.inference.evaluation import encode_items, evaluate
from recformer.model.batching import encode_item_sequences
from recformer.model.item_tokens import tokenize_catalogue
from recformer.runtime import ModelRuntime
from recformer.train.finetune import Finetuner, TrainingDiverged
from recformer.train.run_log import RunLog

from .finetune_fixtures import finetune_config, make_dataset, make_model_folder, make_pretrained_checkpoint


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    return {
        "model": make_model_folder(root),
        "ckpt": make_pretrained_checkpoint(root),
        "data": make_dataset(root),
        "root": root,
    }


def make_args(assets, out: Path, **overrides) -> FinetuneArgs:
    args = FinetuneArgs(
        pretrain_ckpt=str(assets["ckpt"]),
        data_path=str(assets["data"]),
        model_name_or_path=str(assets["model"]),
        output_dir=str(out),
        num_train_epochs=3,
        verbose=1,
        batch_size=8,
        gradient_accumulation_steps=2,
        finetune_negative_sample_size=-1,
        warmup_steps=2,
        learning_rate=1e-3,
        device="cpu",
        progress=False,
    )
    return replace(args, **overrides)


@pytest.fixture(scope="module")
def full_run(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    metrics = Finetuner(make_args(assets, out)).run()
    return out / "Tiny", metrics


def test_files_written(full_run):
    folder, metrics = full_run
    for name in ("best_model.bin", "metrics.json", "train_log.jsonl", "args.json", "training_state.pt"):
        assert (folder / name).is_file(), name
    assert list((folder / "tensorboard").glob("events.out.tfevents.*"))
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert set(saved) == {"zero_shot_test", "dev", "best_dev", "test"}
    assert all({"stage", "epoch", "step", "NDCG@10", "Recall@50", "MRR", "AUC"} <= set(r) for r in saved["dev"])
    assert saved["best_dev"]["NDCG@10"] == max(r["NDCG@10"] for r in saved["dev"])
    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    assert {"loss", "lr", "seqs_per_s", "step"} <= set(log[0])
    assert [r["step"] for r in log] == list(range(1, len(log) + 1))
    # reference format: longformer.* + item_embedding.weight, loadable by the reference classes
    state = torch.load(folder / "best_model.bin")
    assert "item_embedding.weight" in state and state["item_embedding.weight"].shape == (30, 32)
    assert all(k.startswith("longformer.") for k in state if k != "item_embedding.weight")
    model = RecformerForSeqRec(finetune_config())
    model.init_item_embedding(torch.zeros(30, 32))
    model.load_state_dict(state, strict=True)
    restored = RecformerForSeqRec.from_pretrained(folder / "best_model")
    torch.testing.assert_close(restored.item_embedding.weight, state["item_embedding.weight"])
    tokenizer = RecformerTokenizer.from_pretrained(str(folder / "best_model"), restored.config)
    assert tokenizer.encode_item({"title": "red"})[0] == [263, 273]
    card = (folder / "best_model" / "README.md").read_text()  # the model card, with the run's test metrics
    assert f"| test (best dev checkpoint) | {metrics['test']['NDCG@10']:.4f} |" in card and "RecformerForSeqRec" in card


def test_final_test_metrics_are_those_of_the_best_checkpoint(full_run, assets):
    folder, metrics = full_run
    data = load_finetune_data(assets["data"])
    config = finetune_config(item_num=30)
    tokenizer = RecformerTokenizer.from_pretrained(str(assets["model"]), config)
    model = RecformerForSeqRec(config)
    load_checkpoint(model, folder / "best_model.bin")
    table = tokenize_catalogue(tokenizer, data.items, progress=False)
    got = evaluate(model, data.test_pairs(), tokenizer, table, InferenceSettings(batch_size=32, progress=False), [10, 50])
    assert got == pytest.approx(metrics["test"], abs=1e-6)


def test_zero_shot_equals_direct_evaluation_of_the_loaded_model(full_run, assets):
    _, metrics = full_run
    data = load_finetune_data(assets["data"])
    config = finetune_config()
    tokenizer = RecformerTokenizer.from_pretrained(str(assets["model"]), config)
    encoder = RecformerModel(config).eval()
    load_checkpoint(encoder, assets["ckpt"])
    with torch.no_grad():
        items = encoder(**tokenizer([[item] for item in data.items], return_tensor=True)).pooler_output
        pairs = data.test_pairs()
        batch = tokenizer([[data.items[i] for i in h] for h, _ in pairs], return_tensor=True)
        pooled = encoder(**batch).pooler_output
    scores = torch.nn.functional.cosine_similarity(pooled[:, None], items[None], dim=-1) / config.temp
    expected = ranking_metrics(scores, torch.tensor([t for _, t in pairs]), ks=(10, 50))
    assert metrics["zero_shot_test"] == pytest.approx(expected, abs=1e-5)


def test_item_encoding_in_length_order_matches_one_by_one(assets):
    data = load_finetune_data(assets["data"])
    config = finetune_config()
    tokenizer = RecformerTokenizer.from_pretrained(str(assets["model"]), config)
    encoder = RecformerModel(config).eval()
    table = tokenize_catalogue(tokenizer, data.items, progress=False)
    batched = encode_items(encoder, tokenizer, table, InferenceSettings(batch_size=8, progress=False))
    with torch.no_grad():
        for i in (0, 7, 29):
            alone = encoder(**encode_item_sequences(tokenizer, table, [[i]])).pooler_output[0]
            torch.testing.assert_close(batched[i], alone, atol=1e-5, rtol=1e-5)


def test_stage_two_starts_from_stage_one_best(assets, tmp_path, monkeypatch):
    seen = {}
    original = Finetuner.run_stage

    def spy(self, stage):
        if stage == 2:
            best = torch.load(self.ckpt_path)
            current = self.model.state_dict()
            seen["equal"] = all(torch.equal(current[k], best[k]) for k in best)
        return original(self, stage)

    monkeypatch.setattr(Finetuner, "run_stage", spy)
    Finetuner(make_args(assets, tmp_path, num_train_epochs=2, stage2_schedule="restart")).run()
    assert seen["equal"]


def step_log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]


def test_stage_two_at_learning_rate_zero_is_skipped_and_gives_what_training_it_gives(
    full_run, assets, tmp_path, monkeypatch
):
    """full_run (--stage2_schedule shared, a full stage 1) skipped stage 2; a run forced to train it at
    learning rate 0 writes the same metrics.json, checkpoint and save_pretrained folder."""
    skipped_folder, skipped = full_run
    assert all(r["stage"] == 1 for r in step_log(skipped_folder))  # no stage-2 step ran
    monkeypatch.setattr(Finetuner, "stage_two_learning_rate_is_zero", lambda self: False)
    trained = Finetuner(make_args(assets, tmp_path)).run()
    folder = tmp_path / "Tiny"
    stage2 = [r for r in step_log(folder) if r["stage"] == 2]
    assert stage2 and all(r["lr"] == 0.0 for r in stage2)  # the premise: the shared schedule is used up
    assert [r["stage"] for r in trained["dev"]] == [1, 1, 1, 2, 2, 2]
    assert trained == skipped
    assert (folder / "metrics.json").read_text() == (skipped_folder / "metrics.json").read_text()
    for a, b in ((torch.load(folder / "best_model.bin"), torch.load(skipped_folder / "best_model.bin")),):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for path in (skipped_folder / "best_model").iterdir():
        assert (folder / "best_model" / path.name).read_bytes() == path.read_bytes(), path.name
    state = torch.load(folder / "training_state.pt", weights_only=True)["state"]
    skipped_state = torch.load(skipped_folder / "training_state.pt", weights_only=True)["state"]
    assert state == skipped_state  # stage, epoch, step count, patience, best


def test_skipping_stage_two_says_so_in_one_line(assets, tmp_path, monkeypatch, caplog):
    original = Finetuner.run_stage
    monkeypatch.setattr(Finetuner, "run_stage", lambda self, stage: original(self, stage) if stage == 1 else pytest.fail())
    with caplog.at_level("INFO", logger="recformer.train.finetune"):
        Finetuner(make_args(assets, tmp_path, num_train_epochs=1)).run()
    lines = [r.getMessage() for r in caplog.records if "stage 2:" in r.getMessage() and "skipped" in r.getMessage()]
    assert len(lines) == 1 and "--stage2_schedule restart trains it" in lines[0], caplog.text


def test_stage_two_restart_gives_stage_two_its_own_warm_up_and_decay(assets, tmp_path):
    Finetuner(make_args(assets, tmp_path, stage2_schedule="restart")).run()
    log = step_log(tmp_path / "Tiny")
    stage1 = [r["lr"] for r in log if r["stage"] == 1]
    stage2 = [r["lr"] for r in log if r["stage"] == 2]
    assert stage1[-1] == 0.0 and stage2 and stage2[0] > 0
    assert stage2 == stage1[: len(stage2)]  # the same warm-up and linear decay, started again


def test_patience_and_best_checkpoint_selection(assets, tmp_path, monkeypatch):
    scripted = iter([0.10, 0.30, 0.20, 0.25, 0.29, 0.30, 0.10,  # stage 1: best at epoch 1, then 5 without gain
                     0.31, 0.05, 0.05, 0.05, 0.99])  # stage 2: one gain, then 3 without
    saved_at = []
    monkeypatch.setattr(Finetuner, "train_one_epoch", lambda self, stage, epoch: None)
    original_eval = Finetuner.evaluate_split

    def fake_eval(self, split):
        if split == "test":
            return original_eval(self, split)
        value = next(scripted)
        return {"NDCG@10": value, "Recall@10": value, "NDCG@50": value, "Recall@50": value, "MRR": value, "AUC": value}

    monkeypatch.setattr(Finetuner, "evaluate_split", fake_eval)
    original_save = Finetuner.save_best
    monkeypatch.setattr(Finetuner, "save_best", lambda self: (saved_at.append((self.state.stage, self.state.epoch)), original_save(self)))
    metrics = Finetuner(make_args(assets, tmp_path, num_train_epochs=20)).run()
    dev = [(r["stage"], r["epoch"], r["NDCG@10"]) for r in metrics["dev"]]
    assert dev == [(1, 0, 0.10), (1, 1, 0.30), (1, 2, 0.20), (1, 3, 0.25), (1, 4, 0.29), (1, 5, 0.30), (1, 6, 0.10),
                   (2, 0, 0.31), (2, 1, 0.05), (2, 2, 0.05), (2, 3, 0.05)]
    assert saved_at == [(1, -1), (1, 0), (1, 1), (2, 0)]  # zero-shot, then each improvement only
    assert metrics["best_dev"]["stage"] == 2 and metrics["best_dev"]["NDCG@10"] == 0.31


def test_kill_and_resume_equals_uninterrupted_run(assets, tmp_path, monkeypatch, full_run):
    folder_full, uninterrupted = full_run
    original_log = RunLog.log_step

    def killed_mid_epoch(self, record):
        original_log(self, record)
        if (record["stage"], record["epoch"]) == (1, 2):
            raise KeyboardInterrupt("killed")  # after a logged step of epoch 2, before its evaluation

    monkeypatch.setattr(RunLog, "log_step", killed_mid_epoch)
    with pytest.raises(KeyboardInterrupt):
        Finetuner(make_args(assets, tmp_path)).run()
    partial = json.loads((tmp_path / "Tiny" / "metrics.json").read_text())
    assert len(partial["dev"]) == 2 and partial["test"] is None
    monkeypatch.setattr(RunLog, "log_step", original_log)
    resumed = Finetuner(make_args(assets, tmp_path, resume=True)).run()
    assert resumed == uninterrupted

    def steps(folder):
        return [json.loads(line)["step"] for line in (folder / "train_log.jsonl").read_text().splitlines()]

    assert steps(tmp_path / "Tiny") == steps(folder_full)  # no step logged twice, none missing


def test_sampled_negatives_and_exclude_history_reach_training_and_evaluation(assets, tmp_path):
    """The run's final test metrics are those of its best checkpoint evaluated with history excluded."""
    metrics = Finetuner(
        make_args(assets, tmp_path, num_train_epochs=1, finetune_negative_sample_size=5, exclude_history=True)
    ).run()
    data = load_finetune_data(assets["data"])
    config = finetune_config(item_num=30)
    tokenizer = RecformerTokenizer.from_pretrained(str(assets["model"]), config)
    model = RecformerForSeqRec(config)
    load_checkpoint(model, tmp_path / "Tiny" / "best_model.bin")
    table = tokenize_catalogue(tokenizer, data.items, progress=False)
    pairs = data.test_pairs()
    excluded = evaluate(model, pairs, tokenizer, table, InferenceSettings(batch_size=32, progress=False), [10, 50], exclude_history=True)
    kept = evaluate(model, pairs, tokenizer, table, InferenceSettings(batch_size=32, progress=False), [10, 50])
    assert metrics["test"] == pytest.approx(excluded, abs=1e-6)
    assert excluded["MRR"] > kept["MRR"]  # history items outranked some targets
    assert json.loads((tmp_path / "Tiny" / "args.json").read_text())["finetune_negative_sample_size"] == 5


def test_item_table_cache_is_reused_for_the_same_checkpoint_and_rebuilt_for_another(assets, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = Finetuner(make_args(assets, tmp_path / "a", cache_dir=str(cache), num_train_epochs=0))
    table = first.initial_item_table()
    assert len(list(cache.glob("item_table-*.pt"))) == 1
    torch.testing.assert_close(table, first.item_vectors())

    again = Finetuner(make_args(assets, tmp_path / "b", cache_dir=str(cache), num_train_epochs=0))
    monkeypatch.setattr(ModelRuntime, "encode_items", lambda self, items=None: pytest.fail("the cached table was not reused"))
    assert torch.equal(again.initial_item_table(), table)
    monkeypatch.undo()

    other_ckpt = make_pretrained_checkpoint(tmp_path, seed=1)
    other = Finetuner(make_args(assets, tmp_path / "c", cache_dir=str(cache), pretrain_ckpt=str(other_ckpt), num_train_epochs=0))
    rebuilt = other.initial_item_table()
    assert len(list(cache.glob("item_table-*.pt"))) == 2
    torch.testing.assert_close(rebuilt, other.item_vectors())
    assert not torch.allclose(rebuilt, table)


@pytest.mark.parametrize("form", ["model", "folder"])
def test_released_forms_load(assets, tmp_path, form):
    state = torch.load(assets["ckpt"])
    if form == "model":
        path = tmp_path / "recformer_ckpt.bin"
        torch.save({k[len("longformer."):]: v for k, v in state.items() if k.startswith("longformer.")}, path)
    else:
        path = tmp_path / "saved"
        model = RecformerModel(finetune_config())
        model.load_state_dict({k[len("longformer."):]: v for k, v in state.items() if k.startswith("longformer.")})
        model.save_pretrained(path)
    metrics = Finetuner(make_args(assets, tmp_path / "out", pretrain_ckpt=str(path), num_train_epochs=0)).run()
    reference = Finetuner(make_args(assets, tmp_path / "ref", num_train_epochs=0)).run()
    assert metrics["zero_shot_test"] == pytest.approx(reference["zero_shot_test"])


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(assets, tmp_path, monkeypatch):
    args = make_args(assets, tmp_path)
    finetuner = Finetuner(args)
    calls = {"n": 0}
    forward = RecformerForSeqRec.forward

    def nan_after_a_while(self, *a, **kw):
        loss = forward(self, *a, **kw)
        calls["n"] += 1
        return loss * float("nan") if calls["n"] > 7 and kw.get("labels") is not None else loss

    monkeypatch.setattr(RecformerForSeqRec, "forward", nan_after_a_while)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at stage 1 epoch 1 step \d+"):
        finetuner.run()
    good = torch.load(tmp_path / "Tiny" / "best_model.bin")
    assert torch.isfinite(good["item_embedding.weight"]).all()


def run_cli(argv, capsys):
    code = finetune_cli.main(argv)
    return code, capsys.readouterr().err


def cli_args(assets, data, out, *extra):
    return ["--pretrain_ckpt", str(assets["ckpt"]), "--data_path", str(data), "--model_name_or_path",
            str(assets["model"]), "--output_dir", str(out), "--device", "cpu", "--num_train_epochs", "0",
            "--no_progress", *extra]


def corrupt(assets, tmp_path, file, obj):
    data = make_dataset(tmp_path, name="Bad")
    (data / file).write_text(json.dumps(obj))
    return data


@pytest.mark.parametrize(
    "file, obj, message",
    [
        ("train.json", {"0": [1, 2], "1": [3, 99]}, r"train.json: user 1: item id 99 is not in the item map"),
        ("train.json", {"0": [1, 2], "1": []}, r"train.json: user 1 has an empty sequence"),
        ("train.json", {}, r"train.json: the dataset is empty"),
        ("test.json", {"0": [77]}, r"test.json: user 0: item id 77 is not in the item map"),
        ("meta_data.json", {}, r"smap.json: item 'B000000000' \(id 0\) has no entry in meta_data.json"),
    ],
)
def test_bad_data_stops_before_training_naming_file_and_id(assets, tmp_path, capsys, file, obj, message):
    data = corrupt(assets, tmp_path, file, obj)
    code, err = run_cli(cli_args(assets, data, tmp_path / "out"), capsys)
    assert code == 2
    assert re.search(message, err), err
    assert not (tmp_path / "out" / "Bad" / "best_model.bin").exists()


def test_missing_data_file(assets, tmp_path, capsys):
    data = make_dataset(tmp_path, name="Missing")
    (data / "val.json").unlink()
    code, err = run_cli(cli_args(assets, data, tmp_path / "out"), capsys)
    assert code == 2 and "val.json: file not found" in err


def test_zero_batch_size_is_refused(assets, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        finetune_cli.main(cli_args(assets, assets["data"], tmp_path, "--batch_size", "0"))
    assert exit_info.value.code == 2
    assert "--batch_size: must be >= 1, got 0" in capsys.readouterr().err


def test_checkpoint_with_other_hidden_size_is_refused(assets, tmp_path, capsys):
    wrong = make_pretrained_checkpoint(tmp_path, hidden_size=48)
    argv = cli_args(assets, assets["data"], tmp_path / "out")
    argv[1] = str(wrong)
    code, err = run_cli(argv, capsys)
    assert code == 2
    assert "longformer.embeddings.word_embeddings.weight: checkpoint (275, 48) vs model (275, 32)" in err


def test_cli_end_to_end_prints_table(assets, tmp_path, capsys):
    code = finetune_cli.main(cli_args(assets, assets["data"], tmp_path, "--num_train_epochs", "1", "--batch_size", "8"))
    out = capsys.readouterr().out
    assert code == 0
    assert "zero-shot test" in out and "finetuned test" in out and "NDCG@10" in out


@pytest.mark.parametrize("relative", [False, True])
def test_missing_model_folder_is_a_clear_error(assets, tmp_path, capsys, relative):
    """Not "Repo id must be in the form ...": the folder is named as a folder."""
    missing = "./no_such_model" if relative else str(tmp_path / "no_such_model")
    argv = cli_args(assets, assets["data"], tmp_path / "out")
    argv[argv.index("--model_name_or_path") + 1] = missing
    code, err = run_cli(argv, capsys)
    assert code == 2 and "Traceback" not in err
    assert err == f"error: {missing}: model folder not found (and not a Hugging Face hub id)\n"


@pytest.mark.parametrize("problem", ["output_dir is a file", "best_model.bin is a folder", "best_model is a file",
                                     "not writable", "best_model is not ours"])  # fmt: skip
def test_output_problems_stop_finetuning_before_any_input_is_read(assets, tmp_path, capsys, problem, request):
    out = tmp_path / "out"
    if problem == "output_dir is a file":
        out.write_text("x")
        expected = f"{out / 'Tiny'}: cannot be created: {out} is a file, not a folder"
    elif problem == "best_model.bin is a folder":
        (out / "Tiny" / "best_model.bin").mkdir(parents=True)
        expected = f"{out / 'Tiny' / 'best_model.bin'}: is a folder, but a file must be written there"
    elif problem == "best_model is a file":
        (out / "Tiny").mkdir(parents=True)
        (out / "Tiny" / "best_model").write_text("x")
        expected = f"{out / 'Tiny' / 'best_model'}: is a file, but a folder must be written there"
    elif problem == "best_model is not ours":
        (out / "Tiny" / "best_model").mkdir(parents=True)
        (out / "Tiny" / "best_model" / "notes.txt").write_text("mine")
        expected = (f"{out / 'Tiny' / 'best_model'}: exists and was not written by recformer (no .recformer-folder.json); "
                    "not replacing it, move it away or choose another path")  # fmt: skip
    else:
        folder = request.getfixturevalue("read_only_dir")
        out = folder / "out"
        expected = f"{out / 'Tiny'}: cannot be written: {folder} is not writable (Permission denied)"
    argv = cli_args(assets, assets["data"], out)
    argv[argv.index("--pretrain_ckpt") + 1] = str(tmp_path / "never-read.bin")  # the output is checked first
    code, err = run_cli(argv, capsys)
    assert (code, err) == (2, f"error: {expected}\n")


@pytest.mark.parametrize(
    "broken, message",
    [
        (lambda calls: len(calls) == 1, r"zero-shot test evaluation \(before training\)"),
        (lambda calls: len(calls) == 3, r"dev evaluation at stage 1 epoch 1"),
        (lambda calls: calls[-1][0] == "test" and len(calls) > 1, r"final test evaluation \(best checkpoint\)"),
    ],
    ids=["zero-shot", "dev", "final-test"],
)
def test_non_finite_scores_stop_the_run_and_keep_the_last_good_checkpoint(
    assets, tmp_path, monkeypatch, capsys, broken, message
):
    """A model whose scores are NaN would rank every target first; the run must stop instead."""
    calls, saved = [], []
    evaluate_split, similarity_score, save_best = Finetuner.evaluate_split, RecformerForSeqRec.similarity_score, Finetuner.save_best

    def spy_evaluate(self, split):
        calls.append((split, self.state.stage, self.state.epoch))
        return evaluate_split(self, split)

    def nan_in_evaluation(self, pooled, candidates=None, chunk_size=None):
        scores = similarity_score(self, pooled, candidates, chunk_size)
        return scores * float("nan") if chunk_size is not None and broken(calls) else scores

    def spy_save(self):
        save_best(self)
        saved.append(self.ckpt_path.read_bytes())

    monkeypatch.setattr(Finetuner, "evaluate_split", spy_evaluate)
    monkeypatch.setattr(RecformerForSeqRec, "similarity_score", nan_in_evaluation)
    monkeypatch.setattr(Finetuner, "save_best", spy_save)
    argv = cli_args(assets, assets["data"], tmp_path, "--num_train_epochs", "2", "--verbose", "1", "--batch_size", "8",
                    "--finetune_negative_sample_size", "-1")  # fmt: skip
    code, err = run_cli(argv, capsys)
    assert code == 2 and "Traceback" not in err
    assert re.fullmatch(rf"error: {message}: \d+ of \d+ scores are not finite \(\d+ NaN, 0 infinite\); stopped, .*\n", err), err
    folder = tmp_path / "Tiny"
    best = folder / "best_model.bin"
    if saved:
        assert best.read_bytes() == saved[-1] and f"{best} is left as it was" in err
    else:
        assert not best.exists() and "no checkpoint was saved" in err
    if (folder / "metrics.json").is_file():
        text = (folder / "metrics.json").read_text()
        assert "NaN" not in text and json.loads(text)["test"] is None


@pytest.mark.parametrize("damage", ["truncated", "wrong shape"])
def test_unreadable_item_table_cache_is_rebuilt_with_a_warning(assets, tmp_path, caplog, damage):
    cache = tmp_path / "cache"
    table = Finetuner(make_args(assets, tmp_path / "a", cache_dir=str(cache), num_train_epochs=0)).initial_item_table()
    (path,) = cache.glob("item_table-*.pt")
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:
        torch.save(torch.zeros(3, 32), path)
    with caplog.at_level("WARNING", logger="recformer.io.cache"):
        rebuilt = Finetuner(make_args(assets, tmp_path / "b", cache_dir=str(cache), num_train_epochs=0)).initial_item_table()
    assert f"item table: cache file {path} cannot be read" in caplog.text
    torch.testing.assert_close(rebuilt, table)
    assert torch.equal(torch.load(path, weights_only=True), rebuilt)  # the damaged file was replaced


@pytest.fixture(scope="module")
def finished_run(assets, tmp_path_factory):
    """The output folder of a finished CLI run (no training epochs) on assets["data"]."""
    out = tmp_path_factory.mktemp("finished")
    assert finetune_cli.main(cli_args(assets, assets["data"], out)) == 0
    return out


def resume(assets, finished_run, tmp_path, capsys, data=None, *extra, progress=True):
    """Resume a copy of `finished_run` with `extra` flags: (exit code, stderr, the copy's run folder)."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    argv = cli_args(assets, data or assets["data"], out, "--resume", *extra)
    if not progress:
        argv.remove("--no_progress")
    code, err = run_cli(argv, capsys)
    return code, err, out / "Tiny"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def refused_resume(code: int, err: str, folder: Path, before: dict[str, bytes]) -> str:
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {folder / 'training_state.pt'}"), err
    assert lines[0].endswith("; to start fresh, run without --resume")
    assert snapshot(folder) == before  # args.json, metrics.json and the checkpoints are untouched
    return lines[0]


def test_resume_on_a_regenerated_data_folder_is_refused(assets, finished_run, tmp_path, capsys):
    regenerated = make_dataset(tmp_path / "data", name="Tiny", seed=1)  # same name, another split and catalogue
    before = snapshot(finished_run / "Tiny")
    code, err, folder = resume(assets, finished_run, tmp_path, capsys, regenerated)
    line = refused_resume(code, err, folder, before)
    for name in ("train.json", "val.json", "test.json", "meta_data.json"):
        assert re.search(rf"data file {name} changed \(content sha256 [0-9a-f]{{12}}\.\.\. -> [0-9a-f]{{12}}\.\.\.\)", line)
    assert "smap.json" not in line  # the same 30 item ids


@pytest.mark.parametrize(
    "flags, phrase",
    [
        (["--learning_rate", "1e-4"], "--learning_rate was 5e-05, now 0.0001"),
        (["--batch_size", "4"], "--batch_size was 16, now 4"),
        (["--gradient_accumulation_steps", "2"], "--gradient_accumulation_steps was 8, now 2"),
        (["--num_train_epochs", "3"], "--num_train_epochs was 0, now 3"),
        (["--max_attr_num", "2"], "config max_attr_num was 3, now 2; "),  # and the flag: was None, now 2
        (["--dataloader_num_workers", "1"], "--dataloader_num_workers was 0, now 1"),  # targets are drawn per worker
        (["--stage2_schedule", "restart"], "--stage2_schedule was 'shared', now 'restart'"),
    ],
)
def test_resume_with_a_flag_that_changes_the_result_is_refused(assets, finished_run, tmp_path, capsys, flags, phrase):
    before = snapshot(finished_run / "Tiny")
    code, err, folder = resume(assets, finished_run, tmp_path, capsys, None, *flags)
    assert phrase in refused_resume(code, err, folder, before)


def test_resume_with_another_checkpoint_is_refused(assets, finished_run, tmp_path, capsys):
    other = make_pretrained_checkpoint(tmp_path, seed=1)
    before = snapshot(finished_run / "Tiny")
    code, err, folder = resume(assets, finished_run, tmp_path, capsys, None, "--pretrain_ckpt", str(other))
    assert "checkpoint --pretrain_ckpt changed (content sha256" in refused_resume(code, err, folder, before)


def test_resume_may_change_the_flags_that_cannot_change_the_result(assets, finished_run, tmp_path, capsys):
    import shutil

    moved = tmp_path / "elsewhere" / "Tiny"
    shutil.copytree(assets["data"], moved)  # the same files in another folder
    free = ["--preprocessing_num_workers", "2", "--cache_dir", str(tmp_path / "cache"), "--device", "cpu"]
    code, err, folder = resume(assets, finished_run, tmp_path, capsys, moved, *free, progress=False)
    assert code == 0, err
    assert json.loads((folder / "metrics.json").read_text()) == json.loads((finished_run / "Tiny" / "metrics.json").read_text())
    assert json.loads((folder / "args.json").read_text())["preprocessing_num_workers"] == 2


@pytest.mark.parametrize("damage", ["truncated", "crafted"])
def test_resume_from_an_unusable_state_file_is_one_line(assets, finished_run, tmp_path, capsys, damage):
    import shutil

    from .helpers import crafted_checkpoint

    copy = tmp_path / "template"
    shutil.copytree(finished_run, copy)
    state = copy / "Tiny" / "training_state.pt"
    marker = tmp_path / "code-ran"
    if damage == "truncated":
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    else:
        crafted_checkpoint(state, marker)
    before = snapshot(copy / "Tiny")
    code, err, folder = resume(assets, copy, tmp_path, capsys)
    line = refused_resume(code, err, folder, before)
    expected = "not a complete PyTorch checkpoint file" if damage == "truncated" else "refused: it holds Python objects"
    assert expected in line and not marker.exists()


def test_a_folder_that_holds_a_run_is_refused_without_resume_or_overwrite(assets, finished_run, tmp_path, capsys):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    folder = out / "Tiny"
    before = snapshot(folder)
    code, err = run_cli(cli_args(assets, assets["data"], out), capsys)
    assert code == 2
    assert err == (f"error: {folder}: holds a finetuning run (training_state.pt, metrics.json, best_model.bin, "
                   "best_model); pass --resume to continue it or --overwrite_output_dir to replace it\n")  # fmt: skip
    assert snapshot(folder) == before


def test_overwrite_output_dir_replaces_the_run_and_leaves_nothing_of_it(assets, finished_run, tmp_path, capsys):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    folder = out / "Tiny"
    old_events = {p.name for p in (folder / "tensorboard").rglob("events.out.tfevents.*")}
    (folder / "best_model" / "stale.txt").write_text("from the earlier run")
    (folder / "run.log").write_text("EARLIER RUN\n")
    code, err = run_cli(cli_args(assets, assets["data"], out, "--overwrite_output_dir"), capsys)
    assert code == 0, err
    assert not (folder / "best_model" / "stale.txt").exists()
    assert not old_events & {p.name for p in (folder / "tensorboard").rglob("events.out.tfevents.*")}
    assert "EARLIER RUN" not in (folder / "run.log").read_text()
    assert json.loads((folder / "metrics.json").read_text()) == json.loads((finished_run / "Tiny" / "metrics.json").read_text())


def test_run_log_holds_what_the_console_showed(finished_run):
    text = (finished_run / "Tiny" / "run.log").read_text()
    assert text.startswith("finetune arguments: {")
    assert "finetuned test" in text and "NDCG@10" in text and f"outputs: {finished_run / 'Tiny'}" in text
    assert "\r" not in text


def test_args_json_is_a_config_that_reproduces_the_run(assets, tmp_path, capsys):
    first = tmp_path / "first"
    argv = cli_args(assets, assets["data"], first, "--num_train_epochs", "1", "--batch_size", "8", "--verbose", "1")
    assert run_cli(argv, capsys)[0] == 0
    saved = first / "Tiny" / "args.json"
    assert not {"resume", "overwrite_output_dir"} & set(json.loads(saved.read_text()))
    again = tmp_path / "again"
    code, err = run_cli(["--config", str(saved), "--output_dir", str(again)], capsys)
    assert code == 0, err
    for name in ("metrics.json", "train_log.jsonl"):
        a, b = ((f / "Tiny" / name).read_text().splitlines() for f in (first, again))
        drop = ("seqs_per_s", "tokens_per_s")  # timings
        assert [{k: v for k, v in json.loads(x).items() if k not in drop} for x in a] == [
            {k: v for k, v in json.loads(x).items() if k not in drop} for x in b
        ] if name == "train_log.jsonl" else a == b


def test_tensorboard_gets_zero_shot_test_and_hyper_parameters(full_run):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.util import tensor_util

    folder, metrics = full_run
    scalars, hparams = {}, {}
    for path in (folder / "tensorboard").rglob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == "_hparams_/session_start_info":
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    hparams = {k: v for k, v in data.session_start_info.hparams.items()}
                elif not value.tag.startswith("_hparams_"):
                    scalars[value.tag] = float(tensor_util.make_ndarray(value.tensor))
    assert scalars["zero_shot_test/NDCG@10"] == pytest.approx(metrics["zero_shot_test"]["NDCG@10"])
    assert scalars["test/NDCG@10"] == pytest.approx(metrics["test"]["NDCG@10"])
    assert scalars["hparam/test/NDCG@10"] == pytest.approx(metrics["test"]["NDCG@10"])
    assert hparams["learning_rate"].number_value == pytest.approx(1e-3)
    assert hparams["stage2_schedule"].string_value == "shared"
    assert hparams["metric_ks"].string_value == "[10, 50]"


def test_model_name_or_path_defaults_to_the_checkpoint_s_own_model(full_run, assets, tmp_path, caplog):
    """As evaluate.py and recommend.py: a checkpoint in a run folder brings that run's config and tokenizer."""
    folder, _ = full_run
    args = make_args(assets, tmp_path, pretrain_ckpt=str(folder / "best_model.bin"), model_name_or_path=None,
                     num_train_epochs=0)  # fmt: skip
    with caplog.at_level("INFO", logger="recformer.train.finetune"):
        metrics = Finetuner(args).run()
    assert f"config from {folder / 'best_model'}, tokenizer from {folder / 'best_model'}" in caplog.text
    assert metrics["test"] is not None
    assert json.loads((tmp_path / "Tiny" / "args.json").read_text())["model_name_or_path"] is None  # resolved again
