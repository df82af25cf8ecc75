"""recformer/io/fileio.py: the mode of new files, write errors that name the path, staged writes."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from recformer.io import fileio
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
