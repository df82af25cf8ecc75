"""Recommend next items with any Recformer checkpoint: an item index, top-k, new items without retraining.

`Recommender.from_pretrained(checkpoint, items)` encodes every item of a catalogue alone
(`ModelRuntime.item_table`, the item table of finetuning) into an index; `recommend(histories)`
encodes each history (oldest item first; known ids and attribute dicts of unseen items mixed
freely) and returns its top-k items (`ranking.top_k`: cosine / temperature, chunked, ties in index
order). `add_items` encodes only new or changed items. `save(dir)` writes a self-contained folder
(vectors, tokenized items, ids, fingerprint, encoder, config, tokenizer); `Recommender.load(dir)`
needs neither the catalogue nor the checkpoint, and refuses a checkpoint, tokenizer or Recformer
fields other than those the index was built with.

The index folder, its files and its self-checks are `index_files.py`.
"""

from __future__ import annotations

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
from recformer.devices import InferenceSettings, check_batch_size, resolve_device
from recformer.errors import RecformerError
from recformer.inference.index_files import (
    IDS_HASH_KEY,
    INDEX_FILE,
    INDEX_FORMAT,
    META_FILE,
    Fingerprint,
    check_built_with,
    check_finite_vectors,
    ids_hash,
    item_digests,
    read_index_folder,
)
from recformer.inference.inputs import ItemsSource, item_id, read_items
from recformer.inference.ranking import check_finite_queries, per_query, top_k
from recformer.io.cache import file_fingerprint, item_vector_fields, tokenizer_fingerprint
from recformer.io.checkpoint import load_checkpoint
from recformer.io.fileio import atomic_write_bytes, dumps_json
from recformer.io.folders import atomic_directory
from recformer.model.attention import check_attn_implementation
from recformer.model.item_tokens import TokenizedItems, tokenize_catalogue
from recformer.model.modeling import RecformerForSeqRec
from recformer.model.tokenization import RecformerTokenizer, TokenizedItem
from recformer.runtime import ModelRuntime

logger = logging.getLogger(__name__)

# Histories scored per pass over the index (the memory bound of `ranking.top_k` is stated for 256).
SCORE_BATCH = 256
VECTOR_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16}

History = Sequence[str | int | Mapping[str, Any]]


class UnknownItemError(RecformerError, ValueError):
    """An item id that is not in the index."""

    def __init__(self, message: str, item: str):
        super().__init__(message)
        self.item = item


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


@dataclass(frozen=True)
class RunOptions:
    """Where and how a Recommender's model runs: the keywords `from_pretrained` and `load` take.

    device: auto, cpu, cuda, cuda:N or a GPU index (under torchrun: auto, cuda or cpu).
    batch_size: items or histories encoded per batch; None: batches of a token budget
        (`evaluation.pooled_batches`).
    attn_implementation: one of `recformer.model.attention.ATTN_IMPLEMENTATIONS` (an unknown name, or one
        that cannot run on the device, fails before anything is loaded).
    progress: progress bars.
    compile: torch.compile the encoder first (in place; worth it for large catalogues on a GPU).
    """

    device: str | int = "auto"
    batch_size: int | None = None
    attn_implementation: str = "auto"
    progress: bool = True
    compile: bool = False

    def __post_init__(self):
        check_attn_implementation(self.attn_implementation)
        check_batch_size(self.batch_size)

    def settings(self, device: torch.device) -> InferenceSettings:
        return InferenceSettings(device, batch_size=self.batch_size, progress=self.progress)


class Recommender:
    """Top-k next items for user histories over an item index; see the module docstring.

    A `ModelRuntime` (`runtime`) holds the model, its tokenizer, the settings and the tokenized items
    (keyed by id); the index adds each item's digest and what the index was built from (`fingerprint`).

    Example:
        >>> rec = Recommender.from_pretrained("recformer_seqrec_ckpt.bin", "meta_data.json")
        >>> rec.recommend([["B001", "B007"], ["B003", {"title": "a new item", "brand": "acme"}]], k=5)
        [[("B042", 17.3), ...], [...]]
        >>> rec.add_items({"N1": {"title": "never trained on", "brand": "acme"}})   # (1 added, 0 updated)
        >>> rec.save("index/")            # later: Recommender.load("index/")
    """

    def __init__(self, runtime: ModelRuntime, digests: np.ndarray, fingerprint: Fingerprint):
        items, model = runtime.items, runtime.model
        if items is None or items.keys is None or model.item_embedding is None or len(items) != model.item_embedding.num_embeddings:
            raise ValueError("the model's item table and the tokenized items (with their ids) must have one row per item")
        check_finite_vectors(model.item_embedding.weight.detach(), items.keys, "index")
        model.eval()
        self.runtime = runtime
        self.digests = digests
        self.fingerprint = fingerprint
        self.saved_dtype = "float32"  # of the vectors in the folder this index was loaded from

    @property
    def model(self) -> RecformerForSeqRec:
        return self.runtime.model

    @property
    def tokenizer(self) -> RecformerTokenizer:
        return self.runtime.tokenizer

    @property
    def items(self) -> TokenizedItems:
        return self.runtime.items

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def progress(self) -> bool:
        return self.runtime.settings.progress

    @progress.setter
    def progress(self, value: bool) -> None:
        self.runtime.settings = self.runtime.settings.replace(progress=value)

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | os.PathLike,
        items: ItemsSource,
        model_name_or_path: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        fields: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Recommender:
        """Encode every item of `items` with the checkpoint's encoder into a new index.

        Under torchrun (process group started, e.g. `distributed.init_from_env`) every rank calls it:
        the items are encoded in shards and every rank gets the whole index.

        Args:
            checkpoint: any form `load_checkpoint` takes (released RecformerModel or SeqRec file,
                finetuned `best_model.bin`, `save_pretrained` folder), as a path.
            items: a `meta_data.json` path, a JSON-lines file of {"id": ..., attributes}, or a dict
                id -> attributes (`inputs.read_items`).
            model_name_or_path: config + tokenizer; default: the checkpoint's own (`runtime.model_sources`).
            cache_dir: disk cache of the tokenized items and the vectors, keyed by checkpoint,
                tokenizer, Recformer fields and items (`cache.item_table_path`).
            fields: Recformer field values (`configuration.build_config`); None = the config's own.
            **options: `RunOptions` (device, batch_size, attn_implementation, progress, compile).
        """
        opts = RunOptions(**options)
        settings = opts.settings(distributed.rank_device(opts.device)).replace(
            progress=opts.progress and distributed.is_main()
        )
        runtime, _ = ModelRuntime.from_checkpoint(
            checkpoint, settings, model_name_or_path=model_name_or_path, fields=fields,
            attn_implementation=opts.attn_implementation, compile=opts.compile,
        )  # fmt: skip
        ids, attrs = read_items(items)
        runtime.tokenize(attrs, keys=ids, cache_dir=cache_dir)
        checkpoint_hash = file_fingerprint(checkpoint)
        runtime.set_item_table(runtime.item_table(checkpoint_hash, attrs, cache_dir))
        config = runtime.config
        fingerprint = Fingerprint(checkpoint_hash, tokenizer_fingerprint(runtime.tokenizer), item_vector_fields(config))
        logger.info("index of %d items from %s", len(ids), checkpoint)
        return cls(runtime, item_digests(attrs), fingerprint)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        checkpoint: str | os.PathLike | None = None,
        model_name_or_path: str | os.PathLike | None = None,
        fields: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Recommender:
        """A saved index (`save`), with the encoder saved beside it; scoring runs in float32.

        `checkpoint`, `model_name_or_path` and `fields`, when given, are what the caller means to
        use; each must be what the index was built with. `**options` as for `from_pretrained`.

        The folder is checked against itself first (`index_files.read_index_meta`, `read_index_tensors`):
        the ids against the vectors (count, duplicates, the hash recorded beside the vectors), the
        tokenizer files against the tokenizer hash of the fingerprint, the tokenized items (offsets, token
        ids within the vocabulary), finite vectors.

        Raises:
            FileNotFoundError: `path` holds no saved index.
            BrokenIndex: a file of the folder is unreadable, malformed or disagrees with another (named).
            TokenizerError: the folder has no tokenizer files, or ids past the encoder's vocabulary.
            NonFiniteScores: a saved vector is NaN or infinite.
            IndexMismatch: the checkpoint's hidden size differs from the index's (both named), or
                the checkpoint, tokenizer or fields differ (each part named).
        """
        opts = RunOptions(**options)
        path = Path(path)
        meta, config, tensors, tokenizer = read_index_folder(path)
        saved = Fingerprint(**meta["fingerprint"])
        check_built_with(path, saved, config, int(tensors["vectors"].shape[1]), checkpoint, model_name_or_path,
                              fields)  # fmt: skip
        model = RecformerForSeqRec(config)
        load_checkpoint(model.longformer, path)
        runtime = ModelRuntime.place(
            model, tokenizer, opts.settings(resolve_device(opts.device)),
            attn_implementation=opts.attn_implementation, compile=opts.compile,
        )  # fmt: skip
        runtime.set_item_table(tensors["vectors"].float())
        runtime.items = TokenizedItems(
            tensors["token_ids"].numpy(), tensors["token_types"].numpy(), tensors["token_offsets"].numpy(),
            list(meta["ids"]),
        )
        logger.info("loaded an index of %d items from %s", len(runtime.items), path)
        rec = cls(runtime, tensors["item_digests"].numpy().copy(), saved)
        rec.saved_dtype = meta["dtype"]
        return rec

    def save(self, path: str | os.PathLike, dtype: str | torch.dtype = torch.float32) -> None:
        """Write the index folder (see the module docstring) atomically: a staging sibling renamed into place
        (`folders.atomic_directory`), holding the folder's lock.

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
        vectors = self.runtime.encode_items(fresh, shard=False)  # one caller's items: no collective
        check_finite_vectors(vectors, [ids[j] for j in todo], "add_items")
        rows = [row for row, _ in changed]
        table = torch.cat([self.vectors.detach(), vectors[len(changed) :].to(self.vectors)])  # [N + added, H]
        if rows:
            table[rows] = vectors[: len(changed)].to(table)
        self.model.init_item_embedding(table)
        self.runtime.items = _splice(self.items, rows, fresh, self.ids + [ids[j] for j in added])
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
        for rows, pooled in self.runtime.pooled(table, keys, desc="encode histories"):
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
