"""Amazon Review Data (2018): a robust streaming reader and the builders of the processed folders.

Raw input (SPEC section G): review files ``<Category>_5.json.gz`` with ``reviewerID``, ``asin`` and
``unixReviewTime``; metadata files ``meta_<Category>.json.gz`` with ``asin``, ``title``, ``brand`` and
``category`` (a list of strings). Files may be gzipped or plain, and lines may be JSON or the older
Python-literal format (single quotes).

Reading never crashes on a bad line: the line is skipped and counted under a reason (see `SKIP_REASONS`).
A meta record without a title (missing, null or blank) is skipped too, so it neither adds an item nor
replaces an earlier record of the same asin; a missing or null ``brand``/``category`` becomes ``""``.
Text is kept exactly as in the raw files (HTML entities such as ``&amp;`` included), as the reference does.

Three builders, one per command-line script:

* `build_finetune_dataset` / `process_finetune` -> ``umap.json``, ``smap.json``, ``train.json``,
  ``val.json``, ``test.json``, ``meta_data.json`` (``finetune_data/process.py``); as in the reference,
  ``meta_data.json`` holds every item of the meta file that has a title, and readers keep those in ``smap``;
* `build_pretrain_meta` / `process_pretrain_meta` -> ``meta_data.json`` (``pretrain_data/meta_data_process.py``);
* `process_pretrain_interactions` -> ``train.json``, ``dev.json`` (``pretrain_data/interaction_data_process.py``).

Every ``process_*`` function writes its files atomically and ``stats.json`` last, after removing a stale one
first, so a folder with a ``stats.json`` holds the complete output of one run.
"""

from __future__ import annotations

import ast
import contextlib
import gc
import json
import logging
import os
import random
import sys
import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from tqdm.auto import tqdm

from recformer.fileio import atomic_open, atomic_write_json, dumps_json, read_json

logger = logging.getLogger(__name__)

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

FINETUNE_FILES: tuple[str, ...] = (
    "umap.json",
    "smap.json",
    "train.json",
    "val.json",
    "test.json",
    "meta_data.json",
)
STATS_FILE = "stats.json"

# Why a line was skipped.
BLANK = "blank"  # empty or whitespace-only line
UNPARSEABLE = "unparseable"  # neither JSON nor a Python literal
NOT_A_RECORD = "not_a_record"  # parsed, but not an object/dict
MISSING_FIELD = "missing_field"  # a required field (asin, reviewerID, unixReviewTime) absent or null
BAD_VALUE = "bad_value"  # a required field of the wrong type, or empty
NO_TITLE = "no_title"  # meta record whose title is absent, null or blank
SKIP_REASONS: tuple[str, ...] = (BLANK, UNPARSEABLE, NOT_A_RECORD, MISSING_FIELD, BAD_VALUE, NO_TITLE)


@dataclass
class FileStats:
    """What one pass over one raw file read, kept and skipped."""

    path: str
    lines: int = 0  # physical lines read
    records: int = 0  # lines yielded to the caller
    python_literal: int = 0  # lines that needed the Python-literal fallback parser
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "lines": self.lines,
            "records": self.records,
            "python_literal": self.python_literal,
            "skipped": dict(sorted(self.skipped.items())),
        }


def _sum_stats(stats: Iterable[FileStats]) -> dict[str, Any]:
    """Totals over several files: lines read and lines skipped by reason."""
    lines, skipped = 0, {}
    for s in stats:
        lines += s.lines
        for reason, n in s.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + n
    return {"lines_read": lines, "lines_skipped": dict(sorted(skipped.items()))}


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building large acyclic containers.

    Building millions of small lists and dicts triggers repeated full collections that scan everything
    built so far; pausing the collector halves the time of the builders. Nothing built here forms cycles.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# ----------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------


def resolve_input(path: str | os.PathLike) -> Path:
    """Return `path` if it is a file; for ``X.json.gz`` also accept an unzipped ``X.json``.

    Raises:
        FileNotFoundError: naming `path` when neither exists.
    """
    path = Path(path)
    if path.is_file():
        return path
    if path.suffix == ".gz" and path.with_suffix("").is_file():
        return path.with_suffix("")
    raise FileNotFoundError(f"input file not found: {path}")


def parse_line(line: bytes) -> Any:
    """Parse one raw line: JSON first (orjson), then the Python-literal format of the older dumps.

    Raises:
        ValueError: when the line is neither.
    """
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        pass
    return _parse_fallback(line)[0]


def _parse_fallback(line: bytes) -> tuple[Any, str]:
    """Parse a line orjson rejected; return (object, how) with how in {"python_literal", "json"}."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("line is not UTF-8") from None
    try:
        return ast.literal_eval(text.strip()), "python_literal"
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    try:  # JSON that orjson is stricter about, such as NaN
        return json.loads(text), "json"
    except ValueError:
        raise ValueError("line is neither JSON nor a Python literal") from None


def _read_blocks(raw: Any, gzipped: bool, block_size: int = 1 << 20) -> Iterator[bytes]:
    """Yield the (decompressed) content of an open binary file in blocks of about `block_size` bytes.

    Decompressing whole blocks with zlib and splitting them into lines in C is about 20% faster than
    iterating a `gzip.GzipFile` line by line. Concatenated gzip members (``cat a.gz b.gz``) are read in turn.

    Raises:
        ValueError: the gzip stream is corrupt or ends early.
    """
    if not gzipped:
        while block := raw.read(block_size):
            yield block
        return
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # 16+: expect a gzip header and trailer
    pending = False  # a member has started and not yet ended
    try:
        while chunk := raw.read(block_size):
            while chunk:
                pending = True
                if out := inflater.decompress(chunk):
                    yield out
                if inflater.eof:  # end of one gzip member; anything left over is the next member
                    chunk, pending = inflater.unused_data, False
                    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
                else:
                    chunk = b""
    except zlib.error as e:
        raise ValueError(f"corrupt gzip data ({e})") from None
    if pending:
        raise ValueError("the gzip stream ends early (truncated file?)")


def _split_lines(blocks: Iterable[bytes]) -> Iterator[list[bytes]]:
    """Yield the lines of each block (without line ends); a line cut by a block end is completed first."""
    rest = b""
    for block in blocks:
        lines = (rest + block if rest else block).split(b"\n")
        rest = lines.pop()  # after the last line end: a partial line, or b"" at a line boundary
        yield lines
    if rest:  # a last line without a line end
        yield [rest]


def iter_records(
    path: str | os.PathLike, stats: FileStats | None = None, progress: bool = True
) -> Iterator[dict]:
    """Yield the dict on each line of a JSON-lines file (gzipped or plain), skipping and counting bad lines.

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        ValueError: the gzip stream is truncated or corrupt (a partial download must not pass silently).
    """
    path = resolve_input(path)
    if stats is None:
        stats = FileStats(str(path))
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    size = path.stat().st_size
    n = 0
    with (
        open(path, "rb") as raw,
        tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=path.name,
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        gzipped = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        try:
            for lines in _split_lines(_read_blocks(raw, gzipped)):
                bar.update(raw.tell() - bar.n)
                n += len(lines)
                for line in lines:
                    try:
                        obj = loads(line)
                    except decode_error:
                        if not line.strip():
                            stats.skip(BLANK)
                            continue
                        try:
                            obj, how = _parse_fallback(line)
                        except ValueError:
                            stats.skip(UNPARSEABLE)
                            continue
                        if how == "python_literal":
                            stats.python_literal += 1
                    if type(obj) is not dict:
                        stats.skip(NOT_A_RECORD)
                        continue
                    stats.records += 1
                    yield obj
        except ValueError as e:
            raise ValueError(f"{path}: {e} after {n} lines") from None
        finally:
            stats.lines += n
    if stats.num_skipped:
        skipped = dict(sorted(stats.skipped.items()))
        logger.warning("%s: skipped %d of %d lines %s", path, stats.num_skipped, stats.lines, skipped)


def _as_time(value: Any) -> int | None:
    """A Unix time in seconds from an int or a string of digits; None for anything else."""
    if type(value) is int:
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def iter_reviews(
    path: str | os.PathLike, stats: FileStats | None = None, progress: bool = True
) -> Iterator[tuple[str, str, int]]:
    """Yield ``(reviewerID, asin, unixReviewTime)`` for each valid review line, in file order.

    A line without one of the three fields (or with it null) is skipped as ``missing_field``; a line whose
    ids are not non-empty strings or whose time is not an integer is skipped as ``bad_value``.
    `stats.records` counts the reviews yielded.
    """
    if stats is None:
        stats = FileStats(str(path))
    records = 0
    try:
        for rec in iter_records(path, stats, progress):
            user, asin, t = rec.get("reviewerID"), rec.get("asin"), rec.get("unixReviewTime")
            if user is None or asin is None or t is None:
                stats.skip(MISSING_FIELD)
                continue
            if type(t) is not int:
                t = _as_time(t)
            if t is None or type(user) is not str or type(asin) is not str or not user or not asin:
                stats.skip(BAD_VALUE)
                continue
            records += 1
            yield user, asin, t
    finally:
        stats.records = records


def normalize_meta(record: Mapping[str, Any]) -> tuple[str, dict[str, str]] | str:
    """Turn a raw meta record into ``(asin, {"title", "brand", "category"})``, or return the skip reason.

    ``category`` is the list joined by single spaces; a missing or null brand or category becomes ``""``.
    Text is otherwise kept exactly as in the raw data.
    """
    asin = record.get("asin")
    if asin is None:
        return MISSING_FIELD
    if type(asin) is not str or not asin:
        return BAD_VALUE
    title = record.get("title")
    if not isinstance(title, str) or not title.strip():
        return NO_TITLE
    brand = record.get("brand")
    brand = "" if brand is None else brand if isinstance(brand, str) else str(brand)
    category = record.get("category")
    if category is None:
        category = ""
    elif isinstance(category, (list, tuple)):
        category = " ".join(c if isinstance(c, str) else str(c) for c in category)
    elif not isinstance(category, str):
        category = str(category)
    return asin, {"title": title, "brand": brand, "category": category}


def iter_meta(
    path: str | os.PathLike, stats: FileStats | None = None, progress: bool = True
) -> Iterator[tuple[str, dict[str, str]]]:
    """Yield ``(asin, {"title", "brand", "category"})`` for each usable meta line, in file order."""
    if stats is None:
        stats = FileStats(str(path))
    records = 0
    try:
        for rec in iter_records(path, stats, progress):
            out = normalize_meta(rec)
            if isinstance(out, str):
                stats.skip(out)
                continue
            records += 1
            yield out
    finally:
        stats.records = records


@_gc_paused()
def load_meta(
    path: str | os.PathLike, stats: FileStats | None = None, progress: bool = True
) -> tuple[dict[str, dict[str, str]], int]:
    """All usable meta records of one file as {asin: record}; a later line of the same asin wins.

    Returns:
        The mapping (in order of each asin's first usable line) and the number of duplicate lines.
    """
    meta: dict[str, dict[str, str]] = {}
    records = 0
    for asin, rec in iter_meta(path, stats, progress):
        meta[asin] = rec
        records += 1
    return meta, records - len(meta)


# ----------------------------------------------------------------------------------------------------------
# Finetuning data
# ----------------------------------------------------------------------------------------------------------


@dataclass
class FinetuneDataset:
    """The six finetuning files (SPEC section G) and the counts behind them."""

    umap: dict[str, int]  # reviewerID -> user id
    smap: dict[str, int]  # asin -> item id
    train: dict[int, list[int]]  # user id -> item ids, all but the last two
    val: dict[int, list[int]]  # user id -> [second-to-last item id]
    test: dict[int, list[int]]  # user id -> [last item id]
    meta_data: dict[str, dict[str, str]]  # asin -> {title, brand, category}
    stats: dict[str, Any]

    def files(self) -> dict[str, Any]:
        return {
            "umap.json": self.umap,
            "smap.json": self.smap,
            "train.json": self.train,
            "val.json": self.val,
            "test.json": self.test,
            "meta_data.json": self.meta_data,
        }


@_gc_paused()
def build_finetune_dataset(
    reviews: Iterable[tuple[str, str, int]],
    meta: Mapping[str, dict[str, str]],
    min_seq_len: int = 4,
    user_sample_rate: float = 1.0,
    seed: int = 42,
) -> FinetuneDataset:
    """Build the finetuning dataset from reviews in file order and the item metadata.

    Reference semantics: a review counts only if its asin is in `meta`; users with at least `min_seq_len`
    counted reviews are eligible and, in order of their first counted review, kept with probability
    `user_sample_rate` (``random.Random(seed)``; a rate of 1 keeps everyone and draws nothing). User ids are
    0-based in that order; item ids are 0-based in the order met walking the kept users in that order and
    each user's reviews in file order. Each sequence is then stable-sorted by time (ties keep file order) and
    split leave-one-out. ``meta_data`` is `meta` (every item with a title), as the reference writes it.

    Example: reviews u1:A@5, u2:B@1, u1:C@3, u1:D@3, u1:B@9 with min_seq_len 4 give
    umap {u1: 0}, smap {A: 0, C: 1, D: 2, B: 3}, sequence by time C, D, A, B -> train {0: [1, 2]},
    val {0: [0]}, test {0: [3]}.
    """
    if min_seq_len < 3:
        raise ValueError(f"min_seq_len must be at least 3 for a leave-one-out split, got {min_seq_len}")
    if not 0.0 < user_sample_rate <= 1.0:
        raise ValueError(f"user_sample_rate must be in (0, 1], got {user_sample_rate}")

    # Each meta asin's position: a sequence stores these small shared ints, not one string per review.
    position = {asin: i for i, asin in enumerate(meta)}
    asins = list(meta)
    # reviewerID -> flat [pos, time, pos, time, ...] in file order (half the memory of a list of tuples);
    # a defaultdict keeps the order of each user's first counted review, like a dict.
    sequences: defaultdict[str, list[int]] = defaultdict(list)
    without_meta = 0
    for user, asin, t in reviews:
        pos = position.get(asin)
        if pos is None:
            without_meta += 1
            continue
        seq = sequences[user]
        seq.append(pos)
        seq.append(t)

    rng = random.Random(seed)
    umap: dict[str, int] = {}
    item_id = [-1] * len(asins)  # meta position -> item id, -1 until the item is met
    smap_positions: list[int] = []  # meta positions in item-id order
    train: dict[int, list[int]] = {}
    val: dict[int, list[int]] = {}
    test: dict[int, list[int]] = {}
    below_min = sampled_out = interactions = 0
    for user, seq in sequences.items():
        n = len(seq) // 2
        if n < min_seq_len:
            below_min += 1
            continue
        if user_sample_rate < 1.0 and rng.random() >= user_sample_rate:
            sampled_out += 1
            continue
        uid = umap[user] = len(umap)
        positions, times = seq[0::2], seq[1::2]
        for pos in positions:  # file order decides the item ids
            if item_id[pos] < 0:
                item_id[pos] = len(smap_positions)
                smap_positions.append(pos)
        order = sorted(range(n), key=times.__getitem__)  # a stable sort: tied times keep file order
        items = [item_id[positions[i]] for i in order]
        train[uid], val[uid], test[uid] = items[:-2], [items[-2]], [items[-1]]
        interactions += n
    smap = {asins[pos]: sid for sid, pos in enumerate(smap_positions)}

    meta_data = {asin: dict(rec) for asin, rec in meta.items()}
    stats = {
        "interactions_without_meta": without_meta,
        "users_with_interactions": len(sequences),
        "users_below_min_seq_len": below_min,
        "users_sampled_out": sampled_out,
        "users": len(umap),
        "items": len(smap),
        "interactions": interactions,
        "avg_seq_len": round(interactions / len(umap), 4) if umap else 0.0,
        "meta_data_items": len(meta_data),
        "min_seq_len": min_seq_len,
        "user_sample_rate": user_sample_rate,
        "seed": seed,
    }
    return FinetuneDataset(umap, smap, train, val, test, meta_data, stats)


def _begin_output(output_dir: str | os.PathLike) -> Path:
    """Create the output folder and drop a stale stats.json: it is rewritten last, as the completion mark."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (output_dir / STATS_FILE).unlink()
    return output_dir


def process_finetune(
    file_path: str | os.PathLike,
    meta_file_path: str | os.PathLike,
    output_path: str | os.PathLike,
    min_seq_len: int = 4,
    user_sample_rate: float = 1.0,
    seed: int = 42,
    progress: bool = True,
) -> dict[str, Any]:
    """Read one category's review and meta files and write the finetuning folder; return the stats."""
    # Both inputs must exist before any work starts.
    file_path, meta_file_path = resolve_input(file_path), resolve_input(meta_file_path)
    meta_stats, review_stats = FileStats(str(meta_file_path)), FileStats(str(file_path))
    meta, duplicates = load_meta(meta_file_path, meta_stats, progress)
    data = build_finetune_dataset(
        iter_reviews(file_path, review_stats, progress), meta, min_seq_len, user_sample_rate, seed
    )
    stats = {
        **_sum_stats([review_stats, meta_stats]),
        "reviews": review_stats.to_dict(),
        "meta": {**meta_stats.to_dict(), "duplicate_records": duplicates, "items_with_title": len(meta)},
        **data.stats,
    }
    output_dir = _begin_output(output_path)
    for name, obj in data.files().items():
        atomic_write_json(output_dir / name, obj)
    atomic_write_json(output_dir / STATS_FILE, stats, indent=True)
    logger.info("wrote %s: %d users, %d items", output_dir, stats["users"], stats["items"])
    return stats


# ----------------------------------------------------------------------------------------------------------
# Pretraining data
# ----------------------------------------------------------------------------------------------------------


def category_paths(root: str | os.PathLike, categories: Sequence[str], pattern: str) -> list[Path]:
    """``root/pattern.format(category)`` for each category, each resolved (``.json`` for ``.json.gz`` is fine).

    Raises:
        FileNotFoundError: naming every missing file.
    """
    paths, missing = [], []
    for category in categories:
        path = Path(root) / pattern.format(category)
        try:
            paths.append(resolve_input(path))
        except FileNotFoundError:
            missing.append(str(path))
    if missing:
        raise FileNotFoundError("input file not found: " + ", ".join(missing))
    return paths


@_gc_paused()
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
        **_sum_stats(review_stats + meta_stats),
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
    """Write ``output_dir/meta_data.json`` for the pretraining categories; return the stats."""
    meta_paths = category_paths(meta_root, categories, "meta_{}.json.gz")
    review_paths = category_paths(seq_root, categories, "{}_5.json.gz")
    meta, stats = build_pretrain_meta(meta_paths, review_paths, progress)
    stats = {"categories": list(categories), **stats}
    output_dir = _begin_output(output_dir)
    atomic_write_json(output_dir / "meta_data.json", meta)
    atomic_write_json(output_dir / STATS_FILE, stats, indent=True)
    logger.info("wrote %s: %d items", output_dir / "meta_data.json", len(meta))
    return stats


@_gc_paused()
def build_pretrain_sequences(
    reviews: Iterable[tuple[str, str, int]], items: Mapping[str, Any]
) -> tuple[list[list[str]], dict[str, Any]]:
    """One sequence per reviewer of one review file, in order of first appearance, sorted by (time, asin).

    Only items in `items` count; a reviewer with none gets no sequence. Sequences of one item are kept (the
    reference keeps them; the pretraining collator cannot make a pair from them) and counted.
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
    out, seen, interactions, singles = [], set(), 0, 0
    for seq in sequences.values():
        pairs = sorted(zip(seq[0::2], seq[1::2]))  # key (time, asin), as the reference sorts its tuples
        out.append([asin for _, asin in pairs])
        seen.update(seq[1::2])
        interactions += len(pairs)
        singles += len(pairs) == 1
    stats = {
        "sequences": len(out),
        "interactions": interactions,
        "items": len(seen),
        "interactions_without_meta": without_meta,
        "single_item_sequences": singles,
    }
    return out, stats


def _write_sequence_split(
    path: Path, review_paths: Sequence[Path], items: Mapping[str, Any], progress: bool
) -> dict[str, Any]:
    """Stream one split to `path` as a JSON list of asin lists, one review file at a time.

    Sequences never span review files, so only one file's sequences are held in memory at once.
    """
    per_file, seen = [], set()
    n_seq = n_inter = 0
    with atomic_open(path, "wb") as f:
        f.write(b"[")
        for review_path in review_paths:
            st = FileStats(str(review_path))
            seqs, s = build_pretrain_sequences(iter_reviews(review_path, st, progress), items)
            if seqs:
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
    """Write ``train.json`` and ``dev.json`` (JSON lists of asin lists) for pretraining; return the stats."""
    train_paths = category_paths(seq_root, train_categories, "{}_5.json.gz")
    dev_paths = category_paths(seq_root, dev_categories, "{}_5.json.gz")
    meta = read_json(meta_file)
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_file}: expected a JSON object {{asin: {{title, brand, category}}}}")
    items = dict.fromkeys(meta)  # only the asins are needed; let the records go
    del meta
    output_dir = _begin_output(output_dir)
    train = _write_sequence_split(output_dir / "train.json", train_paths, items, progress)
    dev = _write_sequence_split(output_dir / "dev.json", dev_paths, items, progress)
    files = train["files"] + dev["files"]
    stats = {
        "train_categories": list(train_categories),
        "dev_categories": list(dev_categories),
        **_sum_stats(FileStats(f["path"], lines=f["lines"], skipped=f["skipped"]) for f in files),
        "meta_items": len(items),
        "users": train["sequences"] + dev["sequences"],  # one sequence per (reviewer, category)
        "items": len(train.pop("item_set") | dev.pop("item_set")),
        "interactions": train["interactions"] + dev["interactions"],
        "train": train,
        "dev": dev,
    }
    atomic_write_json(output_dir / STATS_FILE, stats, indent=True)
    return stats


def dump_stats(stats: Mapping[str, Any], per_file: bool = False) -> str:
    """Stats as indented JSON text, for printing; the per-file lists are left out unless `per_file`."""

    def brief(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: brief(v) for k, v in value.items() if per_file or not _is_file_list(v)}
        return value

    return dumps_json(brief(stats), indent=True).decode("utf-8")


def _is_file_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def format_args(args: Any) -> str:
    """Resolved command-line arguments, one per line, for the scripts to print once."""
    return "arguments:\n" + "\n".join(f"  {k} = {v}" for k, v in vars(args).items())


def run_cli(args: Any, output_dir: str | os.PathLike, job: Any) -> int:
    """What the three processing scripts do around their job: print the arguments, run `job()`,
    print a stats summary (or one error line naming the file) and return the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(format_args(args))
    try:
        stats = job()
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(dump_stats({"args": vars(args), **stats}))
    print(f"full stats: {os.path.join(output_dir, STATS_FILE)}")
    return 0
