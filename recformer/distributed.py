"""torch.distributed for finetuning, evaluation and index building: one process per device (torchrun).

A plain `python finetune.py` is world size 1: no process group, and every helper here is a no-op.
Under `torchrun` (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT) the
command-line scripts call `init_from_env`: NCCL when the process uses a GPU (the one of its local
rank), gloo on CPU.

Conventions every caller follows:

* Shards are contiguous and balanced (`shard_bounds`); `all_gather_rows` puts uneven shards back
  together in rank order, so a table split into shards comes back in its original order.
* Only rank 0 writes files and logs (`on_main`); the others wait for it, so a file rank 0 wrote
  can be read right after, and a failed write stops every rank with rank 0's message.
* A failure that one rank detects outside a collective stops every rank: `fail_together` around a
  block without collectives, `raise_everywhere` for an error every rank detects at once. Exactly
  one rank re-raises the original error (and prints it); the others raise `RankFailure`, which the
  scripts do not print. A rank that fails anywhere else exits, and torchrun stops the others.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from recformer.devices import resolve_device
from recformer.errors import FAILURE, RecformerError, exit_code
from recformer.errors import error_line as error_text

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Set by torchrun (and by any launcher that follows its convention) in every worker.
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class RankFailure(RecformerError, RuntimeError):
    """Another rank failed (its message, rank and exit code are kept); raised so that every rank stops together
    with the failing rank's exit code."""

    def __init__(self, message: str, failed_rank: int, exit_code: int = FAILURE):
        super().__init__(f"rank {failed_rank}: {message}")
        self.failed_rank = failed_rank
        self.exit_code = exit_code


def launched() -> bool:
    """True when this process was started by torchrun (its environment variables are set)."""
    return all(name in os.environ for name in LAUNCH_ENV)


def world_size() -> int:
    """Number of processes of the run (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on rank 0, the process that writes files and logs."""
    return rank() == 0


def env_rank() -> int:
    """The rank torchrun gave this process, readable before the process group starts (0 without torchrun)."""
    return int(os.environ.get("RANK", "0")) if launched() else 0


def cli_log_level() -> int:
    """INFO on rank 0, WARNING on the other ranks (their INFO lines would repeat rank 0's)."""
    return logging.INFO if env_rank() == 0 else logging.WARNING


def rank_device(device: str | int) -> torch.device:
    """This process's device for a `--device` value.

    Without torchrun, `devices.resolve_device`. Under torchrun with several processes on a node,
    `auto` and `cuda` mean the GPU of this process's local rank (CPU when there is no GPU with
    `auto`), and `cpu` (or a negative index) the CPU; one particular GPU cannot be shared by the
    processes and is refused, naming `--device`.
    """
    if not launched() or int(os.environ.get("LOCAL_WORLD_SIZE", "1")) == 1:
        return resolve_device(device)
    text = str(device).strip()
    if text in ("auto", "cuda"):
        if not torch.cuda.is_available():
            return resolve_device(text)  # cpu for auto; the "no CUDA" error for cuda
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    resolved = resolve_device(text)
    if resolved.type == "cpu":
        return resolved
    raise ValueError(
        f"--device {text}: under torchrun each process uses the GPU of its local rank; pass --device auto, cuda or cpu"
    )


def init_from_env(device: str | int = "auto") -> torch.device:
    """Start the process group when launched by torchrun (once) and return this process's device.

    NCCL when the device is a GPU (made the current CUDA device), gloo on CPU. Without torchrun,
    no process group: the device is `devices.resolve_device(device)`.
    """
    dev = rank_device(device)
    if launched() and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
            dist.init_process_group("nccl", device_id=dev)
        else:
            dist.init_process_group("gloo")
        logger.info(
            "process group: rank %d of %d, backend %s, device %s",
            rank(),
            world_size(),
            dist.get_backend(),
            dev,
        )
    return dev


def teardown() -> None:
    """Destroy the process group, if one was started."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    """Where collective tensors must live: the current GPU for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """`obj` of rank `src` on every rank (picklable objects; meant for small ones)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_comm_device())
    return box[0]


def all_gather_object(obj: T) -> list[T]:
    """Every rank's `obj`, in rank order, on every rank (small picklable objects)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_true(flag: bool) -> bool:
    """True when `flag` is true on every rank (collective)."""
    return all(all_gather_object(bool(flag)))


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `tensor` over the ranks (a new tensor on `tensor`'s device)."""
    if world_size() == 1:
        return tensor
    t = tensor.to(_comm_device(), copy=True)
    dist.all_reduce(t)
    return t.to(tensor.device)


def shard_bounds(n: int, shard: int | None = None, shards: int | None = None) -> tuple[int, int]:
    """[start, end) of contiguous shard `shard` of `shards` (default: this rank of the world) over n rows.

    Shards differ in size by at most one row; earlier shards are the smaller ones.

    Example:
        >>> [shard_bounds(5, r, 2) for r in range(2)]
        [(0, 2), (2, 5)]
    """
    shard = rank() if shard is None else shard
    shards = world_size() if shards is None else shards
    return shard * n // shards, (shard + 1) * n // shards


def all_gather_rows(local: torch.Tensor) -> torch.Tensor:
    """Every rank's rows [n_r, ...] concatenated in rank order [sum n_r, ...], on every rank.

    The shards may differ in size (they are padded to the largest for the collective and trimmed
    after); the result is on `local`'s device.
    """
    if world_size() == 1:
        return local
    comm = _comm_device()
    sizes = all_gather_object(local.size(0))
    padded = torch.zeros((max(sizes), *local.shape[1:]), dtype=local.dtype, device=comm)
    padded[: local.size(0)] = local.to(comm)
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)]).to(local.device)


def check_world_size(n_users: int, source: str) -> None:
    """Refuse a world size larger than the number of users, which would leave a process without work.

    Raises:
        ValueError: one line naming both numbers and `source` (the users' file).
    """
    if world_size() > n_users:
        raise ValueError(
            f"world size {world_size()} is larger than the number of users ({n_users}) in {source}; "
            f"run at most {n_users} processes"
        )


@contextlib.contextmanager
def fail_together() -> Iterator[None]:
    """Run a block on every rank; if it fails on any rank, every rank stops.

    The lowest failing rank re-raises its own error, every other rank raises `RankFailure` with that
    rank's message. The block must not contain collectives (a failed rank would skip them).
    """
    if world_size() == 1:
        yield
        return
    error: BaseException | None = None
    try:
        yield
    except Exception as e:  # noqa: BLE001 - handed to every rank below
        error = e
    reports = all_gather_object(None if error is None else (error_text(error), exit_code(error)))
    failed = [r for r, report in enumerate(reports) if report is not None]
    if not failed:
        return
    if failed[0] == rank():
        raise error  # type: ignore[misc]
    raise RankFailure(*reports[failed[0]][:1], failed[0], reports[failed[0]][1]) from error


def raise_everywhere(error: Exception) -> None:
    """Stop every rank with `error`, which every rank detected at the same point: rank 0 raises it, the
    others raise `RankFailure` (so it is reported once)."""
    if is_main():
        raise error
    raise RankFailure(error_text(error), 0, exit_code(error)) from error


def on_main(fn: Callable[[], T]) -> T | None:
    """Run `fn` on rank 0 only; every rank returns when it is done (None on the others).

    If `fn` fails, rank 0 raises its error and every other rank a `RankFailure` with its message.
    """
    if world_size() == 1:
        return fn()
    result, report = None, None
    if is_main():
        try:
            result = fn()
        except Exception as e:
            broadcast_object((error_text(e), exit_code(e)))
            raise
    report = broadcast_object(report)
    if report is not None:
        raise RankFailure(report[0], 0, report[1])
    return result


def error_line(error: BaseException) -> str | None:
    """What a script prints for `error` on this rank: None for a `RankFailure` (the failing rank prints
    the error), else the message, prefixed by the rank on ranks other than 0 (rank 0 also reports the
    errors that every rank meets, such as bad input)."""
    if isinstance(error, RankFailure):
        return None
    prefix = f"rank {rank()}: " if rank() > 0 else ""
    return f"error: {prefix}{error_text(error)}"
