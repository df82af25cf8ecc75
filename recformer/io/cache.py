"""The two disk caches of the pipeline, each keyed by everything that produced its content.

* tokenized items (`items-<tokenizer>-<catalogue>.npz`): the tokenizer's vocabulary and merges,
  the Recformer fields that shape an item, and the items' text and keys;
* item vectors (`item_table-<key>.pt`): the checkpoint file's bytes, the tokenizer, the config
  fields that change an item's vector, and the items' text.

Any change to one of those gives another file name, so a stale cache is never reused; files are
written atomically, so a killed run never leaves a half-written one. A cache file that cannot be
read (damaged, truncated, or not what it should hold) is rebuilt with a warning naming it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from recformer.io.fileio import dumps_json

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Config fields that change an item's vector besides the weights: the item layout and the pooler.
ITEM_VECTOR_FIELDS = (
    "max_attr_num", "max_attr_length", "max_item_embeddings", "attention_window", "max_token_num",
    "pooler_type", "hidden_size",
)  # fmt: skip


def item_vector_fields(config: Any) -> dict[str, Any]:
    """The config values (`ITEM_VECTOR_FIELDS`) that change an item's vector besides the weights."""
    return {k: getattr(config, k) for k in ITEM_VECTOR_FIELDS}


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of a RecformerTokenizer's vocabulary, merges and the Recformer fields that shape an item."""
    h = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode("utf-8"))
    cfg = tokenizer.config
    h.update(f"|attr_num={cfg.max_attr_num}|attr_length={cfg.max_attr_length}".encode())
    return h.hexdigest()[:16]


def catalogue_fingerprint(items: Sequence[Mapping[str, Any]], keys: Sequence[Hashable] | None) -> str:
    """Hash of the items' attribute dicts, in order, and of their keys."""
    h = hashlib.sha256()
    for item in items:
        h.update(dumps_json(item))
        h.update(b"\n")
    h.update(dumps_json(list(keys) if keys is not None else None))
    return h.hexdigest()[:16]


def file_fingerprint(path: str | os.PathLike) -> str:
    """sha256 (16 hex digits) of a file's bytes, or of the weight files of a checkpoint folder."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in (".safetensors", ".bin"))
    else:
        files = [p]
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()[:16]


def tokenized_items_path(
    cache_dir: str | os.PathLike, tokenizer: Any, items: Sequence[Mapping[str, Any]], keys: Sequence[Hashable] | None
) -> Path:
    """Cache file of a tokenized catalogue."""
    return Path(cache_dir) / f"items-{tokenizer_fingerprint(tokenizer)}-{catalogue_fingerprint(items, keys)}.npz"


def item_table_path(
    cache_dir: str | os.PathLike,
    checkpoint_fingerprint: str,
    tokenizer: Any,
    config: Any,
    items: Sequence[Mapping[str, Any]],
) -> Path:
    """Cache file of the item vectors that the encoder loaded from a checkpoint (its `file_fingerprint`)
    gives the catalogue."""
    parts = [checkpoint_fingerprint, tokenizer_fingerprint(tokenizer), item_vector_fields(config),
             catalogue_fingerprint(items, None)]  # fmt: skip
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"item_table-{key}.pt"


def cached(
    path: Path | None,
    build: Callable[[], T],
    load: Callable[[Path], T],
    save: Callable[[T, Path], None],
    what: str,
    write: bool = True,
    agree: Callable[[bool], bool] | None = None,
) -> T:
    """`load(path)` when the cache file exists, else `build()` and `save` it there (no cache: `path` None).

    A file that `load` cannot read (it raises) is rebuilt and replaced, with a warning naming it;
    `load` raises for content that does not fit as well (a table of the wrong size).

    Args:
        write: False: read the cache but never write it (the ranks other than 0 of a distributed run).
        agree: for a collective `build`: maps "this process read the file" to "every process did"
            (`distributed.all_true`), so that either all processes use the file or all call `build`.
    """
    value, hit = None, False
    if path is not None and path.is_file():
        try:
            value, hit = load(path), True
        except Exception as e:  # noqa: BLE001 - whatever damaged the file, the cure is to rebuild it
            logger.warning("%s: cache file %s cannot be read (%s); rebuilding it", what, path, type(e).__name__)
    if agree is not None:
        hit = agree(hit)
    if hit:
        logger.info("%s: reusing %s", what, path)
        return value  # type: ignore[return-value]
    value = build()
    if path is not None and write:
        save(value, path)
        logger.info("%s: wrote %s", what, path)
    return value
