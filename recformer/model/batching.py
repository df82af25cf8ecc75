"""Model inputs from sequences of item keys: padded batches and packed rows, as tensors.

Every batch the model sees is built here, from a table of tokenized items (`(input_ids,
token_type_ids)` per key, or a `TokenizedItems`) and the tokenizer's one layout rule
(`RecformerTokenizer.layout`): the training collators, item tables, evaluation and the recommender
all call these functions and differ only in which sequences they pick.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch

from recformer.model.attention import global_positions_from_mask
from recformer.model.item_tokens import TokenizedItems
from recformer.model.packing import flatten_sequences, pack_flat, row_tokens
from recformer.model.tokenization import RecformerTokenizer, TokenizedItem

ItemTable = Sequence[TokenizedItem] | Mapping[Hashable, TokenizedItem]


def encode_each(
    tokenizer: RecformerTokenizer, item_table: ItemTable, sequences: Sequence[Sequence[Hashable]]
) -> list[dict[str, list[int]]]:
    """Each sequence of item ids (oldest first) as `tokenizer.encode` lays it out, unpadded."""
    encoded = []
    for seq in sequences:
        items = []
        for i in seq:
            try:
                items.append(item_table[i])
            except (KeyError, IndexError):
                raise KeyError(f"item {i!r} is not in the tokenized item table") from None
        encoded.append(tokenizer.encode(items, encode_item=False))
    return encoded


def encode_item_sequences(
    tokenizer: RecformerTokenizer,
    item_table: ItemTable,
    sequences: Sequence[Sequence[Hashable]],
    pad_to_max: bool = False,
    vectorised: bool = True,
) -> dict[str, torch.Tensor]:
    """Padded LongTensors [B, L] for sequences of item ids (each oldest first), plus `global_positions`
    [B, G] (each row's global tokens, -1 in empty slots: the fast attention paths need no host sync).

    A `TokenizedItems` table is laid out with numpy (`SequenceLayout.encode_flat` and `pad_flat`: Python
    work per item, not per token); other tables, or `vectorised=False`, go through `tokenizer.encode` and
    `tokenizer.padding` per sequence. Both give the same tensors.

    Example:
        >>> encode_item_sequences(tok, table, [[3, 7], []])
        {'input_ids': [[0, <item 7>, <item 3>], [0, 1, 1, ...]], 'item_position_ids': [[0, 1, .., 2, ..], [0, 50, ..]],
         'token_type_ids': ..., 'attention_mask': ..., 'global_attention_mask': [[1, 0, ...], [1, 0, ...]],
         'global_positions': [[0], [0]]}
    """
    if vectorised and isinstance(item_table, TokenizedItems) and len(sequences) > 0:
        fields, lengths = item_table.encode_sequences(tokenizer, sequences)
        length = tokenizer.config.max_token_num if pad_to_max else None
        out = {name: torch.from_numpy(value) for name, value in tokenizer.layout.pad_flat(fields, lengths, length).items()}
    else:
        padded = tokenizer.padding(encode_each(tokenizer, item_table, sequences), pad_to_max=pad_to_max)
        out = {name: torch.tensor(value, dtype=torch.long) for name, value in padded.items()}
    out["global_positions"] = global_position_tensor(out["global_attention_mask"])
    return out


def global_position_tensor(global_attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, G] positions of each row's global tokens (-1 in empty slots) of a CPU [B, L] mask."""
    positions = global_positions_from_mask(global_attention_mask != 0)
    if positions is None:
        return torch.empty(global_attention_mask.size(0), 0, dtype=torch.long)
    return torch.where(positions < global_attention_mask.size(1), positions, -1)


def pack_item_sequences(
    tokenizer: RecformerTokenizer,
    item_table: ItemTable,
    sequences: Sequence[Sequence[Hashable]],
    max_tokens: int,
    fit_rows: bool = False,
) -> dict[str, torch.Tensor]:
    """Sequences of item ids packed into rows of at most `max_tokens` tokens (`packing.pack_sequences`),
    as LongTensors: what `RecformerModel.forward` takes to return one pooled vector per sequence.
    `fit_rows`: rows only as wide as these sequences need (`packing.row_tokens`), at most `max_tokens`."""
    if isinstance(item_table, TokenizedItems):  # vectorised: no Python work per token
        fields, lengths = item_table.encode_sequences(tokenizer, sequences)
    else:
        fields, lengths = flatten_sequences(encode_each(tokenizer, item_table, sequences))
    layout = tokenizer.layout
    if fit_rows:
        max_tokens = row_tokens(lengths, max_tokens)
    packed = pack_flat(fields, lengths, max_tokens, layout.pad_token_id, layout.pad_item_position)
    return {name: torch.from_numpy(value) for name, value in packed.items()}
