"""Benchmark: training collators on the demo histories, per-token Python path (before) vs numpy (after).

Processes the bundled demo data (``data/demo/raw``) into a temporary folder with the same scripts
``make demo`` runs, trains the demo's BPE tokenizer (3,000 tokens) on the item texts, and lays out
real demo training batches at ``max_token_num`` 1024 with

* before: ``vectorised=False``, today's per-token path (``tokenizer.encode`` + ``tokenizer.padding`` per
  sequence, whole-word masking in Python loops);
* after: the default, numpy layout and vectorised masking (``masking.WholeWordMasker``);
* packed: the numpy path with ``pack_tokens`` (packed training batches), timed alone (no per-token twin).

Demo histories are short (about 6 items of about 30 tokens), so a second set, ``joined``, chains the demo's
sequences end to end into sequences of 51 items (the layout keeps the newest 50): real demo item texts
at up to 1,024 tokens a history, the range of real Amazon histories.

Both collators start from the same seed; their tensors are checked equal on every measured batch
before any timing, and then each is timed side by side in this one run, on one core (torch and numpy
single-threaded), repeating passes over the training sequences until ``--seconds`` have passed.

    python bench/bench_collators.py               # finetuning batch 16, pretraining batch 32
    python bench/bench_collators.py --seconds 2   # a quicker run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RAW = REPO / "data" / "demo" / "raw"


def process_demo(out: Path) -> None:
    """The demo's step 1: finetuning folder `out/Demo` and pretraining folder `out/pretrain`."""
    py, quiet = sys.executable, {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "check": True}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([py, str(REPO / "finetune_data/process.py"), "--file_path", str(RAW / "finetune/Demo_5.json.gz"),
                    "--meta_file_path", str(RAW / "finetune/meta_Demo.json.gz"), "--output_path", str(out / "Demo")],
                   env=env, **quiet)  # fmt: skip
    subprocess.run([py, str(REPO / "pretrain_data/meta_data_process.py"), "--meta_root", str(RAW / "pretrain"),
                    "--seq_root", str(RAW / "pretrain"), "--output_dir", str(out / "pretrain")], env=env, **quiet)  # fmt: skip
    subprocess.run([py, str(REPO / "pretrain_data/interaction_data_process.py"), "--seq_root", str(RAW / "pretrain"),
                    "--output_dir", str(out / "pretrain")], env=env, **quiet)  # fmt: skip


def build_tokenizer(out: Path, metas: list[dict], max_token_num: int):
    from recformer.model.configuration import RecformerConfig
    from recformer.model.tokenization import RecformerTokenizer, build_bpe_tokenizer

    texts = [text for meta in metas for attrs in meta.values() for k, v in attrs.items() for text in (k, str(v))]
    build_bpe_tokenizer(texts, out / "tokenizer", vocab_size=3000, min_frequency=2)
    return RecformerTokenizer.from_pretrained(str(out / "tokenizer"), RecformerConfig(max_token_num=max_token_num))


def joined(seqs: list, items: int = 51) -> list:
    """The sequences chained end to end (in a shuffled order) and cut into sequences of `items` items."""
    seqs = list(seqs)
    random.Random(1).shuffle(seqs)
    chain = [key for seq in seqs for key in seq]
    return [chain[i : i + items] for i in range(0, len(chain) - items + 1, items)]


def measure(collate, batches: list, seconds: float) -> float:
    """Sequences per second of `collate` over passes through `batches`, for at least `seconds`."""
    done, start = 0, time.perf_counter()
    while True:
        for batch in batches:
            collate(batch)
            done += len(batch)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def same(a: dict, b: dict) -> bool:
    import torch

    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def compare(name: str, make, batches: list, seconds: float, histories: str) -> dict:
    """Check before == after on every batch (same seed), then time both side by side."""
    slow, fast = make(False), make(True)
    for batch in batches:
        if not same(slow(batch), fast(batch)):
            raise SystemExit(f"{name}: the vectorised collator's batch differs from the per-token one")
    before = measure(make(False), batches, seconds)
    after = measure(make(True), batches, seconds)
    tokens = [fast(b)[("attention_mask", "attention_mask_a")[name == "pretraining"]] for b in batches[:20]]
    mean = sum(int(t.sum()) for t in tokens) / sum(t.size(0) for t in tokens)
    row = {"collator": name, "histories": histories, "batch": len(batches[0]), "before_seq_s": round(before, 1), "after_seq_s": round(after, 1),
           "ratio": round(after / before, 2), "mean_history_tokens": round(mean, 1)}  # fmt: skip
    print(f"{name:12s} {histories:6s} batch {row['batch']:3d}: before {before:8.1f} seq/s   after {after:8.1f} seq/s   "
          f"x{row['ratio']:.2f}   (mean {mean:.0f} tokens/history)", flush=True)  # fmt: skip
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max_token_num", type=int, default=1024)
    p.add_argument("--finetune_batch", type=int, default=16)
    p.add_argument("--pretrain_batch", type=int, default=32)
    p.add_argument("--seconds", type=float, default=5.0, help="timing per collator and path")
    p.add_argument("--json", type=Path, help="also write the results here")
    a = p.parse_args()

    import torch

    torch.set_num_threads(1)
    from recformer.data.finetune_reader import load_finetune_data
    from recformer.data.pretrain_reader import read_item_metadata, read_pretrain_sequences
    from recformer.model.item_tokens import tokenize_catalogue
    from recformer.train.collators import FinetuneCollator, PretrainCollator

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        process_demo(out)
        data = load_finetune_data(out / "Demo")
        meta = read_item_metadata(out / "pretrain" / "meta_data.json")
        pretrain, _ = read_pretrain_sequences(out / "pretrain" / "train.json", meta)
        tok = build_tokenizer(out, [dict(enumerate(data.items)), meta], a.max_token_num)
    ft_items = tokenize_catalogue(tok, data.items, progress=False)
    asins = list(meta)
    pt_items = tokenize_catalogue(tok, [meta[k] for k in asins], keys=asins, progress=False)

    def batches(seqs: list, size: int) -> list:
        seqs = list(seqs)
        random.Random(0).shuffle(seqs)
        return [seqs[i : i + size] for i in range(0, len(seqs) - size + 1, size)]

    print(f"demo data: {len(data.train)} finetuning histories, {len(pretrain)} pretraining sequences; "
          f"max_token_num {a.max_token_num}; {platform.processor() or platform.machine()}, 1 thread", flush=True)  # fmt: skip
    rows = []
    for kind in ("demo", "joined"):
        ft, pt = data.train_sequences(), pretrain
        if kind == "joined":
            ft, pt = joined(ft), joined(pt)
        rows.append(compare("finetuning", lambda v: FinetuneCollator(tok, ft_items, random.Random(0), vectorised=v),
                            batches(ft, a.finetune_batch), a.seconds, kind))  # fmt: skip
        rows.append(compare("pretraining", lambda v: PretrainCollator(tok, pt_items, 0.15, random.Random(0), vectorised=v),
                            batches(pt, a.pretrain_batch), a.seconds, kind))  # fmt: skip
        for name, make, seqs, size in (
            ("finetuning", lambda: FinetuneCollator(tok, ft_items, random.Random(0), pack_tokens=a.max_token_num),
             ft, a.finetune_batch),
            ("pretraining", lambda: PretrainCollator(tok, pt_items, 0.15, random.Random(0), pack_tokens=a.max_token_num),
             pt, a.pretrain_batch),
        ):  # fmt: skip
            rate = measure(make(), batches(seqs, size), a.seconds)
            print(f"{name:12s} {kind:6s} batch {size:3d}: packed batches (pack_tokens {a.max_token_num}) "
                  f"{rate:8.1f} seq/s", flush=True)  # fmt: skip
            rows.append({"collator": f"{name} packed", "histories": kind, "batch": size, "after_seq_s": round(rate, 1)})
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
