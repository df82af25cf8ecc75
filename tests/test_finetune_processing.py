"""finetune_data/process.py and recformer.amazon.build_finetune_dataset against outputs worked out by hand."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from recformer import amazon
from recformer.fileio import read_json

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "finetune_data" / "process.py"
FILEIO = REPO / "recformer" / "fileio.py"


def write_gz(path: Path, lines: list[str]) -> Path:
    path.write_bytes(gzip.compress("".join(line + "\n" for line in lines).encode(), mtime=0))
    return path


def review(user: str, asin: str, t: int) -> str:
    return json.dumps(
        {"overall": 5.0, "reviewerID": user, "asin": asin, "unixReviewTime": t, "summary": "ok"}
    )


META_LINES = [
    json.dumps({"asin": "A", "title": "Alpha &amp; Co Lens", "brand": "Acme", "category": ["Cam", "Lenses"]}),
    json.dumps({"asin": "B", "title": "Beta", "category": []}),  # no brand key, empty category list
    json.dumps({"asin": "C", "title": "Gamma", "brand": None}),  # null brand, no category key
    json.dumps({"asin": "D", "title": ""}),  # no title: D has no metadata
    json.dumps({"asin": "E", "title": "Eps", "brand": "X", "category": ["Z"]}),
    json.dumps(
        {"asin": "A", "title": "Alpha &amp; Co Lens v2", "brand": "Acme", "category": ["Cam", "Lenses"]}
    ),  # later wins
    repr({"asin": "F", "title": "Phi", "brand": "Y", "category": ["Q", "R"]}),  # Python literal
    '{"asin": "Z", "title": "broken',  # cut-off line
    json.dumps({"asin": "G", "title": None}),  # no title: G has no metadata
    json.dumps({"asin": "H", "title": "Eta", "brand": "W", "category": ["V"]}),  # never reviewed
]
REVIEW_LINES = [
    review("u1", "C", 300),  # 1
    review("u2", "A", 100),  # 2
    review("u1", "A", 100),  # 3
    review("u3", "B", 50),  # 4
    review("u1", "D", 200),  # 5  D has no metadata: does not count
    review("u2", "X", 10),  # 6  X is not in the meta file
    review("u1", "B", 100),  # 7  ties with line 3: A stays before B
    review("u2", "B", 200),  # 8
    review("u1", "F", 50),  # 9
    review("u2", "E", 300),  # 10
    review("u3", "A", 60),  # 11
    review("u2", "C", 150),  # 12
    json.dumps({"reviewerID": "u3", "asin": "C"}),  # 13 no time: skipped
    review("u3", "E", 70),  # 14 u3 ends with 3 interactions: below min_seq_len 4
    review("u4", "G", 10),  # 15 G has no metadata: u4 has nothing
    review("u1", "E", 300),  # 16 ties with line 1: C stays before E
]

# Worked out by hand. Users in order of first counted line: u1 (line 1), u2 (line 2); u3 has 3 < 4.
# Item ids walking u1's lines in file order: C 0, A 1, B 2, F 3, E 4 (u2 meets nothing new).
# u1 by time (stable): F50 A100 B100 C300 E300 -> 3 1 2 0 4;  u2: A100 C150 B200 E300 -> 1 0 2 4.
EXPECTED = {
    "umap.json": {"u1": 0, "u2": 1},
    "smap.json": {"C": 0, "A": 1, "B": 2, "F": 3, "E": 4},
    "train.json": {"0": [3, 1, 2], "1": [1, 0]},
    "val.json": {"0": [0], "1": [2]},
    "test.json": {"0": [4], "1": [4]},
    "meta_data.json": {
        "A": {"title": "Alpha &amp; Co Lens v2", "brand": "Acme", "category": "Cam Lenses"},
        "B": {"title": "Beta", "brand": "", "category": ""},
        "C": {"title": "Gamma", "brand": "", "category": ""},
        "E": {"title": "Eps", "brand": "X", "category": "Z"},
        "F": {"title": "Phi", "brand": "Y", "category": "Q R"},
        "H": {"title": "Eta", "brand": "W", "category": "V"},
    },
}


@pytest.fixture
def raw(tmp_path) -> tuple[Path, Path]:
    return write_gz(tmp_path / "Tiny_5.json.gz", REVIEW_LINES), write_gz(
        tmp_path / "meta_Tiny.json.gz", META_LINES
    )


def test_process_finetune_matches_hand_worked_output(raw, tmp_path):
    reviews, meta = raw
    out = tmp_path / "out"
    stats = amazon.process_finetune(reviews, meta, out, progress=False)
    for name, expected in EXPECTED.items():
        assert read_json(out / name) == expected, name
    assert list(read_json(out / "smap.json")) == ["C", "A", "B", "F", "E"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*EXPECTED, "stats.json"])

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
    assert (stats["min_seq_len"], stats["user_sample_rate"], stats["seed"]) == (4, 1.0, 42)


def test_min_seq_len_three_keeps_the_three_item_user(raw, tmp_path):
    data = amazon.build_finetune_dataset(
        amazon.iter_reviews(raw[0], progress=False),
        amazon.load_meta(raw[1], progress=False)[0],
        min_seq_len=3,
    )
    assert data.umap == {"u1": 0, "u2": 1, "u3": 2}
    # u3's lines in file order: B, A, E (all met before) -> by time B50 A60 E70.
    assert (data.train[2], data.val[2], data.test[2]) == ([2], [1], [4])


@pytest.mark.parametrize("kwargs", [{"min_seq_len": 2}, {"user_sample_rate": 0.0}, {"user_sample_rate": 1.5}])
def test_invalid_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        amazon.build_finetune_dataset([], {}, **kwargs)


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
    a = amazon.build_finetune_dataset(reviews, meta, user_sample_rate=0.2, seed=7)
    b = amazon.build_finetune_dataset(reviews, meta, user_sample_rate=0.2, seed=7)
    c = amazon.build_finetune_dataset(reviews, meta, user_sample_rate=0.2, seed=8)
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
    a = amazon.build_finetune_dataset(reviews, meta, user_sample_rate=1.0, seed=1)
    b = amazon.build_finetune_dataset(reviews, meta, user_sample_rate=1.0, seed=2)
    assert len(a.umap) == 300 and a.umap == b.umap and a.train == b.train and a.test == b.test


def load_cli(path: Path):
    """Import a command-line script as a module, to call its main() in this process."""
    spec = importlib.util.spec_from_file_location(f"cli_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_writes_outputs_and_stats(raw, tmp_path, capsys):
    reviews, meta = raw
    out = tmp_path / "cli_out"
    argv = ["--file_path", str(reviews), "--meta_file_path", str(meta), "--output_path", str(out),
            "--min_seq_len", "4", "--user_sample_rate", "1.0", "--seed", "3", "--no_progress"]  # fmt: skip
    assert load_cli(CLI).main(argv) == 0
    printed = capsys.readouterr().out
    assert f"output_path = {out}" in printed and '"users": 2' in printed
    for name, expected in EXPECTED.items():
        assert read_json(out / name) == expected, name
    assert read_json(out / "stats.json")["seed"] == 3


@pytest.mark.parametrize("bad", [["--min_seq_len", "2"], ["--user_sample_rate", "0"]])
def test_cli_refuses_bad_settings(raw, tmp_path, bad, capsys):
    argv = [
        "--file_path",
        str(raw[0]),
        "--meta_file_path",
        str(raw[1]),
        "--output_path",
        str(tmp_path / "o"),
        *bad,
    ]
    with pytest.raises(SystemExit) as e:
        load_cli(CLI).main(argv)
    assert e.value.code == 2
    assert bad[0] in capsys.readouterr().err


def test_cli_missing_file_exits_non_zero_naming_it(raw, tmp_path):
    missing = tmp_path / "absent" / "Missing_5.json.gz"
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        str(CLI),
        "--file_path",
        str(missing),
        "--meta_file_path",
        str(raw[1]),
        "--output_path",
        str(out),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1
    assert str(missing) in result.stderr
    assert not out.exists()


def test_interrupted_run_leaves_no_partial_file_and_no_completion_mark(raw, tmp_path, monkeypatch):
    reviews, meta = raw
    out = tmp_path / "out"
    amazon.process_finetune(reviews, meta, out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    real_write = amazon.atomic_write_json

    def write_then_die(path, obj, indent=False):
        if Path(path).name == "val.json":  # killed half-way through writing val.json
            with amazon.atomic_open(path, "wb") as f:
                f.write(b'{"0": [')
                raise KeyboardInterrupt
        real_write(path, obj, indent)

    monkeypatch.setattr(amazon, "atomic_write_json", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        amazon.process_finetune(reviews, meta, out, min_seq_len=3, progress=False)
    # The old val.json is intact, no temporary file is left, and stats.json (written last) is gone.
    assert (out / "val.json").read_bytes() == before["val.json"]
    assert json.loads((out / "train.json").read_bytes())  # rewritten completely before the interruption
    assert not (out / "stats.json").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(n for n in before if n != "stats.json")


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
