"""Atomic file writing and small JSON helpers shared by every script.

A killed run must never leave a half-written file that a later step reads as valid, so every
output goes to a temporary file in the same folder first and is then renamed over the target
(`os.replace` is atomic on POSIX file systems).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

try:  # orjson is several times faster on the large JSON files of the pretraining corpus
    import orjson
except ImportError:  # pragma: no cover - orjson is in requirements.txt
    orjson = None


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    binary = "b" in mode
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def dumps_json(obj: Any, indent: bool = False) -> bytes:
    """Serialise `obj` to UTF-8 JSON bytes (orjson when available; non-str keys become strings)."""
    if orjson is not None:
        option = orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if indent else 0)
        return orjson.dumps(obj, option=option)
    return json.dumps(obj, indent=2 if indent else None, ensure_ascii=False).encode("utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: bool = False) -> None:
    """Write `obj` as JSON to `path` atomically."""
    atomic_write_bytes(path, dumps_json(obj, indent=indent))


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing or malformed file raises an error that names the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    data = path.read_bytes()
    try:
        return orjson.loads(data) if orjson is not None else json.loads(data)
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` through a temporary file, so an interrupted save never replaces a good checkpoint."""
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; if the block succeeds it replaces `path` (and whatever
    was there), so `path` never holds a half-written folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():  # a folder cannot be renamed over a non-empty one: move it aside first
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                os.replace(old / path.name, path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
