"""Packing encoded sequences into rows: many sequences per row, no padding between them.

A packed batch is what `RecformerModel.forward` takes with `segment_ids`: each row holds several
sequences back to back (first-fit decreasing under a per-row token budget), every sequence keeps its
own token types, item positions, global token and RoBERTa position ids (restarting at
`pad_token_id + 1`), and `segment_ids` tell the sequences apart. The model returns one pooled
vector per sequence, in input order. Pure Python: no tensors here (the collators convert).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .tokenization import SEQUENCE_FIELDS, TOKEN_TYPE_PAD

# Fields of a packed batch beyond the tokenizer's SEQUENCE_FIELDS ([R][T] each).
PACKED_ROW_FIELDS = ("position_ids", "segment_ids")
# Every input `pack_sequences` gives `RecformerModel.forward` beyond the tokenizer's SEQUENCE_FIELDS.
PACKED_INPUT_NAMES = (*PACKED_ROW_FIELDS, "sequence_starts", "global_positions")


def roberta_position_ids(input_ids: Sequence[int], pad_token_id: int) -> list[int]:
    """Positions as the model computes them for one sequence: pad + 1, pad + 2, ... skipping pad ids."""
    positions, count = [], 0
    for token in input_ids:
        if token == pad_token_id:
            positions.append(pad_token_id)
        else:
            count += 1
            positions.append(pad_token_id + count)
    return positions


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
    lengths = [len(seq["input_ids"]) for seq in sequences]
    for index, seq in enumerate(sequences):
        for name in SEQUENCE_FIELDS:
            if len(seq[name]) != lengths[index]:
                raise ValueError(f"sequence {index}: {name} has {len(seq[name])} values for {lengths[index]} input ids")
    rows = pack_rows(lengths, max_tokens)
    width = max((sum(lengths[i] for i in row) for row in rows), default=0)
    pad_values = {
        "input_ids": pad_token_id,
        "item_position_ids": pad_item_position_id,
        "token_type_ids": TOKEN_TYPE_PAD,
        "attention_mask": 0,
        "global_attention_mask": 0,
        "position_ids": pad_token_id,
        "segment_ids": -1,
    }
    batch: dict[str, list] = {name: [] for name in (*SEQUENCE_FIELDS, *PACKED_ROW_FIELDS)}
    sequence_starts = [0] * len(sequences)
    global_positions: list[list[int]] = []
    for r, row in enumerate(rows):
        fields: dict[str, list[int]] = {name: [] for name in batch}
        globals_of_row: list[int] = []
        for index in row:
            seq, start = sequences[index], len(fields["input_ids"])
            sequence_starts[index] = r * width + start
            for name in SEQUENCE_FIELDS:
                fields[name].extend(seq[name])
            fields["position_ids"].extend(roberta_position_ids(seq["input_ids"], pad_token_id))
            fields["segment_ids"].extend([index] * lengths[index])
            globals_of_row.extend(start + i for i, flag in enumerate(seq["global_attention_mask"]) if flag)
        for name, values in fields.items():
            batch[name].append(values + [pad_values[name]] * (width - len(values)))
        global_positions.append(globals_of_row)
    most = max((len(g) for g in global_positions), default=0)
    batch["global_positions"] = [g + [-1] * (most - len(g)) for g in global_positions]
    batch["sequence_starts"] = sequence_starts
    return batch
