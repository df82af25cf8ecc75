"""Where work runs: the finetuning device, autocast, how inference passes run (`InferenceSettings`),
Lightning's hardware settings, the tokenizer's thread pool and the C allocator's policy. Lightning is
never imported here."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import platform
import sys
from dataclasses import dataclass
from typing import Any

import torch

# defined in .defaults so that the parsers import neither torch nor transformers; importable from here too
from recformer.defaults import PRECISIONS as PRECISIONS

logger = logging.getLogger(__name__)
# The thread-pool size variable the `tokenizers` Rust library (rayon) reads when RAYON_NUM_THREADS is unset.
TOKENIZER_THREADS_ENV = "RAYON_RS_NUM_CPUS"


def resolve_device(device: str | int) -> torch.device:
    """`auto`, `cpu`, `cuda`, `cuda:N`, or an integer (the reference's GPU index; negative = CPU).

    Raises:
        ValueError: a CUDA device on a machine without CUDA, or another device type (mps, xla), naming `--device`.
    """
    text = str(device).strip()
    if text == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if text.lstrip("-").isdigit():
        index = int(text)
        dev = torch.device("cpu") if index < 0 else torch.device(f"cuda:{index}")
    else:
        try:
            dev = torch.device(text)
        except RuntimeError:
            raise ValueError(f"--device {text}: expected auto, cpu, cuda, cuda:N or a GPU index") from None
    if dev.type not in ("cpu", "cuda"):  # mps, xla, meta ...: the models here run on CPUs and CUDA GPUs only
        raise ValueError(f"--device {text}: not supported; expected auto, cpu, cuda, cuda:N or a GPU index")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {text}: CUDA is not available on this machine")
    return dev


def autocast_context(device: torch.device, fp16: bool, bf16: bool) -> contextlib.AbstractContextManager:
    """float16 autocast on CUDA for `fp16`, bfloat16 on CUDA or CPU for `bf16`, else nothing."""
    if device.type == "cuda" and (fp16 or bf16):
        return torch.autocast("cuda", dtype=torch.float16 if fp16 else torch.bfloat16)
    if device.type == "cpu" and bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def check_batch_size(value: Any, name: str = "batch_size") -> None:
    """None (batches of a token budget) or an integer >= 1 (numpy integers too); anything else is a
    ValueError naming it."""
    if value is None:
        return
    if isinstance(value, bool) or not hasattr(value, "__index__") or int(value) < 1:
        raise ValueError(f"{name} must be an integer >= 1 or None, got {value!r}")


@dataclass(frozen=True)
class InferenceSettings:
    """How inference passes run: the device, the autocast precision, the batch size, progress bars.

    One small value travels through item encoding, evaluation and recommending instead of a list of
    positional settings. `batch_size` None batches by a token budget (`max_tokens`, default per device);
    `shard` splits the batches across the processes of a distributed run.
    """

    device: torch.device = torch.device("cpu")
    fp16: bool = False
    bf16: bool = False
    batch_size: int | None = None
    max_tokens: int | None = None
    progress: bool = True
    shard: bool = False

    def __post_init__(self):
        check_batch_size(self.batch_size)
        check_batch_size(self.max_tokens, "max_tokens")

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of every forward pass (`autocast_context`)."""
        return autocast_context(self.device, self.fp16, self.bf16)

    def replace(self, **changes: Any) -> InferenceSettings:
        """A copy with `changes` applied."""
        return dataclasses.replace(self, **changes)


def resolve_pretrain_hardware(
    device: str,
    accelerator: str = "auto",
    strategy: str = "auto",
    fp16: bool = False,
    precision: str | None = None,
) -> tuple[str, int | str | list[int], str, str]:
    """Lightning's (accelerator, devices, strategy, precision) from the pretraining flags.

    Args:
        device: `cpu`, `auto`, a number of GPUs per node (the reference's meaning) or GPU ids `0,1`.
        accelerator: a Lightning accelerator name.
        strategy: `auto` = DeepSpeed ZeRO-2 on CUDA GPUs, a plain strategy otherwise; or a Lightning
            strategy name.
        fp16: fp16 mixed precision (falls back to fp32 without a CUDA GPU).
        precision: one of `PRECISIONS`; None = from `fp16`.

    Raises:
        ValueError: a GPU accelerator without a CUDA GPU, or an unreadable `--device`.
    """
    text = str(device).strip().lower()
    devices: int | str | list[int]
    if text == "cpu":
        accelerator, devices = "cpu", 1
    elif text == "auto":
        devices = "auto"
    else:
        try:
            devices = [int(d) for d in text.split(",") if d != ""] if "," in text else int(text)
        except ValueError:
            raise ValueError(f"--device {device}: expected cpu, auto, a number of GPUs or GPU ids like 0,1") from None
    uses_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(f"--accelerator {accelerator}: no CUDA GPU is available")
    if strategy == "auto":
        if uses_cuda:
            strategy = "deepspeed_stage_2"
        else:
            logger.info("strategy: a plain Lightning strategy (DeepSpeed ZeRO-2 is used on CUDA GPUs only)")
    precision = precision or ("16-mixed" if fp16 else "32-true")
    if precision == "16-mixed" and not uses_cuda:
        logger.info("precision: fp16 mixed precision needs a CUDA GPU; training in fp32 (ask for bf16-mixed if wanted)")
        precision = "32-true"
    return accelerator, devices, strategy, precision


def set_tokenizer_threads(num_threads: int) -> None:
    """Size the Rust tokenizer's thread pool (`--preprocessing_num_workers`); 0 keeps its default.

    Takes effect when the pool starts (the first parallel encode), and never overrides a value
    already in the environment.
    """
    if num_threads > 0:
        os.environ.setdefault(TOKENIZER_THREADS_ENV, str(num_threads))


# glibc malloc settings for model runs (`keep_freed_memory`); the parameter numbers are <malloc.h>'s.
MALLOPT_TRIM_THRESHOLD, MALLOPT_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks below it come from the heap
TRIM_THRESHOLD = 128 << 20  # free memory kept at the top of the heap
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep the memory a batch frees for the next batch instead of handing it back to the OS.

    By default glibc maps large blocks afresh and trims the heap as soon as its free top passes a small
    threshold, so every batch of a CPU run faults its working set back in, page by page: about 200,000 page
    faults and a quarter of the time of a full evaluation of the demo data (bench/bench_throughput.py). This
    sets `M_MMAP_THRESHOLD` to 32 MiB (smaller blocks come from the heap) and `M_TRIM_THRESHOLD` to 128 MiB
    (the heap keeps up to that much free memory), the usual remedy short of preloading jemalloc or tcmalloc.
    The cost: up to 128 MiB of freed memory stays resident.

    Process-wide, so the model commands call it at start-up; library functions never do (call it yourself,
    e.g. in a notebook). Returns False, changing nothing, off Linux/glibc or when the environment already
    sets `MALLOC_MMAP_THRESHOLD_` or `MALLOC_TRIM_THRESHOLD_` (the user's choice wins).
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in MALLOC_ENV):
        return False
    try:
        libc = ctypes.CDLL(None)
        done = libc.mallopt(MALLOPT_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        done = libc.mallopt(MALLOPT_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and done
    except (OSError, AttributeError):
        return False
    logger.debug("glibc malloc: mmap threshold %d, trim threshold %d (%s)", MMAP_THRESHOLD, TRIM_THRESHOLD, done)
    return done
