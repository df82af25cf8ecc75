"""The pretraining-corpus readers: the files of `formats.PRETRAIN`, validated, without Lightning or torch.

``train.json`` / ``dev.json`` are JSON lists of asin lists (one chronological sequence per user);
``meta_data.json`` maps asin -> {title, brand, category}. Asins missing from the metadata are dropped from
their sequences (counted and logged); sequences left with fewer than 2 items have no (history, next item)
pair and are skipped (counted and logged).

A file whose processing step was still writing its folder, or that is not the file the step's manifest
records, is refused (`formats.read_step_bytes`); so are sequences that the interaction step built from another
``meta_data.json`` than the one given, and an item whose metadata is empty. Files without a manifest (written
by the original scripts) are read as they are.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from recformer.data.formats import PRETRAIN, read_step_bytes
from recformer.errors import RecformerError
from recformer.io.fileio import parse_json

logger = logging.getLogger(__name__)


class PretrainDataError(RecformerError, ValueError):
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
        data, _ = read_step_bytes(path, PRETRAIN.meta_step, PretrainDataError)
        meta = parse_json(data, path)
    except (OSError, ValueError) as e:
        raise PretrainDataError(str(e)) from None
    if not isinstance(meta, dict) or not all(isinstance(v, dict) for v in meta.values()):
        raise PretrainDataError(f"{path}: expected a {PRETRAIN.meta_data.describe()}")
    if not meta:
        raise PretrainDataError(f"{path}: holds no items")
    empty = next((asin for asin, attrs in meta.items() if not attrs), None)
    if empty is not None:
        raise PretrainDataError(f"{path}: item {empty!r} has no attributes ({{}}): it has no text")
    return meta


def _check_built_from(
    path: str | os.PathLike, manifest: Mapping[str, Any] | None, meta_file: str | os.PathLike
) -> None:
    """Refuse sequences whose interaction step recorded another ``meta_data.json`` than `meta_file`."""
    inputs = (manifest or {}).get("inputs")
    recorded = inputs.get(PRETRAIN.meta_data.name) if isinstance(inputs, dict) else None
    if not isinstance(recorded, dict) or not isinstance(recorded.get("sha256"), str):
        return
    digest = hashlib.sha256()
    with open(meta_file, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    sha256 = digest.hexdigest()
    if sha256 != recorded["sha256"]:
        raise PretrainDataError(
            f"{path}: was built from another {PRETRAIN.meta_data.name} ({recorded.get('path')}) than "
            f"{meta_file}: re-run {PRETRAIN.interaction_step.command} after the meta step"
        )


def read_pretrain_sequences(
    path: str | os.PathLike, known_items: Mapping[str, Any] | set, meta_file: str | os.PathLike | None = None
) -> tuple[list[list[str]], SequenceStats]:
    """Read a list of asin lists, dropping asins without metadata and sequences left shorter than 2.

    `meta_file`, the file `known_items` came from, is checked against the one the interaction step recorded.

    Raises:
        PretrainDataError: the file is missing, is not JSON, or is not a list of asin lists; its step did not
            finish, it differs from the step's manifest, or it was built from another `meta_file`.
    """
    try:
        raw, manifest = read_step_bytes(path, PRETRAIN.interaction_step, PretrainDataError)
        if meta_file is not None:
            _check_built_from(path, manifest, meta_file)
        data = parse_json(raw, path)
    except (OSError, ValueError) as e:
        raise PretrainDataError(str(e)) from None
    del raw
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
