"""Where a finetuning run stands, and the resume file that lets a killed run continue exactly.

The resume file (`training_state.pt`) holds the `TrainingState`, the model, optimizer, scheduler
and gradient-scaler states, every random generator's state, the run's arguments and the run's
fingerprint. It contains only tensors and plain containers (numpy's generator state is stored as
lists and numbers), so it is read with `torch.load(..., weights_only=True)`.

The fingerprint says what produced the saved state: the content of every input file, the
tokenizer and config, the device type and every flag that changes the result. A resumption whose
fingerprint differs is refused, naming each difference, before anything is restored; continuing
would mix two runs in one output folder (say, the old item table evaluated on a regenerated split).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recformer.errors import RecformerError
from recformer.io.checkpoint import _preview, load_checkpoint
from recformer.io.checkpoint_files import CheckpointError, torch_load
from recformer.io.fileio import atomic_torch_save

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"
PAYLOAD_KEYS = ("state", "model", "optimizer", "scheduler", "scaler", "rng", "args", "fingerprint")
START_FRESH = "to start fresh, run without --resume"
# Flags added after resume files were first written, with the value every run that wrote such a file had.
FLAGS_BEFORE_THEY_EXISTED = {"stage2_schedule": "shared"}


class ResumeError(RecformerError, ValueError):
    """A resume file that cannot be used for this run; the message names the file and what to do."""


def fingerprint_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What differs between two run fingerprints, one phrase per difference.

    A fingerprint maps sections to {name: value}: `flags` (flag values), `files` (content hashes,
    named by what they are), `config` (config fields) and `device` ({"type": ...}). A saved fingerprint
    without a flag of `FLAGS_BEFORE_THEY_EXISTED` had that flag's value there.
    """
    out = []
    for section in sorted(set(saved) | set(current)):
        old, new = saved.get(section) or {}, current.get(section) or {}
        if section == "flags":  # a file written before a flag existed ran with its one value then
            old = {**{k: v for k, v in FLAGS_BEFORE_THEY_EXISTED.items() if k in new}, **old}
        for name in sorted(set(old) | set(new), key=str):
            a, b = old.get(name, "<absent>"), new.get(name, "<absent>")
            if a == b:
                continue
            if section == "flags":
                out.append(f"--{name} was {a!r}, now {b!r}")
            elif section == "files":
                out.append(f"{name} changed (content sha256 {str(a)[:12]}... -> {str(b)[:12]}...)")
            else:
                out.append(f"{section} {name} was {a!r}, now {b!r}")
    return out


def _empty_metrics() -> dict[str, Any]:
    return {"zero_shot_test": None, "dev": [], "best_dev": None, "test": None}


@dataclass
class TrainingState:
    """Progress of a two-stage finetuning run.

    Attributes:
        stage: 1 or 2.
        epoch: the last finished epoch of `stage` (-1: none yet).
        global_step: optimizer steps taken over both stages.
        patience: dev evaluations without improvement still allowed in this stage.
        best_target: the best dev value of the selection metric so far.
        metrics: what metrics.json holds (zero-shot test, every dev evaluation, best dev, test).
        done: the final test has been run.
    """

    stage: int = 1
    epoch: int = -1
    global_step: int = 0
    patience: int = 0
    best_target: float = float("-inf")
    metrics: dict[str, Any] = field(default_factory=_empty_metrics)
    done: bool = False

    def save(
        self,
        path: str | Path,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        scaler: torch.amp.GradScaler,
        args: Mapping[str, Any],
        fingerprint: Mapping[str, Any],
    ) -> None:
        """Write everything needed to continue from this point (atomically); `fingerprint` says what
        produced it (see the module docstring; plain values only)."""
        payload = {
            "state": asdict(self),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": capture_rng(),
            "args": dict(args),
            "fingerprint": dict(fingerprint),
        }
        atomic_torch_save(payload, path)

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        scaler: torch.amp.GradScaler,
        fingerprint: Mapping[str, Any],
        check_args: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> tuple[TrainingState, dict[str, Any]]:
        """Restore the model, optimizer, scheduler, scaler and random generators from `path`.

        Nothing is restored unless the file is a complete resume file whose fingerprint equals
        `fingerprint` (the current run's). `check_args`, when given, sees the saved run's arguments
        first and raises to refuse them (e.g. another world size).

        Returns:
            The saved state and the arguments of the run that saved it.

        Raises:
            ResumeError: the file is unreadable, not a resume file, written by another run setup (each
                difference named) or does not fit the model; one line naming the file.
        """
        try:
            payload = torch_load(Path(path))
        except CheckpointError as e:  # already names the file and says what it is not
            raise ResumeError(f"{e}; {START_FRESH}") from None
        if not isinstance(payload, dict) or not set(PAYLOAD_KEYS) <= set(payload):
            found = f"keys {_preview(list(map(str, payload)))}" if isinstance(payload, dict) else type(payload).__name__
            raise ResumeError(
                f"{path}: not a finetuning resume file of this version (expected the keys {', '.join(PAYLOAD_KEYS)}; "
                f"found {found}); {START_FRESH}"
            )
        if check_args is not None:
            check_args(payload["args"])
        changed = fingerprint_differences(payload["fingerprint"], fingerprint)
        if changed:
            raise ResumeError(f"{path} was saved by a run with other inputs or flags: {'; '.join(changed)}; {START_FRESH}")
        try:
            state = cls(**payload["state"])
            load_checkpoint(model, payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
            scheduler.load_state_dict(payload["scheduler"])
            scaler.load_state_dict(payload["scaler"])
            restore_rng(payload["rng"])
        except (CheckpointError, KeyError, TypeError, ValueError, RuntimeError) as e:
            first = str(e).strip().split("\n")[0]
            raise ResumeError(f"{path}: does not fit this run ({type(e).__name__}: {first}); {START_FRESH}") from None
        return state, payload["args"]


def capture_rng() -> dict[str, Any]:
    """The states of torch's (CPU and CUDA), Python's and numpy's global generators, as tensors and plain values."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached_gaussian)],
    }


def restore_rng(rng: Mapping[str, Any]) -> None:
    """Set the global generators to states from `capture_rng`."""
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    version, internal, gauss_next = rng["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, pos, has_gauss, cached_gaussian = rng["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached_gaussian))


# Flags that cannot change a run's numbers, so they may differ between a run and its resumption: display,
# tokenizer threads (same tokens), where caches live (keyed by content), the output folder (the resume file
# is found in it) and the device index (the device *type* is part of the fingerprint).
# --global_batch_size is free too: the global batch it gives is fingerprinted (see `fingerprint`).
RESUME_FREE_FLAGS = ("progress", "preprocessing_num_workers", "cache_dir", "resume", "output_dir", "device",
                     "global_batch_size", "overwrite_output_dir")  # fmt: skip
# Flags naming inputs: the fingerprint holds their content, so a moved folder with the same files resumes.
INPUT_FLAGS = (
    "data_path", "pretrain_ckpt", "model_name_or_path", "train_file", "dev_file", "test_file", "item2id_file", "meta_file",
)  # fmt: skip
# Config entries that say nothing about the numbers.
# model_type: "longformer" in runs started before RecformerConfig had its own type; it changes no number.
CONFIG_NOT_FINGERPRINTED = ("transformers_version", "_name_or_path", "name_or_path", "_commit_hash", "model_type")


def check_resume_layout(
    saved_args: Mapping[str, Any], args: Any, world_size: int, path: Path
) -> None:
    """Refuse a resume file saved by a run on another number of processes unless --global_batch_size is
    given: without it the global batch (batch x accumulation x processes), and so every step, would change.
    The global batch itself is part of the run's fingerprint.

    Raises:
        ResumeError: naming both world sizes.
    """
    saved_world = saved_args.get("world_size", 1)  # files written before distributed runs: one process
    if saved_world != world_size and args.global_batch_size is None:
        raise ResumeError(
            f"{path} was saved by a run on {saved_world} processes and this run has {world_size}; pass "
            f"--global_batch_size {saved_args.get('global_batch')} to continue it with the same global batch; "
            f"{START_FRESH}"
        )


def run_fingerprint(
    args: Any, files: Mapping[str, str], config: Any, device_type: str, global_batch: int
) -> dict[str, dict[str, Any]]:
    """What produced a finetuning run's numbers (`fingerprint_differences` compares two): every flag but
    `RESUME_FREE_FLAGS` and `INPUT_FLAGS`, the content hash of every input (`files`: name -> hash), the
    config (without `CONFIG_NOT_FINGERPRINTED`), the device type and the global batch."""
    flags = {k: v for k, v in dataclasses.asdict(args).items() if k not in RESUME_FREE_FLAGS + INPUT_FLAGS}
    if flags.get("pack_train_batches") == "off":  # the layout of runs started before the flag: they resume
        del flags["pack_train_batches"]
    saved = json.loads(config.to_json_string(use_diff=False))
    saved = {k: v for k, v in saved.items() if k not in CONFIG_NOT_FINGERPRINTED}
    return {"flags": flags, "files": dict(files), "config": saved, "device": {"type": device_type},
            "layout": {"global batch": global_batch}}  # fmt: skip
