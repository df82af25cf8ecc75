"""Streaming reader of the raw Amazon Review Data (2018) files.

Raw input: review files ``<Category>_5.json.gz`` with ``reviewerID``, ``asin`` and ``unixReviewTime``;
metadata files ``meta_<Category>.json.gz`` with ``asin``, ``title``, ``brand`` and ``category`` (a list of
strings). Files may be gzipped or plain, and lines may be JSON or the older Python-literal format (single
quotes).

Reading never crashes on a bad line: the line is skipped and counted in `FileStats` under one of the reasons
below. A meta record without a title (missing, null or blank) is skipped too, so it neither adds an item nor
replaces an earlier record of the same asin; a missing or null ``brand``/``category`` becomes ``""``.
Text is kept exactly as in the raw files (HTML entities such as ``&amp;`` included), as the reference does,
except for what cannot be written as UTF-8 JSON or is not text at all; those values are cleaned and counted
(`FileStats.cleaned`): a lone surrogate escape (``"\\ud800"``) becomes U+FFFD, a number becomes its decimal
text and any other non-text value (a list inside a list, a dict, a bool) is left out. An id (asin,
reviewerID) with a lone surrogate is a bad value: its line is skipped.

A file that holds no usable line at all (an empty file, a failed download, a UTF-16 file) is an error
naming it, never an empty result.
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
TOO_DEEP = "too_deep"  # nested deeper than the JSON parsers allow (about 1,000 levels)

# What was cleaned in a kept record (the keys of `FileStats.cleaned`).
LONE_SURROGATE = "lone_surrogate"  # a text value with a lone UTF-16 surrogate, replaced by U+FFFD
NON_TEXT = "non_text"  # an attribute value that is not text: a number (made text) or anything else (left out)


@dataclass
class FileStats:
    """What one pass over one raw file read, kept and skipped."""

    path: str
    lines: int = 0  # physical lines read
    records: int = 0  # lines yielded to the caller
    python_literal: int = 0  # lines that needed the Python-literal fallback parser
    skipped: dict[str, int] = field(default_factory=dict)
    cleaned: dict[str, int] = field(default_factory=dict)  # values cleaned in kept records, by reason

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def clean(self, reason: str) -> None:
        self.cleaned[reason] = self.cleaned.get(reason, 0) + 1

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
            "cleaned": dict(sorted(self.cleaned.items())),
        }

    def describe(self) -> str:
        """Lines read and skipped, for error messages."""
        skipped = f", skipped {dict(sorted(self.skipped.items()))}" if self.skipped else ""
        return f"{self.lines} lines read{skipped}"


def sum_file_stats(stats: Iterable[FileStats]) -> dict[str, Any]:
    """Totals over several files: lines read, lines skipped and values cleaned, by reason."""
    lines, skipped, cleaned = 0, {}, {}
    for s in stats:
        lines += s.lines
        for total, counts in ((skipped, s.skipped), (cleaned, s.cleaned)):
            for reason, n in counts.items():
                total[reason] = total.get(reason, 0) + n
    return {
        "lines_read": lines,
        "lines_skipped": dict(sorted(skipped.items())),
        "values_cleaned": dict(sorted(cleaned.items())),
    }


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
        IsADirectoryError: naming `path` when it is a folder.
    """
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        raise IsADirectoryError(f"input file is a folder: {path}")
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


class _BadLine(ValueError):
    """A line that cannot be parsed; `reason` is its key in `FileStats.skipped`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _parse_fallback(line: bytes) -> tuple[Any, str]:
    """Parse a line orjson rejected; return (object, how) with how in {"python_literal", "json"}.

    Raises:
        _BadLine: the line is not UTF-8, neither JSON nor a Python literal, or nested too deeply to parse.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise _BadLine(UNPARSEABLE) from None
    try:
        return ast.literal_eval(text.strip()), "python_literal"
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    try:  # JSON that orjson is stricter about, such as NaN
        return json.loads(text), "json"
    except ValueError:
        raise _BadLine(UNPARSEABLE) from None
    except RecursionError:
        raise _BadLine(TOO_DEEP) from None


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
                if not pending:  # between members: zero bytes are padding, as gzip and Python's gzip accept
                    chunk = chunk.lstrip(b"\0")
                    if not chunk:
                        break
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


UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
UTF8_BOM = b"\xef\xbb\xbf"


def _split_lines(blocks: Iterable[bytes]) -> Iterator[list[bytes]]:
    """Yield the lines of each block (without line ends); a line cut by a block end is completed first.

    A UTF-8 byte order mark at the start is dropped.

    Raises:
        ValueError: the text starts with a UTF-16 byte order mark.
    """
    rest = b""
    first = True
    for block in blocks:
        if first and block:
            first = False
            if block.startswith(UTF16_BOMS):
                raise ValueError(
                    "the file is UTF-16 text; the reader expects UTF-8 (convert it: iconv -f UTF-16 -t UTF-8)"
                )
            if block.startswith(UTF8_BOM):
                block = block[len(UTF8_BOM) :]
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
        ValueError: the gzip stream is truncated or corrupt (a partial download must not pass silently), the
            file is empty, UTF-16 text, or holds no JSON record at all.
    """
    path = resolve_input(path)
    if stats is None:
        stats = FileStats(str(path))
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path}: the file is empty (0 bytes; an interrupted download?)")
    n = records = 0
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
                        except _BadLine as e:
                            stats.skip(e.reason)
                            continue
                        if how == "python_literal":
                            stats.python_literal += 1
                    if type(obj) is not dict:
                        stats.skip(NOT_A_RECORD)
                        continue
                    stats.records += 1
                    records += 1
                    yield obj
        except ValueError as e:
            raise ValueError(f"{path}: {e}" + (f" after {n} lines" if n else "")) from None
        finally:
            stats.lines += n
    if not records:
        raise ValueError(f"{path}: no line holds a JSON record ({stats.describe()})")
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
    ids are not non-empty strings (or hold a lone surrogate) or whose time is not an integer is skipped as
    ``bad_value``. `stats.records` counts the reviews yielded.

    Raises:
        ValueError: as `iter_records`, and when no line of the file is a usable review.
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
            if t is None or not _is_id(user) or not _is_id(asin):
                stats.skip(BAD_VALUE)
                continue
            records += 1
            yield user, asin, t
    finally:
        stats.records = records
    if not records:
        raise ValueError(
            f"{path}: no line is a usable review with reviewerID, asin and unixReviewTime "
            f"({stats.describe()})"
        )


def _has_lone_surrogate(text: str) -> bool:
    """Whether `text` holds a UTF-16 surrogate, which UTF-8 JSON cannot encode (only the Python-literal and
    stdlib-JSON fallback parsers can produce one, from an escape such as ``\\ud800``)."""
    if text.isascii():  # constant time in CPython
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _is_id(value: Any) -> bool:
    """A usable asin or reviewerID: a non-empty string that UTF-8 can encode."""
    return type(value) is str and value != "" and not _has_lone_surrogate(value)


def _clean_text(text: str, stats: FileStats | None) -> str:
    """`text` with each lone surrogate replaced by U+FFFD (a valid surrogate pair becomes its character)."""
    if not _has_lone_surrogate(text):
        return text
    if stats is not None:
        stats.clean(LONE_SURROGATE)
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _attribute_text(value: Any, stats: FileStats | None) -> str:
    """An attribute value as text: a string as it is (cleaned), a list or tuple as its items joined by single
    spaces, None as ``""``; a number becomes its decimal text, any other value is left out (both counted)."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(t for t in (_scalar_text(v, stats) for v in value) if t is not None)
    text = _scalar_text(value, stats)
    return "" if text is None else text


def _scalar_text(value: Any, stats: FileStats | None) -> str | None:
    """A string (cleaned) or a number as text; None for anything else. Non-strings are counted."""
    if isinstance(value, str):
        return _clean_text(value, stats)
    if stats is not None:
        stats.clean(NON_TEXT)
    return str(value) if type(value) in (int, float) else None


def normalize_meta(
    record: Mapping[str, Any], stats: FileStats | None = None
) -> tuple[str, dict[str, str]] | str:
    """Turn a raw meta record into ``(asin, {"title", "brand", "category"})``, or return the skip reason.

    ``category`` is the list joined by single spaces; a missing or null brand or category becomes ``""``.
    Text is otherwise kept exactly as in the raw data, but for the cleaning the module docstring describes
    (counted in `stats`).
    """
    asin = record.get("asin")
    if asin is None:
        return MISSING_FIELD
    if not _is_id(asin):
        return BAD_VALUE
    title = record.get("title")
    if not isinstance(title, str) or not title.strip():
        return NO_TITLE
    title = _clean_text(title, stats)
    brand = _attribute_text(record.get("brand"), stats)
    category = _attribute_text(record.get("category"), stats)
    return asin, {"title": title, "brand": brand, "category": category}


def iter_meta(
    path: str | os.PathLike, stats: FileStats | None = None, progress: bool = True
) -> Iterator[tuple[str, dict[str, str]]]:
    """Yield ``(asin, {"title", "brand", "category"})`` for each usable meta line, in file order.

    Raises:
        ValueError: as `iter_records`, and when no line of the file is a usable item.
    """
    if stats is None:
        stats = FileStats(str(path))
    records = 0
    try:
        for rec in iter_records(path, stats, progress):
            out = normalize_meta(rec, stats)
            if isinstance(out, str):
                stats.skip(out)
                continue
            records += 1
            yield out
    finally:
        stats.records = records
    if not records:
        raise ValueError(f"{path}: no line is a usable item with an asin and a title ({stats.describe()})")


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
