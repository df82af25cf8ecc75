"""Time and memory of top-k recommendation over a large index: chunked top-k vs a full argsort vs the bare product.

    python bench/bench_recommend.py [--items 1000000] [--hidden 768] [--histories 1000] [--k 10]

A random index (items x hidden, float32) and random history vectors, on CPU. Three variants, each in
its own subprocess (so one's memory does not hide another's):

* bare matrix product: `histories @ index.T` in one call (the scores, nothing else);
* chunked top-k (`recformer.inference.ranking.top_k`, what `Recommender.recommend` runs): histories in blocks
  of 256, the index in chunks, cosine / temperature, exact tie order;
* full argsort: every row of the score matrix (`similarity_score`) sorted (stable, descending), in
  blocks of histories so the whole [histories, items] int64 matrix never exists at once.

Extra memory = peak RSS during the variant (a sampling thread, and the process's maximum RSS,
whichever is higher) minus the RSS once the index is built. The top-k of the chunked variant and of
the full argsort are checked to be the same.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, os, resource, sys, threading, time
import numpy as np, torch
from recformer import RecformerConfig, RecformerForSeqRec
from recformer.inference.ranking import top_k

items, hidden, histories, k, block, mode, out = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                                                 int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7])
page = os.sysconf("SC_PAGE_SIZE")

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page

torch.manual_seed(0)
config = RecformerConfig(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=1, intermediate_size=4,
                         vocab_size=10, max_position_embeddings=16, attention_window=[2], max_token_num=8)
model = RecformerForSeqRec(config).eval()
model.init_item_embedding(torch.randn(items, hidden))
model.item_norms()  # part of the index: computed once when it is built
queries = torch.randn(histories, hidden)
base = rss()
peak = [base]
done = threading.Event()

def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.001)

thread = threading.Thread(target=sample, daemon=True)
thread.start()
t0 = time.perf_counter()
with torch.no_grad():
    if mode == "matmul":
        scores = queries @ model.item_embedding.weight.T  # [histories, items]
        rows = None
    elif mode == "topk":
        rows = torch.cat([top_k(model, queries[s : s + block], k)[1] for s in range(0, histories, block)])
    else:
        rows = []
        for s in range(0, histories, block):
            scores = model.similarity_score(queries[s : s + block])
            rows.append(scores.argsort(dim=1, descending=True, stable=True)[:, :k])
            del scores
        rows = torch.cat(rows)
elapsed = time.perf_counter() - t0
done.set()
thread.join()
maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
if rows is not None:
    np.save(out, rows.numpy())
print(json.dumps({"seconds": elapsed, "extra_mb": (max(peak[0], maxrss) - base) / 2**20, "threads": torch.get_num_threads()}))
"""


def run(args: argparse.Namespace, mode: str, block: int, out: Path) -> dict:
    argv = [str(args.items), str(args.hidden), str(args.histories), str(args.k), str(block), mode, str(out)]
    result = subprocess.run([sys.executable, "-c", CHILD, *argv], check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--histories", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--block", type=int, default=256, help="histories per top-k pass (Recommender.recommend's)")
    p.add_argument("--argsort_block", type=int, default=100, help="histories per block of the full argsort")
    a = p.parse_args()
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        bare = run(a, "matmul", a.histories, Path(tmp) / "none.npy")
        ours = run(a, "topk", a.block, Path(tmp) / "topk.npy")
        full = run(a, "argsort", a.argsort_block, Path(tmp) / "argsort.npy")
        same = np.array_equal(np.load(Path(tmp) / "topk.npy"), np.load(Path(tmp) / "argsort.npy"))
    print(f"top-{a.k} of {a.histories:,} histories over {a.items:,} items x {a.hidden} (CPU, {bare['threads']} threads)")
    print(f"  {'variant':<46}{'time':>9}{'x product':>11}{'extra memory':>15}")
    rows = [
        ("bare matrix product (one call)", bare),
        (f"chunked top-k (ours; blocks of {a.block} histories)", ours),
        (f"full argsort (blocks of {a.argsort_block} histories)", full),
    ]
    for name, r in rows:
        print(f"  {name:<46}{r['seconds']:>8.1f}s{r['seconds'] / bare['seconds']:>10.2f}x{r['extra_mb']:>12,.0f} MB")
    print(f"  same top-{a.k} from chunked top-k and full argsort: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
