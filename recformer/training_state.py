"""Where a finetuning run stands, and the resume file that lets a killed run continue exactly.

The resume file (`training_state.pt`) holds the `TrainingState`, the model, optimizer, scheduler
and gradient-scaler states, every random generator's state and the run's arguments. It contains
only tensors and plain containers (numpy's generator state is stored as lists and numbers), so it
is read with `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import load_checkpoint, torch_load
from .fileio import atomic_torch_save

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"


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
    ) -> None:
        """Write everything needed to continue from this point (atomically)."""
        payload = {
            "state": asdict(self),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": capture_rng(),
            "args": dict(args),
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
    ) -> tuple[TrainingState, dict[str, Any]]:
        """Restore the model, optimizer, scheduler, scaler and random generators from `path`.

        Returns:
            The saved state and the arguments of the run that saved it.

        Raises:
            ValueError: the file cannot be read as a resume file (naming it).
        """
        try:
            payload = torch_load(Path(path), weights_only=True)
        except Exception as e:  # noqa: BLE001 - one clear error for any unreadable file
            raise ValueError(
                f"{path}: cannot be read as a finetuning resume file ({type(e).__name__}); "
                "start the run again without --resume"
            ) from None
        load_checkpoint(model, payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        scaler.load_state_dict(payload["scaler"])
        restore_rng(payload["rng"])
        return cls(**payload["state"]), payload["args"]


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
