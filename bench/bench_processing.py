"""Benchmark: finetune processing of a synthetic 2-million-line review file against a plain baseline.

Generates, in a temporary folder, a gzipped review file in the Amazon 2018 5-core format (lines grouped by
item, ~300 bytes each, like the real files) and a matching meta file, then runs

* ours: ``finetune_data/process.py`` exactly as a user would (a fresh interpreter, so import time counts);
* baseline: a plain ``gzip.open`` + ``json.loads``-per-line script building the same six files.

Each runs in its own child process; peak RSS is that child's ``ru_maxrss``. The outputs must be identical.

    python bench/bench_processing.py                # 2,000,000 review lines
    python bench/bench_processing.py --lines 200000 # a quick run
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import orjson

from recformer.data.formats import FINETUNE

REPO = Path(__file__).resolve().parents[1]
DATA_FILES = tuple(f.name for f in FINETUNE.data_files)

# Runs the command in argv[1:] as its only child and prints that child's wall time and peak RSS.
MEASURE = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
wall = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
print(json.dumps({"rc": rc, "wall_s": wall, "peak_rss_mib": rss / 1024}))
"""

WORDS = ("great", "works", "fine", "quality", "price", "would", "buy", "again", "the", "for", "and", "not", "very",
         "good", "product", "easy", "use", "love", "it", "small", "size", "fits", "well", "perfect", "cheap")  # fmt: skip


def generate(workdir: Path, n_lines: int, seed: int = 0) -> tuple[Path, Path]:
    """Write ``Bench_5.json.gz`` (n_lines reviews) and ``meta_Bench.json.gz``; return their paths."""
    rng = random.Random(seed)
    n_items, n_users = max(10, n_lines // 20), max(10, n_lines // 8)
    alnum = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    asins = [f"B0{i:08X}" for i in rng.sample(range(16**8), n_items)]
    users = [f"A{i:013X}" for i in rng.sample(range(16**13), n_users)]
    user_cum = []  # mildly skewed user activity
    total = 0.0
    for i in range(n_users):
        total += 1.0 / (1 + i) ** 0.3
        user_cum.append(total)
    rng.shuffle(users)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(5, 30))).capitalize() + "." for _ in range(1000)]
    review_path, meta_path = workdir / "Bench_5.json.gz", workdir / "meta_Bench.json.gz"
    written = 0
    with gzip.open(review_path, "wb", compresslevel=1) as f:
        item = 0
        while written < n_lines:
            asin = asins[item % n_items]
            item += 1
            k = min(n_lines - written, 5 + int(rng.expovariate(1 / 15)))
            buf = []
            for user in rng.choices(users, cum_weights=user_cum, k=k):
                day = rng.randrange(14000, 17800)
                rec = {
                    "overall": float(rng.randint(1, 5)),
                    "verified": True,
                    "reviewTime": "01 1, 2015",
                    "reviewerID": user,
                    "asin": asin,
                    "reviewerName": "Reviewer " + rng.choice(alnum),
                    "reviewText": rng.choice(texts),
                    "summary": "Five Stars",
                    "unixReviewTime": day * 86400,
                }
                buf.append(orjson.dumps(rec))
            f.write(b"\n".join(buf) + b"\n")
            written += k
    with gzip.open(meta_path, "wb", compresslevel=1) as f:
        for i, asin in enumerate(asins):
            if i % 50 == 7:  # ~2% of reviewed items have no metadata
                continue
            rec = {
                "category": ["Bench", f"Department {i % 20}", f"Aisle {i % 97}"],
                "description": [rng.choice(texts)],
                "title": f"Product {i} " + rng.choice(texts)[:40],
                "brand": f"Brand{i % 500}" if i % 13 else "",
                "feature": [],
                "main_cat": "Bench",
                "price": "$9.99",
                "asin": asin,
            }
            if i % 31 == 0:
                del rec["brand"]
            f.write(orjson.dumps(rec) + b"\n")
    return review_path, meta_path


def baseline(review_path: str, meta_path: str, output_dir: str, min_seq_len: int = 4) -> None:
    """The plain way: json.loads on every line, lists of tuples, json.dump. Same semantics as ours."""
    meta = {}
    with gzip.open(meta_path, "rb") as f:
        for line in f:
            rec = json.loads(line)
            title = rec.get("title")
            if not isinstance(title, str) or not title.strip():
                continue
            meta[rec["asin"]] = {
                "title": title,
                "brand": rec.get("brand") or "",
                "category": " ".join(rec.get("category") or []),
            }
    sequences = defaultdict(list)
    with gzip.open(review_path, "rb") as f:
        for line in f:
            rec = json.loads(line)
            if rec["asin"] in meta:
                sequences[rec["reviewerID"]].append((rec["asin"], rec["unixReviewTime"]))
    umap, smap, train, val, test = {}, {}, {}, {}, {}
    for user, seq in sequences.items():
        if len(seq) < min_seq_len:
            continue
        uid = umap[user] = len(umap)
        items = [(smap.setdefault(asin, len(smap)), t) for asin, t in seq]
        items = [i for i, _ in sorted(items, key=lambda x: x[1])]
        train[uid], val[uid], test[uid] = items[:-2], [items[-2]], [items[-1]]
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, obj in zip(DATA_FILES, (umap, smap, train, val, test, meta)):
        with open(out / name, "w", encoding="utf-8") as f:
            json.dump(obj, f)


def measure(cmd: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def same_outputs(a: Path, b: Path) -> list[str]:
    """Names of the files that differ (as parsed JSON, key order included)."""
    differ = []
    for name in DATA_FILES:
        x, y = orjson.loads((a / name).read_bytes()), orjson.loads((b / name).read_bytes())
        if x != y or (isinstance(x, dict) and list(x) != list(y)):
            differ.append(name)
    return differ


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=2_000_000, help="review lines to generate")
    parser.add_argument(
        "--workdir", default=None, help="folder for the data (default: a temporary one, removed)"
    )
    parser.add_argument("--baseline", nargs=3, metavar=("REVIEWS", "META", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline:  # the child process of the baseline measurement
        baseline(*args.baseline)
        return 0

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_processing_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        reviews, meta = generate(workdir, args.lines)
        print(f"generated {args.lines:,} review lines in {time.perf_counter() - t:.1f}s "
              f"({reviews.stat().st_size / 2**20:.0f} MiB gzipped) in {workdir}")  # fmt: skip
        ours = measure([sys.executable, str(REPO / "finetune_data/process.py"), "--file_path", str(reviews),
                        "--meta_file_path", str(meta), "--output_path", str(workdir / "ours"), "--no_progress"])  # fmt: skip
        base = measure(
            [sys.executable, __file__, "--baseline", str(reviews), str(meta), str(workdir / "baseline")]
        )
        imp = measure([sys.executable, "-c", "import recformer.cli.process_finetune"])
        if ours["rc"] or base["rc"]:
            print(f"a run failed: ours rc={ours['rc']}, baseline rc={base['rc']}")
            return 1
        stats = json.loads((workdir / "ours" / "stats.json").read_text())
        print(f"users {stats['users']:,}, items {stats['items']:,}, interactions {stats['interactions']:,}")
        for name, r in (("baseline (json.loads)", base), ("ours (process.py)", ours)):
            print(f"{name:24s} {args.lines / r['wall_s']:>10,.0f} lines/s  {r['wall_s']:6.1f} s  "
                  f"peak RSS {r['peak_rss_mib']:7.0f} MiB")  # fmt: skip
        print(f"{'  of which import':24s} {'':>10s}          {imp['wall_s']:6.1f} s  "
              f"peak RSS {imp['peak_rss_mib']:7.0f} MiB  (`import recformer.cli.process_finetune`)")  # fmt: skip
        differ = same_outputs(workdir / "ours", workdir / "baseline")
        print("outputs identical" if not differ else f"OUTPUTS DIFFER: {', '.join(differ)}")
        return 1 if differ else 0
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
