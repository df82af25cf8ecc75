"""Output locations checked before any input is read; folders written completely or not at all."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from recformer.io.folders import OWNER_MARKER
from recformer.io.output_paths import (
    PROBE_PREFIX,
    OutputPathError,
    check_output_dir,
    check_output_file,
    write_folder,
)


def test_writable_locations_pass(tmp_path):
    existing = tmp_path / "model.bin"
    existing.write_text("old")  # an existing file may be replaced
    assert check_output_file(existing) == existing
    assert (
        check_output_file(tmp_path / "new" / "deeper" / "model.bin")
        == tmp_path / "new" / "deeper" / "model.bin"
    )
    assert check_output_dir(tmp_path) == tmp_path
    assert check_output_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert not (tmp_path / "new").exists() and not (tmp_path / "a").exists()  # checking creates nothing
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]  # the write test left no file behind


def test_blocked_locations_name_the_path_and_the_reason(tmp_path, read_only_dir):
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    cases = [
        (check_output_file, tmp_path / "folder", f"{tmp_path / 'folder'}: is a folder, but a file must be written there"),
        (check_output_dir, tmp_path / "file", f"{tmp_path / 'file'}: is a file, but a folder must be written there"),
        (check_output_file, tmp_path / "file" / "a" / "m.bin",
         f"{tmp_path / 'file' / 'a' / 'm.bin'}: cannot be created: {tmp_path / 'file'} is a file, not a folder"),
        (check_output_dir, tmp_path / "file" / "a",
         f"{tmp_path / 'file' / 'a'}: cannot be created: {tmp_path / 'file'} is a file, not a folder"),
        (check_output_dir, read_only_dir / "out",
         f"{read_only_dir / 'out'}: cannot be written: {read_only_dir} is not writable (Permission denied)"),
    ]  # fmt: skip
    for check, path, message in cases:
        with pytest.raises(OutputPathError) as e:
            check(path)
        assert str(e.value) == message


def test_write_folder_replaces_the_old_folder_only_when_complete(tmp_path):
    folder = write_folder(tmp_path / "best_model", lambda tmp: (tmp / "old.txt").write_text("old"))
    (tmp_path / ".best_model.tmp").mkdir()  # leftovers of a killed earlier run
    (tmp_path / ".best_model.tmp" / "half").write_text("x")

    def fails(tmp):
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("disk trouble")

    with pytest.raises(RuntimeError, match="disk trouble"):
        write_folder(folder, fails, required=("config.json",))
    assert sorted(p.name for p in folder.iterdir()) == [OWNER_MARKER, "old.txt"]  # the old folder is intact
    with pytest.raises(OutputPathError, match=r"best_model: writing it failed: weights.bin missing$"):
        write_folder(
            folder,
            lambda tmp: (tmp / "config.json").write_text("{}"),
            required=("config.json", "weights.bin"),
        )
    assert sorted(p.name for p in folder.iterdir()) == [OWNER_MARKER, "old.txt"]

    def complete(tmp):
        for name in ("config.json", "weights.bin"):
            (tmp / name).write_text(name)

    assert write_folder(folder, complete, required=("config.json", "weights.bin")) == folder
    assert sorted(p.name for p in folder.iterdir()) == [OWNER_MARKER, "config.json", "weights.bin"]  # nothing old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model"]  # no temporary folder left


def test_a_written_folder_gets_the_mode_of_any_new_folder(tmp_path):
    old_umask = os.umask(0o027)
    try:
        folder = write_folder(tmp_path / "index", lambda tmp: (tmp / "items.json").write_text("[]"))
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750  # 0777 less the umask, not mkdtemp's 0700


def test_a_killed_check_leaves_no_probe_behind_the_next_check(tmp_path):
    (tmp_path / f"{PROBE_PREFIX}abc123").write_text("")  # a run killed between creating and removing it
    check_output_dir(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_symbolic_link_resolves_to_its_target_and_special_files_are_refused(tmp_path):
    from recformer.io.fileio import atomic_write_bytes

    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert check_output_file(link) == target
    atomic_write_bytes(link, b"new")  # the writer writes through the link too
    assert link.is_symlink() and target.read_text() == "new"
    os.mkfifo(tmp_path / "fifo")
    for special in (tmp_path / "fifo", Path("/dev/full"), Path("/dev/null")):
        with pytest.raises(OutputPathError) as e:
            check_output_file(special)
        assert str(e.value) == (f"{special}: is a special file (a FIFO, a device or a socket), not a regular file; "
                                "give a file path, or - for the standard output")  # fmt: skip
        with pytest.raises(OSError, match="a special file"):
            atomic_write_bytes(special, b"x")
    assert stat.S_ISFIFO((tmp_path / "fifo").stat().st_mode) and Path("/dev/null").is_char_device()


def test_an_output_that_is_an_input_is_refused(tmp_path):
    from recformer.io.output_paths import check_not_input

    (tmp_path / "in.jsonl").write_text("x")
    (tmp_path / "alias.jsonl").symlink_to(tmp_path / "in.jsonl")
    for output in (tmp_path / "in.jsonl", tmp_path / "alias.jsonl", tmp_path / "sub" / ".." / "in.jsonl"):
        with pytest.raises(OutputPathError) as e:
            check_not_input(output, {"--input": tmp_path / "in.jsonl", "--items": None})
        assert str(e.value) == f"--output {output}: is also --input; writing it would destroy that input"
    check_not_input(tmp_path / "out.jsonl", {"--input": tmp_path / "in.jsonl"})
    check_not_input("-", {"--input": "-"})
