"""Benchmark: padded vs packed finetuning batches on the demo histories: padding fraction and CPU step time.

Same data and tokenizer as ``bench_collators.py`` (the processed demo, its 3,000-token BPE tokenizer,
``max_token_num`` 1024; ``demo`` histories as they are and ``joined`` ones chained to 51 items). Batches of
16 histories are laid out padded (``FinetuneCollator``) and packed (``pack_tokens``, rows of at most
``--pack_tokens`` tokens) from the same draws, and for each the script prints

* the padding fraction: tokens the encoder computes that are padding (padded: to the batch's longest
  history, and eager also pads to a multiple of the attention window; packed: the ends of rows);
* the time of one training step (forward, loss over every item, backward) of a demo-size model (hidden
  64, 2 layers, window 32) for eager padded, sdpa padded and sdpa packed, in rounds that take turns,
  median per variant, side by side in this one run.

    python bench/bench_packed_training.py --rounds 3
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


def demo_model(vocab: int, items: int, max_token_num: int, window: int):
    import torch

    from recformer import RecformerForSeqRec
    from recformer.model.configuration import RecformerConfig

    config = RecformerConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=256, attention_window=[window, window], max_token_num=max_token_num,
                             max_position_embeddings=max_token_num + 8, type_vocab_size=1, layer_norm_eps=1e-5)  # fmt: skip
    torch.manual_seed(0)
    model = RecformerForSeqRec(config)
    model.init_item_embedding(torch.randn(items, 64))
    return model.train()


def padding_fraction(batch, window: int | None = None) -> float:
    real = int(batch["attention_mask"].sum())
    rows, width = batch["input_ids"].shape
    if window:
        width = -(-width // window) * window
    return 1 - real / (rows * width)


def step_seconds(model, implementation: str, batch) -> float:
    model.set_attn_implementation(implementation)
    start = time.perf_counter()
    model.zero_grad(set_to_none=True)
    model(**batch).backward()
    return time.perf_counter() - start


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
    p.add_argument("--max_token_num", type=int, default=1024)
    p.add_argument("--pack_tokens", type=int, default=1024)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--batches", type=int, default=12, help="batches timed per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from recformer.data.finetune_reader import load_finetune_data
    from recformer.model.item_tokens import tokenize_catalogue
    from recformer.train.collators import FinetuneCollator

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        process_demo(out)
        data = load_finetune_data(out / "Demo")
        tok = build_tokenizer(out, [dict(enumerate(data.items))], a.max_token_num)
    items = tokenize_catalogue(tok, data.items, progress=False)
    model = demo_model(len(tok), len(items), a.max_token_num, a.window)
    print(f"demo finetuning data, max_token_num {a.max_token_num}, pack_tokens {a.pack_tokens}, batch {a.batch}, "
          f"{a.threads} threads", flush=True)  # fmt: skip
    for kind in ("demo", "joined"):
        seqs = data.train_sequences() if kind == "demo" else joined(data.train_sequences())
        random.Random(0).shuffle(seqs)
        batches = [seqs[i : i + a.batch] for i in range(0, a.batch * a.batches, a.batch)]
        padded_collator = FinetuneCollator(tok, items, random.Random(0))
        packed_collator = FinetuneCollator(tok, items, random.Random(0), pack_tokens=a.pack_tokens)
        padded = [padded_collator(b) for b in batches]
        packed = [packed_collator(b) for b in batches]
        run(kind, model, padded, packed, a.rounds, a.window)


if __name__ == "__main__":
    main()
