"""Streaming reader of the raw Amazon Review Data (2018) files.

Raw input: review files ``<Category>_5.json.gz`` with ``reviewerID``, ``asin`` and ``unixReviewTime``;
metadata files ``meta_<Category>.json.gz`` with ``asin``, ``title``, ``brand`` and ``category`` (a list of
strings). Files may be gzipped or plain, and lines may be JSON or the older Python-literal format (single
quotes).

Reading never crashes on a bad line: the line is skipped and counted in `FileStats` under one of the reasons
below. A meta record without a title (missing, null or blank) is skipped too, so it neither adds an item nor
replaces an earlier record of the same asin; a missing or null ``brand``/``category`` becomes ``""``.
Text is kept exactly as in the raw files (HTML entities such as ``&amp;`` included), as the reference does.
"""

from __future__ import annotations

import ast
import contextlib
import gc
import json
import logging
import os
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

# File names of one category in the raw dumps.
REVIEW_FILE = "{}_5.json.gz"
META_FILE = "meta_{}.json.gz"

# Why a line was skipped (the keys of `FileStats.skipped`).
BLANK = "blank"  # empty or whitespace-only line
UNPARSEABLE = "unparseable"  # neither JSON nor a Python literal
NOT_A_RECORD = "not_a_record"  # parsed, but not an object/dict
MISSING_FIELD = "missing_field"  # a required field (asin, reviewerID, unixReviewTime) absent or null
BAD_VALUE = "bad_value"  # a required field of the wrong type, or empty
NO_TITLE = "no_title"  # meta record whose title is absent, null or blank


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


def sum_file_stats(stats: Iterable[FileStats]) -> dict[str, Any]:
    """Totals over several files: lines read and lines skipped by reason."""
    lines, skipped = 0, {}
    for s in stats:
        lines += s.lines
        for reason, n in s.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + n
    return {"lines_read": lines, "lines_skipped": dict(sorted(skipped.items()))}


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building large acyclic containers.

    Building millions of small lists and dicts triggers repeated full collections that scan everything
    built so far; pausing the collector halves the time of `load_meta` and of the folder writers, none of
    which builds cycles.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


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


def category_paths(root: str | os.PathLike, categories: Sequence[str], pattern: str) -> list[Path]:
    """``root/pattern.format(category)`` for each category, resolved (a plain ``.json`` for ``.json.gz``).

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


@gc_paused()
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
