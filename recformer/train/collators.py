"""Batch collators for pretraining, finetuning and evaluation.

All three turn item ids into padded tensors through one function, `batching.encode_item_sequences`, and
differ only in how they pick the history and the target. Items are looked up in a table of
pre-tokenized items (`(input_ids, token_type_ids)` per item id, tokenized once up front), so no
collator tokenizes text. All randomness comes from the `random.Random` passed in.

With a `TokenizedItems` table the batches are laid out with numpy, and pretraining's whole-word masking
is vectorised too (`masking.WholeWordMasker`); `vectorised=False` keeps the per-token Python path, which
gives the same tensors for the same generator state (kept for benchmarks and as the reference).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from recformer.distributed import shard_bounds
from recformer.model.batching import ItemTable, encode_item_sequences, pack_item_sequences
from recformer.model.layers import draw_candidates
from recformer.model.layout import SEQUENCE_FIELDS
from recformer.model.packing import pack_padded
from recformer.model.tokenization import RecformerTokenizer
from recformer.train.masking import WholeWordMasker

__all__ = [
    "EvalCollator", "FinetuneCollator", "GlobalBatchCollator", "PretrainCollator", "StepBatch", "WholeWordMasker",
    "PACK_MODES", "pack_pairs", "train_pack_tokens",
]  # fmt: skip


def check_pack_tokens(pack_tokens: int | None, tokenizer: RecformerTokenizer) -> None:
    """Refuse a packed-row budget that cannot hold the longest sequence (`max_token_num` tokens)."""
    if pack_tokens is not None and pack_tokens < tokenizer.config.max_token_num:
        raise ValueError(f"pack_tokens={pack_tokens} is less than max_token_num={tokenizer.config.max_token_num}")


class FinetuneCollator:
    """Training batches: for each user one random target position in [0, L-1]; history = items before it.

    With `num_negatives` K > 0 the batch also holds `candidates` [B, 1 + K]: each target first, then K
    negatives drawn uniformly from the other items of the table (`layers.draw_candidates`), for
    `RecformerForSeqRec`'s sampled softmax.

    With `pack_tokens` the histories are packed (`batching.pack_item_sequences`: several a row, rows as wide
    as the longest history, at least `packing.ROW_TOKENS` and at most `pack_tokens` tokens, attention kept
    within each) rather than padded, for the sdpa/flex paths; the draws, labels and candidates are the same.

    Example (targets drawn at positions 2 and 0):
        >>> collator([[5, 9, 2, 4], [8, 1]])
        {input_ids: encoding of [[5, 9], []], ..., 'labels': tensor([2, 8])}
    """

    def __init__(
        self,
        tokenizer: RecformerTokenizer,
        item_table: ItemTable,
        rng: random.Random | None = None,
        num_negatives: int = 0,
        vectorised: bool = True,
        pack_tokens: int | None = None,
    ):
        check_pack_tokens(pack_tokens, tokenizer)
        self.tokenizer = tokenizer
        self.item_table = item_table
        self.rng = rng if rng is not None else random.Random(0)
        self.num_negatives = num_negatives
        self.vectorised = vectorised
        self.pack_tokens = pack_tokens

    def sample(
        self, batch: Sequence[Sequence[int]], rng: random.Random | None = None
    ) -> tuple[list[Sequence[int]], torch.Tensor, torch.Tensor | None]:
        """(histories, labels [B], candidates [B, 1 + K] or None), drawn from `rng` (default: `self.rng`)."""
        rng = self.rng if rng is None else rng
        histories, labels = [], []
        for seq in batch:
            if len(seq) == 0:
                raise ValueError("a training sequence is empty")
            t = rng.randint(0, len(seq) - 1)
            histories.append(seq[:t])
            labels.append(seq[t])
        targets = torch.tensor(labels, dtype=torch.long)
        candidates = None
        if self.num_negatives > 0:
            generator = torch.Generator().manual_seed(rng.getrandbits(63))
            candidates = draw_candidates(targets, len(self.item_table), self.num_negatives, generator)
        return histories, targets, candidates

    def encode(
        self, histories: Sequence[Sequence[int]], labels: torch.Tensor, candidates: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The model inputs of sampled rows: encoded histories, `labels` and `candidates` when given."""
        if self.pack_tokens is not None:
            out = pack_item_sequences(self.tokenizer, self.item_table, histories, self.pack_tokens, fit_rows=True)
        else:
            out = encode_item_sequences(self.tokenizer, self.item_table, histories, vectorised=self.vectorised)
        out["labels"] = labels
        if candidates is not None:
            out["candidates"] = candidates
        return out

    def __call__(self, batch: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        return self.encode(*self.sample(batch))


PACK_MODES = ("off", "on", "auto")


def train_pack_tokens(mode: str, implementation: str, max_token_num: int) -> int | None:
    """The row budget of packed training batches (`FinetuneCollator.pack_tokens`, `PretrainCollator.pack_tokens`),
    or None for padded ones.

    `mode` "off": padded. "on": packed, rows of up to `max_token_num` tokens; refused on the eager attention,
    which cannot keep the sequences of a row apart. "auto": packed on sdpa/flex (`bench/bench_packed_training.py`
    measured packed steps as fast as padded ones or faster on CPU sdpa, for finetuning and pretraining),
    padded on eager.
    """
    if mode not in PACK_MODES:
        raise ValueError(f"--pack_train_batches must be one of {', '.join(PACK_MODES)}, got {mode!r}")
    if mode == "off" or (mode == "auto" and implementation == "eager"):
        return None
    if implementation == "eager":
        raise ValueError("--pack_train_batches on needs --attn_implementation sdpa, flex_attention or auto, not eager")
    return max_token_num


class StepBatch(NamedTuple):
    """One optimizer step of one rank: `size` users in the global batch, this rank's micro-batches and
    how many users each counts (0 for a stand-in batch of a rank with no user in this step)."""

    size: int
    micro: list[tuple[dict[str, torch.Tensor], int]]


class GlobalBatchCollator:
    """Training steps for one rank of `world`: a global batch of user sequences -> this rank's micro-batches.

    Targets and negatives of the whole global batch are drawn from one generator seeded by
    (`seed`, step), in global order, before the batch is split into contiguous per-rank slices
    (`distributed.shard_bounds`) and each slice into micro-batches of
    at most `micro_batch` users. So the rows of a step are the same whatever the world size, and
    concatenating every rank's micro-batches gives the one-process batch. A rank left without a user
    (a last step smaller than the world) gets the step's first user as a stand-in counted 0 times, so
    it still takes part in the gradient all-reduce.

    Input: (step index, the step's user sequences); output: `StepBatch`.
    """

    def __init__(
        self, collator: FinetuneCollator, seed: int, micro_batch: int, rank: int = 0, world: int = 1
    ) -> None:
        self.collator = collator
        self.seed = seed
        self.micro_batch = micro_batch
        self.rank, self.world = rank, world

    def __call__(self, step: tuple[int, Sequence[Sequence[int]]]) -> StepBatch:
        index, sequences = step
        histories, labels, candidates = self.collator.sample(sequences, random.Random(f"{self.seed}/{index}"))
        n = len(sequences)
        start, end = shard_bounds(n, self.rank, self.world)
        counted = 1
        if start == end:
            start, end, counted = 0, 1, 0
        micro = []
        for a in range(start, end, self.micro_batch):
            b = min(a + self.micro_batch, end)
            drawn = None if candidates is None else candidates[a:b]
            rows = self.collator.encode(histories[a:b], labels[a:b], drawn)
            micro.append((rows, (b - a) * counted))
        return StepBatch(n, micro)


class EvalCollator:
    """Evaluation batches: `(history, label)` pairs; the whole history is the input.

    Example:
        >>> collator([([5, 9, 2], 4), ([8], 1)])
        {input_ids: encoding of [[5, 9, 2], [8]], ..., 'labels': tensor([4, 1])}
    """

    def __init__(self, tokenizer: RecformerTokenizer, item_table: ItemTable):
        self.tokenizer = tokenizer
        self.item_table = item_table

    def __call__(self, batch: Sequence[tuple[Sequence[int], int]]) -> dict[str, torch.Tensor]:
        histories = [history for history, _ in batch]
        out = encode_item_sequences(self.tokenizer, self.item_table, histories)
        out["labels"] = torch.tensor([label for _, label in batch], dtype=torch.long)
        return out


class PretrainCollator:
    """Pretraining batches: (history, next item) pairs with whole-word MLM copies of both sides.

    For a sequence of length L, a target position t is drawn uniformly in [(L-1)//2, L-1]; side a is
    the items before t (possibly none: just `<s>`), side b is [item t]. Keys: `<field>_a`,
    `<field>_b` for the five encoder fields and `global_positions`, plus `mlm_input_ids_a/b`,
    `mlm_labels_a/b` and `mlm_positions_a/b` (flat indices of the masked tokens).

    With `pack_tokens` the batch is packed instead (`pack_pairs`): both sides and their MLM copies in rows as
    wide as the longest sequence (at least `packing.ROW_TOKENS`, at most `pack_tokens` tokens) under the key `packed`, with `mlm_positions_a/b` and `mlm_labels_a/b` of
    those rows; the draws and the masks are those of the padded batch.

    Example:
        >>> collator([["A", "B", "C"], ["D", "E"]])   # draws t = 2 and t = 1
        {'input_ids_a': encoding of [["A", "B"], ["D"]], 'input_ids_b': encoding of [["C"], ["E"]], ...}
    """

    def __init__(
        self,
        tokenizer: RecformerTokenizer,
        item_table: ItemTable,
        mlm_probability: float = 0.15,
        rng: random.Random | None = None,
        vectorised: bool = True,
        pack_tokens: int | None = None,
    ):
        check_pack_tokens(pack_tokens, tokenizer)
        self.pack_tokens = pack_tokens
        self.tokenizer = tokenizer
        self.item_table = item_table
        self.masker = WholeWordMasker(tokenizer, mlm_probability, vectorised=vectorised)
        self.rng = rng if rng is not None else random.Random(0)
        self.vectorised = vectorised

    def split(self, seq: Sequence[Any]) -> tuple[Sequence[Any], Sequence[Any]]:
        if len(seq) < 2:
            raise ValueError(f"a pretraining sequence needs at least 2 items, got {len(seq)}")
        t = self.rng.randint((len(seq) - 1) // 2, len(seq) - 1)
        return seq[:t], seq[t : t + 1]

    def __call__(self, batch: Sequence[Sequence[Any]]) -> dict[str, torch.Tensor]:
        pairs = [self.split(seq) for seq in batch]
        out: dict[str, torch.Tensor] = {}
        for side, index in (("a", 0), ("b", 1)):
            sequences = [pair[index] for pair in pairs]
            encoded = encode_item_sequences(self.tokenizer, self.item_table, sequences, vectorised=self.vectorised)
            mlm_input_ids, mlm_labels = self.masker(encoded["input_ids"], self.rng)
            out.update({f"{name}_{side}": value for name, value in encoded.items()})
            out[f"mlm_input_ids_{side}"] = mlm_input_ids
            out[f"mlm_labels_{side}"] = mlm_labels
            # flat indices of the masked tokens, found here on the CPU so the model's step needs no host sync
            out[f"mlm_positions_{side}"] = (mlm_labels.reshape(-1) != -100).nonzero().squeeze(1)
        return out if self.pack_tokens is None else pack_pairs(out, self.pack_tokens, self.tokenizer)


def pack_pairs(batch: dict[str, torch.Tensor], max_tokens: int, tokenizer: RecformerTokenizer) -> dict[str, torch.Tensor]:
    """A padded pretraining batch (`PretrainCollator`'s keys) as packed rows (at most `max_tokens` tokens):
    {"packed": the `RecformerModel` inputs of its 4B sequences (side a, side a's MLM copy, side b, side b's
    MLM copy; `packing.pack_padded`), "mlm_positions_a/b": where the masked tokens of each MLM copy are in
    those rows (flat indices), "mlm_labels_a/b": their labels [M]}: the same tokens, so the same loss."""
    groups = []
    for side in ("a", "b"):
        fields = {name: batch[f"{name}_{side}"].numpy() for name in SEQUENCE_FIELDS}
        groups += [fields, {**fields, "input_ids": batch[f"mlm_input_ids_{side}"].numpy()}]
    layout = tokenizer.layout
    packed = {name: torch.from_numpy(v) for name, v in
              pack_padded(groups, max_tokens, layout.pad_token_id, layout.pad_item_position).items()}  # fmt: skip
    pairs, starts = batch["input_ids_a"].size(0), packed["sequence_starts"]
    out: dict[str, torch.Tensor | dict] = {"packed": packed}
    for copy, side in ((1, "a"), (3, "b")):  # the MLM copies are sequences B..2B-1 and 3B..4B-1
        width, positions = batch[f"input_ids_{side}"].size(1), batch[f"mlm_positions_{side}"]
        out[f"mlm_positions_{side}"] = starts[copy * pairs + positions // width] + positions % width
        out[f"mlm_labels_{side}"] = batch[f"mlm_labels_{side}"].reshape(-1)[positions]
    return out
