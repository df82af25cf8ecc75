"""The recommender's input files: item catalogues and user histories, each bad entry named.

Catalogue (`read_items`), one of:
    * a JSON object {id: {attribute: text, ...}} (a processed folder's `meta_data.json`);
    * JSON lines, one item per line: {"id": ..., attribute: text, ...};
    * a dict id -> attributes (in Python).

Histories (`read_histories`), JSON lines: {"user": ..., "history": [id or {attributes}, ...]},
oldest item first; an element is a known item's id or the attribute dict of an unseen item.

Ids are strings (an integer id is read as its decimal string, as JSON object keys are). No torch here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recformer.errors import RecformerError
from recformer.io.fileio import DuplicateKeyError, check_unique_keys, read_json

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is in requirements.txt
    orjson = None

ItemsSource = str | os.PathLike | Mapping[Any, Mapping[str, Any]]
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson", ".jsonlines")


class InputError(RecformerError, ValueError):
    """A bad catalogue or history file; the message names the file and the line, item or key."""


@dataclass
class HistoryLine:
    """One input line: its number (1-based), the user as given and the history, oldest first."""

    line: int
    user: Any
    history: list[str | dict]


def _loads(text: bytes) -> Any:
    return orjson.loads(text) if orjson is not None else json.loads(text)


def item_id(value: Any, where: str) -> str:
    """An item id as a string; strings and integers are ids (booleans are not)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise InputError(f"{where}: an item id must be a string or an integer, got {type(value).__name__} {value!r:.60}")


TEXT_SEPARATOR = " | "


def item_text(attributes: Mapping[str, Any]) -> str:
    """An item as one line a person reads: its attribute values in their order, joined by `TEXT_SEPARATOR`
    (a list value's elements by spaces; empty values left out), e.g. ``Solder wire 60/40 | Kester | Tools``."""
    parts = []
    for value in attributes.values():
        if isinstance(value, (list, tuple)):
            value = " ".join(str(v) for v in value if v is not None)
        text = "" if value is None else " ".join(str(value).split())
        if text:
            parts.append(text)
    return TEXT_SEPARATOR.join(parts)


def _attributes(value: Any, where: str) -> dict:
    if not isinstance(value, Mapping):
        raise InputError(f"{where}: expected a dict of attribute -> text, got {type(value).__name__} {value!r:.60}")
    for key in value:
        if not isinstance(key, str):
            raise InputError(f"{where}: attribute names must be strings, got {key!r}")
    return dict(value)


def _check_unicode(key: Any, attrs: dict, where: str) -> None:
    """Refuse text that cannot be written as UTF-8 (a lone surrogate), which saving would fail on later."""
    try:
        json.dumps({str(key): attrs}, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{where}: the id or a text is not valid Unicode (a lone surrogate, e.g. '\\ud800')") from None
    except (TypeError, ValueError):
        return  # not JSON text (e.g. a number attribute): tokenizing names it


def _json_lines(path: Path):
    """(line number, parsed object) of every non-blank line; a line that is not JSON is refused."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                value = _loads(raw)
                check_unique_keys(raw)
            except DuplicateKeyError as e:
                raise InputError(f"{path} line {number}: {e}") from None
            except ValueError as e:
                raise InputError(f"{path} line {number}: not valid JSON ({e})") from None
            yield number, value


def read_items(source: ItemsSource) -> tuple[list[str], list[dict]]:
    """(ids, attribute dicts) of a catalogue, in its order (see the module docstring for the forms).

    A `.jsonl` / `.ndjson` file is read as JSON lines; any other file as one JSON object, or as JSON
    lines when it is not one JSON document.

    Raises:
        FileNotFoundError: no such file.
        InputError: a bad line or entry (named), a repeated id, or an empty catalogue.
    """
    ids: list[str] = []
    items: list[dict] = []
    if isinstance(source, Mapping):
        for key, attrs in source.items():
            ids.append(item_id(key, f"items: id {key!r}"))
            items.append(_attributes(attrs, f"items: item {key!r}"))
            _check_unicode(key, items[-1], f"items: item {key!r}")
        origin = "items"
    elif not isinstance(source, (str, os.PathLike)):
        raise InputError(
            "items: expected a catalogue file path or a dict id -> {attribute: text}, "
            f"got {type(source).__name__} {source!r:.60}"
        )
    else:
        path = Path(source)
        origin = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: file not found")
        data = None
        if path.suffix.lower() not in JSON_LINES_SUFFIXES:
            try:
                data = read_json(path)
            except ValueError:
                data = None  # not one JSON document: JSON lines
            if isinstance(data, Mapping):
                try:
                    check_unique_keys(path.read_bytes())
                except DuplicateKeyError as e:
                    raise InputError(f"{path}: {e}") from None
            if isinstance(data, Mapping) and "id" in data and not isinstance(data.get("id"), Mapping):
                data = None  # a single JSON-lines item, not an {id: attributes} object
            elif data is not None and not isinstance(data, Mapping):
                raise InputError(f"{path}: expected an object {{id: {{attribute: text}}}} or JSON lines, "
                                 f"got a JSON {type(data).__name__}")  # fmt: skip
        if data is not None:
            for key, attrs in data.items():
                ids.append(key)
                items.append(_attributes(attrs, f"{path}: item {key!r}"))
        else:
            first_line: dict[str, int] = {}
            for number, obj in _json_lines(path):
                where = f"{path} line {number}"
                if not isinstance(obj, Mapping) or "id" not in obj:
                    raise InputError(f'{where}: expected an object with an "id" key and the item\'s attributes')
                attrs = dict(obj)
                key = item_id(attrs.pop("id"), where)
                if key in first_line:
                    raise InputError(f"{where}: item id {key!r} repeats line {first_line[key]}")
                first_line[key] = number
                ids.append(key)
                items.append(_attributes(attrs, where))
    if len(set(ids)) != len(ids):  # e.g. the keys 1 and "1" of a dict
        seen: set[str] = set()
        for i in ids:
            if i in seen:
                raise InputError(f"{origin}: item id {i!r} appears twice")
            seen.add(i)
    if not ids:
        raise InputError(f"{origin}: the catalogue is empty")
    return ids, items


def read_histories(path: str | os.PathLike) -> list[HistoryLine]:
    """Every line of a histories file, checked before any work starts.

    Raises:
        FileNotFoundError: no such file.
        InputError: naming the line: not JSON, not an object, no `history`, an empty history, or an
            element that is neither an id nor an attribute dict; or a file without any line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    out: list[HistoryLine] = []
    for number, obj in _json_lines(path):
        where = f"{path} line {number}"
        if not isinstance(obj, Mapping):
            raise InputError(f'{where}: expected an object {{"user": ..., "history": [...]}}, got {type(obj).__name__}')
        if "history" not in obj:
            raise InputError(f'{where}: no "history" key')
        history = obj["history"]
        if not isinstance(history, list):
            raise InputError(f'{where}: "history" must be a list of item ids or attribute dicts')
        if not history:
            raise InputError(f'{where}: "history" is empty')
        elements: list[str | dict] = []
        for position, element in enumerate(history):
            at = f"{where}, history item {position}"
            elements.append(_attributes(element, at) if isinstance(element, Mapping) else item_id(element, at))
        out.append(HistoryLine(number, obj.get("user"), elements))
    if not out:
        raise InputError(f"{path}: no histories (the file is empty)")
    return out
