"""Item vectors and full-ranking evaluation of a RecformerForSeqRec.

`encode_items` turns the tokenized catalogue into the item table (each item encoded alone as a
one-item sequence); `evaluate` scores (history, target) pairs against every item with
`RecformerForSeqRec.similarity_score` and averages the ranking metrics (`metrics.py`) over users.
`encode_items_sharded` is `encode_items` over the ranks of a distributed run (`distributed.py`), and
`evaluate` splits the users across them; results are gathered, so every rank gets the one-process numbers.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed
from .cache import cached
from .checkpoint import torch_load
from .collators import EvalCollator, encode_item_sequences
from .fileio import atomic_torch_save
from .item_tokens import TokenizedItems
from .metrics import check_finite_scores, compute_ranks, metrics_from_ranks
from .modeling import RecformerForSeqRec, RecformerModel
from .tokenization import RecformerTokenizer

logger = logging.getLogger(__name__)

# Items scored per chunk in evaluation: bounds the intermediates of scoring a large catalogue.
SCORE_CHUNK = 262_144

AmpContext = Callable[[], contextlib.AbstractContextManager]


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Every tensor of a batch on `device`."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def cached_item_vectors(
    path: Path | None, build: Callable[[], torch.Tensor], shape: tuple[int, int] | None = None
) -> torch.Tensor:
    """The item table in the disk cache file `path` (`cache.item_table_path`), or `build()` and
    write it there (no cache: `path` None). A cached file that is not a tensor of `shape` is rebuilt.

    In a distributed run every rank calls it: either every rank reads the file or every rank calls
    `build` (which may be collective, e.g. `encode_items_sharded`); only rank 0 writes.
    """

    def load(p: Path) -> torch.Tensor:
        table = torch_load(p)
        if not isinstance(table, torch.Tensor) or (shape is not None and tuple(table.shape) != tuple(shape)):
            raise ValueError(f"{p}: not an item table of shape {shape}")
        return table

    return cached(path, build, load, atomic_torch_save, "item table", write=distributed.is_main(),
                  agree=distributed.all_true)  # fmt: skip


@torch.no_grad()
def encode_items(
    encoder: RecformerModel,
    tokenizer: RecformerTokenizer,
    table: TokenizedItems,
    batch_size: int,
    device: torch.device,
    amp: AmpContext = contextlib.nullcontext,
    progress: bool = True,
) -> torch.Tensor:
    """Pooled vector of every item encoded alone (`<s>` + item) [N, H], float32 on CPU, in id order.

    Items are batched in order of length (less padding) and put back in id order.
    """
    was_training = encoder.training
    encoder.eval()
    order = np.argsort(-table.lengths(), kind="stable")
    out = torch.empty(len(table), encoder.config.hidden_size, dtype=torch.float32)
    for start in tqdm(range(0, len(order), batch_size), desc="encode items", disable=not progress, unit="batch"):
        ids = order[start : start + batch_size].tolist()
        batch = to_device(encode_item_sequences(tokenizer, table, [[i] for i in ids]), device)
        with amp():
            pooled = encoder(**batch).pooler_output
        out[ids] = pooled.float().cpu()
    encoder.train(was_training)
    return out


def mask_history(scores: torch.Tensor, pairs: Sequence[tuple[Sequence[int], int]]) -> torch.Tensor:
    """Give every item of row b's history, except its target, the score -inf (in place; returns `scores`).

    A masked item never outranks anything and is never recommended; a target that also appears in
    its history keeps its score, so it can still be ranked first.
    """
    for row, (history, target) in enumerate(pairs):
        seen = [i for i in set(history) if i != target]
        if seen:
            scores[row, seen] = float("-inf")
    return scores


@torch.no_grad()
def target_ranks(
    model: RecformerForSeqRec,
    pairs: Sequence[tuple[list[int], int]],
    tokenizer: RecformerTokenizer,
    table: TokenizedItems,
    batch_size: int,
    device: torch.device,
    exclude_history: bool = False,
    amp: AmpContext = contextlib.nullcontext,
    progress: bool = True,
    desc: str = "evaluate",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-ranking rank of each pair's target among all items [P] and its number of unmasked items [P],
    in pair order (`metrics.compute_ranks`).

    Histories are batched in order of length; with `exclude_history`, items already in a history
    are never ranked for it (`mask_history`).

    Raises:
        NonFiniteScores: a score is NaN or infinite (the metrics would be meaningless).
    """
    was_training = model.training
    model.eval()
    collator = EvalCollator(tokenizer, table)
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]))
    ranks, n_valid = [torch.empty(0, dtype=torch.long)], [torch.empty(0, dtype=torch.long)]
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, unit="batch"):
        chunk = [pairs[i] for i in order[start : start + batch_size]]
        batch = to_device(collator(chunk), device)
        labels = batch.pop("labels")
        with amp():
            pooled = model.longformer(**batch).pooler_output  # [B, H]
        scores = model.similarity_score(pooled.float(), chunk_size=SCORE_CHUNK)  # [B, N] float32
        check_finite_scores(scores)
        if exclude_history:
            mask_history(scores, chunk)
        r, v = compute_ranks(scores, labels)
        ranks.append(r.cpu())
        n_valid.append(v.cpu())
    model.train(was_training)
    in_order = torch.as_tensor(order, dtype=torch.long)
    out_ranks = torch.empty(len(pairs), dtype=torch.long)
    out_valid = torch.empty(len(pairs), dtype=torch.long)
    out_ranks[in_order], out_valid[in_order] = torch.cat(ranks), torch.cat(n_valid)
    return out_ranks, out_valid


def evaluate(
    model: RecformerForSeqRec,
    pairs: Sequence[tuple[list[int], int]],
    tokenizer: RecformerTokenizer,
    table: TokenizedItems,
    batch_size: int,
    device: torch.device,
    ks: Sequence[int],
    exclude_history: bool = False,
    amp: AmpContext = contextlib.nullcontext,
    progress: bool = True,
    desc: str = "evaluate",
) -> dict[str, float]:
    """Full-ranking metrics over all items for (history, target) pairs, averaged over users (`target_ranks`).

    In a distributed run (`distributed.py`) every rank must call it: each rank ranks the targets of
    its contiguous slice of `pairs`, the per-user ranks are gathered in pair order and averaged once,
    so the metrics are those of one process whatever the size of the last slice, on every rank.
    """
    if distributed.world_size() == 1:
        ranks, n_valid = target_ranks(model, pairs, tokenizer, table, batch_size, device, exclude_history, amp,
                                      progress, desc)  # fmt: skip
        return metrics_from_ranks(ranks, n_valid, ks)
    start, end = distributed.shard_bounds(len(pairs))
    with distributed.fail_together():  # e.g. non-finite scores in one rank's slice stop every rank
        ranks, n_valid = target_ranks(model, pairs[start:end], tokenizer, table, batch_size, device,
                                      exclude_history, amp, progress and distributed.is_main(), desc)  # fmt: skip
    gathered = distributed.all_gather_rows(torch.stack([ranks, n_valid], dim=1))  # [P, 2]
    return metrics_from_ranks(gathered[:, 0], gathered[:, 1], ks)


# -- several processes (`distributed.py`) -------------------------------------------------------
def encode_items_sharded(
    encoder: RecformerModel,
    tokenizer: RecformerTokenizer,
    table: TokenizedItems,
    batch_size: int,
    device: torch.device,
    amp: AmpContext = contextlib.nullcontext,
    progress: bool = True,
) -> torch.Tensor:
    """`encode_items` over the whole catalogue, split across the ranks of a distributed run [N, H].

    The catalogue in `encode_items`' length order is cut into its batches of `batch_size`, and each
    rank encodes a contiguous run of those batches (`distributed.shard_bounds`); an all-gather then
    assembles the table in catalogue order on every rank. Each batch is one that a single process
    would encode, so the table equals the one-process table. With one process this is `encode_items`.
    Every rank must call it.
    """
    if distributed.world_size() == 1:
        return encode_items(encoder, tokenizer, table, batch_size, device, amp, progress)
    order = np.argsort(-table.lengths(), kind="stable")  # encode_items' order
    first, last = distributed.shard_bounds(-(-len(table) // batch_size))  # this rank's batches
    with distributed.fail_together():  # a rank failing alone must not leave the others in the all-gather
        # already in length order, so encode_items keeps these rows in this order and batches
        local = encode_items(encoder, tokenizer, table.take(order[first * batch_size : last * batch_size]),
                             batch_size, device, amp, progress and distributed.is_main())  # fmt: skip
    in_order = distributed.all_gather_rows(local)  # [N, H], rows in `order`
    out = torch.empty_like(in_order)
    out[torch.from_numpy(order)] = in_order
    return out
