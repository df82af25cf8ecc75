"""The saved index folder: its files, their checks, and what an index was built from.

Index folder:
    index.safetensors   vectors [N, H] (float32 or float16), token_ids / token_types / token_offsets
                        (the tokenized items), item_digests [N, 8] (hash of each item's attributes);
                        metadata ids_sha256: the hash of the ids in order, tying them to the vectors
    index.json          format, ids (index order), fingerprint, dtype, sizes
    config.json, model.safetensors, tokenizer files   the encoder (`save_pretrained`)
    .recformer-folder.json   the mark of a folder recformer wrote (`folders.OWNER_MARKER`): only such a
                        folder is ever replaced by `save`

`read_index_meta` and `read_index_tensors` check the folder against itself before anything loads: the ids
against the vectors (count, duplicates, the hash saved beside the vectors), the tokenized items (offsets,
token ids within the vocabulary, token types), the fingerprint's keys; `check_finite_vectors` refuses NaN
or infinite vectors. Every problem is one line naming the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recformer.errors import RecformerError
from recformer.io.cache import file_fingerprint, item_vector_fields, tokenizer_fingerprint
from recformer.io.checkpoint_files import CheckpointError, read_state_dict
from recformer.io.checkpoint_keys import split_encoder, strip_wrapper_prefixes
from recformer.io.fileio import dumps_json, read_json
from recformer.io.folders import recover_folder
from recformer.metrics import NonFiniteScores
from recformer.model.configuration import RecformerConfig, build_config
from recformer.model.layout import TOKEN_TYPE_KEY, TOKEN_TYPE_VALUE
from recformer.model.tokenization import RecformerTokenizer, check_tokenizer_fits

logger = logging.getLogger(__name__)

INDEX_FILE = "index.safetensors"
META_FILE = "index.json"
INDEX_FORMAT = 1
DIGEST_BYTES = 8
# index.json keys, the fingerprint's keys, and the tensors of index.safetensors.
META_KEYS = ("format", "num_items", "hidden_size", "dtype", "fingerprint", "ids")
FINGERPRINT_KEYS = ("checkpoint", "tokenizer", "fields")
INDEX_TENSORS = ("vectors", "token_ids", "token_types", "token_offsets", "item_digests")
# index.safetensors metadata: the hash of the ids (in order) its vectors belong to.
IDS_HASH_KEY = "ids_sha256"


class IndexMismatch(RecformerError, ValueError):
    """A saved index used with another checkpoint, tokenizer or Recformer fields than it was built with."""


class BrokenIndex(RecformerError, ValueError):
    """A saved index folder whose files cannot be read, are malformed, or disagree with each other."""


@dataclass(frozen=True)
class Fingerprint:
    """What produced an index: the checkpoint's bytes, the tokenizer, the config fields of an item's vector."""

    checkpoint: str
    tokenizer: str
    fields: dict

    def differences(self, other: Fingerprint) -> list[str]:
        """The parts of `other` that differ from this one, each described."""
        out = []
        if self.checkpoint != other.checkpoint:
            out.append(f"the checkpoint differs (index {self.checkpoint}, given {other.checkpoint})")
        if self.tokenizer != other.tokenizer:
            out.append(f"the tokenizer differs (index {self.tokenizer}, given {other.tokenizer})")
        mine, theirs = _plain(self.fields), _plain(other.fields)
        changed = [f"{k}: index {mine.get(k)}, given {theirs.get(k)}" for k in sorted(set(mine) | set(theirs))
                   if mine.get(k) != theirs.get(k)]  # fmt: skip
        if changed:
            out.append(f"the Recformer fields differ ({', '.join(changed)})")
        return out


def _plain(obj: Any) -> Any:
    """`obj` as JSON gives it back (tuples become lists), so saved and live values compare equal."""
    return json.loads(dumps_json(obj))


def item_digests(items: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """A hash of each item's attributes, in order [N, DIGEST_BYTES] uint8 (a changed text changes it)."""
    raw = b"".join(hashlib.blake2b(dumps_json(item), digest_size=DIGEST_BYTES).digest() for item in items)
    return np.frombuffer(raw, dtype=np.uint8).reshape(len(items), DIGEST_BYTES).copy()


def checkpoint_hidden_size(checkpoint: str | os.PathLike) -> int:
    """The hidden size of a checkpoint's encoder (its word-embedding width)."""
    encoder, _ = split_encoder(strip_wrapper_prefixes(read_state_dict(checkpoint)))
    weight = encoder.get("embeddings.word_embeddings.weight")
    if weight is None:
        raise CheckpointError(f"{checkpoint}: not a Recformer checkpoint (no word embeddings)")
    return int(weight.shape[1])


def ids_hash(ids: Sequence[str]) -> str:
    """sha256 (16 hex digits) of the item ids in index order: ties index.json's ids to the saved vectors."""
    return hashlib.sha256(dumps_json(list(ids))).hexdigest()[:16]


def _names(keys: Sequence[str]) -> str:
    return ", ".join(repr(k) for k in keys)


def read_index_meta(path: Path) -> dict:
    """index.json of an index folder, checked: a JSON object with every key (`META_KEYS`), this format,
    a fingerprint of exactly `FINGERPRINT_KEYS`, and the ids a list of distinct strings, one per item.

    Raises:
        BrokenIndex: one line naming the file and the key.
        IndexMismatch: another index format.
    """
    file = path / META_FILE
    meta = read_json(file)
    if not isinstance(meta, dict):
        raise BrokenIndex(f"{file}: expected a JSON object, got {type(meta).__name__}; rebuild the index")
    missing = [k for k in META_KEYS if k not in meta]
    if meta.get("format") != INDEX_FORMAT and "format" not in missing:
        raise IndexMismatch(f"{file}: index format {meta.get('format')!r}, expected {INDEX_FORMAT}")
    if missing:
        raise BrokenIndex(f"{file}: missing keys {_names(missing)}; rebuild the index")
    fingerprint = meta["fingerprint"]
    if not isinstance(fingerprint, dict):
        raise BrokenIndex(f"{file}: fingerprint must be a JSON object, got {type(fingerprint).__name__}")
    missing = [k for k in FINGERPRINT_KEYS if k not in fingerprint]
    extra = sorted(k for k in fingerprint if k not in FINGERPRINT_KEYS)
    if missing or extra:
        what = "; ".join(part for part in (missing and f"missing keys {_names(missing)}",
                                           extra and f"unexpected keys {_names(extra)}") if part)  # fmt: skip
        raise BrokenIndex(f"{file}: fingerprint: {what} (expected exactly {_names(FINGERPRINT_KEYS)})")
    kinds = {"checkpoint": str, "tokenizer": str, "fields": dict}
    for key, kind in kinds.items():
        if not isinstance(fingerprint[key], kind):
            raise BrokenIndex(f"{file}: fingerprint.{key} must be a {kind.__name__}, got {type(fingerprint[key]).__name__}")
    if meta["dtype"] not in ("float32", "float16"):
        raise BrokenIndex(f"{file}: dtype must be 'float32' or 'float16', got {meta['dtype']!r}")
    ids = meta["ids"]
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise BrokenIndex(f"{file}: ids must be a list of strings (item ids in index order)")
    if isinstance(meta["num_items"], bool) or meta["num_items"] != len(ids):
        raise BrokenIndex(f"{file}: {len(ids)} ids, but num_items is {meta['num_items']!r}")
    if len(set(ids)) != len(ids):
        seen: dict[str, int] = {}
        for row, i in enumerate(ids):
            if i in seen:
                raise BrokenIndex(f"{file}: id {i!r} appears twice (rows {seen[i]} and {row}); rebuild the index")
            seen[i] = row
    return meta


def read_index_tensors(path: Path, meta: dict, config: RecformerConfig) -> dict[str, torch.Tensor]:
    """index.safetensors of an index folder, checked against itself, index.json (`meta`) and the encoder's
    config: every tensor (`INDEX_TENSORS`) of its shape and kind, one vector per id and the ids' hash
    recorded with them, offsets from 0 rising to the number of tokens, token ids within the vocabulary.

    Raises:
        BrokenIndex: one line naming the file and the tensor or key.
    """
    from safetensors import safe_open

    file = path / INDEX_FILE
    if not file.is_file():
        raise BrokenIndex(f"{file}: missing (the vectors of the index); rebuild the index")
    try:
        with safe_open(str(file), framework="pt") as f:
            names, recorded = set(f.keys()), (f.metadata() or {}).get(IDS_HASH_KEY)
            missing = [k for k in INDEX_TENSORS if k not in names]
            if missing:
                raise BrokenIndex(f"{file}: no {_names(missing)} tensor{'s' if len(missing) > 1 else ''}; rebuild the index")
            tensors = {k: f.get_tensor(k) for k in INDEX_TENSORS}
    except BrokenIndex:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors raises its own errors, OSError and others for damage
        reason = " ".join(str(e).split())[:200]
        raise BrokenIndex(f"{file}: cannot be read ({type(e).__name__}: {reason}); the file is truncated or damaged, "
                          "rebuild the index") from None  # fmt: skip

    ids, n = meta["ids"], len(meta["ids"])
    vectors, offsets = tensors["vectors"], tensors["token_offsets"]
    token_ids, token_types, digests = tensors["token_ids"], tensors["token_types"], tensors["item_digests"]

    def bad(message: str) -> BrokenIndex:
        return BrokenIndex(f"{file}: {message}; rebuild the index")

    if vectors.dim() != 2 or not vectors.is_floating_point():
        raise bad(f"vectors must be a 2-D float tensor, got {vectors.dtype} {tuple(vectors.shape)}")
    if vectors.shape[0] != n:
        raise bad(f"{vectors.shape[0]} item vectors, but {META_FILE} lists {n} ids")
    if vectors.shape[1] != meta["hidden_size"] or vectors.shape[1] != config.hidden_size:
        raise bad(f"vectors of size {vectors.shape[1]}, but {META_FILE} says hidden_size {meta['hidden_size']!r} and "
                  f"config.json hidden_size {config.hidden_size}")  # fmt: skip
    if recorded is not None and recorded != ids_hash(ids):
        raise bad(f"the ids in {META_FILE} are not those its vectors were saved with (reordered or replaced: ids hash "
                  f"{ids_hash(ids)}, recorded {recorded})")  # fmt: skip
    if recorded is None:
        logger.warning("%s: no ids hash recorded (an index saved by an older version): the order of the ids is not checked", file)
    if digests.shape != (n, DIGEST_BYTES) or digests.dtype != torch.uint8:
        raise bad(f"item_digests must be uint8 [{n}, {DIGEST_BYTES}], got {digests.dtype} {tuple(digests.shape)}")
    if token_ids.dim() != 1 or token_types.shape != token_ids.shape or token_ids.is_floating_point():
        raise bad(f"token_ids and token_types must be 1-D integer tensors of one length, got {tuple(token_ids.shape)} "
                  f"and {tuple(token_types.shape)}")  # fmt: skip
    if offsets.shape != (n + 1,) or offsets.is_floating_point():
        raise bad(f"token_offsets must be {n + 1} integers (one more than the items), got {tuple(offsets.shape)}")
    steps = offsets[1:] - offsets[:-1]
    if int(offsets[0]) != 0 or int(offsets[-1]) != token_ids.numel() or bool((steps < 0).any()):
        raise bad(f"token_offsets must rise from 0 to the {token_ids.numel()} tokens, got {int(offsets[0])}..{int(offsets[-1])}"
                  + (f" falling at item {int((steps < 0).nonzero()[0])}" if bool((steps < 0).any()) else ""))  # fmt: skip
    if token_ids.numel() and (int(token_ids.min()) < 0 or int(token_ids.max()) >= config.vocab_size):
        raise bad(f"token_ids must be in [0, {config.vocab_size}) (the encoder's vocab_size), got "
                  f"{int(token_ids.min())}..{int(token_ids.max())}")  # fmt: skip
    if token_types.numel() and not bool(torch.isin(token_types, torch.tensor([TOKEN_TYPE_KEY, TOKEN_TYPE_VALUE])).all()):
        raise bad(f"token_types must be {TOKEN_TYPE_KEY} (attribute name) or {TOKEN_TYPE_VALUE} (value)")
    return tensors


def check_finite_vectors(vectors: torch.Tensor, ids: Sequence[str], where: str) -> None:
    """Raise NonFiniteScores naming the items (`ids`, one per row of `vectors` [N, H]) whose vectors hold a
    NaN or infinite value; `where` says whose vectors they are."""
    bad = (~torch.isfinite(vectors)).any(dim=1).nonzero().flatten().tolist()
    if bad:
        names = ", ".join(repr(ids[i]) for i in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteScores(
            f"{where}: {len(bad)} of {len(ids)} item vectors are not finite (items {names}); "
            "the encoder gives NaN or infinite outputs, or the vectors are damaged"
        )


def read_index_folder(path: Path) -> tuple[dict, RecformerConfig, dict[str, torch.Tensor], RecformerTokenizer]:
    """(index.json, the encoder's config, the index tensors, the tokenizer) of an index folder, each
    checked (`read_index_meta`, `read_index_tensors`, finite vectors, the tokenizer against its recorded hash); a save killed between its two renames is recovered first."""
    recover_folder(path)  # a save killed between its two renames left the complete index beside it
    if not (path / META_FILE).is_file():
        raise FileNotFoundError(f"{path}: not a saved Recformer index (no {META_FILE})")
    meta = read_index_meta(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path / 'config.json'}: missing from the saved index (the encoder's config)")
    config = RecformerConfig.from_pretrained(path)
    config.item_num = 0
    tensors = read_index_tensors(path, meta, config)
    check_finite_vectors(tensors["vectors"].float(), meta["ids"], str(path / INDEX_FILE))
    tokenizer = RecformerTokenizer.from_pretrained(str(path), config)
    check_tokenizer_fits(tokenizer, config, str(path))
    recorded = meta["fingerprint"]["tokenizer"]
    if tokenizer_fingerprint(tokenizer) != recorded:
        raise BrokenIndex(
            f"{path}: its tokenizer files are not the tokenizer the index was built with (hash "
            f"{tokenizer_fingerprint(tokenizer)}, {META_FILE} records {recorded}); rebuild the index"
        )
    return meta, config, tensors, tokenizer


def check_built_with(
    path: Path,
    saved: Fingerprint,
    config: RecformerConfig,
    hidden: int,
    checkpoint: str | os.PathLike | None,
    model_name_or_path: str | os.PathLike | None,
    fields: Mapping[str, Any] | None,
) -> None:
    """Refuse (`IndexMismatch`, each difference named) a checkpoint, tokenizer or Recformer fields the caller
    passes that are not what the index in `path` was built with (`saved`)."""
    given = saved
    if checkpoint is not None:
        checkpoint_hidden = checkpoint_hidden_size(checkpoint)
        if checkpoint_hidden != hidden:
            raise IndexMismatch(
                f"{checkpoint} has hidden size {checkpoint_hidden}, but the index in {path} has hidden size {hidden}"
            )
        given = Fingerprint(file_fingerprint(checkpoint), given.tokenizer, given.fields)
    if model_name_or_path is not None:
        other = RecformerTokenizer.from_pretrained(str(model_name_or_path), config)
        given = Fingerprint(given.checkpoint, tokenizer_fingerprint(other), given.fields)
    if fields is not None and any(v is not None for v in fields.values()):
        given = Fingerprint(given.checkpoint, given.tokenizer, item_vector_fields(build_config(path, fields)))
    differences = saved.differences(given)
    if differences:
        raise IndexMismatch(
            f"{path}: this index was built with something else: {'; '.join(differences)}. "
            "Rebuild it from the catalogue, or use what it was built with."
        )
