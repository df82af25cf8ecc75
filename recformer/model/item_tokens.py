"""Tokenize a catalogue once and keep it compact: the table the collators read items from.

`TokenizedItems` stores every item's `(input_ids, token_type_ids)` in flat numpy arrays (int32 ids,
int8 types, int64 offsets), so a million-item catalogue costs a few hundred MB rather than gigabytes
of Python lists. It is indexed by row (finetuning item ids) or by key (pretraining asins).

`tokenize_catalogue` builds it (the Rust tokenizer encodes in parallel threads) and caches it on
disk (`cache.py`: keyed by the tokenizer, the Recformer fields that shape an item, and the items).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from recformer.io.cache import cached, tokenized_items_path
from recformer.io.fileio import atomic_open, dumps_json
from recformer.model.tokenization import RecformerTokenizer, check_item

logger = logging.getLogger(__name__)


class TokenizedItems(Sequence):
    """Tokenized items as flat arrays; `table[i]` or `table[key]` -> `(input_ids, token_type_ids)` lists."""

    def __init__(self, ids: np.ndarray, types: np.ndarray, offsets: np.ndarray, keys: Sequence[Hashable] | None = None):
        self.ids, self.types, self.offsets = ids, types, offsets
        self.keys = list(keys) if keys is not None else None
        self.index = {k: i for i, k in enumerate(self.keys)} if self.keys is not None else None

    @classmethod
    def from_lists(cls, encoded: Sequence[tuple[Sequence[int], Sequence[int]]], keys=None) -> TokenizedItems:
        lengths = np.fromiter((len(ids) for ids, _ in encoded), dtype=np.int64, count=len(encoded))
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.fromiter((t for item_ids, _ in encoded for t in item_ids), dtype=np.int32, count=int(offsets[-1]))
        types = np.fromiter((t for _, item_types in encoded for t in item_types), dtype=np.int8, count=int(offsets[-1]))
        return cls(ids, types, offsets, keys)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, key: Hashable) -> int:
        if self.index is not None and not isinstance(key, (int, np.integer)):
            return self.index[key]
        if isinstance(key, (int, np.integer)) and 0 <= key < len(self):
            return int(key)
        raise KeyError(key)

    def __getitem__(self, key):  # type: ignore[override]
        i = self.row(key)
        start, end = self.offsets[i], self.offsets[i + 1]
        return self.ids[start:end].tolist(), self.types[start:end].tolist()

    def __contains__(self, key) -> bool:  # type: ignore[override]
        try:
            self.row(key)
        except KeyError:
            return False
        return True

    def take(self, rows: Sequence[int] | np.ndarray) -> TokenizedItems:
        """The given rows, in that order, as a table of their own (row j is row `rows[j]`)."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, lengths = self.offsets[rows], self.lengths()[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])  # [T] positions in self.ids
        keys = [self.keys[i] for i in rows] if self.keys is not None else None
        return TokenizedItems(self.ids[flat], self.types[flat], offsets, keys)

    def lengths(self) -> np.ndarray:
        """Tokens per item [N]."""
        return np.diff(self.offsets)

    def encode_sequences(
        self, tokenizer: RecformerTokenizer, sequences: Sequence[Sequence[Hashable]]
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Sequences of item keys (each oldest first) laid out as `tokenizer.encode` lays them out, back to
        back: ({field: [T] int64 values of every sequence in turn}, lengths [N]), what `packing.pack_flat`
        takes. Vectorised over tokens (Python work per item, not per token).
        """
        layout = tokenizer.layout
        rows: list[list[int]] = []
        for seq in sequences:
            try:
                rows.append([self.row(key) for key in layout.kept(seq)])
            except KeyError as error:
                raise KeyError(f"item {error.args[0]!r} is not in the tokenized item table") from None
        return layout.encode_flat(self.ids, self.types, self.offsets, rows)

    def identical_items(self, chunk_tokens: int = 1 << 22) -> tuple[int, int]:
        """(size of the largest group of items with the same token ids, one row of it); (0, -1) for an
        empty table. Each item is hashed (64-bit, position-weighted sum of its ids, with its length) a
        chunk of about `chunk_tokens` tokens at a time, so the extra memory is bounded."""
        n = len(self)
        if n == 0:
            return 0, -1
        lengths = self.lengths()
        weights = np.random.default_rng(0).integers(1, 2**63, size=int(lengths.max()) + 1, dtype=np.uint64) | 1
        hashes = np.empty(n, dtype=np.uint64)
        start = 0
        while start < n:
            end = int(np.searchsorted(self.offsets, self.offsets[start] + chunk_tokens, side="right"))
            end = min(max(end - 1, start + 1), n)
            first, last = int(self.offsets[start]), int(self.offsets[end])
            within = np.arange(last - first) - np.repeat(self.offsets[start:end] - first, lengths[start:end])
            with np.errstate(over="ignore"):
                terms = self.ids[first:last].astype(np.uint64) * weights[within]
                sums = np.zeros(end - start, np.uint64)
                filled = lengths[start:end] > 0  # reduceat over the non-empty items' starts: each sum ends at the next
                if filled.any():
                    sums[filled] = np.add.reduceat(terms, (self.offsets[start:end] - first)[filled])
                hashes[start:end] = sums + lengths[start:end].astype(np.uint64) * weights[-1]
            start = end
        _, first_rows, counts = np.unique(hashes, return_index=True, return_counts=True)
        best = int(counts.argmax())
        return int(counts[best]), int(first_rows[best])

    def save(self, path: str | os.PathLike) -> None:
        with atomic_open(path, "wb") as f:
            np.savez(
                f,
                ids=self.ids,
                types=self.types,
                offsets=self.offsets,
                keys=np.frombuffer(dumps_json(self.keys), dtype=np.uint8),
            )

    @classmethod
    def load(cls, path: str | os.PathLike) -> TokenizedItems:
        import json

        with np.load(path) as data:
            keys = json.loads(data["keys"].tobytes().decode("utf-8"))
            return cls(data["ids"], data["types"], data["offsets"], keys)


def tokenize_catalogue(
    tokenizer: RecformerTokenizer,
    items: Sequence[Mapping[str, Any]],
    keys: Sequence[Hashable] | None = None,
    cache_dir: str | os.PathLike | None = None,
    chunk_size: int = 8192,
    progress: bool = True,
    write_cache: bool = True,
) -> TokenizedItems:
    """Tokenize every item once (cached on disk under `cache_dir` when given).

    Args:
        tokenizer: the Recformer tokenizer (its config's attribute limits apply).
        items: attribute dicts, one per row.
        keys: optional key per row (e.g. asins) so the table can be indexed by key.
        cache_dir: folder for `items-<fingerprint>.npz`; None disables the disk cache.
        write_cache: False: read the cache file when it exists, never write it (a rank other than 0).
    """
    if keys is not None and len(keys) != len(items):
        raise ValueError(f"{len(keys)} keys for {len(items)} items")
    tokenizer.plain_backend()  # padding or truncation switched on after loading would make every item alike
    for row, item in enumerate(items):
        check_item(item, keys[row] if keys is not None else row)

    def build() -> TokenizedItems:
        encoded: list[tuple[list[int], list[int]]] = []
        for start in tqdm(range(0, len(items), chunk_size), desc="tokenize items", disable=not progress, unit="chunk"):
            encoded += tokenizer.tokenize_items(items[start : start + chunk_size], use_cache=False)
        return TokenizedItems.from_lists(encoded, keys)

    def load(path: str | os.PathLike) -> TokenizedItems:
        table = TokenizedItems.load(path)
        if len(table) != len(items) or not int(table.offsets[-1]) == len(table.ids) == len(table.types):
            raise ValueError(f"{path}: does not hold the {len(items)} items of this catalogue")
        return table

    path = tokenized_items_path(cache_dir, tokenizer, items, keys) if cache_dir is not None else None
    table = cached(path, build, load, TokenizedItems.save, "tokenized items", write=write_cache)
    warn_identical_items(table)
    return table


def warn_identical_items(table: TokenizedItems) -> int:
    """Log a warning, with the count and an example item, when more than half of the items of a table
    (two or more) tokenize to the same ids: a tokenizer that pads or cuts every item alike, or a
    catalogue without text. Returns the size of the largest group of identical items."""
    count, row = table.identical_items()
    if len(table) >= 2 and count * 2 > len(table):
        ids, _ = table[row]
        example = table.keys[row] if table.keys is not None else row
        logger.warning(
            "%d of %d items tokenize to the same %d token ids (e.g. item %r: %s%s); check the tokenizer "
            "(padding, truncation, vocabulary) and the item texts",
            count, len(table), len(ids), example, ids[:12], " ..." if len(ids) > 12 else "",
        )  # fmt: skip
    return count
