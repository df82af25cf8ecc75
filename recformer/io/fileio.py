"""Atomic file writing and small JSON helpers shared by every script.

A killed run must never leave a half-written file that a later step reads as valid, so every
output goes to a temporary file in the same folder first and is then renamed over the target
(`os.replace` is atomic on POSIX file systems). Temporary files are named ``.<name>.<random>.tmp``;
a killed run may leave one behind, which no reader ever opens.

Outputs get the mode `open()` would give them (0666 less the umask), and a failed write (a full disk,
a quota) raises an `OSError` whose ``filename`` is the output path.

Whole folders are written by `folders.atomic_directory`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple, NoReturn

from recformer.errors import RecformerError

try:  # orjson is several times faster on the large JSON files of the pretraining corpus
    import orjson
except ImportError:  # pragma: no cover - orjson is in requirements.txt
    orjson = None

logger = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"


def temp_name_prefix(name: str) -> str:
    """The start of the names of the temporary files that stand in for the output file `name`."""
    return f".{name}."


def _create_temp(path: Path) -> tuple[int, Path]:
    """Create a new empty temporary file beside `path` and return (descriptor, its path).

    The file is created with mode 0666, which the kernel reduces by the umask exactly as for `open()`
    (`tempfile.mkstemp` would make it 0600 whatever the umask).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = path.parent / f"{temp_name_prefix(path.name)}{secrets.token_hex(6)}{TEMP_SUFFIX}"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue


def _raise_naming(e: OSError, path: Path) -> NoReturn:
    """Raise `e` with `path` as its file name when it has none (ENOSPC from a write names no file)."""
    if e.filename is not None:
        raise e
    raise OSError(e.errno, e.strerror or str(e), str(path)) from e  # the errno picks the subclass, as for e


class _HashingWriter:
    """A binary file that keeps the size and SHA-256 of what is written through it."""

    def __init__(self, f: IO[bytes]):
        self._f = f
        self._sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._sha256.update(data)
        self.size += len(data)
        return self._f.write(data)

    def digest(self) -> FileDigest:
        return FileDigest(self.size, self._sha256.hexdigest())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


class FileDigest(NamedTuple):
    """Size in bytes and SHA-256 (hex) of a file's content."""

    size: int
    sha256: str

    @classmethod
    def of(cls, data: bytes) -> FileDigest:
        return cls(len(data), hashlib.sha256(data).hexdigest())


# Errors that only a write can raise: the block may also read other files, whose errors must pass unchanged.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@contextlib.contextmanager
def _temp_file(path: Path, mode: str, encoding: str | None) -> Iterator[tuple[IO, Path]]:
    """Yield (open file, its temporary path) beside `path`; flushed to disk after the block, deleted if the
    block or the write fails. A write error (a full disk, a quota) is raised naming `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    binary = "b" in mode
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as f:
            try:
                yield f, tmp
            except OSError as e:
                if e.errno in _WRITE_ERRNOS:
                    _raise_naming(e, path)
                raise
            try:
                f.flush()
                os.fsync(f.fileno())
            except OSError as e:
                _raise_naming(e, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside `path`; rename it over `path` only if the block succeeds.

    A symbolic link is written through (its target is replaced, the link stays); a FIFO, a device or
    a socket at `path` is refused with an OSError naming it (renaming over it would replace it).
    """
    path = _output_target(Path(path))
    with _temp_file(path, mode, encoding) as (f, tmp):
        yield f
    try:
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _raise_naming(e, path)


def _output_target(path: Path) -> Path:
    """Where writing `path` puts the bytes: a symbolic link's target; a special file is refused."""
    if path.is_symlink() and path.exists():
        path = Path(os.path.realpath(path))
    if path.exists() and not (path.is_file() or path.is_dir()):
        raise OSError(errno.EINVAL, "a special file (a FIFO, a device or a socket), not a regular file", str(path))
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


class StagedFiles:
    """Several new files written beside their targets, then put in place together by `commit`.

    Until `commit` the targets are untouched, so a run that fails or is killed while writing leaves the old
    files as they were (a killed run also leaves its temporary files, which `remove_stale_temp_files`
    clears). Used as a context manager, whatever was not committed is deleted when the block ends.
    """

    def __init__(self) -> None:
        self._staged: dict[Path, tuple[Path, FileDigest]] = {}

    @contextlib.contextmanager
    def open(self, path: str | os.PathLike) -> Iterator[IO[bytes]]:
        """A binary file that becomes `path` at `commit`; its size and SHA-256 are recorded as written."""
        path = Path(path)
        if path in self._staged:
            raise ValueError(f"{path}: staged twice")
        with _temp_file(path, "wb", None) as (f, tmp):
            writer = _HashingWriter(f)
            yield writer
        self._staged[path] = (tmp, writer.digest())

    def write_bytes(self, path: str | os.PathLike, data: bytes) -> None:
        with self.open(path) as f:
            f.write(data)

    def commit(self) -> dict[Path, FileDigest]:
        """Rename every staged file over its target, in the order they were written; return their digests."""
        done = {}
        for path, (tmp, digest) in list(self._staged.items()):
            try:
                os.replace(tmp, path)
            except OSError as e:
                _raise_naming(e, path)
            del self._staged[path]
            done[path] = digest
        for folder in {p.parent for p in done}:
            fsync_dir(folder)
        return done

    def discard(self) -> None:
        """Delete every staged file that was not committed."""
        for tmp, _ in self._staged.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self._staged.clear()

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (renames, new files) to disk where the platform allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temp_files(folder: str | os.PathLike, names: list[str] | tuple[str, ...]) -> list[Path]:
    """Delete the temporary files that a killed run left for the outputs `names` in `folder`."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    prefixes = tuple(temp_name_prefix(n) for n in names)
    for entry in folder.iterdir():
        if entry.name.startswith(prefixes) and entry.name.endswith(TEMP_SUFFIX) and entry.is_file():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed


def dumps_json(obj: Any, indent: bool = False) -> bytes:
    """Serialise `obj` to UTF-8 JSON bytes (orjson when available; non-str keys become strings)."""
    if orjson is not None:
        option = orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if indent else 0)
        return orjson.dumps(obj, option=option)
    return json.dumps(obj, indent=2 if indent else None, ensure_ascii=False).encode("utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: bool = False) -> None:
    """Write `obj` as JSON to `path` atomically."""
    atomic_write_bytes(path, dumps_json(obj, indent=indent))


def read_bytes(path: str | os.PathLike) -> bytes:
    """A file's bytes; a missing file (or a folder in its place) raises an error that names the path."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder, expected a file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    return path.read_bytes()


class DuplicateKeyError(RecformerError, ValueError):
    """A JSON object that holds one key twice (a parser would silently keep the last value)."""

    def __init__(self, key: str):
        super().__init__(f"key {key!r} appears twice in one JSON object")
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(key)
        out[key] = value
    return out


def check_unique_keys(data: bytes | str) -> None:
    """Raise `DuplicateKeyError` naming the first key that appears twice in one object of the JSON `data`."""
    json.loads(data, object_pairs_hook=_unique_pairs)


def parse_json(data: bytes, path: str | os.PathLike) -> Any:
    """Parse JSON bytes read from `path`; malformed JSON raises a ValueError that names the path."""
    try:
        return orjson.loads(data) if orjson is not None else json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing or malformed file raises an error that names the path."""
    return parse_json(read_bytes(path), path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` through a temporary file, so an interrupted save never replaces a good checkpoint."""
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
