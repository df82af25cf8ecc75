"""What a finetuning run records in its output folder.

    train_log.jsonl   one JSON record per optimizer step (stage, epoch, step, loss, lr, throughput)
    tensorboard/      the same scalars, every dev evaluation, the zero-shot and final test metrics, and
                      the hyper-parameters with the test metrics (TensorBoard's HPARAMS tab)
    metrics.json      zero-shot test, every dev evaluation, the best dev, the final test
    run.log           what the console showed (`ConsoleLog`; the finetuning and pretraining commands)

A resumed run first drops the records of steps after its saved state (`trim`), so a killed and
resumed run ends with the same log as an uninterrupted one.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any, TextIO

from recformer.io.fileio import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

STEP_LOG = "train_log.jsonl"
METRICS_FILE = "metrics.json"
TENSORBOARD_DIR = "tensorboard"
RUN_LOG = "run.log"
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
        """Forget the step records, metrics and TensorBoard events of an earlier run in this folder."""
        if not self.enabled:
            return
        self.close()
        self.step_log.unlink(missing_ok=True)
        (self.folder / METRICS_FILE).unlink(missing_ok=True)
        shutil.rmtree(self.folder / TENSORBOARD_DIR, ignore_errors=True)

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

    def log_test(self, name: str, metrics: dict[str, float], step: int) -> None:
        """A test evaluation's metrics (`name`: zero_shot_test or test), to TensorBoard (as <name>/<metric>)."""
        if not self.enabled:
            return
        if (tb := self._tensorboard()) is not None:
            for metric, value in metrics.items():
                tb.add_scalar(f"{name}/{metric}", value, step)

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, dict[str, float] | None]) -> None:
        """The run's flags with its results, for TensorBoard's HPARAMS tab (`add_hparams`).

        `hparams`: flag values (lists and None are written as text, as TensorBoard takes only numbers,
        text and booleans); `metrics`: {name: {metric: value}}, each written as hparam/<name>/<metric>.
        """
        if not self.enabled:
            return
        if (tb := self._tensorboard()) is not None:
            plain = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in hparams.items()}
            values = {f"hparam/{name}/{k}": v for name, group in metrics.items() for k, v in (group or {}).items()}
            tb.add_hparams(plain, values, run_name=".")  # "." : in this run's folder, beside its scalars

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        """Replace metrics.json (atomically)."""
        if not self.enabled:
            return
        atomic_write_json(self.folder / METRICS_FILE, metrics, indent=True)

    def close(self) -> None:
        if self._writer:
            self._writer.close()
        self._writer = None


class _Tee(io.TextIOBase):
    """A console stream that also hands what it writes to a `ConsoleLog`."""

    def __init__(self, stream: TextIO, log: ConsoleLog):
        self._stream = stream
        self._log = log

    def write(self, text: str) -> int:
        self._log.feed(text)
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", "utf-8")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class ConsoleLog:
    """A copy of what a command's console shows (its stdout and stderr), for a run folder's `run.log`.

    Progress bars redraw their line with carriage returns; each line is kept as it finally stood, so a
    bar leaves its last state and a cleared bar nothing. Text written before the run folder is known
    (and accepted) is held and written first (`attach`). Use it as a context manager around a command,
    before logging is configured, so that log lines (written to stderr) are copied too.
    """

    def __init__(self) -> None:
        self._held: list[str] = []
        self._partial = ""
        self._file: TextIO | None = None
        self._saved: tuple[TextIO, TextIO] | None = None
        self._closed = False

    def __enter__(self) -> ConsoleLog:
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = _Tee(sys.stdout, self), _Tee(sys.stderr, self)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def feed(self, text: str) -> None:
        """Take console text; complete lines go to the file (or are held until `attach`)."""
        if self._closed:  # a log handler may keep the stream after the command ended
            return
        self._partial += text
        if "\n" not in self._partial:
            return
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            shown = line.rsplit("\r", 1)[-1]
            if "\r" in line and not shown.strip():
                continue  # a progress bar cleared from its line
            self._emit(shown + "\n")

    def _emit(self, line: str) -> None:
        if self._file is None:
            self._held.append(line)
        else:
            self._file.write(line)
            self._file.flush()

    def attach(self, path: str | Path, append: bool = False) -> None:
        """Write to `path` from now on (after what was held): appended to (a resumed run) or replaced."""
        self._file = open(path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._file.writelines(self._held)
        self._file.flush()
        self._held = []

    def close(self) -> None:
        """Stop copying: restore the console streams and close the file (a last unfinished line included)."""
        if self._saved is not None:
            sys.stdout, sys.stderr = self._saved
            self._saved = None
        if self._partial:
            self.feed("\n")
        if self._file is not None:
            self._file.close()
            self._file = None
        self._held = []
        self._closed = True
