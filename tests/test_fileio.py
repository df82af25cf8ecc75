"""recformer/io/fileio.py and folders.py: the mode of new files, write errors that name the path, staged
writes, folders that are never replaced unless ours, locked and recovered."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from recformer.io import fileio, folders
from recformer.io.fileio import atomic_open, atomic_write_bytes, atomic_write_json


@pytest.fixture
def umask():
    """Set the umask for one test (restored afterwards)."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077], ids=oct)
def test_outputs_get_the_mode_open_gives_whatever_the_umask(tmp_path, umask, mask):
    umask(mask)
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    with fileio.StagedFiles() as staged:
        staged.write_bytes(tmp_path / "b.json", b"{}")
        staged.commit()
    with open(tmp_path / "c.json", "w") as f:  # what open() gives, for comparison
        f.write("{}")
    for name in ("a.json", "b.json", "c.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask, name


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_names_the_path_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "train.json"
    target.write_text("old")
    monkeypatch.setattr(fileio.os, "fsync", no_space)  # the data reaches the disk at fsync
    with pytest.raises(OSError) as e:
        atomic_write_bytes(target, b"new")
    assert (e.value.errno, e.value.filename, e.value.strerror) == (
        errno.ENOSPC,
        str(target),
        "No space left on device",
    )
    assert str(target) in str(e.value)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["train.json"]  # no temporary file left


def test_a_write_that_fails_in_the_block_names_the_path(tmp_path):
    target = tmp_path / "model.bin"
    with pytest.raises(OSError) as e, atomic_open(target, "wb"):
        no_space()  # as f.write raises it when the disk fills up
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(target))
    assert list(tmp_path.iterdir()) == []


def test_other_errors_in_the_block_pass_unchanged(tmp_path):
    missing = tmp_path / "input.json"
    with pytest.raises(FileNotFoundError) as e, atomic_open(tmp_path / "out.json", "w"):
        missing.read_text()
    assert e.value.filename == str(missing)
    with pytest.raises(OSError) as e, atomic_open(tmp_path / "out.json", "w"):
        raise OSError(
            errno.EIO, "Input/output error"
        )  # e.g. reading a bad input disk: not the output's fault
    assert e.value.filename is None


def test_staged_files_change_nothing_until_commit(tmp_path):
    (tmp_path / "a.json").write_text("old a")
    with fileio.StagedFiles() as staged:
        staged.write_bytes(tmp_path / "a.json", b"new a")
        with staged.open(tmp_path / "b.json") as f:
            f.write(b"new ")
            f.write(b"b")
        assert (tmp_path / "a.json").read_text() == "old a" and not (tmp_path / "b.json").exists()
        digests = staged.commit()
    assert (tmp_path / "a.json").read_text() == "new a" and (tmp_path / "b.json").read_text() == "new b"
    assert digests == {
        tmp_path / "a.json": fileio.FileDigest.of(b"new a"),
        tmp_path / "b.json": fileio.FileDigest.of(b"new b"),
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]


def test_staged_files_not_committed_are_deleted(tmp_path):
    (tmp_path / "a.json").write_text("old a")
    with pytest.raises(RuntimeError), fileio.StagedFiles() as staged:
        staged.write_bytes(tmp_path / "a.json", b"new a")
        raise RuntimeError("failed before commit")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"] and (tmp_path / "a.json").read_text() == "old a"


def test_stale_temporary_files_of_named_outputs_are_removed(tmp_path):
    for name in (
        ".train.json.0a1b2c.tmp",
        ".val.json.ffff.tmp",
        ".other.json.0a1b.tmp",
        "train.json",
        "x.tmp",
    ):
        (tmp_path / name).write_text("")
    removed = fileio.remove_stale_temp_files(tmp_path, ["train.json", "val.json"])
    assert sorted(p.name for p in removed) == [".train.json.0a1b2c.tmp", ".val.json.ffff.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.json.0a1b.tmp", "train.json", "x.tmp"]


def test_read_json_names_a_folder(tmp_path):
    with pytest.raises(IsADirectoryError, match=f"{tmp_path}: is a folder, expected a file"):
        fileio.read_json(tmp_path)


# -- folders: never replace what we did not write, lock, recover a killed swap -------------------------------

def _folder(path, **files):
    """Write `files` (name -> text) as a recformer folder at `path`."""
    with folders.atomic_directory(path) as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text)
    return path


def _content(path):
    return {p.name: p.read_text() for p in path.iterdir() if not p.name.startswith(".")}  # not the owner marker


def test_a_folder_recformer_did_not_write_is_never_replaced(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.txt").write_text("years of work")
    (tmp_path / "file").write_text("a file")
    os.mkfifo(tmp_path / "fifo")
    for path in (user, tmp_path / "file", tmp_path / "fifo"):
        with pytest.raises(folders.OutputPathError) as e, folders.atomic_directory(path) as tmp:
            (tmp / "index.json").write_text("{}")
        assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)
    with pytest.raises(folders.OutputPathError, match=r"user: exists and was not written by recformer"):
        folders.check_replaceable(user)
    assert (user / "thesis.txt").read_text() == "years of work" and [p.name for p in user.iterdir()] == ["thesis.txt"]
    assert (tmp_path / "file").read_text() == "a file" and stat.S_ISFIFO((tmp_path / "fifo").stat().st_mode)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".old"))]  # nothing moved aside


def test_a_folder_recformer_wrote_is_replaced_only_when_allowed(tmp_path):
    folder = _folder(tmp_path / "model", **{"config.json": "1"})
    assert folders.is_our_folder(folder)
    with pytest.raises(folders.OutputPathError) as e, folders.atomic_directory(folder, replace=False, flag="--overwrite_output_dir"):
        pass
    assert str(e.value) == f"{folder}: exists (written by recformer earlier); pass --overwrite_output_dir to replace it"
    assert _content(folder) == {"config.json": "1"}
    _folder(folder, **{"config.json": "2"})
    assert _content(folder) == {"config.json": "2"}
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _content(_folder(empty, a="x")) == {"a": "x"}  # an empty folder holds nothing to lose


def test_a_symbolic_link_is_written_through_to_its_target(tmp_path):
    target = _folder(tmp_path / "real", a="1")
    link = tmp_path / "link"
    link.symlink_to(target)
    _folder(link, a="2")
    assert link.is_symlink() and _content(target) == {"a": "2"}


@pytest.mark.parametrize("mask", [0o022, 0o002], ids=oct)
def test_safetensors_files_in_a_folder_get_the_mode_open_gives(tmp_path, umask, mask):
    import torch
    from safetensors.torch import save_file

    umask(mask)
    with folders.atomic_directory(tmp_path / "index") as tmp:
        save_file({"x": torch.zeros(2)}, str(tmp / "index.safetensors"))  # safetensors creates it 0600
    for name in ("index.safetensors", folders.OWNER_MARKER):
        assert stat.S_IMODE((tmp_path / "index" / name).stat().st_mode) == 0o666 & ~mask, name


def test_a_full_disk_reported_by_a_library_names_the_folder(tmp_path):
    class SafetensorError(Exception):
        pass

    with pytest.raises(OSError) as e, folders.atomic_directory(tmp_path / "index"):
        raise SafetensorError('Error while serializing: I/O error: No space left on device (os error 28)')
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(tmp_path / "index"))
    assert not (tmp_path / "index").exists()


def test_a_second_writer_waits_for_the_lock_or_is_refused(tmp_path):
    import threading

    folder = tmp_path / "index"
    order = []
    with folders.folder_lock(folder):
        with folders.folder_lock(folder):  # re-entrant in one thread
            pass
        errors = []

        def refuse():
            try:
                with folders.folder_lock(folder, wait=False):
                    order.append("got it")
            except folders.FolderBusy as e:
                errors.append(str(e))

        t = threading.Thread(target=refuse)
        t.start()
        t.join()
        assert order == [] and len(errors) == 1 and errors[0].startswith(f"{folder}: another process is writing it")

        def wait():
            with folders.folder_lock(folder):
                order.append("second")

        t = threading.Thread(target=wait)
        t.start()
        t.join(0.3)
        assert t.is_alive()  # waiting
        order.append("first done")
    t.join(10)
    assert order == ["first done", "second"]


def test_concurrent_writers_never_mix_their_folders(tmp_path):
    """Writers of different contents at the same instant: the folder is always exactly one of them."""
    import threading
    import time

    folder = tmp_path / "index"
    start = threading.Barrier(4)
    failures = []

    def writer(tag):
        start.wait()
        try:
            for _ in range(3):
                with folders.atomic_directory(folder) as tmp:
                    for name in ("ids.json", "vectors.bin", "meta.json"):
                        (tmp / name).write_text(tag)
                        time.sleep(0.01)  # interleave with the other writers if nothing stops them
        except BaseException as e:  # noqa: BLE001
            failures.append(e)

    threads = [threading.Thread(target=writer, args=(str(i),)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    values = set(_content(folder).values())
    assert len(values) == 1 and sorted(_content(folder)) == ["ids.json", "meta.json", "vectors.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


# A run killed (os._exit: no cleanup runs) before or after each rename or removal of atomic_directory.
KILLER = """
import os, shutil, sys
from pathlib import Path
from recformer.io import folders

target, at = Path(sys.argv[1]), sys.argv[2]
calls = {}

def fault(name, real):
    def wrapped(*a, **k):
        n = calls[name] = calls.get(name, 0) + 1
        if at == f"before {name} {n}":
            os._exit(9)
        out = real(*a, **k)
        if at == f"after {name} {n}":
            os._exit(9)
        return out
    return wrapped

folders.os.replace = fault("replace", os.replace)
folders.shutil.rmtree = fault("rmtree", shutil.rmtree)
folders.fsync_dir = fault("fsync_dir", folders.fsync_dir)
with folders.atomic_directory(target) as tmp:
    (tmp / "ids.json").write_text("new")
    (tmp / "vectors.bin").write_text("new")
    if at == "in block":
        os._exit(9)
sys.exit(3)  # the kill point was never reached
"""
KILL_POINTS = ["in block"] + [f"{when} {what}" for when in ("before", "after") for what in
               ("fsync_dir 1", "replace 1", "replace 2", "fsync_dir 2", "rmtree 1", "rmtree 2")]  # fmt: skip


@pytest.mark.parametrize("at", KILL_POINTS)
def test_a_kill_at_any_point_of_a_folder_swap_loses_nothing(tmp_path, at):
    import subprocess
    import sys

    folder = _folder(tmp_path / "index", **{"ids.json": "old", "vectors.bin": "old"})
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    root = os.path.dirname(os.path.dirname(os.path.abspath(fileio.__file__)))
    run = subprocess.run([sys.executable, str(script), str(folder), at], cwd=root, env={**os.environ, "PYTHONPATH": root})
    assert run.returncode == 9, (at, run.returncode)
    # a killed run leaves its lock file (the kernel released the lock itself)
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name not in ("killer.py", ".index.lock"))
    # the reader's view after the kill: a complete folder (old or new), or none with the complete old one beside it
    assert leftovers in (["index"], [".index.old", "index"], [".index.old"]) or leftovers[0].startswith(".index.")
    # the next ordinary run, even one that fails, first recovers: the index is never lost
    with pytest.raises(RuntimeError, match="next run failed"), folders.atomic_directory(folder):
        raise RuntimeError("next run failed")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".index.lock") == ["index", "killer.py"]
    assert _content(folder) in ({"ids.json": "old", "vectors.bin": "old"}, {"ids.json": "new", "vectors.bin": "new"})
    if at.startswith("after replace 2") or "rmtree" in at or "fsync_dir 2" in at:
        assert _content(folder)["ids.json"] == "new"  # the swap had finished
    # and the next ordinary save works and keeps nothing stale
    _folder(folder, **{"ids.json": "next", "vectors.bin": "next"})
    assert _content(folder) == {"ids.json": "next", "vectors.bin": "next"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index", "killer.py"]


def test_a_leftover_old_folder_recformer_did_not_write_is_refused_naming_both(tmp_path):
    folder = tmp_path / "index"
    old = tmp_path / ".index.old"
    old.mkdir()
    (old / "mine.txt").write_text("x")
    with pytest.raises(folders.OutputPathError) as e:
        folders.recover_folder(folder)
    assert str(e.value).startswith(f"{old}: left beside {folder} but not a folder recformer wrote")
    assert (old / "mine.txt").read_text() == "x"
