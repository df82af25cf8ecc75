"""The pretraining-corpus readers: the files of `formats.PRETRAIN`, validated, without Lightning or torch.

``train.json`` / ``dev.json`` are JSON lists of asin lists (one chronological sequence per user);
``meta_data.json`` maps asin -> {title, brand, category}. Asins missing from the metadata are dropped from
their sequences (counted and logged); sequences left with fewer than 2 items have no (history, next item)
pair and are skipped (counted and logged).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from recformer.data.formats import PRETRAIN
from recformer.fileio import read_json

logger = logging.getLogger(__name__)


class PretrainDataError(ValueError):
    """Pretraining input that cannot be used; the message names the file."""


@dataclass
class SequenceStats:
    """What `read_pretrain_sequences` kept and dropped."""

    sequences_read: int = 0
    sequences_kept: int = 0
    missing_asins: int = 0
    short_sequences: int = 0

    def summary(self) -> str:
        return (
            f"{self.sequences_kept}/{self.sequences_read} sequences kept; "
            f"{self.missing_asins} asins missing from the metadata skipped; "
            f"{self.short_sequences} sequences with fewer than 2 items skipped"
        )


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_item_metadata(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """`meta_data.json`: {asin: {attribute: text}}; anything else raises PretrainDataError naming the file."""
    try:
        meta = read_json(path)
    except (FileNotFoundError, ValueError) as e:
        raise PretrainDataError(str(e)) from None
    if not isinstance(meta, dict) or not all(isinstance(v, dict) for v in meta.values()):
        raise PretrainDataError(f"{path}: expected a {PRETRAIN.meta_data.describe()}")
    if not meta:
        raise PretrainDataError(f"{path}: holds no items")
    return meta


def read_pretrain_sequences(
    path: str | os.PathLike, known_items: Mapping[str, Any] | set
) -> tuple[list[list[str]], SequenceStats]:
    """Read a list of asin lists, dropping asins without metadata and sequences left shorter than 2.

    Raises:
        PretrainDataError: the file is missing, is not JSON, or is not a list of asin lists.
    """
    try:
        data = read_json(path)
    except (FileNotFoundError, ValueError) as e:
        raise PretrainDataError(str(e)) from None
    bad = None
    if not isinstance(data, list):
        bad = f"the top level is {type(data).__name__}"
    else:
        for i, seq in enumerate(data):
            if not isinstance(seq, list) or not all(isinstance(a, str) for a in seq):
                bad = f"entry {i} is {_describe(seq)}"
                break
    if bad is not None:
        raise PretrainDataError(f"{path}: expected a {PRETRAIN.train.describe()}; {bad}")
    stats = SequenceStats(sequences_read=len(data))
    sequences = []
    for seq in data:
        kept = [a for a in seq if a in known_items]
        stats.missing_asins += len(seq) - len(kept)
        if len(kept) < 2:
            stats.short_sequences += 1
            continue
        sequences.append(kept)
    stats.sequences_kept = len(sequences)
    logger.info("%s: %s", path, stats.summary())
    if not sequences:
        raise PretrainDataError(f"{path}: no sequence with at least 2 known items ({stats.summary()})")
    return sequences, stats
