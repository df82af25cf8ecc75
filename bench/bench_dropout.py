"""Benchmark: CPU training pieces that are bitwise the same as torch's, side by side with torch's own.

* dropout masks: `F.dropout` (torch's `bernoulli_`) against `recformer.model.dropout.dropout` (the same draws
  through `uniform_` on float64), on the demo finetuning step's tensors: hidden states [16, 256, 64] and
  banded attention probabilities [16 x 8 blocks, 4 heads, 32, 65];
* training key spans of the banded attention, forward and backward: pad + unfold (before) against
  `attention._key_spans` (pad + slices + one cat), keys [16, 256, 4 heads, 16], window 32.

Each case alternates over `--rounds` rounds; the median time per call is printed with the ratio. The outputs
are checked equal first (the tests check them bitwise too: `tests/test_dropout.py`).

    python bench/bench_dropout.py --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def timed(fn, calls: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def compare(name: str, cases: dict, rounds: int, calls: int) -> None:
    times = {label: [] for label in cases}
    for _ in range(rounds):
        for label, fn in cases.items():
            times[label].append(timed(fn, calls))
    medians = {label: statistics.median(values) for label, values in times.items()}
    before, after = medians.values()
    labels = list(medians)
    print(f"{name}: {labels[0]} {before * 1e3:.2f} ms, {labels[1]} {after * 1e3:.2f} ms per call, {before / after:.2f}x")


def unfolded(x: torch.Tensor, w: int, s: int) -> torch.Tensor:
    batch, length, heads, dim = x.shape
    nb = -(-length // s)
    spans = F.pad(x, (0, 0, 0, 0, w, nb * s - length + w)).unfold(1, s + 2 * w, s).transpose(-1, -2)
    return spans.reshape(batch * nb, heads, -1, dim)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from recformer.model.attention import AttentionLayout, _key_spans, block_size
    from recformer.model.dropout import dropout, uniform_draws_match

    print(f"torch {torch.__version__}, {a.threads} threads; uniform_ draws match bernoulli_ here: {uniform_draws_match()}")
    for shape in [(16, 256, 64), (128, 4, 32, 65)]:
        x = torch.randn(shape)
        torch.manual_seed(0)
        expected = F.dropout(x, 0.1, True)
        torch.manual_seed(0)
        assert torch.equal(expected, dropout(x, 0.1, True))
        compare(f"dropout {list(shape)}", {"F.dropout": lambda x=x: F.dropout(x, 0.1, True),
                                           "recformer": lambda x=x: dropout(x, 0.1, True)}, a.rounds, a.calls)  # fmt: skip

    w = 16
    s = block_size(w)
    keys = torch.randn(16, 256, 4, 16, requires_grad=True)
    layout = AttentionLayout("sdpa", torch.ones(16, 256, dtype=torch.bool), torch.zeros(16, 256, dtype=torch.bool))
    grad = torch.randn(unfolded(keys, w, s).shape)
    assert torch.equal(unfolded(keys, w, s), _key_spans(keys, layout, w))

    def step(fn):
        return lambda: fn().backward(grad)

    compare("key spans, forward + backward", {"pad + unfold": step(lambda: unfolded(keys, w, s)),
                                              "recformer": step(lambda: _key_spans(keys, layout, w))},
            a.rounds, a.calls)  # fmt: skip


if __name__ == "__main__":
    main()
