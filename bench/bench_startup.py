"""Start-up time of every command: `--help` and an argument error, each in a fresh Python process.

    python bench/bench_startup.py [--repeats 5] [--json out.json]

For each command script the first run (the cold one in this process tree: byte-code and file caches
may still be warm from earlier runs) and the median of the following `--repeats` runs are shown, for
`--help` and for a call that misses a required flag (argparse's usage error). Two reference rows:
`python -c pass` (the interpreter alone) and `python -c "import torch, transformers"` (what the
commands used to import before parsing). The goal is under 1 s for every command.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [
    "finetune.py",
    "evaluate.py",
    "recommend.py",
    "lightning_pretrain.py",
    "convert_pretrain_ckpt.py",
    "save_longformer_ckpt.py",
    "finetune_data/process.py",
    "pretrain_data/meta_data_process.py",
    "pretrain_data/interaction_data_process.py",
]
# Commands without a required flag have no argument error to measure; they get a bad value instead.
BAD_VALUE = {"save_longformer_ckpt.py": ["--seed", "x"]}


def seconds(argv: list[str]) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def measure(argv: list[str], repeats: int) -> tuple[float, float]:
    """(first run, median of the next `repeats` runs) in seconds."""
    first = seconds(argv)
    return first, statistics.median(seconds(argv) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="runs after the first, per cell (default: 5)")
    parser.add_argument("--json", default=None, help="also write the table here as JSON")
    args = parser.parse_args()
    rows = {
        "python -c pass": measure([sys.executable, "-c", "pass"], args.repeats) * 2,
        "import torch, transformers": measure([sys.executable, "-c", "import torch, transformers"], args.repeats) * 2,
    }
    for script in COMMANDS:
        helped = measure([sys.executable, script, "--help"], args.repeats)
        refused = measure([sys.executable, script, *BAD_VALUE.get(script, [])], args.repeats)
        rows[script] = helped + refused
    header = f"{'command':<44}{'--help first':>14}{'median':>9}{'error first':>14}{'median':>9}"
    print(f"cold start-up, seconds ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, {args.repeats} repeats)")
    print(header)
    print("-" * len(header))
    for name, (h1, hm, e1, em) in rows.items():
        print(f"{name:<44}{h1:>14.2f}{hm:>9.2f}{e1:>14.2f}{em:>9.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({k: dict(zip(("help_first", "help_median", "error_first", "error_median"), v))
                                               for k, v in rows.items()}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
