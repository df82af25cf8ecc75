"""Device resolution for finetuning, Lightning hardware for pretraining, the tokenizer thread pool."""

from __future__ import annotations

import logging
import os
import platform
import sys
from pathlib import Path

import pytest
import torch

from recformer.devices import (
    TOKENIZER_THREADS_ENV,
    autocast_context,
    keep_freed_memory,
    resolve_device,
    resolve_pretrain_hardware,
    set_tokenizer_threads,
)


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_auto_is_the_first_gpu_or_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda:0")


@pytest.mark.parametrize("text", ["cpu", "-1", -1, " cpu "])
def test_cpu_and_negative_index(no_cuda, text):
    assert resolve_device(text) == torch.device("cpu")


@pytest.mark.parametrize("text, expected", [("0", "cuda:0"), (2, "cuda:2"), ("cuda", "cuda"), ("cuda:1", "cuda:1")])
def test_gpu_indices_and_names(with_cuda, text, expected):
    assert resolve_device(text) == torch.device(expected)


@pytest.mark.parametrize("text", ["cuda:1", "cuda", "0", "3"])
def test_cuda_without_cuda_is_a_clear_error(no_cuda, text):
    with pytest.raises(ValueError, match=rf"^--device {text}: CUDA is not available on this machine$"):
        resolve_device(text)


def test_unknown_device_name(no_cuda):
    with pytest.raises(ValueError, match="--device gpu0: expected auto, cpu, cuda, cuda:N or a GPU index"):
        resolve_device("gpu0")


def test_autocast_context():
    cpu = torch.device("cpu")
    with autocast_context(cpu, fp16=True, bf16=False):
        assert not torch.is_autocast_enabled("cpu")  # fp16 autocast is CUDA only
    with autocast_context(cpu, fp16=False, bf16=True):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast_context(cpu, fp16=False, bf16=False):
        assert not torch.is_autocast_enabled("cpu")


def test_pretrain_hardware_on_cpu(no_cuda, caplog):
    with caplog.at_level(logging.INFO):
        assert resolve_pretrain_hardware("cpu", fp16=True) == ("cpu", 1, "auto", "32-true")
    assert "strategy: a plain Lightning strategy" in caplog.text and "fp16 mixed precision needs a CUDA GPU" in caplog.text
    assert resolve_pretrain_hardware("auto", precision="bf16-mixed") == ("auto", "auto", "auto", "bf16-mixed")


def test_pretrain_hardware_on_gpus(with_cuda):
    assert resolve_pretrain_hardware("2", fp16=True) == ("auto", 2, "deepspeed_stage_2", "16-mixed")
    assert resolve_pretrain_hardware("0,1", strategy="ddp") == ("auto", [0, 1], "ddp", "32-true")
    assert resolve_pretrain_hardware("auto", accelerator="gpu", precision="bf16-mixed")[2:] == ("deepspeed_stage_2", "bf16-mixed")


def test_pretrain_hardware_errors(no_cuda):
    with pytest.raises(ValueError, match="--accelerator gpu: no CUDA GPU is available"):
        resolve_pretrain_hardware("1", accelerator="gpu")
    with pytest.raises(ValueError, match="--device two: expected cpu, auto, a number of GPUs or GPU ids"):
        resolve_pretrain_hardware("two")


def test_tokenizer_threads_use_one_variable(monkeypatch):
    monkeypatch.delenv(TOKENIZER_THREADS_ENV, raising=False)
    monkeypatch.delenv("RAYON_NUM_THREADS", raising=False)
    set_tokenizer_threads(0)
    assert TOKENIZER_THREADS_ENV not in os.environ
    set_tokenizer_threads(3)
    set_tokenizer_threads(5)  # an existing value wins
    assert os.environ[TOKENIZER_THREADS_ENV] == "3" and "RAYON_NUM_THREADS" not in os.environ
    assert TOKENIZER_THREADS_ENV == "RAYON_RS_NUM_CPUS"


needs_glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="needs Linux with glibc"
)


@needs_glibc
def test_keep_freed_memory_sets_glibc_s_mmap_and_trim_thresholds(monkeypatch):
    calls = []

    class FakeLibc:
        def mallopt(self, parameter, value):
            calls.append((parameter, value))
            return 1

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.setattr("ctypes.CDLL", lambda *a: FakeLibc())
    assert keep_freed_memory() is True
    assert calls == [(-3, 32 << 20), (-1, 128 << 20)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD of <malloc.h>


@needs_glibc
def test_glibc_accepts_the_settings():
    """glibc refuses an mmap threshold above 32 MiB (mallopt returns 0); run in a process of its own."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    code = "import sys; sys.path.insert(0, sys.argv[1]); from recformer.devices import keep_freed_memory; print(keep_freed_memory())"
    done = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parents[1])], capture_output=True, text=True,
                          env=env, check=True)  # fmt: skip
    assert done.stdout.strip() == "True"


def test_the_environment_s_malloc_settings_win(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    monkeypatch.setattr("ctypes.CDLL", lambda *a: pytest.fail("mallopt called"))
    assert keep_freed_memory() is False


@pytest.mark.parametrize("text", ["mps", "xla", "meta", "xla:0"])
def test_devices_the_models_do_not_run_on_are_one_line(text):
    with pytest.raises(ValueError) as e:
        resolve_device(text)
    assert str(e.value) == f"--device {text}: not supported; expected auto, cpu, cuda, cuda:N or a GPU index"
