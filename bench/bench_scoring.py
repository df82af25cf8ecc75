"""Memory and time of scoring a batch against a large item table: matrix product vs broadcast cosine.

    python bench/bench_scoring.py [--items 1000000] [--hidden 768] [--batch 16]

Each variant runs in its own subprocess; extra memory = peak RSS during scoring minus RSS after the
table is built. The broadcast cosine form (what the reference did) materialises [B, N, H]; it runs
on a smaller table and its memory is extrapolated linearly to N items.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, torch
from recformer import RecformerConfig, RecformerForSeqRec
items, hidden, batch, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
config = RecformerConfig(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=1, intermediate_size=4,
                         vocab_size=10, max_position_embeddings=16, attention_window=[2], max_token_num=8)
model = RecformerForSeqRec(config).eval()
model.init_item_embedding(torch.randn(items, hidden))
pooled = torch.randn(batch, hidden)
model.item_norms()  # built once per table, outside the timed call (as in the finetuning loop)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
with torch.no_grad():
    if mode == "matmul":
        scores = model.similarity_score(pooled)
    else:
        scores = torch.nn.functional.cosine_similarity(pooled.unsqueeze(1), model.item_embedding.weight.unsqueeze(0), dim=-1) / config.temp
elapsed = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"extra_mb": (peak - base) / 1024, "seconds": elapsed, "shape": list(scores.shape)}))
"""


def run(items: int, hidden: int, batch: int, mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(items), str(hidden), str(batch), mode],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument(
        "--broadcast_items", type=int, default=20_000, help="table size for the broadcast baseline"
    )
    a = p.parse_args()
    ours = run(a.items, a.hidden, a.batch, "matmul")
    base = run(a.broadcast_items, a.hidden, a.batch, "broadcast")
    scale = a.items / a.broadcast_items
    print(f"scoring a batch of {a.batch} against {a.items:,} items x {a.hidden} (CPU)")
    print(
        f"  matrix product (ours):   extra memory {ours['extra_mb']:9.1f} MB   time {ours['seconds']:.3f} s"
    )
    print(
        f"  broadcast cosine (ref.): extra memory {base['extra_mb'] * scale:9.1f} MB   time {base['seconds'] * scale:.3f} s"
        f"   (measured on {a.broadcast_items:,} items, scaled x{scale:.0f})"
    )


if __name__ == "__main__":
    main()
