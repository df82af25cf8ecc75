"""Output locations checked before any input is read, and folders written completely or not at all.

A command that can only fail at the end (after reading a large checkpoint) because its output path is
blocked must say so at once, in one line naming the path: `check_output_file` / `check_output_dir`
refuse a path that is the wrong kind of thing (a folder where a file goes, a file where a folder
goes), that lies below a file, or whose nearest existing folder cannot be written (tried by creating
a file there, so it holds for root and read-only file systems too).

`write_folder` fills a temporary sibling and renames it into place once every required file is in
it: `save_pretrained` logs an error and returns when its path is a file, and a killed export would
leave half a folder; neither can leave a folder that looks complete.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from recformer.io.folders import OutputPathError, atomic_directory, check_replaceable

# An output path that means the standard output.
STDOUT = "-"

# What a save_pretrained folder of a model and its tokenizer holds at least.
PRETRAINED_FOLDER_FILES = ("config.json", "tokenizer_config.json")


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")  # pragma: no cover - the root always exists


# The name of the file `_check_writable` creates and removes; a killed run may leave one behind.
PROBE_PREFIX = ".recformer-write-test-"


def _check_writable(path: Path, folder: Path) -> None:
    """Create (and remove) a file in `folder` to learn whether `path` can be written there."""
    try:
        fd, probe = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=folder)
    except OSError as e:
        raise OutputPathError(f"{path}: cannot be written: {folder} is not writable ({e.strerror})") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def _check(path: str | os.PathLike, is_dir: bool) -> Path:
    path = Path(path)
    if path.is_symlink():
        if not path.exists():
            raise OutputPathError(f"{path}: is a broken symbolic link")
        path = Path(os.path.realpath(path))  # written through the link, to its target
    if path.exists() and not (path.is_dir() or path.is_file()):
        raise OutputPathError(
            f"{path}: is a special file (a FIFO, a device or a socket), not a regular file; "
            f"give a file path, or {STDOUT} for the standard output"
        )
    if path.exists():
        if path.is_dir() != is_dir:
            kind, needed = ("a file", "a folder") if is_dir else ("a folder", "a file")
            raise OutputPathError(f"{path}: is {kind}, but {needed} must be written there")
        if is_dir:  # the probes of killed runs that checked this folder
            for leftover in path.glob(f"{PROBE_PREFIX}*"):
                with contextlib.suppress(OSError):
                    leftover.unlink()
        _check_writable(path, path if is_dir else path.parent)
        return path
    existing = _nearest_existing(path.parent)
    if not existing.is_dir():
        raise OutputPathError(f"{path}: cannot be created: {existing} is a file, not a folder")
    _check_writable(path, existing)
    return path


def check_output_file(path: str | os.PathLike) -> Path:
    """`path` as a Path when a file can be written there; else OutputPathError naming it and why.

    A symbolic link is resolved: the file is written to its target (the returned path), the link stays.
    A FIFO, a device or a socket is refused (an atomic rename would replace it, not write to it).
    """
    return _check(path, is_dir=False)


def check_not_input(output: str | os.PathLike, inputs: dict[str, str | os.PathLike | None], flag: str = "--output") -> None:
    """Refuse an output that is one of the inputs (`inputs`: flag -> path), which writing would destroy."""
    if str(output) == STDOUT:
        return
    target = os.path.realpath(output)
    for name, source in inputs.items():
        if source is None:
            continue
        same = os.path.realpath(source) == target
        with contextlib.suppress(OSError):
            same = same or os.path.samefile(source, output)
        if same:
            raise OutputPathError(f"{flag} {output}: is also {name}; writing it would destroy that input")


def check_output_dir(path: str | os.PathLike) -> Path:
    """`path` as a Path when a folder can be written there (it may exist); else OutputPathError naming it and why."""
    return _check(path, is_dir=True)


def refuse_existing_run(folder: str | os.PathLike, markers: Sequence[str], what: str, continue_hint: str) -> None:
    """Refuse a run folder that holds any of `markers` (the outputs of a `what`), in one line naming it:
    pass `continue_hint` (e.g. --resume) to continue that run or --overwrite_output_dir to replace it.

    Raises:
        OutputPathError: naming the folder, what it holds and both flags.
    """
    folder = Path(folder)
    found = [name for name in markers if (folder / name).exists()]
    if found:
        raise OutputPathError(
            f"{folder}: holds a {what} ({', '.join(found)}); pass {continue_hint} to continue it or "
            "--overwrite_output_dir to replace it"
        )


def write_folder(
    folder: str | os.PathLike,
    write: Callable[[Path], None],
    required: Sequence[str] = (),
    replace: bool = True,
    flag: str = "",
) -> Path:
    """Write a folder completely or not at all.

    `write(tmp)` fills a temporary sibling; once it holds every name in `required`, it replaces
    `folder` (`folders.atomic_directory`: an older folder there is removed only after the new one is in place;
    a folder recformer did not write is never replaced, one it wrote only when `replace`; `flag` names the
    option that allows it).

    Raises:
        OutputPathError: `folder` cannot be written, or `write` left a required file out.
    """
    folder = check_replaceable(check_output_dir(folder), replace, flag)
    with atomic_directory(folder, replace, flag) as tmp:
        write(tmp)
        missing = [name for name in required if not (tmp / name).exists()]
        if missing:
            raise OutputPathError(f"{folder}: writing it failed: {', '.join(missing)} missing")
    return folder


def save_pretrained_folder(
    folder: str | os.PathLike, model: Any, tokenizer: Any, replace: bool = True, flag: str = ""
) -> Path:
    """`save_pretrained` of a model and its tokenizer into `folder`, completely or not at all (`write_folder`)."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return write_folder(folder, write, required=PRETRAINED_FOLDER_FILES, replace=replace, flag=flag)
