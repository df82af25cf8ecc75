"""Top-k ranking: golden results with ties, chunked == one pass == a stable full sort, masks, memory bound."""

from __future__ import annotations

import pytest
import torch

from recformer import RecformerForSeqRec
from recformer.inference.ranking import SCORE_BLOCK_BYTES, chunk_items, top_k
from recformer.metrics import NonFiniteScores

from .conftest import HIDDEN, tiny_config

INF = float("inf")


def model_with_table(config, vectors: torch.Tensor) -> RecformerForSeqRec:
    model = RecformerForSeqRec(config).eval()
    model.init_item_embedding(vectors)
    return model


def padded(rows: list[list[float]]) -> torch.Tensor:
    """2-d vectors written into the first two of HIDDEN dimensions."""
    out = torch.zeros(len(rows), HIDDEN)
    out[:, :2] = torch.tensor(rows)
    return out


# Cosine with (1, 0): items 0, 3, 5 are 1 (a three-way tie), 2 is 1/sqrt 2, 1 and 6 (zero vector) 0, 4 -1.
ITEMS = [[1, 0], [0, 1], [1, 1], [2, 0], [-1, 0], [4, 0], [0, 0]]
COS45 = 2**-0.5


@pytest.mark.parametrize("chunk", [None, 1, 2, 3, 5, 7])
def test_golden_top_k_with_ties_in_index_order(config, chunk):
    model = model_with_table(config, padded(ITEMS))
    queries = padded([[1, 0], [0, 1], [3, 0]])
    t = config.temp
    values, rows = top_k(model, queries, 4, chunk_size=chunk)
    assert rows.tolist() == [[0, 3, 5, 2], [1, 2, 0, 3], [0, 3, 5, 2]]
    expected = torch.tensor([[1, 1, 1, COS45], [1, COS45, 0, 0], [1, 1, 1, COS45]]) / t
    torch.testing.assert_close(values, expected)
    # k = 2 cuts the three-way tie: the two first in index order
    assert top_k(model, queries, 2, chunk_size=chunk)[1].tolist() == [[0, 3], [1, 2], [0, 3]]
    # k = 3 for (0, 1): five items tie at 0 for the third place; item 0 comes first
    assert top_k(model, queries[1:2], 3, chunk_size=chunk)[1].tolist() == [[1, 2, 0]]


def test_exclude_and_candidates_golden(config):
    model = model_with_table(config, padded(ITEMS))
    q = padded([[1, 0], [1, 0]])
    _, rows = top_k(model, q, 3, exclude=[[0, 5], []])
    assert rows.tolist() == [[3, 2, 1], [0, 3, 5]]
    _, rows = top_k(model, q, 3, candidates=[6, 2, 4, 5])  # shared; order of the list does not matter
    assert rows.tolist() == [[5, 2, 6], [5, 2, 6]]
    _, rows = top_k(model, q, 3, candidates=[6, 2, 4, 5], exclude=[[5], [2, 6]])
    assert rows.tolist() == [[2, 6, 4], [5, 4, -1]]
    values, rows = top_k(model, q, 3, candidates=[[1, 4], [3]])  # one list per query
    assert rows.tolist() == [[1, 4, -1], [3, -1, -1]]
    assert values[0, 2] == -INF and values[1, 1:].eq(-INF).all()


def test_k_larger_than_the_choice_is_cut_and_bad_arguments_are_refused(config):
    model = model_with_table(config, padded(ITEMS))
    q = padded([[1, 0]])
    values, rows = top_k(model, q, 50)
    assert rows.shape == (1, 7) and rows[0].tolist() == [0, 3, 5, 2, 1, 6, 4]
    assert top_k(model, q, 5, candidates=[1, 2])[1].tolist() == [[2, 1]]
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        top_k(model, q, 0)
    with pytest.raises(ValueError, match=r"exclude: item rows must be in \[0, 7\), got 0..9"):
        top_k(model, q, 2, exclude=[[0, 9]])
    with pytest.raises(ValueError, match=r"candidates has 2 lists for 1 queries"):
        top_k(model, q, 2, candidates=[[0], [1]])
    with pytest.raises(RuntimeError, match="item table is not set"):
        top_k(RecformerForSeqRec(tiny_config()), q, 2)


def reference_top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A stable descending sort of the whole score matrix: ties in index order."""
    values, rows = scores.sort(dim=1, descending=True, stable=True)
    return values[:, :k], rows[:, :k]


def exact_case(n: int, queries: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Items with small integer entries and queries with four entries of +-1 (norm 2, so the normalised
    query holds +-0.5): every dot product is exact whatever the summation order, so a score does not
    depend on how the table is chunked, and the few possible values give many ties."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randint(-2, 3, (n, HIDDEN), generator=g).float()
    q = torch.zeros(queries, HIDDEN)
    for b in range(queries):
        dims = torch.randperm(HIDDEN, generator=g)[:4]
        q[b, dims] = torch.randint(0, 2, (4,), generator=g).float() * 2 - 1
    return table, q


@pytest.mark.parametrize("k", [1, 5, 16])
def test_chunked_equals_one_pass_and_a_full_stable_sort(config, k):
    table, queries = exact_case(300, 8, seed=k)
    table[100:140] = table[7]  # identical items across chunk boundaries
    table[200:210] = table[3] * 2.0  # same direction, other norm
    queries[6], queries[7] = table[7].sign() * (table[7] != 0), table[3].sign() * (table[3] != 0)
    queries[6:] *= 2.0 / queries[6:].norm(dim=1, keepdim=True)  # not exact any more; ties of equal vectors are
    model = model_with_table(config, table)
    scores = model.similarity_score(queries)
    assert (scores[:6].unsqueeze(2) == scores[:6].unsqueeze(1)).sum() > 6 * 300 * 10  # many exact ties
    ref_values, ref_rows = reference_top_k(scores, k)
    for chunk in (None, 1, k, k + 1, 17, 64, 299, 300, 1000):
        values, rows = top_k(model, queries[:6], k, chunk_size=chunk)
        assert torch.equal(rows, ref_rows[:6]), chunk
        assert torch.equal(values, ref_values[:6]), chunk
        # rows of identical vectors may differ in the last bit between chunkings: order and set still match
        values, rows = top_k(model, queries[6:], k, chunk_size=chunk)
        torch.testing.assert_close(values, ref_values[6:], rtol=1e-6, atol=0)
        assert set(rows[0].tolist()) <= {7, *range(100, 140)}
        n = min(k, 11)  # item 3 and its 10 scaled copies first, then the others as in one pass
        assert set(rows[1, :n].tolist()) <= {3, *range(200, 210)} and torch.equal(rows[1, n:], ref_rows[7, n:])


def test_chunked_masks_equal_masked_full_sort(config):
    table, queries = exact_case(120, 4, seed=1)
    table[50:60] = table[5]
    model = model_with_table(config, table)
    exclude = [[5, 50, 51], [], list(range(0, 120, 2)), [119]]
    per_query = [list(range(40, 70)), [5, 55, 57], list(range(120)), []]
    shared = [3, 5, 50, 52, 54, 80, 90, 91]
    full = model.similarity_score(queries)

    masked = full.clone()
    for b, rows in enumerate(exclude):
        masked[b, rows] = -INF
    allowed = torch.zeros_like(full, dtype=torch.bool)
    for b, rows in enumerate(per_query):
        allowed[b, rows] = True
    for chunk in (None, 3, 11):
        values, rows = top_k(model, queries, 8, exclude=exclude, chunk_size=chunk)
        ref_values, ref_rows = reference_top_k(masked, 8)
        assert torch.equal(rows, ref_rows) and torch.equal(values, ref_values)
        ref_values, ref_rows = reference_top_k(masked.masked_fill(~allowed, -INF), 8)
        values, rows = top_k(model, queries, 8, exclude=exclude, candidates=per_query, chunk_size=chunk)
        assert torch.equal(rows, ref_rows.masked_fill(ref_values == -INF, -1))
        assert torch.equal(values, ref_values)
        ref_values, ref_rows = reference_top_k(masked[:, shared], 8)
        values, rows = top_k(model, queries, 8, exclude=exclude, candidates=shared, chunk_size=chunk)
        assert torch.equal(rows, torch.tensor(shared)[ref_rows].masked_fill(ref_values == -INF, -1))
        assert torch.equal(values, ref_values)


def test_scores_are_similarity_score(config):
    table, queries = exact_case(50, 3, seed=2)
    model = model_with_table(config, table)
    values, rows = top_k(model, queries, 50, chunk_size=7)
    assert torch.equal(values, model.similarity_score(queries).gather(1, rows))
    torch.manual_seed(2)  # any vectors: the same numbers up to the matrix product's rounding
    model = model_with_table(config, torch.randn(50, HIDDEN))
    queries = torch.randn(3, HIDDEN)
    values, rows = top_k(model, queries, 50, chunk_size=7)
    torch.testing.assert_close(values, model.similarity_score(queries).gather(1, rows), rtol=1e-5, atol=1e-5)


def test_no_score_block_is_larger_than_the_chunk(config, monkeypatch):
    """The memory bound: every block scored at once is [B, chunk], never [B, N]."""
    torch.manual_seed(3)
    model = model_with_table(config, torch.randn(5000, HIDDEN))
    shapes = []
    sim = model.sim.forward
    monkeypatch.setattr(model.sim, "forward", lambda x, y, y_norm=None, out=None: shapes.append(tuple(y.shape)) or sim(x, y, y_norm, out))
    top_k(model, torch.randn(256, HIDDEN), 10, chunk_size=512)
    assert max(s[0] for s in shapes) == 512 and sum(s[0] for s in shapes) == 5000
    # the default chunk keeps a [256, chunk] float32 block at SCORE_BLOCK_BYTES
    assert chunk_items(256, 10) * 256 * 4 == SCORE_BLOCK_BYTES
    assert chunk_items(10**7, 10) == 11  # never fewer than k + 1 items


@pytest.mark.parametrize("chunk", [None, 2])
def test_non_finite_vectors_and_scores_are_refused_naming_the_rows(config, chunk):
    items = padded(ITEMS)
    items[3, 0], items[5, 1] = float("nan"), INF
    model = model_with_table(config, items)
    queries = padded([[1, 0], [0, 1]])
    message = r"^\d+ scores are not finite \(\d+ NaN, \d+ infinite\): the item vectors of table rows 3, 5 are not finite$"
    with pytest.raises(NonFiniteScores, match=message):
        top_k(model, queries, 2, chunk_size=chunk)
    # a masked or excluded broken row is still refused: the table itself is broken
    with pytest.raises(NonFiniteScores, match=r"table rows 3"):
        top_k(model, queries, 2, exclude=[[3, 5], [3, 5]], candidates=[0, 1, 3], chunk_size=chunk)

    good = model_with_table(config, padded(ITEMS))
    bad_queries = padded([[1, 0], [0, 1], [1, 1]])
    bad_queries[1, 4] = float("nan")
    bad_queries[2, 0] = -INF
    with pytest.raises(NonFiniteScores, match=r"^2 of 3 history vectors are not finite \(rows 1, 2\); the model gives"):
        top_k(good, bad_queries, 2, chunk_size=chunk)
    # finite vectors whose similarity overflows (a temperature of 1e-40)
    good.sim.temp = 1e-40
    with pytest.raises(NonFiniteScores, match=r"the similarity overflows"):
        top_k(good, queries, 2, chunk_size=chunk)
