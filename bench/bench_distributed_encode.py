"""Sharded item-table encoding (`evaluation.encode_items` with `shard=True`) on 1 and on N processes: items/s and
scaling efficiency, on a synthetic catalogue (100,000 items by default) with realistic item lengths.

    python bench/bench_distributed_encode.py [--items 100000] [--processes 2] [--size tiny|base]
        [--device cpu|cuda] [--batch_size 128] [--threads T]

Each case is a `torchrun --standalone` run of this file (gloo on CPU, NCCL on GPUs, one GPU per
process). On CPU the cores are shared fairly: 1 process x T threads against N processes x T/N
threads (T: --threads, default every core torch sees); a third run, 1 process x T/N threads, shows
how one process does on its share of the cores. The tables of the first two runs are compared.
Efficiency = (N-process items/s) / (N x 1-process items/s).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tiny_tokenizer"
SIZES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


def catalogue(n: int, vocab: int, seed: int = 0):
    """n items of 20-90 tokens (title, brand and category with their keys), random ids and types 1-3."""
    from recformer.model.item_tokens import TokenizedItems

    rng = np.random.default_rng(seed)
    lengths = rng.integers(20, 91, size=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = rng.integers(5, vocab, size=int(offsets[-1]), dtype=np.int32)
    types = rng.integers(1, 4, size=int(offsets[-1]), dtype=np.int8)
    return TokenizedItems(ids, types, offsets)


def worker(a: argparse.Namespace) -> None:
    """One rank: encode the catalogue in shards; rank 0 reports the time and saves the table."""
    from recformer import RecformerConfig, RecformerModel, RecformerTokenizer, distributed
    from recformer.devices import InferenceSettings
    from recformer.inference.evaluation import encode_items

    device = distributed.init_from_env(a.device)
    config = RecformerConfig(
        **SIZES[a.size], vocab_size=50265 if a.size == "base" else 275, max_position_embeddings=1030,
        attention_window=[64] * SIZES[a.size]["num_hidden_layers"], max_attr_num=3, max_attr_length=32,
        max_item_embeddings=51, max_token_num=1024,
    )  # fmt: skip
    tokenizer = RecformerTokenizer.from_pretrained(str(TOKENIZER_DIR), config)
    torch.manual_seed(0)
    model = RecformerModel(config).to(device).eval()
    table = catalogue(a.items, 275)

    def encode(rows):
        return encode_items(model, tokenizer, rows, InferenceSettings(device, batch_size=a.batch_size, progress=False, shard=True))

    encode(table.take(np.arange(min(len(table), a.batch_size * distributed.world_size()))))  # warm-up
    distributed.barrier()
    t0 = time.perf_counter()
    vectors = encode(table)
    if device.type == "cuda":
        torch.cuda.synchronize()
    distributed.barrier()
    seconds = time.perf_counter() - t0
    if distributed.is_main():
        torch.save(vectors, a.out)
        Path(a.out + ".json").write_text(json.dumps({"seconds": seconds, "threads": torch.get_num_threads()}))
    distributed.teardown()


def run_case(a: argparse.Namespace, processes: int, threads: int, out: str) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           __file__, "--worker", "--out", out, "--items", str(a.items), "--size", a.size, "--device", a.device,
           "--batch_size", str(a.batch_size)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd, check=True, env=env)
    return json.loads(Path(out + ".json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="CPU threads shared by the processes"
    )
    p.add_argument(
        "--no_share_baseline", dest="share_baseline", action="store_false",
        help="on CPU, skip the third run: 1 process on threads / processes threads",
    )  # fmt: skip
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(a)
        return
    n = a.processes
    if a.device == "cpu" and a.threads % n:
        p.error(f"--threads {a.threads} must divide by --processes {n} on CPU")
    with tempfile.TemporaryDirectory() as tmp:
        one = run_case(a, 1, a.threads, f"{tmp}/one.pt")
        many = run_case(a, n, a.threads // n if a.device == "cpu" else a.threads, f"{tmp}/many.pt")
        diff = (torch.load(f"{tmp}/one.pt") - torch.load(f"{tmp}/many.pt")).abs().max().item()
        share = None
        if a.device == "cpu" and a.threads // n != a.threads and a.share_baseline:
            share = run_case(a, 1, a.threads // n, f"{tmp}/share.pt")
    hardware = (torch.cuda.get_device_name(0) if a.device.startswith("cuda")
                else f"CPU, {os.cpu_count()} cores visible")  # fmt: skip
    rate1, rate_n = a.items / one["seconds"], a.items / many["seconds"]
    print(f"sharded item encoding: {a.items} items, {a.size} model, batch {a.batch_size}, {a.device} ({hardware}), "
          f"torch {torch.__version__}")  # fmt: skip
    print(f"  1 process  x {one['threads']} threads: {one['seconds']:8.2f} s  {rate1:9.0f} items/s")
    print(f"  {n} processes x {many['threads']} threads: {many['seconds']:8.2f} s  {rate_n:9.0f} items/s")
    print(f"  speed-up {rate_n / rate1:.2f}x, scaling efficiency {rate_n / (n * rate1):.0%}, "
          f"max |table difference| {diff:.2e}")  # fmt: skip
    if share is not None:  # how one process does on one process's share of the threads
        rate_share = a.items / share["seconds"]
        print(f"  (1 process  x {share['threads']} threads: {share['seconds']:8.2f} s  {rate_share:9.0f} items/s; "
              f"{n} processes = {rate_n / rate_share:.2f}x that, {rate_n / (n * rate_share):.0%} of {n}x)")  # fmt: skip


if __name__ == "__main__":
    main()
