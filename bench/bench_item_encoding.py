"""Item-table encoding speed: the reference's way (id order, batch 16, fp32) vs ours (length-sorted
batches, larger batch, autocast on GPU), on a synthetic catalogue with realistic title lengths.

    python bench/bench_item_encoding.py [--items 4000] [--size tiny|base] [--device cpu|cuda]

Both produce the same table (max difference printed). `--size base` uses longformer-base dimensions
with random weights (for a GPU); `tiny` is hidden 64, 2 layers (for a CPU).
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from recformer import RecformerConfig, RecformerModel
from recformer.devices import InferenceSettings
from recformer.inference.evaluation import encode_items
from recformer.model.batching import encode_item_sequences
from recformer.model.item_tokens import TokenizedItems


def synthetic_catalogue(n: int, vocab: int, seed: int = 0) -> TokenizedItems:
    rng = random.Random(seed)
    encoded = []
    for _ in range(n):
        ids, types = [], []
        for key_len, value_len in ((2, rng.randint(4, 30)), (2, rng.randint(1, 4)), (2, rng.randint(3, 25))):
            ids += [rng.randrange(5, vocab) for _ in range(key_len + value_len)][:32]
            types += ([1] * key_len + [2] * value_len)[:32]
        encoded.append((ids, types))
    return TokenizedItems.from_lists(encoded)


def layout_tokenizer(config: RecformerConfig):
    """A tokenizer for the special tokens and the layout only (the catalogue is already token ids): the tiny
    vocabulary the tests ship, which has the same special-token ids as RoBERTa's."""
    from pathlib import Path

    from recformer.model.tokenization import RecformerTokenizer

    return RecformerTokenizer.from_pretrained(str(Path(__file__).resolve().parents[1] / "tests/fixtures/tiny_tokenizer"), config)


@torch.no_grad()
def reference_way(model, tok, table, device, batch_size=16):
    out = []
    for start in range(0, len(table), batch_size):
        batch = encode_item_sequences(
            tok, table, [[i] for i in range(start, min(start + batch_size, len(table)))]
        )
        out.append(model(**{k: v.to(device) for k, v in batch.items()}).pooler_output.float().cpu())
    return torch.cat(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--items", type=int, default=4000)
    p.add_argument("--size", choices=["tiny", "base"], default="tiny")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch_size", type=int, default=128)
    a = p.parse_args()
    device = torch.device(a.device)
    dims = (
        dict(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            vocab_size=50265,
        )
        if a.size == "base"
        else dict(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, vocab_size=3000
        )
    )
    config = RecformerConfig(
        **dims,
        max_position_embeddings=1030,
        attention_window=[64] * dims["num_hidden_layers"],
        max_attr_num=3,
        max_attr_length=32,
        max_item_embeddings=51,
        max_token_num=1024,
    )
    torch.manual_seed(0)
    model = RecformerModel(config).to(device).eval()
    tok = layout_tokenizer(config)
    table = synthetic_catalogue(a.items, dims["vocab_size"])

    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return result, time.perf_counter() - t0

    reference_way(model, tok, synthetic_catalogue(32, dims["vocab_size"]), device)  # warm-up
    ref, t_ref = timed(lambda: reference_way(model, tok, table, device))
    settings = InferenceSettings(device, batch_size=a.batch_size, progress=False)
    ours, t_ours = timed(lambda: encode_items(model, tok, table, settings))
    line = f"{a.items} items, {a.size} model, {device}"
    print(f"item encoding ({line})")
    print(f"  reference way (id order, batch 16, fp32): {t_ref:7.2f} s  {a.items / t_ref:8.0f} items/s")
    print(
        f"  ours (length-sorted, batch {a.batch_size}, fp32):     {t_ours:7.2f} s  {a.items / t_ours:8.0f} items/s"
        f"   max |diff| {(ref - ours).abs().max().item():.2e}"
    )
    if device.type == "cuda":
        half, t_half = timed(lambda: encode_items(model, tok, table, settings.replace(fp16=True)))
        cos = torch.nn.functional.cosine_similarity(half, ref, dim=-1).min().item()
        print(
            f"  ours + fp16 autocast:                       {t_half:7.2f} s  {a.items / t_half:8.0f} items/s"
            f"   min cosine to fp32 {cos:.5f}"
        )


if __name__ == "__main__":
    main()
