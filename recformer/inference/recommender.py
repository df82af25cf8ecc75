"""Recommend next items with any Recformer checkpoint: an item index, top-k, new items without retraining.

`Recommender.from_pretrained(checkpoint, items)` encodes every item of a catalogue alone
(`evaluation.encode_items`, the item table of finetuning) into an index; `recommend(histories)`
encodes each history (oldest item first; known ids and attribute dicts of unseen items mixed
freely) and returns its top-k items (`ranking.top_k`: cosine / temperature, chunked, ties in index
order). `add_items` encodes only new or changed items. `save(dir)` writes a self-contained folder
(vectors, tokenized items, ids, fingerprint, encoder, config, tokenizer); `Recommender.load(dir)`
needs neither the catalogue nor the checkpoint, and refuses a checkpoint, tokenizer or Recformer
fields other than those the index was built with.

Index folder:
    index.safetensors   vectors [N, H] (float32 or float16), token_ids / token_types / token_offsets
                        (the tokenized items), item_digests [N, 8] (hash of each item's attributes);
                        metadata ids_sha256: the hash of the ids in order, tying them to the vectors
    index.json          format, ids (index order), fingerprint, dtype, sizes
    config.json, model.safetensors, tokenizer files   the encoder (`save_pretrained`)
    .recformer-folder.json   the mark of a folder recformer wrote (`fileio.OWNER_MARKER`): only such a
                        folder is ever replaced by `save`
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from recformer import distributed
from recformer.devices import InferenceSettings, resolve_device
from recformer.errors import RecformerError
from recformer.inference.evaluation import cached_item_vectors, encode_items, pooled_batches
from recformer.inference.inputs import ItemsSource, item_id, read_items
from recformer.inference.ranking import check_finite_queries, per_query, top_k
from recformer.io.cache import file_fingerprint, item_table_path, item_vector_fields, tokenizer_fingerprint
from recformer.io.checkpoint import load_checkpoint
from recformer.io.checkpoint_files import CheckpointError, read_state_dict
from recformer.io.checkpoint_keys import split_encoder, strip_wrapper_prefixes
from recformer.io.fileio import atomic_directory, atomic_write_bytes, dumps_json, read_json, recover_folder
from recformer.metrics import NonFiniteScores
from recformer.model.attention import check_attn_implementation, configure_attention
from recformer.model.configuration import RecformerConfig, build_config
from recformer.model.item_tokens import TokenizedItems, tokenize_catalogue
from recformer.model.layout import TOKEN_TYPE_KEY, TOKEN_TYPE_VALUE
from recformer.model.modeling import RecformerForSeqRec
from recformer.model.tokenization import RecformerTokenizer, TokenizedItem, check_tokenizer_fits
from recformer.runtime import load_model_parts

logger = logging.getLogger(__name__)

INDEX_FILE = "index.safetensors"
META_FILE = "index.json"
INDEX_FORMAT = 1
# Histories scored per pass over the index (the memory bound of `ranking.top_k` is stated for 256).
SCORE_BATCH = 256
DIGEST_BYTES = 8
VECTOR_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16}
# index.json keys, the fingerprint's keys, and the tensors of index.safetensors.
META_KEYS = ("format", "num_items", "hidden_size", "dtype", "fingerprint", "ids")
FINGERPRINT_KEYS = ("checkpoint", "tokenizer", "fields")
INDEX_TENSORS = ("vectors", "token_ids", "token_types", "token_offsets", "item_digests")
# index.safetensors metadata: the hash of the ids (in order) its vectors belong to.
IDS_HASH_KEY = "ids_sha256"

History = Sequence[str | int | Mapping[str, Any]]


class IndexMismatch(RecformerError, ValueError):
    """A saved index used with another checkpoint, tokenizer or Recformer fields than it was built with."""


class BrokenIndex(RecformerError, ValueError):
    """A saved index folder whose files cannot be read, are malformed, or disagree with each other."""


class UnknownItemError(RecformerError, ValueError):
    """An item id that is not in the index."""

    def __init__(self, message: str, item: str):
        super().__init__(message)
        self.item = item


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


def check_batch_size(batch_size: Any) -> None:
    """None (batches of a token budget) or an integer >= 1; anything else is a ValueError naming it."""
    if batch_size is None:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1 or None, got {batch_size!r}")


def _splice(table: TokenizedItems, replaced: Sequence[int], fresh: TokenizedItems, keys: list[str]) -> TokenizedItems:
    """`table` with row replaced[j] taken from fresh[j], then the remaining rows of `fresh` appended."""
    lengths, fresh_lengths = table.lengths(), fresh.lengths()
    ids, types, counts = [], [], []
    previous = 0
    for j, row in sorted(enumerate(replaced), key=lambda p: p[1]):
        for source, a, b in ((table, previous, row), (fresh, j, j + 1)):
            ids.append(source.ids[source.offsets[a] : source.offsets[b]])
            types.append(source.types[source.offsets[a] : source.offsets[b]])
        counts += [lengths[previous:row], fresh_lengths[j : j + 1]]
        previous = row + 1
    n, m = len(table), len(replaced)
    for source, a, b, size in ((table, previous, n, lengths[previous:]), (fresh, m, len(fresh), fresh_lengths[m:])):
        ids.append(source.ids[source.offsets[a] : source.offsets[b]])
        types.append(source.types[source.offsets[a] : source.offsets[b]])
        counts.append(size)
    offsets = np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(np.int64)
    return TokenizedItems(np.concatenate(ids), np.concatenate(types), offsets, keys)


class Recommender:
    """Top-k next items for user histories over an item index; see the module docstring.

    Example:
        >>> rec = Recommender.from_pretrained("recformer_seqrec_ckpt.bin", "meta_data.json")
        >>> rec.recommend([["B001", "B007"], ["B003", {"title": "a new item", "brand": "acme"}]], k=5)
        [[("B042", 17.3), ...], [...]]
        >>> rec.add_items({"N1": {"title": "never trained on", "brand": "acme"}})   # (1 added, 0 updated)
        >>> rec.save("index/")            # later: Recommender.load("index/")
    """

    def __init__(
        self,
        model: RecformerForSeqRec,
        tokenizer: RecformerTokenizer,
        items: TokenizedItems,
        digests: np.ndarray,
        fingerprint: Fingerprint,
        device: torch.device,
        batch_size: int | None = None,
        progress: bool = True,
    ):
        check_batch_size(batch_size)
        if items.keys is None or model.item_embedding is None or len(items) != model.item_embedding.num_embeddings:
            raise ValueError("the model's item table and the tokenized items (with their ids) must have one row per item")
        check_finite_vectors(model.item_embedding.weight.detach(), items.keys, "index")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.items = items
        self.digests = digests
        self.fingerprint = fingerprint
        self.device = device
        self.batch_size = batch_size
        self.progress = progress
        self.settings = InferenceSettings(device, batch_size=batch_size, progress=progress)
        self.saved_dtype = "float32"  # of the vectors in the folder this index was loaded from

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | os.PathLike,
        items: ItemsSource,
        model_name_or_path: str | os.PathLike | None = None,
        device: str | int = "auto",
        batch_size: int | None = None,
        attn_implementation: str = "auto",
        cache_dir: str | os.PathLike | None = None,
        fields: Mapping[str, Any] | None = None,
        progress: bool = True,
        compile: bool = False,
    ) -> Recommender:
        """Encode every item of `items` with the checkpoint's encoder into a new index.

        Under torchrun (process group started, e.g. `distributed.init_from_env`) every rank calls it:
        the items are encoded in shards and every rank gets the whole index.

        Args:
            checkpoint: any form `load_checkpoint` takes (released RecformerModel or SeqRec file,
                finetuned `best_model.bin`, `save_pretrained` folder), as a path.
            items: a `meta_data.json` path, a JSON-lines file of {"id": ..., attributes}, or a dict
                id -> attributes (`inputs.read_items`).
            model_name_or_path: config + tokenizer; default: the checkpoint when it is a
                `save_pretrained` folder, else allenai/longformer-base-4096.
            device: auto, cpu, cuda, cuda:N or a GPU index (under torchrun: auto, cuda or cpu).
            batch_size: items or histories encoded per batch; None: batches of a token budget
                (`evaluation.pooled_batches`).
            attn_implementation: one of `recformer.model.attention.ATTN_IMPLEMENTATIONS` (an unknown name, or
                one that cannot run on the device, fails here).
            compile: torch.compile the encoder first (in place; worth it for large catalogues on a GPU).
            cache_dir: disk cache of the tokenized items and the vectors, keyed by checkpoint,
                tokenizer, Recformer fields and items (`cache.item_table_path`).
            fields: Recformer field values (`configuration.build_config`); None = the config's own.
        """
        check_attn_implementation(attn_implementation)
        check_batch_size(batch_size)
        model, tokenizer, _ = load_model_parts(checkpoint, model_name_or_path, fields)
        device = distributed.rank_device(device)
        _place(model, attn_implementation, device, compile)
        ids, attrs = read_items(items)
        progress = progress and distributed.is_main()
        table = tokenize_catalogue(tokenizer, attrs, keys=ids, cache_dir=cache_dir, progress=progress,
                                   write_cache=distributed.is_main())  # fmt: skip
        checkpoint_hash = file_fingerprint(checkpoint)
        path = item_table_path(cache_dir, checkpoint_hash, tokenizer, model.config, attrs) if cache_dir else None
        vectors = cached_item_vectors(
            path,
            lambda: encode_items(model.longformer, tokenizer, table,
                                 InferenceSettings(device, batch_size=batch_size, progress=progress, shard=True)),
            shape=(len(ids), model.config.hidden_size),
        )
        model.init_item_embedding(vectors)
        fingerprint = Fingerprint(checkpoint_hash, tokenizer_fingerprint(tokenizer), item_vector_fields(model.config))
        logger.info("index of %d items from %s", len(ids), checkpoint)
        return cls(model, tokenizer, table, item_digests(attrs), fingerprint, device, batch_size, progress)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        checkpoint: str | os.PathLike | None = None,
        model_name_or_path: str | os.PathLike | None = None,
        fields: Mapping[str, Any] | None = None,
        device: str | int = "auto",
        batch_size: int | None = None,
        attn_implementation: str = "auto",
        progress: bool = True,
        compile: bool = False,
    ) -> Recommender:
        """A saved index (`save`), with the encoder saved beside it; scoring runs in float32.

        `checkpoint`, `model_name_or_path` and `fields`, when given, are what the caller means to
        use; each must be what the index was built with. `device`, `batch_size`,
        `attn_implementation`, `progress` and `compile` as for `from_pretrained`.

        The folder is checked against itself first (`read_index_meta`, `read_index_tensors`): the ids
        against the vectors (count, duplicates, the hash recorded beside the vectors), the tokenizer
        files against the tokenizer hash of the fingerprint, the tokenized items (offsets, token ids
        within the vocabulary), finite vectors.

        Raises:
            FileNotFoundError: `path` holds no saved index.
            BrokenIndex: a file of the folder is unreadable, malformed or disagrees with another (named).
            TokenizerError: the folder has no tokenizer files, or ids past the encoder's vocabulary.
            NonFiniteScores: a saved vector is NaN or infinite.
            IndexMismatch: the checkpoint's hidden size differs from the index's (both named), or
                the checkpoint, tokenizer or fields differ (each part named).
        """
        check_attn_implementation(attn_implementation)
        check_batch_size(batch_size)
        path = Path(path)
        recover_folder(path)  # a save killed between its two renames left the complete index beside it
        if not (path / META_FILE).is_file():
            raise FileNotFoundError(f"{path}: not a saved Recformer index (no {META_FILE})")
        meta = read_index_meta(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path / 'config.json'}: missing from the saved index (the encoder's config)")
        config = RecformerConfig.from_pretrained(path)
        config.item_num = 0
        tensors = read_index_tensors(path, meta, config)
        vectors = tensors["vectors"].float()  # [N, H]
        check_finite_vectors(vectors, meta["ids"], str(path / INDEX_FILE))
        tokenizer = RecformerTokenizer.from_pretrained(str(path), config)
        check_tokenizer_fits(tokenizer, config, str(path))
        saved = Fingerprint(**meta["fingerprint"])
        if tokenizer_fingerprint(tokenizer) != saved.tokenizer:
            raise BrokenIndex(
                f"{path}: its tokenizer files are not the tokenizer the index was built with (hash "
                f"{tokenizer_fingerprint(tokenizer)}, {META_FILE} records {saved.tokenizer}); rebuild the index"
            )

        given = saved
        if checkpoint is not None:
            hidden = checkpoint_hidden_size(checkpoint)
            if hidden != vectors.shape[1]:
                raise IndexMismatch(
                    f"{checkpoint} has hidden size {hidden}, but the index in {path} has hidden size {vectors.shape[1]}"
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

        model = RecformerForSeqRec(config)
        load_checkpoint(model.longformer, path)
        device = resolve_device(device)
        _place(model, attn_implementation, device, compile)
        model.init_item_embedding(vectors)
        items = TokenizedItems(
            tensors["token_ids"].numpy(), tensors["token_types"].numpy(), tensors["token_offsets"].numpy(),
            list(meta["ids"]),
        )
        logger.info("loaded an index of %d items from %s", len(items), path)
        rec = cls(model, tokenizer, items, tensors["item_digests"].numpy().copy(), saved, device, batch_size, progress)
        rec.saved_dtype = meta["dtype"]
        return rec

    def save(self, path: str | os.PathLike, dtype: str | torch.dtype = torch.float32) -> None:
        """Write the index folder (see the module docstring) atomically: a staging sibling renamed into place
        (`fileio.atomic_directory`), holding the folder's lock.

        Only a folder that recformer wrote (or an empty one) is replaced: a file or any other folder at
        `path` is refused, and nothing of it is moved or deleted.

        Args:
            dtype: of the saved vectors: float32 (exact) or float16 (half the size).

        Raises:
            OutputPathError: `path` is something recformer did not write (named).
            OSError: a full disk or another write error, naming the file.
        """
        if isinstance(dtype, str):
            if dtype not in VECTOR_DTYPES:
                raise ValueError(f"dtype must be one of {', '.join(VECTOR_DTYPES)}, got {dtype!r}")
            dtype = VECTOR_DTYPES[dtype]
        if dtype not in (torch.float32, torch.float16):
            raise ValueError(f"dtype must be torch.float32 or torch.float16, got {dtype}")
        from safetensors.torch import save as serialize

        tensors = {
            "vectors": self.vectors.detach().to("cpu", dtype).contiguous(),
            "token_ids": torch.from_numpy(np.array(self.items.ids, dtype=np.int32)),
            "token_types": torch.from_numpy(np.array(self.items.types, dtype=np.int8)),
            "token_offsets": torch.from_numpy(np.array(self.items.offsets, dtype=np.int64)),
            "item_digests": torch.from_numpy(np.array(self.digests, dtype=np.uint8)),
        }
        meta = {
            "format": INDEX_FORMAT,
            "num_items": len(self),
            "hidden_size": int(self.vectors.shape[1]),
            "dtype": str(dtype).removeprefix("torch."),
            "fingerprint": asdict(self.fingerprint),
            "ids": self.ids,
        }
        path = Path(path)
        with atomic_directory(path) as tmp:
            for name, data in ((INDEX_FILE, serialize(tensors, metadata={IDS_HASH_KEY: ids_hash(self.ids)})), (META_FILE, dumps_json(meta, indent=True))):
                try:
                    atomic_write_bytes(tmp / name, data)
                except OSError as e:  # named as the file of the index, not of its staging folder
                    raise OSError(e.errno, e.strerror, str(path / name)) from None
            self.model.longformer.save_pretrained(tmp)
            self.tokenizer.save_pretrained(str(tmp))
        logger.info("saved an index of %d items (%s) to %s", len(self), meta["dtype"], path)

    # -- the index -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, item: object) -> bool:
        return isinstance(item, str) and item in self.items.index

    @property
    def ids(self) -> list[str]:
        """Item ids in index order."""
        return self.items.keys

    @property
    def vectors(self) -> torch.Tensor:
        """The item vectors [N, H] (on the device)."""
        return self.model.item_embedding.weight

    def add_items(self, items: ItemsSource) -> tuple[int, int]:
        """Encode the items whose id is new (appended) or whose attributes changed (re-encoded in place);
        every other item is left as it is. Returns (added, updated)."""
        ids, attrs = read_items(items)
        digests = item_digests(attrs)
        index = self.items.index
        changed = [(index[i], j) for j, i in enumerate(ids) if i in index and not np.array_equal(self.digests[index[i]], digests[j])]
        added = [j for j, i in enumerate(ids) if i not in index]
        if not changed and not added:
            return 0, 0
        todo = [j for _, j in changed] + added
        fresh = tokenize_catalogue(self.tokenizer, [attrs[j] for j in todo], progress=self.progress)
        vectors = encode_items(self.model.longformer, self.tokenizer, fresh, self.settings)
        check_finite_vectors(vectors, [ids[j] for j in todo], "add_items")
        rows = [row for row, _ in changed]
        table = torch.cat([self.vectors.detach(), vectors[len(changed) :].to(self.vectors)])  # [N + added, H]
        if rows:
            table[rows] = vectors[: len(changed)].to(table)
        self.model.init_item_embedding(table)
        self.items = _splice(self.items, rows, fresh, self.ids + [ids[j] for j in added])
        self.digests = np.concatenate([self.digests, digests[added]])
        self.digests[rows] = digests[[j for _, j in changed]]
        logger.info("index: %d items added, %d re-encoded (%d in all)", len(added), len(changed), len(self))
        return len(added), len(changed)

    # -- recommending --------------------------------------------------------------------------
    def row(self, item: str | int, where: str = "") -> int:
        """Index row of an item id (an integer id is read as its decimal string)."""
        key = item_id(item, where or "item")
        row = self.items.index.get(key)
        if row is None:
            raise UnknownItemError(
                f"{where + ': ' if where else ''}unknown item id {key!r} (not in the index of {len(self)} items; "
                "pass the attribute dict of an item the index has not seen, or add it with add_items)",
                key,
            )
        return row

    def _resolve(self, histories: Sequence[History]) -> tuple[list[list[int | dict]], list[list[int]]]:
        """(per history: each element as an index row or an attribute dict, the index rows it holds)."""
        if isinstance(histories, (str, Mapping)) or not isinstance(histories, Sequence):
            raise TypeError("histories must be a list of histories (each a list of item ids or attribute dicts)")
        resolved, known = [], []
        for b, history in enumerate(histories):
            if isinstance(history, (str, Mapping)) or not isinstance(history, Sequence) or not history:
                raise ValueError(f"history {b}: expected a non-empty list of item ids or attribute dicts")
            elements = [
                dict(e) if isinstance(e, Mapping) else self.row(e, f"history {b}, item {p}") for p, e in enumerate(history)
            ]
            resolved.append(elements)
            known.append([e for e in elements if isinstance(e, int)])
        return resolved, known

    @torch.no_grad()
    def _encode(self, resolved: list[list[int | dict]]) -> torch.Tensor:
        """Pooled vector of each resolved history [U, H] float32, batched in order of length."""
        raw = [e for h in resolved for e in h if isinstance(e, dict)]
        tokenized = iter(self.tokenizer.tokenize_items(raw)) if raw else iter(())
        sequences: list[list[TokenizedItem]] = [
            [self.items[e] if isinstance(e, int) else next(tokenized) for e in h] for h in resolved
        ]
        table = [item for seq in sequences for item in seq]
        bounds = np.cumsum([0] + [len(seq) for seq in sequences]).tolist()
        keys = [list(range(a, b)) for a, b in zip(bounds[:-1], bounds[1:])]
        out = torch.empty(len(sequences), self.model.config.hidden_size, dtype=torch.float32, device=self.device)
        for rows, pooled in pooled_batches(
            self.model.longformer, self.tokenizer, table, keys, self.settings, desc="encode histories"
        ):  # fmt: skip
            out[rows] = pooled.float()
        return out

    def encode_histories(self, histories: Sequence[History]) -> torch.Tensor:
        """Pooled vector of each history [U, H] (float32, on the device): what `recommend` ranks items with."""
        return self._encode(self._resolve(histories)[0])

    def clip_k(self, k: int) -> int:
        """`k`, clipped to the catalogue size with a warning; k < 1 is refused."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an integer, got {type(k).__name__}")
        k = int(k)  # a numpy integer too
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if k > len(self):
            logger.warning("k=%d is larger than the catalogue (%d items): returning at most %d per history", k, len(self), len(self))
            return len(self)
        return k

    def _candidate_rows(self, candidates: Any, n: int) -> list[int] | list[list[int]] | None:
        if candidates is None:
            return None
        if per_query(candidates):
            if len(candidates) != n:
                raise ValueError(f"candidates: {len(candidates)} lists for {n} histories")
            return [[self.row(c, f"candidates of history {b}") for c in cs] for b, cs in enumerate(candidates)]
        return [self.row(c, "candidates") for c in candidates]

    def recommend(
        self,
        histories: Sequence[History],
        k: int = 10,
        exclude_history: bool = True,
        candidates: Sequence[str] | Sequence[Sequence[str]] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """The top-k (item id, score) of each history, best first, ties in index order.

        Args:
            histories: each a non-empty list, oldest first, of item ids in the index and attribute
                dicts of items it has never seen (cold start).
            k: items per history; k > the catalogue size is clipped to it (with a warning).
            exclude_history: never recommend an item already in the history.
            candidates: ids to choose from: one list for every history, or one list per history.

        Raises:
            UnknownItemError: an id in a history or in `candidates` that is not in the index.
            ValueError: k < 1, an empty history.
            NonFiniteScores: a history's vector (or a score) is NaN or infinite.
        """
        k = self.clip_k(k)
        resolved, known = self._resolve(histories)
        cand = self._candidate_rows(candidates, len(resolved))
        queries = self._encode(resolved)  # [U, H]
        check_finite_queries(queries)
        each = cand is not None and per_query(cand)
        ids, out = self.ids, []
        bar = tqdm(range(0, len(resolved), SCORE_BATCH), desc="score", disable=not self.progress, unit="batch")
        for start in bar:
            block = slice(start, start + SCORE_BATCH)
            values, rows = top_k(
                self.model, queries[block], k,
                exclude=known[block] if exclude_history else None,
                candidates=cand[block] if each else cand,
            )  # fmt: skip
            for v, r in zip(values.tolist(), rows.tolist()):
                out.append([(ids[i], s) for i, s in zip(r, v) if i >= 0])
        return out


def _place(model: RecformerForSeqRec, attn_implementation: str, device: torch.device, compile: bool) -> None:
    """Set the attention implementation, move the model to `device`, and torch.compile the encoder in place
    (parameter names, hence saved indexes, stay the same) when asked."""
    configure_attention(model, attn_implementation, device)
    model.to(device)
    if compile:
        model.longformer.compile()
