"""finetune.sh and lightning_run.sh: which Python they run ($PYTHON, else .venv/bin/python beside the
script, else `python` from the PATH) and the flags lightning_run.sh derives from the machine."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("finetune.sh", "lightning_run.sh")


def stub(path: Path, name: str) -> Path:
    """A stand-in Python that reports 2 GPUs for `-c` and otherwise prints its name and arguments."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/usr/bin/env bash\nif [ "$1" = -c ]; then echo 2; else echo "{name} $*"; fi\n')
    path.chmod(0o755)
    return path


def run_script(script: Path, tmp_path: Path, env: dict[str, str]) -> list[str]:
    """Run `script` with a `python` stub first on the PATH; the printed command lines."""
    path_stub = stub(tmp_path / "bin" / "python", "path-python")
    start = tmp_path / "start.bin"  # an existing start point: lightning_run.sh converts nothing
    start.write_bytes(b"")
    full_env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "NUM_GPUS", "WORKERS", "OMP_NUM_THREADS", "OMP_THREAD_LIMIT")}
    full_env.update({"PATH": f"{path_stub.parent}:{os.environ['PATH']}", "START": str(start), **env})
    args = ["d", "c.bin", "cpu"] if script.name == "finetune.sh" else []
    done = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=full_env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()


def copy_script(name: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(ROOT / name, folder / name))


@pytest.mark.parametrize("name", SCRIPTS)
def test_python_from_the_environment_wins(name, tmp_path):
    script = copy_script(name, tmp_path / "repo")
    stub(tmp_path / "repo" / ".venv" / "bin" / "python", "venv-python")
    chosen = stub(tmp_path / "mine" / "python3.12", "env-python")
    lines = run_script(script, tmp_path, {"PYTHON": str(chosen)})
    assert lines and all(line.startswith("env-python ") for line in lines)


@pytest.mark.parametrize("name", SCRIPTS)
def test_the_virtual_environment_beside_the_script_comes_next(name, tmp_path):
    script = copy_script(name, tmp_path / "repo")
    stub(tmp_path / "repo" / ".venv" / "bin" / "python", "venv-python")
    lines = run_script(script, tmp_path / "elsewhere", {})
    assert lines and all(line.startswith("venv-python ") for line in lines)


@pytest.mark.parametrize("name", SCRIPTS)
def test_python_on_the_path_is_the_fallback(name, tmp_path):
    script = copy_script(name, tmp_path / "repo")  # no .venv beside it
    lines = run_script(script, tmp_path, {})
    assert lines and all(line.startswith("path-python ") for line in lines)


def test_finetune_sh_runs_finetune_py_beside_it_from_any_folder(tmp_path):
    script = copy_script("finetune.sh", tmp_path / "repo")
    (line,) = run_script(script, tmp_path, {"PYTHON": str(stub(tmp_path / "p", "p"))})
    assert line.split()[1] == str(tmp_path / "repo" / "finetune.py")


def test_lightning_run_sh_validates_in_optimizer_steps_and_caps_workers_at_the_cores(tmp_path):
    script = copy_script("lightning_run.sh", tmp_path / "repo")
    (line,) = run_script(script, tmp_path, {"PYTHON": str(stub(tmp_path / "p", "p"))})
    words = line.split()
    value = {flag: words[words.index(flag) + 1] for flag in ("--valid_step", "--gradient_accumulation_steps",
                                                              "--preprocessing_num_workers", "--dataloader_num_workers")}
    # the reference validated every 2000 batches: 250 optimizer steps of 8 accumulated batches
    assert int(value["--valid_step"]) * int(value["--gradient_accumulation_steps"]) == 2000
    cores = len(os.sched_getaffinity(0))
    assert value["--preprocessing_num_workers"] == value["--dataloader_num_workers"] == str(min(8, cores))
    (line,) = run_script(script, tmp_path, {"PYTHON": str(tmp_path / "p"), "WORKERS": "3"})
    assert "--dataloader_num_workers 3" in line
