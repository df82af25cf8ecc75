"""Atomic file writing and small JSON helpers shared by every script.

A killed run must never leave a half-written file that a later step reads as valid, so every
output goes to a temporary file in the same folder first and is then renamed over the target
(`os.replace` is atomic on POSIX file systems). Temporary files are named ``.<name>.<random>.tmp``;
a killed run may leave one behind, which no reader ever opens.

Outputs get the mode `open()` would give them (0666 less the umask), and a failed write (a full disk,
a quota) raises an `OSError` whose ``filename`` is the output path.

Folders (`atomic_directory`) are staged beside their target and swapped in under an exclusive lock
(`folder_lock`); only a folder recformer wrote, marked by `OWNER_MARKER`, is ever replaced
(`check_replaceable`), and a swap killed half-way is repaired by the next writer or reader
(`recover_folder`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple, NoReturn

from recformer.errors import RecformerError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking
    fcntl = None

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


# Written into every folder `atomic_directory` makes (save_pretrained folders, indexes, conversion
# outputs): a folder without it was not written by recformer and is never replaced or deleted.
OWNER_MARKER = ".recformer-folder.json"
OLD_SUFFIX = ".old"
LOCK_SUFFIX = ".lock"


class OutputPathError(RecformerError, ValueError):
    """An output location that cannot be written; the message names the path and the reason."""


class FolderBusy(OutputPathError):
    """Another process holds the lock of a folder (`folder_lock` with wait=False)."""


def is_our_folder(path: str | os.PathLike) -> bool:
    """True when `path` is a folder that recformer wrote (it holds `OWNER_MARKER`)."""
    path = Path(path)
    return path.is_dir() and not path.is_symlink() and (path / OWNER_MARKER).is_file()


def check_replaceable(path: str | os.PathLike, replace: bool = True, flag: str = "") -> Path:
    """`path` (a symbolic link resolved to its target) when a folder may be written there.

    Nothing there, or an empty folder: yes. A folder recformer wrote (`OWNER_MARKER`): only when
    `replace`. Anything else (a file, a special file, a folder we did not write): never.

    Raises:
        OutputPathError: naming the path and why; `flag` (e.g. ``--overwrite_output_dir``) is named when
            it would allow the replacement.
    """
    path = Path(path)
    if path.is_symlink():
        if not path.exists():
            raise OutputPathError(f"{path}: is a broken symbolic link")
        path = Path(os.path.realpath(path))
    if not path.exists():
        return path
    if not path.is_dir():
        raise OutputPathError(f"{path}: exists and is not a folder; not replacing it with a folder")
    if not any(path.iterdir()):
        return path
    if not is_our_folder(path):
        raise OutputPathError(
            f"{path}: exists and was not written by recformer (no {OWNER_MARKER}); not replacing it, "
            "move it away or choose another path"
        )
    if not replace:
        hint = f"pass {flag} to replace it" if flag else "choose another path"
        raise OutputPathError(f"{path}: exists (written by recformer earlier); {hint}")
    return path


_held_locks = threading.local()


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of the folder or file `path`: ``.<name>.lock`` beside it, there while the lock is held.
    A symbolic link is resolved first, so a link and its target share one lock."""
    path = Path(os.path.realpath(path))
    return path.with_name(f".{path.name}{LOCK_SUFFIX}")


@contextlib.contextmanager
def folder_lock(path: str | os.PathLike, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock (`fcntl.flock` on `lock_path(path)`) for the block.

    Every writer of a folder through `atomic_directory` takes it, and a read-modify-write (load an
    index, add items, save it back) takes it around the whole sequence, so two writers never
    interleave. A second writer waits (or, with `wait=False`, raises `FolderBusy` naming the lock).
    The lock is re-entrant within a thread; two threads (or processes) exclude each other.
    """
    lock = lock_path(path)
    held = getattr(_held_locks, "paths", None)
    if held is None:
        held = _held_locks.paths = set()
    if fcntl is None or lock in held:  # no flock on this platform, or this thread holds it already
        yield
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                os.close(fd)
                raise FolderBusy(f"{path}: another process is writing it (it holds {lock}); try again later") from None
            logger.warning("%s: another process is writing it; waiting for %s", path, lock)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:  # the holder before us removes the file as it lets go: then this lock guards nothing, start again
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    held.add(lock)
    try:
        yield
    finally:
        held.discard(lock)
        with contextlib.suppress(OSError):
            os.unlink(lock)  # while still held: a waiter then finds its file gone and starts again
        os.close(fd)  # releases the lock


def _staging_folders(path: Path) -> list[Path]:
    """The staging folders that writers of `path` made (``.<name>.<random>.tmp``; ``.<name>.tmp`` of older versions)."""
    prefix = temp_name_prefix(path.name)
    if not path.parent.is_dir():
        return []
    return sorted(
        entry for entry in path.parent.iterdir()
        if entry.name.startswith(prefix) and entry.name.endswith(TEMP_SUFFIX) and entry.is_dir()
        and not entry.is_symlink()
    )  # fmt: skip


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path)


def recover_folder(path: str | os.PathLike) -> None:
    """Finish what a run killed while it swapped `path` for a new folder left behind.

    A kill between the two renames of `atomic_directory` leaves no `path`, the complete previous folder
    as ``.<name>.old`` and the new one in its staging folder: the previous folder is put back (the
    killed run never reported success). With `path` in place, ``.<name>.old`` is the superseded folder
    of a finished swap and is removed. Staging folders are removed only under the lock (no writer is
    using them then), each named in the log. Takes `folder_lock(path)`.

    Raises:
        OutputPathError: ``.<name>.old`` is not a folder recformer wrote (it is left alone, and named).
    """
    path = Path(path)
    old = path.with_name(f".{path.name}{OLD_SUFFIX}")
    if not (old.exists() or old.is_symlink() or _staging_folders(path)):
        return
    with folder_lock(path):
        if old.exists() or old.is_symlink():
            if not (old.is_symlink() or is_our_folder(old)):
                raise OutputPathError(
                    f"{old}: left beside {path} but not a folder recformer wrote; move it away by hand"
                )
            if path.exists() or path.is_symlink():
                logger.info("%s: removing %s, the folder a finished save replaced", path, old)
                _remove(old)
            else:
                os.replace(old, path)
                fsync_dir(path.parent)
                logger.warning("%s: recovered the complete previous folder from %s (a save was interrupted)", path, old)
        for staging in _staging_folders(path):
            logger.warning("%s: removing %s, the staging folder of an interrupted save", path, staging)
            shutil.rmtree(staging, ignore_errors=True)


def _umask() -> int:
    """The process's umask: read from /proc where it can be (setting it to learn it races with other threads)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _give_files_the_open_mode(folder: Path) -> None:
    """Every regular file below `folder` gets 0666 less the umask (libraries such as safetensors write 0600)."""
    mode = 0o666 & ~_umask()
    for root, _dirs, files in os.walk(folder):
        for name in files:
            file = Path(root) / name
            if not file.is_symlink() and stat.S_IMODE(file.stat().st_mode) != mode:
                os.chmod(file, mode)


def _disk_full_naming(e: BaseException, folder: Path) -> OSError | None:
    """An OSError naming `folder` for a library's error that reports a full disk (safetensors' SafetensorError)."""
    if isinstance(e, OSError):
        return None
    text = str(e)
    if "No space left on device" in text or "StorageFull" in text:
        return OSError(errno.ENOSPC, "No space left on device", str(folder))
    if "Disk quota exceeded" in text or "FilesystemQuotaExceeded" in text:
        return OSError(errno.EDQUOT, "Disk quota exceeded", str(folder))
    return None


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, replace: bool = True, flag: str = "") -> Iterator[Path]:
    """Yield an empty staging folder beside `path`; when the block succeeds it replaces `path`.

    * Never replaces what recformer did not write: a file, a special file or a non-empty folder without
      `OWNER_MARKER` at `path` is refused (`check_replaceable`; a folder of ours only when `replace`).
      The marker is written into the staging folder when the block succeeds.
    * `path` never holds a half-written folder: a block that raises leaves the old folder untouched.
      The previous folder becomes ``.<name>.old`` and is removed only after the new one is in place; a
      kill between the two renames is repaired by the next writer or reader (`recover_folder`).
    * The staging folder has a unique name (``.<name>.<random>.tmp``) and the whole write holds
      `folder_lock(path)`, so two writers at once never mix their folders: the second waits.
    * The folder gets the mode any new folder gets (0777 less the umask), its files 0666 less the umask.
    """
    path = Path(path)
    if path.is_symlink() and path.exists():
        path = Path(os.path.realpath(path))  # write through a link to its target
    old = path.with_name(f".{path.name}{OLD_SUFFIX}")
    with folder_lock(path):
        recover_folder(path)
        check_replaceable(path, replace, flag)
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            tmp = path.parent / f"{temp_name_prefix(path.name)}{secrets.token_hex(6)}{TEMP_SUFFIX}"
            try:
                tmp.mkdir()
                break
            except FileExistsError:  # pragma: no cover - 48 random bits
                continue
        try:
            try:
                yield tmp
            except Exception as e:
                full = _disk_full_naming(e, path)
                if full is not None:
                    raise full from e
                raise
            check_replaceable(path, replace, flag)  # again: something may have appeared there meanwhile
            _give_files_the_open_mode(tmp)
            (tmp / OWNER_MARKER).write_bytes(dumps_json({"written_by": "recformer", "folder": path.name}) + b"\n")
            fsync_dir(tmp)
            if path.exists():  # a folder cannot be renamed over a non-empty one
                os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                if old.exists() and not path.exists():  # put the previous folder back
                    os.replace(old, path)
                raise
            fsync_dir(path.parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() or old.is_symlink():
            _remove(old)
