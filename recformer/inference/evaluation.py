"""Item vectors and full-ranking evaluation of a RecformerForSeqRec.

`encode_items` turns the tokenized catalogue into the item table (each item encoded alone as a
one-item sequence); `evaluate` scores (history, target) pairs against every item with
`RecformerForSeqRec.similarity_score` and averages the ranking metrics (`metrics.py`) over users.
`encode_items` with `InferenceSettings(shard=True)` splits the catalogue across the ranks of a distributed run (`distributed.py`),
and `evaluate` the users; results are gathered, so every rank gets the one-process numbers.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from recformer import distributed
from recformer.devices import InferenceSettings
from recformer.io.cache import cached
from recformer.io.checkpoint_files import torch_load
from recformer.io.fileio import atomic_torch_save
from recformer.metrics import check_finite_scores, compute_ranks, metrics_from_ranks
from recformer.model.batching import ItemTable, encode_item_sequences, pack_item_sequences
from recformer.model.item_tokens import TokenizedItems
from recformer.model.modeling import RecformerForSeqRec, RecformerModel
from recformer.model.packing import row_tokens
from recformer.model.tokenization import RecformerTokenizer

logger = logging.getLogger(__name__)

# Items scored per chunk in evaluation: bounds the intermediates of scoring a large catalogue.
SCORE_CHUNK = 262_144

def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Every tensor of a batch on `device`."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def cached_item_vectors(
    path: Path | None, build: Callable[[], torch.Tensor], shape: tuple[int, int] | None = None
) -> torch.Tensor:
    """The item table in the disk cache file `path` (`cache.item_table_path`), or `build()` and
    write it there (no cache: `path` None). A cached file that is not a tensor of `shape` is rebuilt.

    In a distributed run every rank calls it: either every rank reads the file or every rank calls
    `build` (which may be collective, e.g. `encode_items` with `settings.shard`); only rank 0 writes.
    """

    def load(p: Path) -> torch.Tensor:
        table = torch_load(p)
        if not isinstance(table, torch.Tensor) or (shape is not None and tuple(table.shape) != tuple(shape)):
            raise ValueError(f"{p}: not an item table of shape {shape}")
        return table

    return cached(path, build, load, atomic_torch_save, "item table", write=distributed.is_main(),
                  agree=distributed.all_true)  # fmt: skip


# Real tokens per batch of item encoding and evaluation when no batch size is given, per device type. CPU: of
# 4,096 / 8,192 / 16,384, the fastest whose peak memory stays under today's evaluation at batch 16
# (bench/bench_throughput.py --parts evaluation; 16,384 was faster still but used more memory). CUDA: 65,536
# ran 30,659 items/s on an H200 (bench/results/gpu_throughput_h200.json); the sweeps there were too noisy to
# pick another budget.
TOKEN_BUDGET = {"cpu": 8192, "cuda": 65536}
# Score elements ([histories, items]) per evaluation batch: bounds the score matrix of large catalogues.
SCORE_BUDGET = 1 << 22


def token_budget(device: torch.device) -> int:
    """Real tokens per encoding / evaluation batch on `device` when no batch size is given (`TOKEN_BUDGET`)."""
    return TOKEN_BUDGET.get(device.type, TOKEN_BUDGET["cuda"])


def length_batches(
    lengths: Sequence[int], batch_size: int | None, max_tokens: int, packed: bool, max_count: int | None = None
) -> list[list[int]]:
    """Indices of sequences in batches, longest first (similar lengths together; order does not matter).

    `batch_size` sequences a batch when given; otherwise as many as fit `max_tokens` tokens: real tokens
    for packed batches, count x longest for padded ones (a longer sequence is a batch of its own), and
    at most `max_count` sequences.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if batch_size is not None:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches: list[list[int]] = []
    current: list[int] = []
    used = longest = 0
    for i in order:
        n = lengths[i]
        if current:
            cost = used + n if packed else (len(current) + 1) * longest
            if cost > max_tokens or (max_count is not None and len(current) >= max_count):
                batches.append(current)
                current, used = [], 0
        if not current:
            longest = n
        current.append(i)
        used += n
    if current:
        batches.append(current)
    return batches


def sequence_lengths(tokenizer: RecformerTokenizer, item_table: ItemTable, sequences: Sequence[Sequence]) -> list[int]:
    """Tokens of each encoded sequence of item keys (`<s>` + its newest items, cut at `max_token_num`)."""
    layout = tokenizer.layout
    if isinstance(item_table, TokenizedItems):
        table_lengths = item_table.lengths()

        def item_length(key) -> int:
            return int(table_lengths[item_table.row(key)])
    else:

        def item_length(key) -> int:
            return len(item_table[key][0])

    return [layout.length([item_length(k) for k in layout.kept(seq)]) for seq in sequences]


def pooled_batches(
    encoder: RecformerModel,
    tokenizer: RecformerTokenizer,
    item_table: ItemTable,
    sequences: Sequence[Sequence],
    settings: InferenceSettings,
    *,
    max_count: int | None = None,
    desc: str = "encode",
    shard: bool = False,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Encode sequences of item keys; yields (indices, pooled vectors [n, H]) batch by batch, longest first.

    On the fast attention paths the sequences of a batch are packed into rows (no padding, cost follows
    real tokens); on "eager" they are padded to the longest of the batch. Batches are `settings.batch_size`
    sequences when given, else `settings.max_tokens` tokens (default `token_budget(device)`; see
    `length_batches`), at most `max_count` sequences. With `shard`, only this rank's contiguous run of
    those batches (`distributed.shard_bounds`).
    """
    device = settings.device
    packed = encoder.running_implementation(device) != "eager"
    lengths = sequence_lengths(tokenizer, item_table, sequences)
    budget = settings.max_tokens or token_budget(device)
    row_budget = row_tokens(lengths)
    batches = length_batches(lengths, settings.batch_size, max(budget, row_budget), packed, max_count)
    if shard:
        first, last = distributed.shard_bounds(len(batches))
        batches = batches[first:last]
    for rows in tqdm(batches, desc=desc, disable=not settings.progress, unit="batch"):
        chosen = [sequences[i] for i in rows]
        if packed:
            inputs = pack_item_sequences(tokenizer, item_table, chosen, row_budget)
        else:
            inputs = encode_item_sequences(tokenizer, item_table, chosen)
        with settings.autocast():
            pooled = encoder(**to_device(inputs, device), pooled_only=True).pooler_output  # [n, H]
        yield rows, pooled


@torch.no_grad()
def encode_items(
    encoder: RecformerModel,
    tokenizer: RecformerTokenizer,
    table: TokenizedItems,
    settings: InferenceSettings,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Pooled vector of every item encoded alone (`<s>` + item) [N, H], `dtype` on CPU, in id order.

    Items are packed (fast attention paths) or padded to similar lengths (eager), batched as
    `settings` says (`pooled_batches`).

    With `settings.shard` in a distributed run (`distributed.py`), each rank encodes a contiguous run of the
    batches one process would encode and an all-gather assembles the table in catalogue order on every rank,
    so the table equals the one-process table; every rank must then call it.
    """
    sharded = settings.shard and distributed.world_size() > 1
    was_training = encoder.training
    encoder.eval()
    done_rows: list[int] = []
    done = [torch.empty(0, encoder.config.hidden_size, dtype=dtype)]
    items = [[i] for i in range(len(table))]
    shown = settings.replace(progress=settings.progress and (not sharded or distributed.is_main()))
    # a rank failing alone must not leave the others waiting in the all-gather
    with distributed.fail_together() if sharded else contextlib.nullcontext():
        for rows, pooled in pooled_batches(encoder, tokenizer, table, items, shown, desc="encode items", shard=sharded):
            done_rows += rows
            done.append(pooled.to(dtype).cpu())
    encoder.train(was_training)
    rows, vectors = torch.as_tensor(done_rows, dtype=torch.long), torch.cat(done)  # [n], [n, H]
    if sharded:
        rows, vectors = distributed.all_gather_rows(rows), distributed.all_gather_rows(vectors)
    out = torch.empty(len(table), encoder.config.hidden_size, dtype=dtype)
    out[rows] = vectors
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
    settings: InferenceSettings,
    *,
    exclude_history: bool = False,
    desc: str = "evaluate",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-ranking rank of each pair's target among all items [P] and its number of unmasked items [P],
    in pair order (`metrics.compute_ranks`).

    Histories are batched by length (`pooled_batches`, as `settings` says; the score matrix of a batch
    stays under `SCORE_BUDGET`); with `exclude_history`, items already in a history are never ranked for
    it (`mask_history`).

    Raises:
        NonFiniteScores: a score is NaN or infinite (the metrics would be meaningless).
    """
    was_training = model.training
    model.eval()
    device = settings.device
    num_items = model._require_items().num_embeddings
    out_ranks = torch.empty(len(pairs), dtype=torch.long)
    out_valid = torch.empty(len(pairs), dtype=torch.long)
    histories = [history for history, _ in pairs]
    for rows, pooled in pooled_batches(
        model.longformer, tokenizer, table, histories, settings,
        max_count=max(1, SCORE_BUDGET // max(num_items, 1)), desc=desc,
    ):  # fmt: skip
        chunk = [pairs[i] for i in rows]
        labels = torch.tensor([target for _, target in chunk], dtype=torch.long, device=device)
        pooled = pooled.to(torch.promote_types(pooled.dtype, torch.float32))  # half precision scored in float32
        scores = model.similarity_score(pooled, chunk_size=SCORE_CHUNK)  # [B, N]
        check_finite_scores(scores)
        if exclude_history:
            mask_history(scores, chunk)
        r, v = compute_ranks(scores, labels)
        index = torch.as_tensor(rows, dtype=torch.long)
        out_ranks[index], out_valid[index] = r.cpu(), v.cpu()
    model.train(was_training)
    return out_ranks, out_valid


def evaluate(
    model: RecformerForSeqRec,
    pairs: Sequence[tuple[list[int], int]],
    tokenizer: RecformerTokenizer,
    table: TokenizedItems,
    settings: InferenceSettings,
    ks: Sequence[int],
    *,
    exclude_history: bool = False,
    desc: str = "evaluate",
) -> dict[str, float]:
    """Full-ranking metrics over all items for (history, target) pairs, averaged over users (`target_ranks`).

    In a distributed run (`distributed.py`) every rank must call it: each rank ranks the targets of
    its contiguous slice of `pairs`, the per-user ranks are gathered in pair order and averaged once,
    so the metrics are those of one process whatever the size of the last slice, on every rank.
    """
    if distributed.world_size() == 1:
        ranks, n_valid = target_ranks(model, pairs, tokenizer, table, settings, exclude_history=exclude_history,
                                      desc=desc)  # fmt: skip
        return metrics_from_ranks(ranks, n_valid, ks)
    start, end = distributed.shard_bounds(len(pairs))
    shown = settings.replace(progress=settings.progress and distributed.is_main())
    with distributed.fail_together():  # e.g. non-finite scores in one rank's slice stop every rank
        ranks, n_valid = target_ranks(model, pairs[start:end], tokenizer, table, shown,
                                      exclude_history=exclude_history, desc=desc)  # fmt: skip
    gathered = distributed.all_gather_rows(torch.stack([ranks, n_valid], dim=1))  # [P, 2]
    return metrics_from_ranks(gathered[:, 0], gathered[:, 1], ks)
