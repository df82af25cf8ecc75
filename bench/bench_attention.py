"""Attention implementations compared on the same model and inputs: eager (transformers' Longformer
attention) vs sdpa vs flex_attention, plus packed item encoding on the fast paths.

    python bench/bench_attention.py --part items --size base --items 256
    python bench/bench_attention.py --part histories --size small --batch 16 --lengths 64 256 1024

- items: forward pass over items with the token-length distribution of the demo catalogue (every
  item of data/demo tokenized with a BPE vocabulary trained on it, as `make demo` does), in
  length-sorted padded batches (today's item encoding) and, for the fast paths, packed rows.
- histories: forward + backward at a fixed batch over histories of each given length (one global
  `<s>` per row, the last quarter of all rows but the first padded), and one batch of mixed lengths.

Each case runs every implementation in turn, `--repeats` times (alternating, since other processes
share the cores), and reports the median seconds. fp32; `--threads` torch threads. Writes JSON with
`--output`. Random weights: speed does not depend on them; outputs are checked against eager.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from recformer import RecformerConfig, RecformerModel
from recformer.packing import pack_sequences

ROOT = Path(__file__).resolve().parents[1]
SIZES = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256),
}
VOCAB = 50265
PAD, BOS = 1, 0


def demo_item_lengths() -> list[int]:
    """Token count of every demo item (`<s>` + 3 attributes of <= 32 tokens) with a BPE trained on the demo texts."""
    from recformer.data.amazon import iter_meta
    from recformer.tokenization import RecformerTokenizer, build_bpe_tokenizer

    items = []
    for path in sorted(glob.glob(str(ROOT / "data/demo/raw/*/meta_*.json.gz"))):
        items += [rec for _, rec in iter_meta(path, progress=False)]
    texts = [t for item in items for pair in item.items() for t in pair]
    config = RecformerConfig(max_attr_num=3, max_attr_length=32, max_item_embeddings=51, max_token_num=1024)
    with tempfile.TemporaryDirectory() as folder:
        build_bpe_tokenizer(texts, folder, vocab_size=3000)
        tokenizer = RecformerTokenizer.from_pretrained(folder, config)
        return [len(tokenizer.encode([item])["input_ids"]) for item in items]


def encoded_sequence(length: int, rng: random.Random, max_items: int = 50) -> dict[str, list[int]]:
    """A random encoded sequence of `length` tokens laid out as the tokenizer lays one out."""
    ids = [BOS] + [rng.randrange(5, VOCAB) for _ in range(length - 1)]
    items = max(1, min(max_items, (length - 1) // 20))
    item_pos = [0] + [1 + i * items // max(1, length - 1) for i in range(length - 1)]
    types = [0] + [rng.choice((1, 2)) for _ in range(length - 1)]
    return {
        "input_ids": ids,
        "item_position_ids": item_pos,
        "token_type_ids": types,
        "attention_mask": [1] * length,
        "global_attention_mask": [1] + [0] * (length - 1),
    }


def padded(sequences: list[dict[str, list[int]]], pad_item: int) -> dict[str, torch.Tensor]:
    width = max(len(s["input_ids"]) for s in sequences)
    pads = {"input_ids": PAD, "item_position_ids": pad_item, "token_type_ids": 3, "attention_mask": 0,
            "global_attention_mask": 0}
    return {
        name: torch.tensor([s[name] + [value] * (width - len(s[name])) for s in sequences])
        for name, value in pads.items()
    }


def packed(sequences: list[dict[str, list[int]]], max_tokens: int, pad_item: int) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v) for k, v in pack_sequences(sequences, max_tokens, PAD, pad_item).items()}


def build_model(size: str, window: int) -> RecformerModel:
    dims = SIZES[size]
    config = RecformerConfig(
        **dims,
        vocab_size=VOCAB,
        max_position_embeddings=1030,
        attention_window=[window] * dims["num_hidden_layers"],
        max_attr_num=3,
        max_attr_length=32,
        max_item_embeddings=51,
        max_token_num=1024,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        type_vocab_size=1,
    )
    torch.manual_seed(0)
    return RecformerModel(config)


def run_cases(model, cases: dict, repeats: int) -> tuple[dict, dict]:
    """cases: name -> (implementations it applies to, fn); fn() runs the work once.

    Returns the median wall seconds and the median process CPU seconds (less sensitive to other
    processes on the same cores), each as {case: {implementation: seconds}}.
    """
    wall: dict[str, dict[str, list[float]]] = {name: {} for name in cases}
    cpu: dict[str, dict[str, list[float]]] = {name: {} for name in cases}
    for impls, fn in cases.values():  # warm-up, one call each
        for impl in impls:
            model.config._attn_implementation = impl
            fn()
    for _ in range(repeats):
        for name, (impls, fn) in cases.items():
            for impl in impls:
                model.config._attn_implementation = impl
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                wall[name].setdefault(impl, []).append(time.perf_counter() - t0)
                cpu[name].setdefault(impl, []).append(time.process_time() - c0)
                print(f"{name} {impl}: {wall[name][impl][-1]:.2f} s wall, {cpu[name][impl][-1]:.2f} s cpu",
                      file=sys.stderr, flush=True)

    def medians(times):
        return {name: {impl: statistics.median(ts) for impl, ts in by.items()} for name, by in times.items()}

    return medians(wall), medians(cpu)


def items_part(a, implementations: list[str]) -> dict:
    lengths = demo_item_lengths()
    rng = random.Random(0)
    chosen = sorted(rng.sample(lengths, min(a.items, len(lengths))))
    sequences = [encoded_sequence(n, rng) for n in chosen]
    model = build_model(a.size, a.window).eval()
    pad_item = model.config.max_item_embeddings - 1
    batches = [padded(sequences[i : i + a.item_batch], pad_item) for i in range(0, len(sequences), a.item_batch)]
    rows = [packed(sequences[i : i + a.item_batch], a.row_tokens, pad_item) for i in range(0, len(sequences), a.item_batch)]

    @torch.no_grad()
    def encode_padded():
        return torch.cat([model(**b).pooler_output for b in batches])

    @torch.no_grad()
    def encode_packed():
        return torch.cat([model(**r).pooler_output for r in rows])

    fast = [i for i in implementations if i != "eager"]
    results, cpu = run_cases(
        model,
        {"padded": (implementations, encode_padded), "packed": (fast, encode_packed)},
        a.repeats,
    )
    model.config._attn_implementation = "eager"
    reference = encode_padded()
    check = {}
    for impl in fast:
        model.config._attn_implementation = impl
        check[impl] = max((encode_padded() - reference).abs().max().item(), (encode_packed() - reference).abs().max().item())
    real = sum(chosen)
    padded_tokens = sum(b["input_ids"].numel() for b in batches)
    packed_tokens = sum(r["input_ids"].numel() for r in rows)
    return {
        "items": len(chosen),
        "real_tokens": real,
        "padded_tokens": padded_tokens,
        "packed_tokens": packed_tokens,
        "item_batch": a.item_batch,
        "row_tokens": a.row_tokens,
        "seconds": results,
        "cpu_seconds": cpu,
        "items_per_s": {c: {i: len(chosen) / t for i, t in r.items()} for c, r in results.items()},
        "max_abs_diff_vs_eager": check,
    }


def histories_part(a, implementations: list[str]) -> dict:
    model = build_model(a.size, a.window).train()
    pad_item = model.config.max_item_embeddings - 1
    rng = random.Random(1)
    cases, batches = {}, {}
    for length in a.lengths:
        seqs = [encoded_sequence(length if b == 0 else max(2, length * 3 // 4), rng) for b in range(a.batch)]
        batches[f"L{length}"] = padded(seqs, pad_item)
    mixed = [encoded_sequence(rng.randint(32, max(a.lengths)), rng) for _ in range(a.batch)]
    batches["mixed"] = padded(mixed, pad_item)

    def step(batch):
        def run():
            model.zero_grad(set_to_none=True)
            out = model(**batch).pooler_output
            (out.square().mean()).backward()

        return run

    for name, batch in batches.items():
        cases[name] = ([i for i in implementations if i != "flex_attention"], step(batch))  # flex: no CPU backward
    results, cpu = run_cases(model, cases, a.repeats)
    return {
        "batch": a.batch,
        "real_tokens": {name: int(b["attention_mask"].sum()) for name, b in batches.items()},
        "seconds": results,
        "cpu_seconds": cpu,
        "speedup_vs_eager": {c: {i: r["eager"] / t for i, t in r.items()} for c, r in results.items()},
        "cpu_speedup_vs_eager": {c: {i: r["eager"] / t for i, t in r.items()} for c, r in cpu.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["items", "histories"], required=True)
    p.add_argument("--size", choices=sorted(SIZES), default="base")
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--implementations", nargs="+", default=["eager", "sdpa", "flex_attention"])
    p.add_argument("--items", type=int, default=256)
    p.add_argument("--item_batch", type=int, default=64)
    p.add_argument("--row_tokens", type=int, default=512, help="token budget of a packed row")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", type=Path, default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("recformer.data.amazon").setLevel(logging.ERROR)  # the demo files' deliberately bad lines
    warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
    result = {"part": a.part, "size": a.size, "window": a.window, "threads": a.threads, "repeats": a.repeats,
              "torch": torch.__version__}
    result.update(items_part(a, a.implementations) if a.part == "items" else histories_part(a, a.implementations))
    text = json.dumps(result, indent=1)
    print(text)
    if a.output is not None:
        a.output.parent.mkdir(parents=True, exist_ok=True)
        a.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
