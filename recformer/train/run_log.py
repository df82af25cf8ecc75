"""What a finetuning run records in its output folder.

    train_log.jsonl   one JSON record per optimizer step (stage, epoch, step, loss, lr, throughput)
    tensorboard/      the same scalars plus every dev evaluation, as TensorBoard events
    metrics.json      zero-shot test, every dev evaluation, the best dev, the final test

A resumed run first drops the records of steps after its saved state (`trim`), so a killed and
resumed run ends with the same log as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from recformer.io.fileio import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

STEP_LOG = "train_log.jsonl"
METRICS_FILE = "metrics.json"
TENSORBOARD_DIR = "tensorboard"
# Step-record fields that also go to TensorBoard (as train/<name>).
TENSORBOARD_STEP_FIELDS = ("loss", "lr", "seqs_per_s")


class RunLog:
    """The step log, TensorBoard events and metrics file of one run folder."""

    def __init__(self, folder: str | Path, enabled: bool = True):
        """`enabled` False: a run log that records nothing (the ranks other than 0 of a distributed run)."""
        self.folder = Path(folder)
        self.enabled = enabled
        self._writer: Any = None  # None: not opened yet; False: TensorBoard unavailable
        self._purge_step: int | None = None

    @property
    def step_log(self) -> Path:
        return self.folder / STEP_LOG

    def start_fresh(self) -> None:
        """Forget the step records of an earlier run in this folder."""
        if not self.enabled:
            return
        self.step_log.unlink(missing_ok=True)

    def trim(self, last_step: int) -> None:
        """Drop the step records (and, once TensorBoard opens, the events) after `last_step`: a resumed
        run trains those steps again."""
        if not self.enabled:
            return
        if self.step_log.is_file():
            lines = self.step_log.read_text(encoding="utf-8").splitlines()
            kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= last_step]
            atomic_write_text(self.step_log, "".join(line + "\n" for line in kept))
        self._purge_step = last_step + 1

    def _tensorboard(self) -> Any:
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # pragma: no cover - tensorboard is in requirements.txt
                logger.warning("tensorboard is not installed: no event files")
                self._writer = False
            else:
                self._writer = SummaryWriter(log_dir=str(self.folder / TENSORBOARD_DIR), purge_step=self._purge_step)
        return self._writer or None

    def log_step(self, record: dict[str, Any]) -> None:
        """Append one optimizer step's record (it has `step`) to the step log and TensorBoard."""
        if not self.enabled:
            return
        with open(self.step_log, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if (tb := self._tensorboard()) is not None:
            for name in TENSORBOARD_STEP_FIELDS:
                tb.add_scalar(f"train/{name}", record[name], record["step"])

    def log_dev(self, metrics: dict[str, float], step: int) -> None:
        """One dev evaluation's metrics, to TensorBoard (as dev/<metric>)."""
        if not self.enabled:
            return
        if (tb := self._tensorboard()) is not None:
            for name, value in metrics.items():
                tb.add_scalar(f"dev/{name}", value, step)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        """Replace metrics.json (atomically)."""
        if not self.enabled:
            return
        atomic_write_json(self.folder / METRICS_FILE, metrics, indent=True)

    def close(self) -> None:
        if self._writer:
            self._writer.close()
        self._writer = None
