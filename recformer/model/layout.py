"""The one rule that lays a history of items out as model inputs.

    <s> | k1 v1 k2 v2 ... (newest item) | k1 v1 ... (next older item) | ...
    token type:      0 | 1 for key tokens, 2 for value tokens
    item position:   0 | 1 for the newest item, 2 for the next, ...

A sequence (oldest item first) keeps its newest `max_item_embeddings - 1` items, newest first after
`<s>`, and is cut at `max_token_num` tokens. Padding: ids `pad_token_id`, item positions
`max_item_embeddings - 1`, token types 3, both masks 0. `<s>` is the only global token.

`SequenceLayout` states the rule once; the tokenizer (`RecformerTokenizer.layout`) owns one, and
everything that lays out sequences (the tokenizer's `encode`, the vectorised item table, batch
lengths, padding, packing) asks it. No torch here.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# The fields one encoded sequence carries, in the reference's order.
SEQUENCE_FIELDS = ("input_ids", "item_position_ids", "token_type_ids", "attention_mask", "global_attention_mask")
TOKEN_TYPE_BOS, TOKEN_TYPE_KEY, TOKEN_TYPE_VALUE, TOKEN_TYPE_PAD = 0, 1, 2, 3


def pad_item_position(config: Any) -> int:
    """The item position of padding tokens: the last row of the item-position table."""
    return config.max_item_embeddings - 1


@dataclass(frozen=True)
class SequenceLayout:
    """How sequences of tokenized items become model fields (see the module docstring).

    Items are `(input_ids, token_type_ids)` pairs, already laid out by the tokenizer.
    """

    bos_token_id: int
    pad_token_id: int
    max_items: int  # items kept per sequence: max_item_embeddings - 1
    max_tokens: int  # tokens kept per sequence: max_token_num
    pad_item_position: int

    @classmethod
    def from_config(cls, config: Any, bos_token_id: int, pad_token_id: int) -> SequenceLayout:
        return cls(bos_token_id, pad_token_id, config.max_item_embeddings - 1, config.max_token_num,
                   pad_item_position(config))  # fmt: skip

    @property
    def pad_values(self) -> dict[str, int]:
        """The value each field is padded with."""
        return {"input_ids": self.pad_token_id, "item_position_ids": self.pad_item_position,
                "token_type_ids": TOKEN_TYPE_PAD, "attention_mask": 0, "global_attention_mask": 0}  # fmt: skip

    def kept(self, sequence: Sequence[Any]) -> list[Any]:
        """The items of a sequence (oldest first) that are laid out: its newest `max_items`, newest first."""
        return list(sequence)[::-1][: self.max_items]

    def length(self, item_lengths: Sequence[int]) -> int:
        """Tokens of the laid-out sequence whose kept items (newest first) have `item_lengths` tokens."""
        return min(1 + sum(item_lengths), self.max_tokens)

    def encode(self, kept_items: Sequence[tuple[Sequence[int], Sequence[int]]]) -> dict[str, list[int]]:
        """The unpadded fields of one sequence from its kept items, newest first (`kept`)."""
        input_ids = [self.bos_token_id]
        token_type_ids = [TOKEN_TYPE_BOS]
        item_position_ids = [0]
        for position, (ids, types) in enumerate(kept_items, start=1):
            if len(ids) != len(types):
                raise ValueError(f"item at position {position}: {len(ids)} input ids but {len(types)} token types")
            input_ids += ids
            token_type_ids += types
            item_position_ids += [position] * len(ids)
        n = min(len(input_ids), self.max_tokens)
        return {
            "input_ids": input_ids[:n],
            "item_position_ids": item_position_ids[:n],
            "token_type_ids": token_type_ids[:n],
            "attention_mask": [1] * n,
            "global_attention_mask": [1] + [0] * (n - 1),
        }

    def pad(self, encoded: Sequence[dict[str, Sequence[int]]], length: int | None = None) -> dict[str, list[list[int]]]:
        """Right-pad encoded sequences to `length` (default: the longest); the inputs are not modified."""
        if length is None:
            length = max((len(s["input_ids"]) for s in encoded), default=0)
        pad_values = self.pad_values
        batch: dict[str, list[list[int]]] = {name: [] for name in SEQUENCE_FIELDS}
        for seq in encoded:
            n = len(seq["input_ids"])
            if n > length:
                raise ValueError(f"sequence of {n} tokens is longer than the padding length {length}")
            for name in SEQUENCE_FIELDS:
                batch[name].append(list(seq[name]) + [pad_values[name]] * (length - n))
        return batch

    def pad_flat(
        self, fields: dict[str, np.ndarray], lengths: np.ndarray, length: int | None = None
    ) -> dict[str, np.ndarray]:
        """`pad` of sequences given back to back (as `encode_flat` returns them), vectorised: {field: [N, length]
        int64} with `length` the longest sequence by default; the same values as `pad`."""
        lengths = np.asarray(lengths, dtype=np.int64)
        if length is None:
            length = int(lengths.max(initial=0))
        if (lengths > length).any():
            raise ValueError(f"sequence of {int(lengths.max())} tokens is longer than the padding length {length}")
        starts = np.cumsum(lengths) - lengths
        row = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
        destination = row * length + np.arange(int(lengths.sum()), dtype=np.int64) - starts[row]
        pad_values = self.pad_values
        batch = {}
        for name in SEQUENCE_FIELDS:
            out = np.full(len(lengths) * length, pad_values[name], dtype=np.int64)
            out[destination] = fields[name]
            batch[name] = out.reshape(len(lengths), length)
        return batch

    def encode_flat(
        self, ids: np.ndarray, types: np.ndarray, offsets: np.ndarray, rows: Sequence[Sequence[int]]
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """`encode` of many sequences at once, vectorised over tokens, for items held as flat arrays (item r's
        tokens are `ids[offsets[r]:offsets[r + 1]]`, its types likewise) and `rows`: each sequence's kept
        item rows, newest first. Returns ({field: [T] int64 values of every sequence in turn}, lengths [N]),
        what `packing.pack_flat` takes: the same values as `encode` of each sequence."""
        lengths = np.diff(offsets)
        # Pieces: each sequence's <s>, then its items newest first; cut at max_tokens tokens.
        pieces = np.array([len(r) + 1 for r in rows], dtype=np.int64)  # [N]
        first = np.cumsum(pieces) - pieces  # [N] index of each sequence's <s> piece
        total = int(pieces.sum())
        item_rows = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=total - len(rows))
        is_bos = np.zeros(total, dtype=bool)
        is_bos[first] = True
        size = np.ones(total, dtype=np.int64)
        size[~is_bos] = lengths[item_rows]
        source = np.zeros(total, dtype=np.int64)
        source[~is_bos] = offsets[item_rows]
        sequence_of = np.repeat(np.arange(len(rows), dtype=np.int64), pieces)  # [P]
        position = np.arange(total, dtype=np.int64) - first[sequence_of]  # item position: <s> 0, items 1..
        ends = np.cumsum(size)
        offset = ends - size - (ends - size)[first][sequence_of]  # first token of each piece within its sequence
        size = np.clip(self.max_tokens - offset, 0, size)
        piece_of = np.repeat(np.arange(total, dtype=np.int64), size)  # [T]
        within = np.arange(int(size.sum()), dtype=np.int64) - np.repeat(np.cumsum(size) - size, size)
        bos = is_bos[piece_of]
        token = (source[piece_of] + within)[~bos]  # positions in `ids` of the item tokens
        input_ids = np.full(len(bos), self.bos_token_id, dtype=np.int64)
        input_ids[~bos] = ids[token]
        token_type_ids = np.full(len(bos), TOKEN_TYPE_BOS, dtype=np.int64)
        token_type_ids[~bos] = types[token]
        fields = {
            "input_ids": input_ids,
            "item_position_ids": position[piece_of],
            "token_type_ids": token_type_ids,
            "attention_mask": np.ones(len(bos), dtype=np.int64),
            "global_attention_mask": bos.astype(np.int64),
        }
        return fields, np.bincount(sequence_of[piece_of], minlength=len(rows)).astype(np.int64)
