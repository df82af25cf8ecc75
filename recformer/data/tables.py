"""Readers of interaction and item tables other than Amazon 2018: RecBole atomic files, CSV, TSV and JSON lines.

Two files make a dataset: an interaction file (one row per interaction: user, item, time) and an item
table (one row per item: its id and the attributes that become its text).

* ``recbole``: RecBole's atomic files, tab-separated, no quoting, a header naming each column with its type,
  ``name:type`` (``token``, ``token_seq``, ``float``, ``float_seq``): ``<name>.inter`` with e.g.
  ``user_id:token  item_id:token  rating:float  timestamp:float`` and ``<name>.item`` with e.g.
  ``item_id:token  movie_title:token_seq  genre:token_seq``. Columns are found by name (the part before the
  colon). By default every ``token`` and ``token_seq`` column of the item file but the id becomes an item
  attribute (named without its type), in the header's order.
* ``csv``: a header row, then one row per line; the separator is ``,`` (``.csv``), a tab (``.tsv``,
  ``.tab``), or ``--delimiter``; quoted fields follow the CSV rules. A file named ``.jsonl``, ``.ndjson`` or
  ``.json`` is read as JSON lines (one object per line; a list value becomes its items joined by spaces).
  By default every column but the id becomes an item attribute.

Any of these files may be gzipped. Times are numbers (Unix seconds, as RecBole stores them) or ISO 8601
dates (``2020-05-17`` or ``2020-05-17T10:00:00``; a date without a zone is read as UTC).

A row that cannot be used is skipped, never a crash: it is counted in its file's `TableStats` under a reason
(``bad_columns``: another number of columns than the header; ``missing_field``: the user, item or time is
absent or empty; ``bad_value``: a time that is not a number or a date; ``unparseable``/``not_a_record``: a
JSON line that is not an object; ``no_text``: an item whose text fields are all empty), and the first
`NAMED_BAD_ROWS` are named with their file and line in the stats and the log. A missing column, an empty
file and a file without a single usable row are errors naming the file.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
from tqdm.auto import tqdm

from recformer.data.amazon import (
    BLANK,
    MISSING_FIELD,
    NOT_A_RECORD,
    UNPARSEABLE,
    FileStats,
    _attribute_text,
    gc_paused,
    resolve_input,
)

logger = logging.getLogger(__name__)

RECBOLE, CSV = "recbole", "csv"
TABLE_FORMATS = (RECBOLE, CSV)
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson", ".json")
TAB_SUFFIXES = (".tsv", ".tab")
# RecBole column types that hold text (the item attributes taken by default).
RECBOLE_TEXT_TYPES = ("token", "token_seq")

BAD_COLUMNS = "bad_columns"  # a row with another number of columns than the header
BAD_VALUE = "bad_value"  # a time that is neither a number nor an ISO 8601 date
NO_TEXT = "no_text"  # an item whose text fields are all empty

# Bad rows named (file and line) in the stats and the log; the rest are only counted.
NAMED_BAD_ROWS = 10


@dataclass
class TableStats(FileStats):
    """`FileStats` of one table, with its first bad rows named ("path line N: what is wrong")."""

    bad_rows: list[str] = field(default_factory=list)

    def bad(self, line: int, reason: str, what: str) -> None:
        self.skip(reason)
        if len(self.bad_rows) < NAMED_BAD_ROWS:
            self.bad_rows.append(f"{self.path} line {line}: {what}")

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "bad_rows": list(self.bad_rows)}

    def log_skipped(self) -> None:
        if self.num_skipped:
            more = self.num_skipped - len(self.bad_rows)
            logger.warning(
                "%s: skipped %d of %d rows %s; %s%s",
                self.path,
                self.num_skipped,
                self.lines,
                dict(sorted(self.skipped.items())),
                "; ".join(self.bad_rows),
                f" (and {more} more)" if more > 0 else "",
            )


@dataclass(frozen=True)
class TableFields:
    """Which columns hold what: the interaction file's user, item and time columns (the item table's id
    column is `item`, unless `item_table_id` names another), and the item attributes that become its text
    (None: every text column but the id)."""

    user: str = "user_id"
    item: str = "item_id"
    time: str = "timestamp"
    text: tuple[str, ...] | None = None
    item_table_id: str | None = None
    delimiter: str | None = None  # csv only; None: from the file name

    @property
    def item_id(self) -> str:
        return self.item_table_id or self.item


def _open_text(path: Path) -> io.TextIOWrapper:
    """The file as UTF-8 text (a byte order mark dropped), gunzipped when it starts with the gzip magic."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    raw = gzip.open(path, "rb") if gzipped else open(path, "rb")  # the text wrapper closes it
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def _base_name(path: Path) -> str:
    name = path.name.lower()
    return name[:-3] if name.endswith(".gz") else name


def _is_json_lines(path: Path) -> bool:
    return _base_name(path).endswith(JSON_LINES_SUFFIXES)


def _delimiter(path: Path, fmt: str, given: str | None) -> str:
    if fmt == RECBOLE:
        return "\t"
    if given:
        return "\t" if given in ("\\t", "tab") else given
    return "\t" if _base_name(path).endswith(TAB_SUFFIXES) else ","


def iter_rows(
    path: str | os.PathLike, fmt: str, stats: TableStats, delimiter: str | None = None, progress: bool = True
) -> tuple[list[str] | None, Iterator[tuple[int, dict[str, Any]]]]:
    """The header (column names; for RecBole ``name:type``; None for JSON lines) and an iterator of
    ``(line number, {column: value})`` over the rows, bad rows skipped, counted and named in `stats`.

    Raises:
        FileNotFoundError, IsADirectoryError: the file is missing or a folder.
        ValueError: the file is empty, has no header, is not UTF-8, or a RecBole header is not ``name:type``.
    """
    path = resolve_input(path)
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty (0 bytes)")
    if fmt == CSV and _is_json_lines(path):
        return None, _json_rows(path, stats, progress)
    sep = _delimiter(path, fmt, delimiter)
    text = _open_text(path)
    quoting = csv.QUOTE_NONE if fmt == RECBOLE else csv.QUOTE_MINIMAL
    reader = csv.reader(text, delimiter=sep, quoting=quoting, strict=False)
    try:
        header = next(reader, None)
    except (UnicodeDecodeError, csv.Error) as e:
        text.close()
        raise ValueError(f"{path} line 1: unreadable header ({e})") from None
    if not header or not any(h.strip() for h in header):
        text.close()
        raise ValueError(f"{path}: no header row (the first line must name the columns)")
    header = [h.strip() for h in header]
    stats.lines = 1
    if fmt == RECBOLE:
        untyped = [h for h in header if ":" not in h]
        if untyped:
            text.close()
            raise ValueError(
                f"{path} line 1: RecBole columns are name:type (e.g. item_id:token), got {', '.join(untyped)}"
            )
    return header, _csv_rows(path, text, reader, header, stats, progress)


def _csv_rows(
    path: Path, text: io.TextIOWrapper, reader: Any, header: list[str], stats: TableStats, progress: bool
) -> Iterator[tuple[int, dict[str, Any]]]:
    names = [h.split(":", 1)[0] for h in header]
    line = 1
    with text, tqdm(desc=path.name, unit=" rows", disable=not progress, leave=False) as bar:
        try:
            for row in reader:
                line_start, line = line + 1, reader.line_num
                stats.lines = line
                bar.update()
                if not row or (len(row) == 1 and not row[0].strip()):
                    stats.skip(BLANK)
                    continue
                if len(row) != len(names):
                    stats.bad(line_start, BAD_COLUMNS, f"{len(row)} columns, the header has {len(names)}")
                    continue
                stats.records += 1
                yield line_start, dict(zip(names, row))
        except UnicodeDecodeError:
            raise ValueError(f"{path} line {line + 1}: not UTF-8 text") from None
        except csv.Error as e:
            raise ValueError(f"{path} line {reader.line_num}: {e}") from None


def _json_rows(path: Path, stats: TableStats, progress: bool) -> Iterator[tuple[int, dict[str, Any]]]:
    with (
        _open_text(path) as text,
        tqdm(desc=path.name, unit=" rows", disable=not progress, leave=False) as bar,
    ):
        line = 0
        try:
            for line, raw in enumerate(text, 1):
                stats.lines = line
                bar.update()
                if not raw.strip():
                    stats.skip(BLANK)
                    continue
                try:
                    obj = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    stats.bad(line, UNPARSEABLE, "not JSON")
                    continue
                if not isinstance(obj, dict):
                    stats.bad(line, NOT_A_RECORD, f"a JSON {type(obj).__name__}, not an object")
                    continue
                stats.records += 1
                yield line, obj
        except UnicodeDecodeError:
            raise ValueError(f"{path} line {line + 1}: not UTF-8 text") from None


def _require(path: Path, header: list[str] | None, columns: dict[str, str]) -> None:
    """Refuse a header without one of `columns` ({name: flag}), naming the file, the column and the flag."""
    if header is None:
        return
    names = [h.split(":", 1)[0] for h in header]
    for name, flag in columns.items():
        if name not in names:
            raise ValueError(
                f"{path} line 1: no column {name!r} (columns: {', '.join(header)}); name it with {flag}"
            )


def parse_time(value: Any) -> int | float | None:
    """A time as a number: an int or float (or its text) as it is, an ISO 8601 date as Unix seconds (UTC
    when it has no zone); None for anything else (also NaN and infinities)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if not isinstance(value, str) or not (text := value.strip()):
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            return None
        return int(number) if number.is_integer() else number
    try:
        date = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        return None
    if date.tzinfo is None:
        date = date.replace(tzinfo=timezone.utc)
    stamp = date.timestamp()
    return int(stamp) if stamp.is_integer() else stamp


def _id(value: Any) -> str | None:
    """An id as text (a JSON number becomes its digits); None when absent or blank."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def iter_interactions(
    path: str | os.PathLike,
    fmt: str,
    fields: TableFields,
    stats: TableStats | None = None,
    progress: bool = True,
) -> Iterator[tuple[str, str, int | float]]:
    """Yield ``(user, item, time)`` for each usable row of an interaction file, in file order.

    Raises:
        ValueError: as `iter_rows`; a column is missing (named with its flag); no row is usable.
    """
    path = resolve_input(path)
    stats = stats if stats is not None else TableStats(str(path))
    header, rows = iter_rows(path, fmt, stats, fields.delimiter, progress)
    _require(
        path, header, {fields.user: "--user_field", fields.item: "--item_field", fields.time: "--time_field"}
    )
    records = 0
    try:
        for line, row in rows:
            user, item, raw_time = _id(row.get(fields.user)), _id(row.get(fields.item)), row.get(fields.time)
            missing = [n for n, v in ((fields.user, user), (fields.item, item)) if v is None]
            if raw_time is None or (isinstance(raw_time, str) and not raw_time.strip()):
                missing.append(fields.time)
            if missing:
                stats.bad(line, MISSING_FIELD, f"no {', '.join(missing)}")
                continue
            t = parse_time(raw_time)
            if t is None:
                stats.bad(
                    line, BAD_VALUE, f"{fields.time} {str(raw_time)[:40]!r} is neither a number nor a date"
                )
                continue
            records += 1
            yield user, item, t  # type: ignore[misc]
    finally:
        stats.records = records
    if not records:
        raise ValueError(
            f"{path}: no row is a usable interaction with {fields.user}, {fields.item} and {fields.time} "
            f"({stats.describe()}{'; first: ' + stats.bad_rows[0] if stats.bad_rows else ''})"
        )
    stats.log_skipped()


def _text_columns(path: Path, fmt: str, header: list[str] | None, fields: TableFields) -> list[str] | None:
    """The item table's columns that become text (None: each JSON line's keys but the id)."""
    if fields.text is not None:
        if header is not None:
            _require(path, header, dict.fromkeys(fields.text, "--text_fields"))
        return list(fields.text)
    if header is None:
        return None
    if fmt == RECBOLE:
        typed = [h.split(":", 1) for h in header]
        return [n for n, t in typed if n != fields.item_id and t in RECBOLE_TEXT_TYPES]
    return [h for h in header if h != fields.item_id]


@gc_paused()
def load_items(
    path: str | os.PathLike,
    fmt: str,
    fields: TableFields,
    stats: TableStats | None = None,
    progress: bool = True,
) -> tuple[dict[str, dict[str, str]], int]:
    """Every usable item of an item table as {item id: {attribute: text}} and the number of repeated rows
    (a later row of an id wins, as for Amazon's meta files).

    An item's attributes are its text columns (`TableFields.text`, in that order) as text, a missing one as
    ``""``; an item whose text columns are all empty is skipped (``no_text``).

    Raises:
        ValueError: as `iter_rows`; the id or a named text column is missing; no item has text.
    """
    path = resolve_input(path)
    stats = stats if stats is not None else TableStats(str(path))
    header, rows = iter_rows(path, fmt, stats, fields.delimiter, progress)
    flag = "--item_table_id_field" if fields.item_table_id else "--item_field"
    _require(path, header, {fields.item_id: flag})
    columns = _text_columns(path, fmt, header, fields)
    if columns == []:
        raise ValueError(
            f"{path} line 1: no text column besides {fields.item_id!r} (columns: {', '.join(header or [])})"
        )
    meta: dict[str, dict[str, str]] = {}
    records = 0
    for line, row in rows:
        item = _id(row.get(fields.item_id))
        if item is None:
            stats.bad(line, MISSING_FIELD, f"no {fields.item_id}")
            continue
        names = columns if columns is not None else [k for k in row if k != fields.item_id]
        attrs = {name: _attribute_text(row.get(name), stats) for name in names}
        if not any(v.strip() for v in attrs.values()):
            stats.bad(line, NO_TEXT, f"item {item!r} has no text in {', '.join(names) or 'any field'}")
            continue
        meta[item] = attrs
        records += 1
    stats.records = records
    if not meta:
        raise ValueError(
            f"{path}: no row is a usable item with {fields.item_id} and text ({stats.describe()}"
            f"{'; first: ' + stats.bad_rows[0] if stats.bad_rows else ''})"
        )
    stats.log_skipped()
    return meta, records - len(meta)


def recbole_item_file(inter_file: str | os.PathLike) -> Path:
    """The ``.item`` file beside a RecBole ``.inter`` file (``ml-1m.inter`` -> ``ml-1m.item``)."""
    path = Path(inter_file)
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    stem = name[: -len(".inter")] if name.endswith(".inter") else Path(name).stem
    return path.with_name(stem + ".item" + (".gz" if path.name.endswith(".gz") else ""))
