"""recformer-report: the markdown table, the popularity baseline and the training curves, on a run folder and a
dataset small enough to work out by hand."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from recformer import report
from recformer.cli import report as report_cli

from .helpers import load_cli

# Items A B C D = ids 0..3. Test inputs (train + val): u0 [0, 1, 0] -> 2, u1 [0, 2, 1] -> 3.
# Interaction counts in the test inputs: 0: 3, 1: 2, 2: 1, 3: 0.
# u0's target 2 (count 1): items 0 and 1 score higher -> rank 2; u1's target 3 (count 0): 0, 1, 2 -> rank 3.
DATA = {
    "umap.json": {"u0": 0, "u1": 1},
    "smap.json": {"A": 0, "B": 1, "C": 2, "D": 3},
    "train.json": {"0": [0, 1], "1": [0, 2]},
    "val.json": {"0": [0], "1": [1]},
    "test.json": {"0": [2], "1": [3]},
    "meta_data.json": {k: {"title": f"item {k}"} for k in "ABCD"},
}
POPULARITY = {  # ks (1, 3)
    "NDCG@1": 0.0, "Recall@1": 0.0, "Hit@1": 0.0, "MRR@1": 0.0,
    "NDCG@3": (1 / math.log2(4)) / 2, "Recall@3": 0.5, "Hit@3": 0.5, "MRR@3": (1 / 3) / 2,
    "MRR": (1 / 3 + 1 / 4) / 2, "AUC": ((1 - 2 / 4) + (1 - 3 / 4)) / 2,
}  # fmt: skip


def write_data(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name, obj in DATA.items():
        (folder / name).write_text(json.dumps(obj))
    return folder


def steps(stage: int, epoch: int, first: int, losses: list[float], lrs: list[float]) -> list[dict]:
    return [
        {"stage": stage, "epoch": epoch, "step": first + i, "loss": loss, "sequences": 2, "lr": lr}
        for i, (loss, lr) in enumerate(zip(losses, lrs))
    ]


def write_run(folder: Path, data: Path, test: dict | None = None, exclude_history: bool = False) -> Path:
    folder.mkdir(parents=True)
    dev = [
        {"stage": 1, "epoch": 0, "step": 2, "NDCG@3": 0.2},
        {"stage": 1, "epoch": 1, "step": 4, "NDCG@3": 0.3},
        {"stage": 2, "epoch": 0, "step": 6, "NDCG@3": 0.25},
    ]
    metrics = {"zero_shot_test": {"NDCG@3": 0.05, "Hit@3": 0.1}, "dev": dev, "best_dev": dev[1], "test": test}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    log = steps(1, 0, 1, [4.0, 3.0], [1e-3, 8e-4]) + steps(1, 1, 3, [2.0, 2.0], [6e-4, 4e-4])
    log += steps(2, 0, 5, [1.5, 0.5], [2e-4, 0.0])
    (folder / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    (folder / "args.json").write_text(json.dumps({"data_path": str(data), "exclude_history": exclude_history}))
    return folder


def test_popularity_by_hand(tmp_path):
    data = write_data(tmp_path / "Tiny")
    assert report.popularity_metrics(data, ks=(1, 3)) == pytest.approx(POPULARITY)
    # history excluded: u0 keeps items 2 and 3 (target first), u1 only item 3 -> both rank 0
    excluded = report.popularity_metrics(data, ks=(1, 3), exclude_history=True)
    assert excluded["Hit@1"] == 1.0 and excluded["MRR"] == 1.0


def test_popularity_blocks_give_the_same_numbers(tmp_path, monkeypatch):
    data = write_data(tmp_path / "Tiny")
    monkeypatch.setattr(report, "POPULARITY_BLOCK", 1)
    assert report.popularity_metrics(data, ks=(1, 3)) == pytest.approx(POPULARITY)


def test_markdown_table_golden(tmp_path):
    data = write_data(tmp_path / "Tiny")
    run = write_run(tmp_path / "runs" / "Tiny", data, test={"NDCG@3": 0.5, "Hit@3": 0.75, "MRR": 0.123456})
    out = report.write_report([run], tmp_path / "out", zero_shot=True, plots=False)
    assert out.table == (
        "| run | data | NDCG@3 | Hit@3 | MRR |\n"
        "|---|---|---:|---:|---:|\n"
        "| popularity | Tiny | 0.2500 | 0.5000 | 0.2917 |\n"
        "| Tiny (zero-shot) | Tiny | 0.0500 | 0.1000 | – |\n"
        "| Tiny | Tiny | 0.5000 | 0.7500 | 0.1235 |\n"
    )
    text = (tmp_path / "out" / "report.md").read_text()
    assert out.table in text and text.startswith("# Test metrics")


def test_runs_with_the_same_folder_name_get_longer_labels_and_one_popularity_row(tmp_path):
    data = write_data(tmp_path / "Tiny")
    a = write_run(tmp_path / "lr1" / "Tiny", data, test={"NDCG@3": 0.5})
    b = write_run(tmp_path / "lr2" / "Tiny", data, test=None)  # still running
    out = report.write_report([a, b], tmp_path / "out", plots=False)
    assert out.table.splitlines()[2:] == [
        "| popularity | Tiny | 0.2500 |",
        "| lr1/Tiny | Tiny | 0.5000 |",
        "| lr2/Tiny (unfinished) | Tiny | – |",
    ]


def test_epoch_curves_count_epochs_across_stages(tmp_path):
    run = report.read_run(write_run(tmp_path / "r", tmp_path / "absent", test=None))
    c = report.epoch_curves(run, "NDCG@3")
    assert c.step_x == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert c.loss == [4.0, 3.0, 2.0, 2.0, 1.5, 0.5] and c.lr[-1] == 0.0
    assert (c.epoch_x, c.epoch_loss) == ([1, 2, 3], [3.5, 2.0, 1.0])
    assert (c.dev_x, c.dev) == ([1, 2, 3], [0.2, 0.3, 0.25])
    assert c.stage_starts == [2.0]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_cli_writes_table_and_plots(tmp_path, capsys):
    data = write_data(tmp_path / "Tiny")
    run = write_run(tmp_path / "runs" / "Tiny", data, test={"NDCG@3": 0.5, "Hit@3": 0.75}, exclude_history=True)
    assert report_cli.main([str(run), "--output_dir", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "| popularity (history excluded) | Tiny | 1.0000 | 1.0000 |" in printed
    plot = tmp_path / "out" / "Tiny_curves.png"
    assert png_size(plot) == (1200, 360)
    assert "![Tiny_curves](Tiny_curves.png)" in (tmp_path / "out" / "report.md").read_text()


def test_cli_one_line_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert report_cli.main([str(tmp_path / "empty"), "--output_dir", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'empty'}: not a finetuning run folder (no metrics.json)\n"
    run = write_run(tmp_path / "r", tmp_path / "absent", test={"NDCG@3": 0.5})
    with open(run / "train_log.jsonl", "a") as f:
        f.write("{oops\n")
    assert report_cli.main([str(run), "--output_dir", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == f"error: {run / 'train_log.jsonl'} line 7: not JSON\n"


def test_a_missing_dataset_is_a_warning_not_a_row(tmp_path, caplog):
    run = write_run(tmp_path / "r", tmp_path / "absent", test={"NDCG@3": 0.5})
    out = report.write_report([run], tmp_path / "out", plots=False)
    assert [line.split(" |")[0] for line in out.table.splitlines()[2:]] == ["| r"]
    assert "no popularity row" in caplog.text and "pass --data_path" in caplog.text


def test_the_command_imports_neither_torch_nor_matplotlib_before_it_runs():
    code = "import sys, recformer.cli.report; print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


def test_demo_step_writes_table_and_plot_into_the_demo_folder(tmp_path, monkeypatch, capsys):
    """What `make demo` runs last (scripts/demo/run_demo.sh, step 6), on a small finished run."""
    data = write_data(tmp_path / "data" / "Demo")
    run = write_run(tmp_path / "finetune" / "Demo", data, test={"NDCG@10": 0.5, "Recall@10": 0.75})
    (run / "metrics.json").write_text(
        (run / "metrics.json").read_text().replace('"zero_shot_test": {', '"zero_shot_test": {"NDCG@10": 0.01, "Recall@10": 0.02, ')
    )
    demo = load_cli(Path(__file__).resolve().parents[1] / "scripts" / "demo" / "report.py")
    argv = ["report.py", "--run_dir", str(run), "--data_path", str(data), "--output_dir", str(tmp_path), "--seconds", "90"]
    monkeypatch.setattr(sys, "argv", argv)
    demo.main()
    printed = capsys.readouterr().out
    popularity = report.popularity_metrics(data, ks=(10,))
    assert f"| popularity | Demo | {popularity['NDCG@10']:.4f} | {popularity['Recall@10']:.4f} |" in printed
    assert "| Demo (zero-shot) | Demo | 0.0100 | 0.0200 |" in printed and "| Demo | Demo | 0.5000 | 0.7500 |" in printed
    assert f"finetuned NDCG@10 is {0.5 / popularity['NDCG@10']:.2f}x popularity's" in printed
    assert "demo wall time: 1.5 min" in printed
    assert (tmp_path / "report.md").is_file() and png_size(tmp_path / "Demo_curves.png") == (1200, 360)
