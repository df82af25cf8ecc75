"""Benchmark: padded vs packed training batches on the demo histories: padding fraction and CPU step time.

Same data and tokenizer as ``bench_collators.py`` (the processed demo, its 3,000-token BPE tokenizer,
``max_token_num`` 1024; ``demo`` histories as they are and ``joined`` ones chained to 51 items). Batches of
16 histories are laid out padded (``FinetuneCollator``) and packed (``pack_tokens``, rows of at most
``--pack_tokens`` tokens) from the same draws, and for each the script prints

* the padding fraction: tokens the encoder computes that are padding (padded: to the batch's longest
  history, and eager also pads to a multiple of the attention window; packed: the ends of rows);
* the time of one training step (forward, loss over every item, backward) of a demo-size model (hidden
  64, 2 layers, window 32) for eager padded, sdpa padded and sdpa packed, in rounds that take turns,
  median per variant, side by side in this one run.

Pretraining (``--parts pretrain``): batches of 32 pairs of the demo's pretraining sequences (``demo``, and
``joined`` to 51 items), each side with its whole-word MLM copy, laid out padded (each side to its longest
sequence: a pass per side, or both sides in one packed pass with ``pack_sides``) and packed
(``PretrainCollator(pack_tokens=...)``: all four sequences of every pair in rows); the padding fraction of
each and the time of one pretraining step (forward, contrastive + MLM loss, backward) of a demo-size model.

    python bench/bench_packed_training.py --rounds 3
    python bench/bench_packed_training.py --parts pretrain --rounds 2
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_collators import build_tokenizer, joined, process_demo  # noqa: E402


def demo_config(vocab: int, max_token_num: int, window: int):
    from recformer.model.configuration import RecformerConfig

    return RecformerConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=256, attention_window=[window, window], max_token_num=max_token_num,
                           max_position_embeddings=max_token_num + 8, type_vocab_size=1, layer_norm_eps=1e-5)  # fmt: skip


def demo_model(vocab: int, items: int, max_token_num: int, window: int):
    import torch

    from recformer import RecformerForSeqRec

    torch.manual_seed(0)
    model = RecformerForSeqRec(demo_config(vocab, max_token_num, window))
    model.init_item_embedding(torch.randn(items, 64))
    return model.train()


def padding_fraction(batch, window: int | None = None) -> float:
    real = int(batch["attention_mask"].sum())
    rows, width = batch["input_ids"].shape
    if window:
        width = -(-width // window) * window
    return 1 - real / (rows * width)


def step_seconds(model, implementation: str, batch, pack_sides: bool = False) -> float:
    model.set_attn_implementation(implementation)
    model.config.pack_sides = pack_sides
    start = time.perf_counter()
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    (out if hasattr(out, "backward") else out.loss).backward()
    return time.perf_counter() - start


def side_fractions(batch, window: int) -> dict[str, float]:
    """Padding fractions of a padded pretraining batch: eager (each side padded to a multiple of the window),
    sdpa with a pass per side, and sdpa with both sides in one packed pass (`pack_sides`: the shorter side's
    sequences tiled into rows as wide as the longer side's)."""
    real = 2 * sum(int(batch[f"attention_mask_{side}"].sum()) for side in "ab")  # each side and its MLM copy
    shapes = {side: batch[f"input_ids_{side}"].shape for side in "ab"}
    computed = sum(2 * rows * width for rows, width in shapes.values())
    eager = sum(2 * rows * (-(-width // window) * window) for rows, width in shapes.values())
    (rows, long), (_, short) = sorted(shapes.values(), key=lambda shape: -shape[1])
    tiled = 2 * rows + -(-2 * rows // (long // short))  # rows of the one packed pass, each `long` wide
    return {"eager padded": 1 - real / eager, "sdpa padded": 1 - real / computed,
            "sdpa one pass (pack_sides)": 1 - real / (tiled * long)}  # fmt: skip


def run_pretrain(name: str, model, padded: list, packed: list, rounds: int, window: int) -> None:
    fractions = [{**side_fractions(a, window), "sdpa packed": padding_fraction(b["packed"])} for a, b in zip(padded, packed)]
    rows = statistics.fmean(b["packed"]["input_ids"].size(0) for b in packed)
    print(f"{name:6s} padding fraction: " + "  ".join(f"{k} {statistics.fmean(f[k] for f in fractions):.3f}"
          for k in fractions[0]) + f"  ({4 * len(padded[0]['input_ids_a'])} sequences -> {rows:.1f} packed rows a batch)",
          flush=True)  # fmt: skip
    variants = {
        "eager padded": lambda a, b: step_seconds(model, "eager", a),
        "sdpa padded": lambda a, b: step_seconds(model, "sdpa", a),
        "sdpa one pass": lambda a, b: step_seconds(model, "sdpa", a, pack_sides=True),
        "sdpa packed": lambda a, b: step_seconds(model, "sdpa", b),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for a, b in zip(padded[:2], packed[:2]):  # warm-up
        for step in variants.values():
            step(a, b)
    for _ in range(rounds):
        for a, b in zip(padded, packed):
            for k, step in variants.items():
                times[k].append(step(a, b))
    base = statistics.median(times["eager padded"])
    print(f"{name:6s} step (median of {len(times['eager padded'])}): " + "  ".join(
        f"{k} {statistics.median(v) * 1e3:.1f} ms (x{base / statistics.median(v):.2f})" for k, v in times.items()),
        flush=True)  # fmt: skip


def run(name: str, model, padded: list, packed: list, rounds: int, window: int) -> None:
    fractions = [(padding_fraction(a, window), padding_fraction(a), padding_fraction(b)) for a, b in zip(padded, packed)]
    eager, sdpa, pack = (statistics.fmean(f[i] for f in fractions) for i in range(3))
    rows = statistics.fmean(b["input_ids"].size(0) for b in packed)
    print(f"{name:6s} padding fraction: eager padded {eager:.3f}  sdpa padded {sdpa:.3f}  packed {pack:.3f}  "
          f"({len(padded[0]['labels'])} histories -> {rows:.1f} packed rows a batch)", flush=True)  # fmt: skip
    times: dict[str, list[float]] = {"eager padded": [], "sdpa padded": [], "sdpa packed": []}
    for a, b in zip(padded[:2], packed[:2]):  # warm-up
        step_seconds(model, "eager", a), step_seconds(model, "sdpa", a), step_seconds(model, "sdpa", b)
    for _ in range(rounds):
        for a, b in zip(padded, packed):
            times["eager padded"].append(step_seconds(model, "eager", a))
            times["sdpa padded"].append(step_seconds(model, "sdpa", a))
            times["sdpa packed"].append(step_seconds(model, "sdpa", b))
    base = statistics.median(times["eager padded"])
    print(f"{name:6s} step (median of {len(times['eager padded'])}): " + "  ".join(
        f"{k} {statistics.median(v) * 1e3:.1f} ms (x{base / statistics.median(v):.2f})" for k, v in times.items()),
        flush=True)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", choices=["finetune", "pretrain"], default=["finetune"])
    p.add_argument("--max_token_num", type=int, default=1024)
    p.add_argument("--pack_tokens", type=int, default=1024)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--pretrain_batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=12, help="batches timed per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from recformer import RecformerForPretraining
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
        tok = build_tokenizer(out, [dict(enumerate(data.items))], a.max_token_num)
    if "finetune" in a.parts:
        items = tokenize_catalogue(tok, data.items, progress=False)
        model = demo_model(len(tok), len(items), a.max_token_num, a.window)
        print(f"demo finetuning data, max_token_num {a.max_token_num}, pack_tokens {a.pack_tokens}, batch {a.batch}, "
              f"{a.threads} threads", flush=True)  # fmt: skip
        for kind in ("demo", "joined"):
            seqs = data.train_sequences() if kind == "demo" else joined(data.train_sequences())
            random.Random(0).shuffle(seqs)
            batches = [seqs[i : i + a.batch] for i in range(0, a.batch * a.batches, a.batch)]
            padded = [FinetuneCollator(tok, items, random.Random(0))(b) for b in batches]
            packed = [FinetuneCollator(tok, items, random.Random(0), pack_tokens=a.pack_tokens)(b) for b in batches]
            run(kind, model, padded, packed, a.rounds, a.window)
    if "pretrain" in a.parts:
        asins = list(meta)
        items = tokenize_catalogue(tok, [meta[k] for k in asins], keys=asins, progress=False)
        torch.manual_seed(0)
        model = RecformerForPretraining(demo_config(len(tok), a.max_token_num, a.window)).train()
        print(f"demo pretraining data, max_token_num {a.max_token_num}, pack_tokens {a.pack_tokens}, "
              f"batch {a.pretrain_batch} pairs, {a.threads} threads", flush=True)  # fmt: skip
        for kind in ("demo", "joined"):
            seqs = list(pretrain) if kind == "demo" else joined(pretrain)
            random.Random(0).shuffle(seqs)
            size = a.pretrain_batch
            batches = [seqs[i : i + size] for i in range(0, min(size * a.batches, len(seqs) - size + 1), size)]
            padded = [PretrainCollator(tok, items, rng=random.Random(i))(b) for i, b in enumerate(batches)]
            packed = [PretrainCollator(tok, items, rng=random.Random(i), pack_tokens=a.pack_tokens)(b)
                      for i, b in enumerate(batches)]  # fmt: skip
            run_pretrain(kind, model, padded, packed, a.rounds, a.window)


if __name__ == "__main__":
    main()
