"""The benchmark scripts keep working as the library changes: each imports, and the two the GPU session
runs first (bench_throughput.py, bench_item_encoding.py) run end to end at a tiny size on CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHES = sorted((ROOT / "bench").glob("bench_*.py"))
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.mark.parametrize("path", BENCHES, ids=[p.stem for p in BENCHES])
def test_every_benchmark_imports(path):
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))  # the scripts import each other
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    assert callable(module.main)


def run(*argv) -> str:
    done = subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_item_encoding_bench_runs_and_both_ways_agree():
    out = run(ROOT / "bench/bench_item_encoding.py", "--size", "tiny", "--items", "40", "--device", "cpu")
    diff = float(out.split("max |diff|")[1].split()[0])
    assert "items/s" in out and diff < 1e-5, out


def test_throughput_bench_runs_its_variants_and_writes_json(tmp_path):
    output = tmp_path / "throughput.json"
    run(ROOT / "bench/bench_throughput.py", "--device", "cpu", "--size", "demo", "--window", "32", "--items", "20",
        "--steps", "1", "--repeats", "1", "--lengths", "128", "--parts", "items", "finetune", "--implementations",
        "eager", "sdpa:packed", "--output", output)  # fmt: skip
    result = json.loads(output.read_text())
    assert set(result["items"]) == set(result["finetune"]) == {"eager", "sdpa:packed"}
    assert result["items"]["sdpa:packed"]["items_per_s"] > 0 and result["auto_runs"]["training"] == "sdpa"
    assert result["finetune"]["sdpa:packed"]["speedup_vs_eager"] > 0
