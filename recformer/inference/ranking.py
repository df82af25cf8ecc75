"""Top-k items for a batch of history vectors, chunked over the item table.

`top_k` scores the histories against `chunk` items at a time with the model's own similarity
(`RecformerForSeqRec.sim`, cosine / temperature, the call `similarity_score` makes), keeps the best
k + 1 of each chunk and merges them, so the extra memory is a few [B, chunk] blocks however large the
table is (`SCORE_BLOCK_BYTES`), never [B, N].

Scores must be finite: a NaN or infinite history vector, item vector or score (before masking) is
refused with `metrics.NonFiniteScores`, naming the rows, as evaluation refuses them; NaN has no place
in an order.

Order is exact: best score first, ties broken by the item's row in the table (the index order).
A chunk's top k + 1 decides its top k unless the k-th and (k+1)-th scores tie; only those rows fall
back to an exact pass over the tied values. Chunk results are merged with a stable sort, and a chunk
only holds rows after those already merged, so an earlier row wins a tie. Ties are those of the
computed scores: a matrix-product kernel may round an item's score differently in the last bit
depending on its position in the block, so two identical vectors in different chunks can differ by
one ulp (as they can at different positions of one full product).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from recformer.metrics import NonFiniteScores
from recformer.model.modeling import RecformerForSeqRec

# Bytes of one [B, chunk] float32 score block; scoring holds about three such blocks at a time.
SCORE_BLOCK_BYTES = 64 * 2**20
NEG_INF = float("-inf")

Rows = Sequence[int] | torch.Tensor
_Pairs = tuple[torch.Tensor, torch.Tensor]  # (query index, position) pairs


def chunk_items(batch: int, k: int, block_bytes: int = SCORE_BLOCK_BYTES) -> int:
    """Items per chunk so that a [batch, chunk] float32 block takes about `block_bytes` (at least k + 1)."""
    return max(k + 1, block_bytes // (4 * max(batch, 1)))


def _pairs(rows_per_query: Sequence[Rows], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat (query index [P], item row [P]) of a per-query list of item rows."""
    queries = [torch.full((len(r),), b, dtype=torch.long) for b, r in enumerate(rows_per_query)]
    rows = [torch.as_tensor(r, dtype=torch.long).reshape(-1) for r in rows_per_query]
    if not rows:
        return torch.empty(0, dtype=torch.long, device=device), torch.empty(0, dtype=torch.long, device=device)
    return torch.cat(queries).to(device), torch.cat(rows).to(device)


def per_query(candidates: Rows | Sequence[Rows]) -> bool:
    """True for one sequence of rows per query (a list of lists), False for one shared sequence."""
    if isinstance(candidates, torch.Tensor) or len(candidates) == 0:
        return False
    return all(isinstance(c, (Sequence, torch.Tensor)) and not isinstance(c, str) for c in candidates)


def _check_rows(name: str, rows: torch.Tensor, n: int) -> None:
    if rows.numel() and (rows.min() < 0 or rows.max() >= n):
        raise ValueError(f"{name}: item rows must be in [0, {n}), got {rows.min().item()}..{rows.max().item()}")


def _rows_text(rows: torch.Tensor, limit: int = 5) -> str:
    listed = ", ".join(str(r) for r in rows[:limit].tolist())
    return listed + (f" and {rows.numel() - limit} more" if rows.numel() > limit else "")


def check_finite_queries(queries: torch.Tensor) -> None:
    """Raise NonFiniteScores naming the query rows [B, H] that hold a NaN or infinite value."""
    bad = (~torch.isfinite(queries)).any(dim=1).nonzero().flatten()
    if bad.numel():
        raise NonFiniteScores(
            f"{bad.numel()} of {queries.size(0)} history vectors are not finite (rows {_rows_text(bad)}); "
            "the model gives NaN or infinite outputs"
        )


def _refuse_non_finite_scores(scores: torch.Tensor, weight: torch.Tensor, space: torch.Tensor | None) -> None:
    """Raise NonFiniteScores for a score block [B, C] holding NaN or infinite values, naming the table rows
    (of all N, or of `space`) whose vectors are not finite, else the overflow."""
    bad = int((~torch.isfinite(scores)).sum())
    nan = int(torch.isnan(scores).sum())
    what = f"{bad} scores are not finite ({nan} NaN, {bad - nan} infinite)"
    broken = (~torch.isfinite(weight)).any(dim=1).nonzero().flatten()  # ascending table rows
    if space is not None:
        broken = broken[torch.isin(broken, space)]
    if broken.numel():
        raise NonFiniteScores(f"{what}: the item vectors of table rows {_rows_text(broken)} are not finite")
    raise NonFiniteScores(f"{what}: the similarity overflows (is the temperature tiny?)")


def _order(values: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by value (descending), ties by index (ascending)."""
    index, perm = index.sort(dim=1)
    values = values.gather(1, perm)
    values, perm = values.sort(dim=1, descending=True, stable=True)
    return values, index.gather(1, perm)


def _chunk_top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k (value descending, column ascending) of every row of `scores` [B, C] -> [B, min(k, C)]."""
    b, c = scores.shape
    if c <= k:  # the whole chunk
        columns = torch.arange(c, device=scores.device).expand(b, c)
        values, perm = scores.sort(dim=1, descending=True, stable=True)
        return values, columns.gather(1, perm)
    values, columns = scores.topk(k + 1, dim=1, largest=True, sorted=True)  # [B, k + 1]
    # a tie between the k-th and (k+1)-th value: which of the tied items are kept is not decided yet
    tied = ((values[:, k - 1] == values[:, k]) & (values[:, k - 1] > NEG_INF)).nonzero().flatten().tolist()
    values, columns = _order(values[:, :k].contiguous(), columns[:, :k].contiguous())
    for row in tied:
        threshold = values[row, k - 1]
        keep = (scores[row] >= threshold).nonzero().flatten()  # ascending columns
        v, perm = scores[row, keep].sort(descending=True, stable=True)
        values[row], columns[row] = v[:k], keep[perm[:k]]
    return values, columns


def _merge(
    best: tuple[torch.Tensor, torch.Tensor], new: tuple[torch.Tensor, torch.Tensor], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top k of two sorted candidate lists; every row in `new` comes after every row in `best`."""
    values = torch.cat([best[0], new[0]], dim=1)
    index = torch.cat([best[1], new[1]], dim=1)
    values, perm = values.sort(dim=1, descending=True, stable=True)
    return values[:, :k], index.gather(1, perm[:, :k])


def _choices(
    candidates: Rows | Sequence[Rows] | None,
    exclude: Sequence[Rows] | None,
    b: int,
    n: int,
    device: torch.device,
) -> tuple[torch.Tensor | None, _Pairs | None, _Pairs | None]:
    """What `top_k` may return: (`space`, allowed, excluded).

    `space` holds the rows to choose from, ascending (None = all n); `allowed` (per-query candidates) and
    `excluded` are (query, position in `space`) pairs, None when there are none.
    """
    space: torch.Tensor | None = None
    allowed: _Pairs | None = None
    if candidates is not None:
        if per_query(candidates):
            if len(candidates) != b:
                raise ValueError(f"candidates has {len(candidates)} lists for {b} queries")
            allowed = _pairs(candidates, device)
            _check_rows("candidates", allowed[1], n)
        else:
            space = torch.as_tensor(candidates, dtype=torch.long).reshape(-1).unique().to(device)  # sorted
            _check_rows("candidates", space, n)
    excluded = _pairs(exclude, device) if exclude is not None else None
    if excluded is not None:
        _check_rows("exclude", excluded[1], n)
        if space is not None:  # item rows -> positions in `space`
            pos = torch.searchsorted(space, excluded[1]).clamp(max=max(space.numel() - 1, 0))
            hit = space[pos] == excluded[1] if space.numel() else torch.zeros_like(pos, dtype=torch.bool)
            excluded = (excluded[0][hit], pos[hit])
    return space, allowed, excluded


def _mask_chunk(
    scores: torch.Tensor, excluded: _Pairs | None, allowed: _Pairs | None, start: int, end: int
) -> None:
    """Set to -inf, in place, the scores of positions `start:end` that a query may not get: its excluded
    ones and, with per-query candidates, all but its allowed ones."""
    for mask, keep in ((excluded, False), (allowed, True)):
        if mask is None:
            continue
        sel = (mask[1] >= start) & (mask[1] < end)
        if keep:
            hide = torch.ones_like(scores, dtype=torch.bool)
            hide[mask[0][sel], mask[1][sel] - start] = False
            scores.masked_fill_(hide, NEG_INF)
        else:
            scores[mask[0][sel], mask[1][sel] - start] = NEG_INF


@torch.no_grad()
def top_k(
    model: RecformerForSeqRec,
    queries: torch.Tensor,
    k: int,
    *,
    exclude: Sequence[Rows] | None = None,
    candidates: Rows | Sequence[Rows] | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best items of the model's item table for each query, chunked over the table.

    Args:
        model: a RecformerForSeqRec whose item table is set (`init_item_embedding`).
        queries: pooled history vectors [B, H] (scored in float32 on the table's device).
        k: items per query (>= 1).
        exclude: per query, table rows never returned for it (e.g. its history).
        candidates: table rows to choose from: one sequence for every query, or one per query
            (a list of B sequences). None: the whole table.
        chunk_size: items scored at a time (default: `chunk_items(B, k)`).

    Returns:
        (scores [B, k'], rows [B, k']) with k' = min(k, number of rows to choose from), best first,
        ties in row order. Where a query has fewer than k' items left, the rest is score -inf and
        row -1.

    Raises:
        NonFiniteScores: a history vector, an item vector or a score is NaN or infinite (rows named).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if model.item_embedding is None:
        raise RuntimeError("the item table is not set: call init_item_embedding(item_vectors) first")
    weight = model.item_embedding.weight  # [N, H]
    norms = model.item_norms()  # [N]
    device, n = weight.device, weight.size(0)
    queries = queries.to(device=device, dtype=torch.float32)
    check_finite_queries(queries)
    b = queries.size(0)
    if exclude is not None and len(exclude) != b:
        raise ValueError(f"exclude has {len(exclude)} entries for {b} queries")

    space, allowed, excluded = _choices(candidates, exclude, b, n, device)

    total = n if space is None else space.numel()
    kk = min(k, total)
    chunk = chunk_size or chunk_items(b, kk)
    best = (torch.empty(b, 0, device=device), torch.empty(b, 0, dtype=torch.long, device=device))
    # One score buffer (and one gather buffer) for every chunk: a fresh block per chunk would cost
    # as much in page faults as the top-k itself.
    buffer = torch.empty(b * min(chunk, total), device=device)
    gathered = torch.empty(min(chunk, total) * weight.size(1), dtype=weight.dtype, device=device) if space is not None else None
    for start in range(0, total, chunk):
        end = min(start + chunk, total)
        out = buffer[: b * (end - start)].view(b, end - start)
        if space is None:
            scores = model.sim(queries, weight[start:end], y_norm=norms[start:end], out=out)  # [B, C]
        else:
            rows = space[start:end]
            items = torch.index_select(weight, 0, rows, out=gathered[: rows.numel() * weight.size(1)].view(-1, weight.size(1)))
            scores = model.sim(queries, items, y_norm=norms[rows], out=out)  # [B, C]
        if not bool(torch.isfinite(scores).all()):
            _refuse_non_finite_scores(scores, weight, space)
        _mask_chunk(scores, excluded, allowed, start, end)
        values, columns = _chunk_top_k(scores, kk)
        best = _merge(best, (values, columns + start), kk)
    values, positions = best
    rows = positions if space is None else space[positions]
    return values, rows.masked_fill(values == NEG_INF, -1)
