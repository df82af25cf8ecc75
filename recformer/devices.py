"""Where work runs: the finetuning device, autocast, Lightning's hardware settings and the tokenizer's
thread pool. Lightning is never imported here."""

from __future__ import annotations

import contextlib
import logging
import os

import torch

logger = logging.getLogger(__name__)

# Lightning precisions the pretraining command offers.
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")
# The thread-pool size variable the `tokenizers` Rust library (rayon) reads when RAYON_NUM_THREADS is unset.
TOKENIZER_THREADS_ENV = "RAYON_RS_NUM_CPUS"


def resolve_device(device: str | int) -> torch.device:
    """`auto`, `cpu`, `cuda`, `cuda:N`, or an integer (the reference's GPU index; negative = CPU).

    Raises:
        ValueError: a CUDA device on a machine without CUDA, naming `--device`.
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

