"""Full-ranking metrics for next-item prediction.

`rank` is the 0-based rank of the target among all items: the number of *other* items whose score
is greater than or equal to the target's (a tie counts against the target, so a model that scores
everything equal does not look perfect). Items scored -inf (masked) never outrank anything; an item
scored NaN outranks the target. A target whose score is not finite (NaN, +inf, -inf) ranks last:
every other unmasked item counts against it, so a broken model never scores a hit.

    NDCG@k   = 1 / log2(rank + 2) if rank < k else 0
    Recall@k = 1 if rank < k else 0
    Hit@k    = Recall@k                            (one target per user; RecBole's name for it)
    MRR@k    = 1 / (rank + 1) if rank < k else 0   (RecBole's MRR@k)
    MRR      = 1 / (rank + 1)                      (not truncated; the reference's and the paper's MRR)
    AUC      = 1 - rank / (number of items scoring above -1e4 or NaN), at least 0

Every metric is averaged over users. For each k the names come in the order NDCG@k, Recall@k, Hit@k, MRR@k;
then MRR and AUC.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from recformer.errors import RecformerError

MASK_THRESHOLD = -1e4


class NonFiniteScores(RecformerError, FloatingPointError):
    """A model produced NaN or infinite scores; metrics computed from them would be meaningless."""


def check_finite_scores(scores: torch.Tensor) -> None:
    """Raise `NonFiniteScores` (saying how many) when a score is NaN or infinite (before any masking)."""
    finite = torch.isfinite(scores)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        nan = int(torch.isnan(scores).sum())
        raise NonFiniteScores(f"{bad} of {scores.numel()} scores are not finite ({nan} NaN, {bad - nan} infinite)")


def compute_ranks(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based target ranks [B] and the number of unmasked items per row [B].

    Args:
        scores: [B, N] item scores (higher is better; -inf masks an item).
        labels: [B] or [B, 1] target item indices.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [batch, num_items], got shape {tuple(scores.shape)}")
    labels = labels.reshape(-1, 1).to(device=scores.device, dtype=torch.long)
    if labels.size(0) != scores.size(0):
        raise ValueError(f"{labels.size(0)} labels for {scores.size(0)} score rows")
    if labels.numel() and (labels.min() < 0 or labels.max() >= scores.size(1)):
        raise ValueError(f"labels must be in [0, {scores.size(1)}), got {labels.min().item()}..{labels.max().item()}")
    target = scores.gather(1, labels)  # [B, 1]
    nan = torch.isnan(scores)  # [B, N]
    others = (scores != float("-inf")).scatter_(1, labels, False)  # [B, N] unmasked items (NaN too) but the target
    # NaN compares False, so a NaN item is counted against the target explicitly
    against = ((scores >= target) | nan) & others  # [B, N]
    ranks = torch.where(torch.isfinite(target).squeeze(1), against.sum(dim=1), others.sum(dim=1))  # [B]
    n_valid = ((scores > MASK_THRESHOLD) | nan).sum(dim=1)  # [B]
    return ranks, n_valid


def metrics_from_ranks(ranks: torch.Tensor, n_valid: torch.Tensor, ks: Sequence[int] = (10, 50)) -> dict[str, float]:
    """Average NDCG@k, Recall@k, Hit@k and MRR@k for each k, MRR and AUC over users from per-user ranks."""
    if ranks.numel() == 0:
        raise ValueError("no users to evaluate")
    ranks = ranks.double().cpu()
    n_valid = n_valid.double().cpu()
    out: dict[str, float] = {}
    for k in sorted(ks):
        hit = ranks < k
        out[f"NDCG@{k}"] = (hit.double() / torch.log2(ranks + 2)).mean().item()
        out[f"Recall@{k}"] = out[f"Hit@{k}"] = hit.double().mean().item()
        out[f"MRR@{k}"] = (hit.double() / (ranks + 1)).mean().item()
    out["MRR"] = (1.0 / (ranks + 1)).mean().item()
    out["AUC"] = (1.0 - ranks / n_valid.clamp(min=1)).clamp(min=0.0).mean().item()
    return out


def ranking_metrics(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (10, 50)) -> dict[str, float]:
    """NDCG@k, Recall@k, Hit@k and MRR@k for each k, MRR and AUC, averaged over the B users of `scores` [B, N]."""
    ranks, n_valid = compute_ranks(scores, labels)
    return metrics_from_ranks(ranks, n_valid, ks)


def format_metrics(metrics: dict[str, float]) -> str:
    """One line: `NDCG@10=0.1234 Recall@10=...`."""
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def format_metrics_table(rows: dict[str, dict[str, float]]) -> str:
    """A small text table: one row per named metrics dict, one column per metric."""
    names = list(next(iter(rows.values())).keys())
    width = max(len(r) for r in rows) + 2
    lines = [" " * width + "".join(f"{n:>11}" for n in names)]
    for label, metrics in rows.items():
        lines.append(f"{label:<{width}}" + "".join(f"{metrics[n]:>11.4f}" for n in names))
    return "\n".join(lines)
