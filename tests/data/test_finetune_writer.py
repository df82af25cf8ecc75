"""The finetuning-folder writer against outputs worked out by hand (tests/data/finetune_case.py)."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from recformer.data import amazon, finetune_writer, formats
from recformer.data.formats import FINETUNE
from recformer.io.fileio import read_json

from .finetune_case import EXPECTED

FILEIO = Path(__file__).resolve().parents[2] / "recformer" / "io" / "fileio.py"


def test_process_finetune_matches_hand_worked_output(finetune_raw, tmp_path):
    reviews, meta = finetune_raw
    out = tmp_path / "out"
    stats = finetune_writer.process_finetune(reviews, meta, out, progress=False)
    for name, expected in EXPECTED.items():
        assert read_json(out / name) == expected, name
    assert list(read_json(out / "smap.json")) == ["C", "A", "B", "F", "E"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*EXPECTED, "stats.json", "manifest.json"])
    # The folder is exactly the one the format defines (the reader takes its defaults from there too).
    assert [f.name for f in FINETUNE.data_files] == list(EXPECTED) and FINETUNE.stats.name == "stats.json"
    # The manifest, written last, records every file the run wrote.
    manifest = read_json(out / "manifest.json")["files"]
    assert list(manifest) == [*EXPECTED, "stats.json"]
    for name, entry in manifest.items():
        data = (out / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name

    assert read_json(out / "stats.json") == stats
    assert stats["lines_read"] == 26
    assert stats["lines_skipped"] == {"missing_field": 1, "no_title": 2, "unparseable": 1}
    assert stats["reviews"]["skipped"] == {"missing_field": 1}
    assert stats["meta"]["python_literal"] == 1
    assert stats["meta"]["duplicate_records"] == 1
    assert stats["meta"]["items_with_title"] == 6
    assert stats["interactions_without_meta"] == 3  # lines 5, 6 and 15
    assert stats["users_with_interactions"] == 3
    assert stats["users_below_min_seq_len"] == 1
    assert stats["users_sampled_out"] == 0
    assert (stats["users"], stats["items"], stats["interactions"], stats["avg_seq_len"]) == (2, 5, 9, 4.5)
    assert stats["duplicate_reviews"] == 0
    assert (stats["min_seq_len"], stats["user_sample_rate"], stats["seed"]) == (4, 1.0, 42)


def test_min_seq_len_three_keeps_the_three_item_user(finetune_raw, tmp_path):
    data = finetune_writer.build_finetune_dataset(
        amazon.iter_reviews(finetune_raw[0], progress=False),
        amazon.load_meta(finetune_raw[1], progress=False)[0],
        min_seq_len=3,
    )
    assert data.umap == {"u1": 0, "u2": 1, "u3": 2}
    # u3's lines in file order: B, A, E (all met before) -> by time B50 A60 E70.
    assert (data.train[2], data.val[2], data.test[2]) == ([2], [1], [4])


@pytest.mark.parametrize("kwargs", [{"min_seq_len": 2}, {"user_sample_rate": 0.0}, {"user_sample_rate": 1.5}])
def test_invalid_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        finetune_writer.build_finetune_dataset([], {}, **kwargs)


def many_users(n_users: int = 300, per_user: int = 5) -> tuple[list[tuple[str, str, int]], dict]:
    rng = random.Random(0)
    reviews = [
        (f"u{u}", f"I{rng.randrange(50)}", rng.randrange(100))
        for u in range(n_users)
        for _ in range(per_user)
    ]
    rng.shuffle(reviews)
    meta = {f"I{i}": {"title": f"item {i}", "brand": "", "category": ""} for i in range(50)}
    return reviews, meta


def test_seeded_sampling_is_repeatable_and_the_seed_matters():
    reviews, meta = many_users()
    a = finetune_writer.build_finetune_dataset(reviews, meta, user_sample_rate=0.2, seed=7)
    b = finetune_writer.build_finetune_dataset(reviews, meta, user_sample_rate=0.2, seed=7)
    c = finetune_writer.build_finetune_dataset(reviews, meta, user_sample_rate=0.2, seed=8)
    assert a.umap == b.umap and a.smap == b.smap and a.train == b.train
    assert a.umap != c.umap
    assert a.stats["users"] + a.stats["users_sampled_out"] == 300
    assert 30 <= a.stats["users"] <= 90  # 20% of 300, give or take

    # The kept users are those for which random.Random(seed).random() < rate, in order of first appearance;
    # ids stay 0-based and contiguous.
    first_seen = list(dict.fromkeys(user for user, _, _ in reviews))
    rng = random.Random(7)
    assert list(a.umap) == [u for u in first_seen if rng.random() < 0.2]
    assert sorted(a.umap.values()) == list(range(len(a.umap)))
    assert sorted(a.smap.values()) == list(range(len(a.smap)))
    first_user = next(iter(a.umap))
    first_item = next(asin for user, asin, _ in reviews if user == first_user)
    assert a.smap[first_item] == 0


def test_rate_one_keeps_everyone_whatever_the_seed():
    reviews, meta = many_users()
    a = finetune_writer.build_finetune_dataset(reviews, meta, user_sample_rate=1.0, seed=1)
    b = finetune_writer.build_finetune_dataset(reviews, meta, user_sample_rate=1.0, seed=2)
    assert len(a.umap) == 300 and a.umap == b.umap and a.train == b.train and a.test == b.test


def test_interrupted_run_leaves_the_old_folder_as_it_was(finetune_raw, tmp_path, monkeypatch):
    reviews, meta = finetune_raw
    out = tmp_path / "out"
    finetune_writer.process_finetune(reviews, meta, out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    real_write = formats.StepOutput.write_json

    def write_then_die(self, spec, obj):
        if spec.name == "val.json":  # interrupted half-way through writing val.json
            with self.open(spec) as f:
                f.write(b'{"0": [')
                raise KeyboardInterrupt
        real_write(self, spec, obj)

    monkeypatch.setattr(formats.StepOutput, "write_json", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        finetune_writer.process_finetune(reviews, meta, out, min_seq_len=3, progress=False)
    # Every old file is intact (umap, smap and train were already written anew, beside them), and no
    # temporary file is left.
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_killed_writer_never_leaves_the_target(tmp_path):
    """A process killed with SIGKILL in the middle of a write leaves the old file, never half a new one."""
    target = tmp_path / "train.json"
    target.write_text('{"old": 1}')
    code = textwrap.dedent(
        f"""
        import importlib.util, time
        spec = importlib.util.spec_from_file_location("fileio", {str(FILEIO)!r})  # without importing torch
        fileio = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fileio)
        atomic_open = fileio.atomic_open
        with atomic_open({str(target)!r}, "wb") as f:
            f.write(b'{{"new": [1, 2, ')
            f.flush()
            print("writing", flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert target.read_text() == '{"old": 1}'
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "train.json"]
    assert all(name.startswith(".train.json.") and name.endswith(".tmp") for name in leftovers)
