"""Packing encoded sequences into rows: many sequences per row, no padding between them.

A packed batch is what `RecformerModel.forward` takes with `segment_ids`: each row holds several
sequences back to back (first-fit decreasing under a per-row token budget), every sequence keeps its
own token types, item positions, global token and RoBERTa position ids (restarting at
`pad_token_id + 1`), and `segment_ids` tell the sequences apart. The model returns one pooled
vector per sequence, in input order. numpy arrays or lists here, no tensors (the collators convert).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np

from recformer.model.layout import SEQUENCE_FIELDS, TOKEN_TYPE_PAD

# Fields of a packed batch beyond the tokenizer's SEQUENCE_FIELDS ([R][T] each).
PACKED_ROW_FIELDS = ("position_ids", "segment_ids")
# Every input `pack_sequences` gives `RecformerModel.forward` beyond the tokenizer's SEQUENCE_FIELDS.
PACKED_INPUT_NAMES = (*PACKED_ROW_FIELDS, "sequence_starts", "global_positions")
# Shortest row of packed batches (a row holds at least the longest sequence).
ROW_TOKENS = 256


def row_tokens(lengths: Sequence[int] | np.ndarray, most: int | None = None) -> int:
    """Token budget of the packed rows of sequences of `lengths`, at most `most` (None: no choice to make, the
    longest sequence and at least `ROW_TOKENS`).

    With `most`, of the widths longest x 2^k (at least `ROW_TOKENS`) and `most`, the one whose first-fit rows
    hold the fewest tokens in all (rows x width; the narrower on a tie): wide rows leave gaps no sequence
    fills (two 560-token histories do not share a 1,024-token row), narrow ones leave a part-empty last row.
    """
    lengths = [int(n) for n in lengths]
    width = max(max(lengths, default=1), ROW_TOKENS)
    if most is None:
        return width
    if width >= most:
        return most  # a sequence longer than `most` is refused by `pack_rows`, naming it
    widths = {min(width << k, most) for k in range(most.bit_length()) if (width << k) < 2 * most}
    return min(sorted(widths), key=lambda w: len(pack_rows(lengths, w)) * w)


def pack_rows(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices of the sequences in each row: first-fit decreasing, at most `max_tokens` tokens a row."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[index]
        if n > max_tokens:
            raise ValueError(f"sequence {index} has {n} tokens, more than max_tokens={max_tokens}")
        if n < 1:
            raise ValueError(f"sequence {index} is empty: every sequence needs at least its <s> token")
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(index)
                room[r] -= n
                break
        else:
            rows.append([index])
            room.append(max_tokens - n)
    return rows


def pack_sequences(
    sequences: Sequence[Mapping[str, Sequence[int]]],
    max_tokens: int,
    pad_token_id: int,
    pad_item_position_id: int,
) -> dict[str, list]:
    """Pack sequences (each as `RecformerTokenizer.encode` returns it) into rows of <= `max_tokens` tokens.

    Args:
        sequences: N encoded sequences (`input_ids`, `item_position_ids`, `token_type_ids`,
            `attention_mask`, `global_attention_mask` lists of equal length).
        max_tokens: token budget of one row (no sequence may be longer).
        pad_token_id: the tokenizer's pad id (also the model's position padding index).
        pad_item_position_id: item position of padding (`config.max_item_embeddings - 1`).

    Returns:
        The five tokenizer fields plus `position_ids` and `segment_ids` (the sequence's index in
        `sequences`, -1 on padding), each [R][T] with T the longest row; `sequence_starts` [N], the
        flat index `row * T + column` of each sequence's first token; `global_positions` [R][G],
        the positions of each row's global tokens, -1 in empty slots.

    Example:
        >>> packed = pack_sequences([tok.encode(items_a), tok.encode(items_b)], 1024, tok.pad_token_id, 50)
        >>> model(**{k: torch.tensor(v) for k, v in packed.items()}).pooler_output  # [2, H]
    """
    packed = pack_flat(*flatten_sequences(sequences), max_tokens, pad_token_id, pad_item_position_id)
    return {name: value.tolist() for name, value in packed.items()}


def flatten_sequences(sequences: Sequence[Mapping[str, Sequence[int]]]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Encoded sequences back to back, as `pack_flat` takes them: ({field: [T] int64}, lengths [N])."""
    lengths = np.array([len(seq["input_ids"]) for seq in sequences], dtype=np.int64)
    for index, seq in enumerate(sequences):
        for name in SEQUENCE_FIELDS:
            if len(seq[name]) != lengths[index]:
                raise ValueError(f"sequence {index}: {name} has {len(seq[name])} values for {lengths[index]} input ids")
    total = int(lengths.sum())
    fields = {
        name: np.fromiter(itertools.chain.from_iterable(seq[name] for seq in sequences), dtype=np.int64, count=total)
        for name in SEQUENCE_FIELDS
    }
    return fields, lengths


def pack_flat(
    fields: Mapping[str, np.ndarray],
    lengths: np.ndarray,
    max_tokens: int,
    pad_token_id: int,
    pad_item_position_id: int,
) -> dict[str, np.ndarray]:
    """`pack_sequences` on sequences given back to back: `fields[name]` [T] holds every sequence's values of
    a tokenizer field in turn, sequence i being the next `lengths[i]` of them. Returns int64 arrays.

    Vectorised: the cost is a few numpy passes over the tokens, not Python work per token.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    count = len(lengths)
    rows = pack_rows(lengths.tolist(), max_tokens)
    order = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=count)  # sequences as placed
    row_sizes = np.array([len(row) for row in rows], dtype=np.int64)
    row_of = np.repeat(np.arange(len(rows), dtype=np.int64), row_sizes)  # [N] in placement order
    placed = lengths[order]
    ends = np.cumsum(placed)
    row_base = (ends - placed)[np.cumsum(row_sizes) - row_sizes]  # [R] tokens placed before each row
    column = ends - placed - row_base[row_of]  # [N] first column of each placed sequence
    width = int(max((column + placed).max(initial=0), 0))
    starts = np.zeros(count + 1, dtype=np.int64)  # where each sequence's tokens begin in `fields`
    np.cumsum(lengths, out=starts[1:])
    # Token j of placed sequence k: source starts[order[k]] + j, destination row_of[k] * width + column[k] + j.
    within = np.arange(int(ends[-1]) if count else 0, dtype=np.int64) - np.repeat(ends - placed, placed)
    source = np.repeat(starts[order], placed) + within
    destination = np.repeat(row_of * width + column, placed) + within
    pad_values = {
        "input_ids": pad_token_id,
        "item_position_ids": pad_item_position_id,
        "token_type_ids": TOKEN_TYPE_PAD,
        "attention_mask": 0,
        "global_attention_mask": 0,
        "position_ids": pad_token_id,
        "segment_ids": -1,
    }
    ids = np.asarray(fields["input_ids"], dtype=np.int64)
    real = ids != pad_token_id
    counted = np.cumsum(real)
    before = counted[starts[:-1]] - real[starts[:-1]] if count else np.zeros(0, dtype=np.int64)  # [N]
    sequence_of = np.repeat(np.arange(count, dtype=np.int64), lengths)  # [T]
    flat = {name: np.asarray(fields[name], dtype=np.int64) for name in SEQUENCE_FIELDS}
    flat["position_ids"] = np.where(real, pad_token_id + counted - before[sequence_of], pad_token_id)
    flat["segment_ids"] = sequence_of
    batch: dict[str, np.ndarray] = {}
    for name, values in flat.items():
        out = np.full(len(rows) * width, pad_values[name], dtype=np.int64)
        out[destination] = values[source]
        batch[name] = out.reshape(len(rows), width)
    sequence_starts = np.empty(count, dtype=np.int64)
    sequence_starts[order] = row_of * width + column
    row, col = np.nonzero(batch["global_attention_mask"])  # row-major: each row's globals in order
    per_row = np.bincount(row, minlength=len(rows))
    most = int(per_row.max(initial=0))
    global_positions = np.full((len(rows), most), -1, dtype=np.int64)
    global_positions[row, np.arange(len(row)) - np.repeat(np.cumsum(per_row) - per_row, per_row)] = col
    batch["global_positions"] = global_positions
    batch["sequence_starts"] = sequence_starts
    return batch


def pack_padded(
    groups: Sequence[Mapping[str, np.ndarray]], max_tokens: int, pad_token_id: int, pad_item_position_id: int
) -> dict[str, np.ndarray]:
    """`pack_flat` on the sequences of padded batches: `groups` of [n_g, L_g] arrays of the tokenizer fields,
    each row's real tokens marked by its `attention_mask`, in rows of `row_tokens(lengths, max_tokens)`
    tokens. Sequence k of the result is the k-th row in group order (group 0's rows, then group 1's, ...),
    so `sequence_starts[k] + c` is where column c of that row lands in the packed rows."""
    fields: dict[str, list[np.ndarray]] = {name: [] for name in SEQUENCE_FIELDS}
    lengths = []
    for group in groups:
        real = np.asarray(group["attention_mask"]) != 0  # [n, L]
        lengths.append(real.sum(axis=1))
        for name in SEQUENCE_FIELDS:
            fields[name].append(np.asarray(group[name])[real])  # row by row, in order
    flat = {name: np.concatenate(values).astype(np.int64, copy=False) for name, values in fields.items()}
    lengths = np.concatenate(lengths)
    return pack_flat(flat, lengths, row_tokens(lengths, max_tokens), pad_token_id, pad_item_position_id)
