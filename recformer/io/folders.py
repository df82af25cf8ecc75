"""Folders written whole: staged beside their target, swapped in under an exclusive lock, and only ever
replacing a folder recformer wrote.

`atomic_directory` stages a folder as ``.<name>.<random>.tmp`` and swaps it in (two renames) while holding
`folder_lock` (an `fcntl.flock` on ``.<name>.lock``); only a folder recformer wrote, marked by
`OWNER_MARKER`, is ever replaced (`check_replaceable`), and a swap killed between its renames is repaired
by the next writer or reader (`recover_folder`). Files inside get the umask's mode, as `fileio` gives them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shutil
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from recformer.errors import RecformerError
from recformer.io.fileio import TEMP_SUFFIX, dumps_json, fsync_dir, temp_name_prefix

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking
    fcntl = None

logger = logging.getLogger(__name__)


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
