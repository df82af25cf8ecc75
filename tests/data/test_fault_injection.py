"""Fault injection: the processing commands are SIGKILLed at every file-system step of their writing, and the
next reader must see the complete old folder or refuse it, never a mix; the next run then succeeds.

A driver runs the command in a subprocess with `os.fsync`, `os.replace` and `os.unlink` wrapped: the N-th
call of one of them kills the process (SIGKILL, so nothing is cleaned up) before it happens. A first run
counts the calls, so every point of the writing is tried: while the files are written (fsync), while they
are put in place (replace) and around the in-progress marker and the manifest (unlink).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from recformer.data.finetune_reader import DataError, load_finetune_data
from recformer.data.finetune_writer import process_finetune
from recformer.data.pretrain_reader import PretrainDataError, read_item_metadata, read_pretrain_sequences
from recformer.data.pretrain_writer import process_pretrain_interactions, process_pretrain_meta

from .finetune_case import recbole_files
from .pretrain_case import DEV, TRAIN

REPO = Path(__file__).resolve().parents[2]
KILL_AT = "RECFORMER_TEST_KILL_AT"
DRIVER = f"""
import atexit, json, os, signal, sys
spec = os.environ[{KILL_AT!r}]
counts, calls = {{}}, []

def wrap(name, real):
    def call(*args, **kwargs):
        counts[name] = counts.get(name, 0) + 1
        calls.append(f"{{name}}:{{counts[name]}}")
        if spec == calls[-1]:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return call

for name in ("fsync", "replace", "unlink"):
    setattr(os, name, wrap(name, getattr(os, name)))
if spec == "count":
    atexit.register(lambda: print("CALLS " + json.dumps(calls), flush=True))
from recformer.cli import pretrain_interactions, pretrain_meta, process_finetune
command = {{"finetune": process_finetune, "meta": pretrain_meta, "interactions": pretrain_interactions}}
sys.exit(command[sys.argv[1]].main(sys.argv[2:] + ["--no_progress"]))
"""


def run(command: str, argv: list[str], kill_at: str) -> subprocess.CompletedProcess:
    env = {**os.environ, KILL_AT: kill_at, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", DRIVER, command, *argv], env=env, capture_output=True, text=True, timeout=120
    )


def kill_points(command: str, argv: list[str]) -> list[str]:
    """Every `name:N` at which a run of `command` can be killed, in the order of a counting run's calls."""
    result = run(command, argv, "count")
    assert result.returncode == 0, result.stderr
    calls = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("CALLS "))[6:])
    assert {c.split(":")[0] for c in calls} == {"fsync", "replace", "unlink"}, calls
    return calls


def kill_at_each(command: str, argv: list[str], outs: dict[str, Path]) -> None:
    """Run `command` once per kill point with output folder ``outs[point]`` (concurrently: independent runs)."""

    def kill(point: str) -> None:
        result = run(command, [*argv, str(outs[point])], point)
        assert result.returncode == -signal.SIGKILL, (point, result.returncode, result.stderr)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(kill, outs))


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def finetune_view(folder: Path):
    data = load_finetune_data(folder)
    return data.train, data.val, data.test, data.item2id, data.items


@pytest.mark.parametrize("old", ["ours", "original", "none"])
def test_killed_finetune_processing_never_leaves_a_mix(finetune_raw, tmp_path, old):
    reviews, meta = finetune_raw
    argv = ["--file_path", str(reviews), "--meta_file_path", str(meta), "--output_path"]
    pristine, new = tmp_path / "pristine", tmp_path / "new"
    process_finetune(reviews, meta, pristine, min_seq_len=3, progress=False)  # the old folder: 3 users
    if old == "original":
        (pristine / "manifest.json").unlink()  # as the original scripts wrote it
    process_finetune(reviews, meta, new, progress=False)  # what the killed run writes: 2 users
    old_view, new_view = finetune_view(pristine), finetune_view(new)
    assert old_view != new_view

    points = kill_points("finetune", [*argv, str(tmp_path / "counted")])
    assert len(points) >= 15
    # Over a folder of the original scripts, or none, the points while the files are written are the same
    # as over ours; every point from the first rename on is tried.
    first_rename = points.index("replace:1")
    tried = points if old == "ours" else points[first_rename - 1 :]
    outs = {point: tmp_path / f"out_{point.replace(':', '_')}" for point in tried}
    if old != "none":
        for out in outs.values():
            shutil.copytree(pristine, out)
    kill_at_each("finetune", argv, outs)
    for point, out in outs.items():
        try:
            view = finetune_view(out)
        except DataError as e:  # the marker is there: refused with one line naming the folder
            assert str(e).startswith(f"{out}: incomplete: a run of recformer-process-finetune"), point
            if old == "ours":  # the marker deleted by hand: the old manifest still refuses renamed files
                (out / "manifest.json.incomplete").unlink()
                try:
                    view = finetune_view(out)
                except DataError as e:
                    assert "is not the file that manifest.json beside it records" in str(e), point
                else:
                    assert view in (old_view, new_view), point
        except FileNotFoundError as e:  # nothing was ever put in place
            assert old == "none" and str(out) in str(e), point
        else:  # the new folder only when the kill came after the run was complete
            assert view == old_view or (view == new_view and point == points[-1]), point
        # The next run succeeds, clearing what the killed one left.
        process_finetune(reviews, meta, out, progress=False)
        assert finetune_view(out) == new_view
        assert names(out) == names(new), point


def pretrain_view(folder: Path):
    meta_file = folder / "meta_data.json"
    meta = read_item_metadata(meta_file)
    train, _ = read_pretrain_sequences(folder / "train.json", meta, meta_file)
    dev, _ = read_pretrain_sequences(folder / "dev.json", meta, meta_file)
    return meta, train, dev


def test_killed_pretraining_steps_never_leave_a_mix(pretrain_raw, tmp_path):
    roots = ["--seq_root", str(pretrain_raw)]
    meta_argv = ["--meta_root", str(pretrain_raw), *roots, "--categories", "CatA", "CatC", "--output_dir"]
    interaction_argv = [*roots, "--train_categories", "CatA", "--dev_categories", *DEV, "--output_dir"]
    pristine, new = tmp_path / "pristine", tmp_path / "new"
    process_pretrain_meta(pretrain_raw, pretrain_raw, pristine, TRAIN + DEV, progress=False)
    process_pretrain_interactions(
        pretrain_raw, pristine / "meta_data.json", pristine, TRAIN, DEV, progress=False
    )
    process_pretrain_meta(pretrain_raw, pretrain_raw, new, ["CatA", "CatC"], progress=False)
    process_pretrain_interactions(pretrain_raw, new / "meta_data.json", new, ["CatA"], DEV, progress=False)
    old_view, new_view = pretrain_view(pristine), pretrain_view(new)
    assert old_view[0] != new_view[0] and old_view[1] != new_view[1]

    def refused_or_old(
        out: Path, point: str, points: list[str], finished_view=None, finished_refusal=""
    ) -> None:
        """The old corpus or a refusal; once the step has finished (its last call), also its new output or
        `finished_refusal`."""
        finished = point == points[-1]
        try:
            view = pretrain_view(out)
        except PretrainDataError as e:
            incomplete = str(e).startswith(f"{out}: incomplete: a run of recformer-pretrain-")
            assert incomplete or (finished and finished_refusal in str(e)), (point, str(e))
        else:
            assert view == old_view or (finished and view == finished_view), point

    # The meta step is killed: the old corpus, or a refusal.
    points = kill_points("meta", [*meta_argv, str(tmp_path / "counted")])
    outs = {point: tmp_path / f"meta_{point.replace(':', '_')}" for point in points}
    for out in outs.values():
        shutil.copytree(pristine, out)
    kill_at_each("meta", meta_argv, outs)
    for point, out in outs.items():
        # A finished meta step next to the old sequences is refused: they name the other meta file.
        refused_or_old(out, point, points, finished_refusal="was built from another meta_data.json")
        process_pretrain_meta(pretrain_raw, pretrain_raw, out, ["CatA", "CatC"], progress=False)
        # The new meta_data.json next to the old sequences, built from the old one: refused.
        with pytest.raises(PretrainDataError, match="was built from another meta_data.json"):
            pretrain_view(out)
        process_pretrain_interactions(
            pretrain_raw, out / "meta_data.json", out, ["CatA"], DEV, progress=False
        )
        assert pretrain_view(out) == new_view

    # The interaction step is killed (the meta step unchanged): the old corpus, or a refusal.
    counted = tmp_path / "counted_interactions"
    counted.mkdir()
    shutil.copy(pristine / "meta_data.json", counted / "meta_data.json")
    points = kill_points("interactions", [*interaction_argv, str(counted)])
    outs = {point: tmp_path / f"interactions_{point.replace(':', '_')}" for point in points}
    for out in outs.values():
        shutil.copytree(pristine, out)
    kill_at_each("interactions", interaction_argv, outs)
    new_sequences = pretrain_view(counted)
    for point, out in outs.items():
        refused_or_old(out, point, points, finished_view=new_sequences)
        process_pretrain_interactions(
            pretrain_raw, out / "meta_data.json", out, ["CatA"], DEV, progress=False
        )
        assert pretrain_view(out) == new_sequences != old_view
        assert names(out) == names(pristine)


def test_table_formats_write_the_folder_through_the_same_steps(finetune_raw, tmp_path):
    """RecBole and CSV inputs go through the Amazon path's staged writer: the same file-system steps in the same
    order, and a run killed while renaming leaves a folder the reader refuses."""
    reviews, meta = finetune_raw
    amazon = kill_points("finetune", ["--file_path", str(reviews), "--meta_file_path", str(meta), "--output_path",
                                      str(tmp_path / "a")])  # fmt: skip
    inter, item = recbole_files(tmp_path)
    argv = ["--format", "recbole", "--file_path", str(inter), "--output_path"]
    assert kill_points("finetune", [*argv, str(tmp_path / "r")]) == amazon
    out = tmp_path / "killed"
    kill_at_each("finetune", argv, {"replace:2": out})
    with pytest.raises(DataError, match=f"^{out}: incomplete: a run of recformer-process-finetune"):
        load_finetune_data(out)
