"""The pretraining-corpus writer: the files of `formats.PRETRAIN` from the raw files of several categories.

Two steps, one command each, usually into one folder: the meta step (`process_pretrain_meta`) selects and
describes the items in ``meta_data.json``; the interaction step (`process_pretrain_interactions`) writes
``train.json`` and ``dev.json``, one chronological sequence per reviewer and review file. Each step has its
own stats file and manifest (`formats.PRETRAIN`); the interaction step's manifest records the
``meta_data.json`` it was built from.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from recformer.data.amazon import (
    META_FILE,
    REVIEW_FILE,
    FileStats,
    category_paths,
    gc_paused,
    iter_meta,
    iter_reviews,
    sum_file_stats,
)
from recformer.data.formats import PRETRAIN, DataFile, StepOutput, read_step_bytes
from recformer.io.fileio import FileDigest, parse_json

logger = logging.getLogger(__name__)

# The paper's pretraining categories: seven for training, one for dev.
PRETRAIN_TRAIN_CATEGORIES: tuple[str, ...] = (
    "Automotive",
    "Cell_Phones_and_Accessories",
    "Clothing_Shoes_and_Jewelry",
    "Electronics",
    "Grocery_and_Gourmet_Food",
    "Home_and_Kitchen",
    "Movies_and_TV",
)
PRETRAIN_DEV_CATEGORIES: tuple[str, ...] = ("CDs_and_Vinyl",)
PRETRAIN_CATEGORIES: tuple[str, ...] = PRETRAIN_TRAIN_CATEGORIES + PRETRAIN_DEV_CATEGORIES


@gc_paused()
def build_pretrain_meta(
    meta_paths: Sequence[str | os.PathLike], review_paths: Sequence[str | os.PathLike], progress: bool = True
) -> tuple[dict[str, dict[str, str]], dict[str, Any]]:
    """Select and describe the pretraining items.

    An item is selected if some meta file has a record with a title for it and some review file reviews it.
    Meta files are read in the given (category) order and a later record of an asin replaces an earlier one,
    so the last category's record wins; title-less records are skipped, never replacing a good one.
    """
    review_stats = [FileStats(str(p)) for p in review_paths]
    reviewed: set[str] = set()
    for path, st in zip(review_paths, review_stats):
        reviewed.update(asin for _, asin, _ in iter_reviews(path, st, progress))

    meta_stats = [FileStats(str(p)) for p in meta_paths]
    meta: dict[str, dict[str, str]] = {}
    replaced = 0
    for path, st in zip(meta_paths, meta_stats):
        for asin, rec in iter_meta(path, st, progress):
            if asin in reviewed:
                replaced += asin in meta
                meta[asin] = rec
    title_words = sum(len(r["title"].split()) for r in meta.values())
    stats = {
        **sum_file_stats(review_stats + meta_stats),
        "reviews": [s.to_dict() for s in review_stats],
        "meta": [s.to_dict() for s in meta_stats],
        "meta_records_with_title": sum(s.records for s in meta_stats),
        "reviewed_items": len(reviewed),
        "reviewed_items_without_meta": len(reviewed) - len(meta),  # selected = reviewed and described
        "replaced_meta_records": replaced,
        "items": len(meta),
        "avg_title_words": round(title_words / len(meta), 4) if meta else 0.0,
    }
    return meta, stats


def process_pretrain_meta(
    meta_root: str | os.PathLike,
    seq_root: str | os.PathLike,
    output_dir: str | os.PathLike,
    categories: Sequence[str] = PRETRAIN_CATEGORIES,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the meta step's ``meta_data.json`` for the pretraining categories; return the stats.

    Raises:
        FileNotFoundError, IsADirectoryError: an input file is missing or a folder (checked first).
        OutputPathError: the output folder cannot be written (checked before any input is read).
        OSError: a write failed (the path is named).
        ValueError: an input file is unusable, or no reviewed item has a title (the message names the files).
    """
    meta_paths = category_paths(meta_root, categories, META_FILE)
    review_paths = category_paths(seq_root, categories, REVIEW_FILE)
    output = StepOutput(output_dir, PRETRAIN.meta_step)
    meta, stats = build_pretrain_meta(meta_paths, review_paths, progress)
    if not meta:
        raise ValueError(
            f"no item reviewed in {', '.join(map(str, review_paths))} has a title in "
            f"{', '.join(map(str, meta_paths))}"
        )
    stats = {"categories": list(categories), **stats}
    with output:
        output.write_json(PRETRAIN.meta_data, meta)
        output.commit(stats)
    logger.info("wrote %s: %d items", output.dir / PRETRAIN.meta_data.name, len(meta))
    return stats


@gc_paused()
def build_pretrain_sequences(
    reviews: Iterable[tuple[str, str, int]], items: Mapping[str, Any]
) -> tuple[list[list[str]], dict[str, Any]]:
    """One sequence per reviewer of one review file, in order of first appearance, sorted by (time, asin).

    Only items in `items` count; a reviewer with none gets no sequence. Sequences of one item are kept (the
    reference keeps them; the pretraining collator cannot make a pair from them) and counted, and so are a
    reviewer's repeated reviews of one item (kept, as in the reference).
    """
    # Memory is what limits this at full scale (tens of millions of reviews), so a sequence holds shared
    # objects only: the item table's own asin strings and one int per distinct time.
    canonical = {asin: asin for asin in items}
    times: dict[int, int] = {}
    sequences: defaultdict[str, list] = defaultdict(list)  # reviewerID -> flat [time, asin, time, asin, ...]
    without_meta = 0
    for user, asin, t in reviews:
        asin = canonical.get(asin)
        if asin is None:
            without_meta += 1
            continue
        seq = sequences[user]
        seq.append(times.setdefault(t, t))
        seq.append(asin)
    out, seen, interactions, singles, duplicates = [], set(), 0, 0, 0
    for seq in sequences.values():
        pairs = sorted(zip(seq[0::2], seq[1::2]))  # key (time, asin), as the reference sorts its tuples
        out.append([asin for _, asin in pairs])
        asins = set(seq[1::2])
        seen.update(asins)
        interactions += len(pairs)
        singles += len(pairs) == 1
        duplicates += len(pairs) - len(asins)
    stats = {
        "sequences": len(out),
        "interactions": interactions,
        "items": len(seen),
        "interactions_without_meta": without_meta,
        "single_item_sequences": singles,
        "duplicate_reviews": duplicates,
    }
    return out, stats


def _write_sequence_split(
    output: StepOutput,
    spec: DataFile,
    review_paths: Sequence[Path],
    items: Mapping[str, Any],
    meta_file: str | os.PathLike,
    progress: bool,
) -> dict[str, Any]:
    """Stream one split to `spec` of `output` as a JSON list of asin lists, one review file at a time.

    Sequences never span review files, so only one file's sequences are held in memory at once.

    Raises:
        ValueError: naming a review file none of whose reviews is of an item of `meta_file`.
    """
    per_file, seen = [], set()
    n_seq = n_inter = 0
    with output.open(spec) as f:
        f.write(b"[")
        for review_path in review_paths:
            st = FileStats(str(review_path))
            seqs, s = build_pretrain_sequences(iter_reviews(review_path, st, progress), items)
            if not seqs:
                raise ValueError(
                    f"{review_path}: none of its {st.records} reviews is of an item of {meta_file} (an empty "
                    "category: are the meta step's categories the same?)"
                )
            if n_seq:
                f.write(b",")
            f.write(orjson.dumps(seqs)[1:-1])
            for seq in seqs:
                seen.update(seq)
            n_seq += s["sequences"]
            n_inter += s["interactions"]
            per_file.append({**st.to_dict(), **s})
            logger.info(
                "%s: %d sequences, %d interactions", review_path.name, s["sequences"], s["interactions"]
            )
        f.write(b"]")
    return {
        "sequences": n_seq,
        "interactions": n_inter,
        "items": len(seen),
        "avg_seq_len": round(n_inter / n_seq, 4) if n_seq else 0.0,
        "single_item_sequences": sum(s["single_item_sequences"] for s in per_file),
        "interactions_without_meta": sum(s["interactions_without_meta"] for s in per_file),
        "duplicate_reviews": sum(s["duplicate_reviews"] for s in per_file),
        "files": per_file,
        "item_set": seen,
    }


def process_pretrain_interactions(
    seq_root: str | os.PathLike,
    meta_file: str | os.PathLike,
    output_dir: str | os.PathLike,
    train_categories: Sequence[str] = PRETRAIN_TRAIN_CATEGORIES,
    dev_categories: Sequence[str] = PRETRAIN_DEV_CATEGORIES,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the interaction step's ``train.json`` and ``dev.json`` (lists of asin lists); return the stats.

    Raises:
        FileNotFoundError, IsADirectoryError: an input file is missing or a folder (checked first).
        OutputPathError: the output folder cannot be written (checked before any input is read).
        OSError: a write failed (the path is named).
        ValueError: `meta_file` is unusable (or its meta step did not finish), a review file is unusable or
            gives no sequence (the message names the file).
    """
    train_paths = category_paths(seq_root, train_categories, REVIEW_FILE)
    dev_paths = category_paths(seq_root, dev_categories, REVIEW_FILE)
    output = StepOutput(output_dir, PRETRAIN.interaction_step)
    data, _ = read_step_bytes(meta_file, PRETRAIN.meta_step)
    meta_digest = FileDigest.of(data)
    meta = parse_json(data, meta_file)
    del data
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_file}: expected a {PRETRAIN.meta_data.describe()}")
    if not meta:
        raise ValueError(f"{meta_file}: holds no items (run the meta step first)")
    items = dict.fromkeys(meta)  # only the asins are needed; let the records go
    del meta
    with output:
        train = _write_sequence_split(output, PRETRAIN.train, train_paths, items, meta_file, progress)
        dev = _write_sequence_split(output, PRETRAIN.dev, dev_paths, items, meta_file, progress)
        files = train["files"] + dev["files"]
        stats = {
            "train_categories": list(train_categories),
            "dev_categories": list(dev_categories),
            **sum_file_stats(
                FileStats(f["path"], lines=f["lines"], skipped=f["skipped"], cleaned=f["cleaned"])
                for f in files
            ),
            "meta_items": len(items),
            "users": train["sequences"] + dev["sequences"],  # one sequence per (reviewer, category)
            "items": len(train.pop("item_set") | dev.pop("item_set")),
            "interactions": train["interactions"] + dev["interactions"],
            "train": train,
            "dev": dev,
        }
        meta_input = {"path": str(meta_file), "size": meta_digest.size, "sha256": meta_digest.sha256}
        output.commit(stats, inputs={PRETRAIN.meta_data.name: meta_input})
    return stats
