"""Results a person can read: finetuning runs side by side, their training curves, a popularity baseline.

A run folder is what `finetune.py` writes into ``<output_dir>/<dataset>/`` (`run_log`): ``metrics.json``
(``zero_shot_test``, every ``dev`` evaluation as ``{stage, epoch, step, metric: value}``, ``best_dev``,
``test``), ``train_log.jsonl`` (one record per optimizer step: ``stage``, ``epoch``, ``step``, ``loss``,
``lr``, ...) and ``args.json`` (the flags, among them ``data_path``).

* `read_run`: one folder -> `Run`;
* `popularity_metrics`: the baseline that ranks every item by its number of interactions in the test
  inputs (train + val), with the run's metrics and tie rule;
* `markdown_table`: test metrics across runs (and baselines), one row each;
* `plot_run`: one PNG per run: training loss and learning rate per step, on an axis of epochs counted across
  both stages, and dev NDCG@10 at each evaluated epoch;
* `write_report`: all of it into one folder (``report.md`` and ``<run>_curves.png``).

torch is imported only by `popularity_metrics`, matplotlib only by `plot_run`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recformer.errors import RecformerError
from recformer.io.fileio import atomic_write_text, read_json
from recformer.train.run_log import METRICS_FILE, STEP_LOG

logger = logging.getLogger(__name__)

ARGS_FILE = "args.json"
REPORT_FILE = "report.md"
CURVE_METRIC = "NDCG@10"
# Users ranked per block by the popularity baseline (bounds its [users, items] score matrix).
POPULARITY_BLOCK = 1024


class ReportError(RecformerError, ValueError):
    """A run folder that cannot be reported; the message names the folder or file."""


@dataclass
class Run:
    """One finetuning run folder as read by `read_run`."""

    path: Path
    metrics: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)
    args: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    @property
    def test(self) -> dict[str, float] | None:
        return self.metrics.get("test")

    @property
    def dev(self) -> list[dict[str, Any]]:
        return list(self.metrics.get("dev") or [])

    @property
    def data_path(self) -> str | None:
        return self.args.get("data_path")


def read_run(path: str | os.PathLike) -> Run:
    """Read a run folder: ``metrics.json`` (required), ``train_log.jsonl`` and ``args.json`` (when present).

    Raises:
        ReportError: not a folder, no ``metrics.json``, or a file that is not what the run writes (named,
            with the line for the step log).
    """
    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"{path}: not a run folder (no such folder)")
    metrics_path = path / METRICS_FILE
    if not metrics_path.is_file():
        raise ReportError(f"{path}: not a finetuning run folder (no {METRICS_FILE})")
    try:
        metrics = read_json(metrics_path)
    except ValueError as e:
        raise ReportError(str(e)) from None
    if not isinstance(metrics, dict):
        raise ReportError(f"{metrics_path}: expected a JSON object with zero_shot_test, dev, best_dev, test")
    steps: list[dict[str, Any]] = []
    log = path / STEP_LOG
    if log.is_file():
        for number, line in enumerate(log.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise ReportError(f"{log} line {number}: not JSON") from None
            if not isinstance(record, dict) or not {"stage", "epoch", "step"} <= record.keys():
                raise ReportError(f"{log} line {number}: expected a step record with stage, epoch and step")
            steps.append(record)
    args: dict[str, Any] = {}
    if (path / ARGS_FILE).is_file():
        loaded = read_json(path / ARGS_FILE)
        args = loaded if isinstance(loaded, dict) else {}
    return Run(path, metrics, steps, args, label=path.name)


def label_runs(runs: Sequence[Run]) -> None:
    """Give each run a short unique label: its folder name, or more of its path where names repeat."""
    depth = 1
    while True:
        labels = ["/".join(r.path.resolve().parts[-depth:]) for r in runs]
        if len(set(labels)) == len(labels) or depth > 8:
            break
        depth += 1
    for run, label in zip(runs, labels):
        run.label = label


def metric_ks(names: Sequence[str]) -> list[int]:
    """The cut-offs k of metric names such as ``NDCG@10`` (sorted, unique)."""
    return sorted({int(n.split("@", 1)[1]) for n in names if "@" in n and n.split("@", 1)[1].isdigit()})


def popularity_metrics(
    data_path: str | os.PathLike, ks: Sequence[int] = (10, 50), exclude_history: bool = False
) -> dict[str, float]:
    """Test metrics of ranking every item by its number of interactions in the test inputs (train + val).

    The baseline scores every user alike, so ties are many; they count against the target, as for every
    model (`metrics.compute_ranks`). `exclude_history`: as the model's flag (a history's items are not
    ranked for it; a target that is also in its history keeps its score).
    """
    import torch

    from recformer.data.finetune_reader import load_finetune_data, popularity_scores
    from recformer.metrics import compute_ranks, metrics_from_ranks

    data = load_finetune_data(data_path)
    pairs = data.test_pairs()
    counts = popularity_scores([h for h, _ in pairs], data.num_items).float()  # [N]
    ranks, valid = [], []
    for start in range(0, len(pairs), POPULARITY_BLOCK):
        block = pairs[start : start + POPULARITY_BLOCK]
        scores = counts.unsqueeze(0).repeat(len(block), 1)  # [B, N]
        labels = torch.tensor([t for _, t in block])  # [B]
        if exclude_history:
            for row, (history, target) in enumerate(block):
                scores[row, history] = float("-inf")
                scores[row, target] = counts[target]
        r, v = compute_ranks(scores, labels)
        ranks.append(r)
        valid.append(v)
    return metrics_from_ranks(torch.cat(ranks), torch.cat(valid), ks)


def _cell(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.4f}"
    return "–"


def markdown_table(rows: Sequence[tuple[str, str, dict[str, float] | None]], columns: Sequence[str]) -> str:
    """A markdown table: one row per (label, data, metrics), one column per metric (``–`` when missing)."""
    lines = [
        "| run | data | " + " | ".join(columns) + " |",
        "|---|---|" + "---:|" * len(columns),
    ]
    for label, data, metrics in rows:
        cells = [_cell((metrics or {}).get(c)) for c in columns]
        lines.append(f"| {label} | {data} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def default_columns(runs: Sequence[Run]) -> list[str]:
    """The test metrics every finished run has, in the first one's order (when none has finished: those of
    their zero-shot tests)."""
    tests = [r.test for r in runs if r.test] or [
        r.metrics["zero_shot_test"] for r in runs if r.metrics.get("zero_shot_test")
    ]
    if not tests:
        return []
    return [name for name in tests[0] if all(name in t for t in tests)]


@dataclass
class EpochCurves:
    """A run's curves on one axis of epochs counted across stages (stage 2's first epoch follows stage 1's
    last): per-step loss and learning rate at fractional epochs, and the dev metric at each evaluation."""

    step_x: list[float]
    loss: list[float]
    lr: list[float]
    epoch_x: list[float]
    epoch_loss: list[float]
    dev_x: list[float]
    dev: list[float]
    stage_starts: list[float]


def epoch_curves(run: Run, metric: str = CURVE_METRIC) -> EpochCurves:
    """The curves `plot_run` draws (see `EpochCurves`); epoch n's steps lie in (n, n + 1] (an epoch's mean loss
    at its last step)."""
    order: dict[tuple[int, int], int] = {}  # (stage, epoch) -> epoch counted across stages
    for key in [(s["stage"], s["epoch"]) for s in run.steps] + [(d["stage"], d["epoch"]) for d in run.dev]:
        order.setdefault(key, 0)
    for i, key in enumerate(sorted(order)):
        order[key] = i
    per_epoch: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for s in run.steps:
        per_epoch.setdefault((s["stage"], s["epoch"]), []).append(s)
    # steps per epoch of each stage: an epoch with fewer (a run stopped inside it) ends early on the axis
    per_stage: dict[int, int] = {}
    for (stage, _), steps in per_epoch.items():
        per_stage[stage] = max(per_stage.get(stage, 0), len(steps))
    c = EpochCurves([], [], [], [], [], [], [], [])
    for key, steps in sorted(per_epoch.items()):
        n = per_stage[key[0]]
        for i, s in enumerate(steps):
            c.step_x.append(order[key] + (i + 1) / n)
            c.loss.append(float(s.get("loss", math.nan)))
            c.lr.append(float(s.get("lr", math.nan)))
        c.epoch_x.append(order[key] + len(steps) / n)
        c.epoch_loss.append(sum(float(s.get("loss", math.nan)) for s in steps) / len(steps))
    for d in run.dev:
        if metric in d:
            c.dev_x.append(order[(d["stage"], d["epoch"])] + 1)
            c.dev.append(float(d[metric]))
    stages: dict[int, int] = {}
    for (stage, _), i in order.items():
        stages[stage] = min(stages.get(stage, i), i)
    c.stage_starts = [float(i) for stage, i in sorted(stages.items()) if stage > 1]
    return c


def curve_metric(run: Run) -> str:
    """The dev metric to plot: NDCG@10 (the one that picks the best model), else the run's first NDCG@k."""
    names = [k for d in run.dev for k in d]
    if CURVE_METRIC in names or not names:
        return CURVE_METRIC
    return next((k for k in names if k.startswith("NDCG@")), CURVE_METRIC)


def plot_run(run: Run, path: str | os.PathLike, metric: str | None = None) -> Path:
    """Write a PNG of the run's training loss, learning rate and dev `metric` (default: `curve_metric`) per
    epoch; return its path.

    Drawn with matplotlib's Agg canvas directly (no pyplot, no global backend), so it works without a
    display and changes nothing for other users of matplotlib.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric = metric or curve_metric(run)
    c = epoch_curves(run, metric)
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, lr_ax, dev_ax = fig.subplots(1, 3)
    loss_ax.plot(c.step_x, c.loss, color="tab:blue", alpha=0.35, linewidth=0.8, label="per step")
    loss_ax.plot(c.epoch_x, c.epoch_loss, color="tab:blue", marker="o", markersize=3, label="epoch mean")
    loss_ax.set(title="training loss", xlabel="epoch", ylabel="loss")
    loss_ax.legend(fontsize="small")
    lr_ax.plot(c.step_x, c.lr, color="tab:orange")
    lr_ax.set(title="learning rate", xlabel="epoch", ylabel="lr")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    dev_ax.plot(c.dev_x, c.dev, color="tab:green", marker="o", markersize=3)
    best = run.metrics.get("best_dev") or {}
    if metric in best and c.dev:
        dev_ax.axhline(
            best[metric], color="tab:green", linestyle=":", linewidth=1, label=f"best {best[metric]:.4f}"
        )
        dev_ax.legend(fontsize="small")
    dev_ax.set(title=f"dev {metric}", xlabel="epoch", ylabel=metric)
    for ax, values in ((loss_ax, c.loss), (lr_ax, c.lr), (dev_ax, c.dev)):
        if not values:
            ax.text(0.5, 0.5, "no records", ha="center", va="center", transform=ax.transAxes, color="grey")
            ax.set_yticks([])
        for x in c.stage_starts:
            ax.axvline(x, color="grey", linestyle="--", linewidth=0.8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{run.label} (dashed line: stage 2 starts)" if c.stage_starts else run.label)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, path)
    return path


def _resolve_data(run: Run, data_path: str | os.PathLike | None) -> Path | None:
    """The run's dataset folder: `data_path` when given, else its args.json's (relative to the current
    folder, as finetune.py read it); None when that folder is not there."""
    if data_path is not None:
        return Path(data_path)
    if not run.data_path:
        return None
    given = Path(run.data_path)
    if given.is_dir():
        return given
    return None


@dataclass
class Report:
    """What `write_report` wrote: the table's text and the files."""

    table: str
    table_path: Path
    plots: list[Path]
    popularity: dict[str, dict[str, float]]
    runs: list[Run]


def write_report(
    run_dirs: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    columns: Sequence[str] | None = None,
    popularity: bool = True,
    zero_shot: bool = False,
    data_path: str | os.PathLike | None = None,
    plots: bool = True,
) -> Report:
    """Read the runs, write ``report.md`` (test metrics of every run, a popularity row per dataset, and the
    zero-shot rows when `zero_shot`) and each run's ``<label>_curves.png`` into `output_dir`.

    `columns`: the metrics to show (default: every test metric all finished runs share). `data_path`: the
    dataset of the popularity rows (default: each run's ``data_path`` in its args.json; a run whose dataset
    folder is not found gets no popularity row, with a warning).

    Raises:
        ReportError: a run folder cannot be read (named), or no run was given.
    """
    if not run_dirs:
        raise ReportError("no run folder given")
    runs = [read_run(p) for p in run_dirs]
    label_runs(runs)
    columns = list(columns) if columns else default_columns(runs)
    if not columns:
        raise ReportError(
            f"no run has test metrics ({', '.join(str(r.path) for r in runs)}: no {METRICS_FILE} holds 'test' or "
            "'zero_shot_test') and no --metrics were named"
        )
    rows: list[tuple[str, str, dict[str, float] | None]] = []
    baselines: dict[str, dict[str, float]] = {}
    if popularity:
        seen: set[Path] = set()
        for run in runs:
            folder = _resolve_data(run, data_path)
            if folder is None:
                logger.warning(
                    "%s: no popularity row: its dataset folder (%s) is not found; pass --data_path",
                    run.path,
                    run.data_path or f"no data_path in {ARGS_FILE}",
                )
                continue
            if folder.resolve() in seen:
                continue
            seen.add(folder.resolve())
            exclude = bool(run.args.get("exclude_history"))
            metrics = popularity_metrics(folder, metric_ks(columns) or [10], exclude)
            baselines[str(folder)] = metrics
            rows.append(("popularity" + (" (history excluded)" if exclude else ""), folder.name, metrics))
    for run in runs:
        data = Path(run.data_path).name if run.data_path else "?"
        if zero_shot:
            rows.append((f"{run.label} (zero-shot)", data, run.metrics.get("zero_shot_test")))
        label = run.label if run.test else f"{run.label} (unfinished)"
        rows.append((label, data, run.test))
    table = markdown_table(rows, columns)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    note = (
        "Test split, leave-one-out, full ranking over all items; ties count against the target. "
        "popularity: every item ranked by its number of interactions in the test inputs.\n"
    )
    table_path = out / REPORT_FILE
    written = []
    if plots:
        for run in runs:
            written.append(plot_run(run, out / f"{run.label.replace('/', '_')}_curves.png"))
    figures = "".join(f"\n![{p.stem}]({p.name})\n" for p in written)
    atomic_write_text(table_path, f"# Test metrics\n\n{note}\n{table}{figures}")
    logger.info("wrote %s and %d plots", table_path, len(written))
    return Report(table, table_path, written, baselines, runs)
