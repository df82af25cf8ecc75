"""pretrain_data/meta_data_process.py and interaction_data_process.py against outputs worked out by hand."""

from __future__ import annotations

import gzip
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from recformer import amazon
from recformer.fileio import read_json

REPO = Path(__file__).resolve().parents[1]
META_CLI = REPO / "pretrain_data" / "meta_data_process.py"
INTERACTION_CLI = REPO / "pretrain_data" / "interaction_data_process.py"
TRAIN, DEV = ["CatA", "CatB"], ["CatC"]


def write_gz(path: Path, lines: list[str]) -> None:
    path.write_bytes(gzip.compress("".join(line + "\n" for line in lines).encode(), mtime=0))


def meta(asin: str, title, brand=None, category=None) -> str:
    rec = {"asin": asin, "title": title}
    if brand is not None:
        rec["brand"] = brand
    if category is not None:
        rec["category"] = category
    return json.dumps(rec)


def review(user: str, asin: str, t: int) -> str:
    return json.dumps({"reviewerID": user, "asin": asin, "unixReviewTime": t, "overall": 4.0})


RAW = {
    "meta_CatA.json.gz": [
        meta("a1", "A one", "BA", ["CatA", "Sub"]),
        meta("a2", "A two"),  # no brand, no category
        meta("s1", "Shared from A", "S", ["CatA"]),
        meta("n1", None),  # no title: n1 is never selected
        meta("u1", "Unreviewed"),  # reviewed nowhere: not selected
    ],
    "meta_CatB.json.gz": [
        meta("b1", "B one", category=[]),
        meta("s1", "Shared from B", "S", ["CatB", "X"]),  # a later category's record replaces CatA's
        meta("a2", ""),  # an empty title never replaces a good record
    ],
    "meta_CatC.json.gz": [
        meta("c1", "C one"),
        meta("c2", "C two"),
        meta("x1", "Cross item", "XB", ["CatC"]),  # described in CatC, reviewed in CatA's file
    ],
    "CatA_5.json.gz": [
        review("r1", "a1", 100),
        review("r2", "a2", 50),
        review("r1", "s1", 100),  # ties with a1: sorted by asin, a1 < s1
        review("r1", "x1", 90),
        review("r1", "n1", 10),  # no metadata
        review("r3", "zz", 10),  # no metadata: r3 gets no sequence at all
        review("r2", "a1", 50),  # ties with a2, later in the file, but a1 < a2 comes first
        '{"reviewerID": "r2", "asin": "a1", "unixRe',  # broken line
    ],
    "CatB_5.json.gz": [
        review("r1", "b1", 5),  # r1 again: a separate sequence per review file
        review("r4", "s1", 1),
        review("r4", "b1", 1),  # tie: b1 < s1
        repr({"reviewerID": "r5", "asin": "b1", "unixReviewTime": 7, "verified": True}),  # Python literal
    ],
    "CatC_5.json.gz": [
        review("r6", "c2", 20),
        review("r6", "c1", 10),
        review("r7", "c1", 5),  # a one-item sequence: kept and counted
        json.dumps({"asin": "c2", "unixReviewTime": 3}),  # no reviewerID
    ],
}

EXPECTED_META = {
    "a1": {"title": "A one", "brand": "BA", "category": "CatA Sub"},
    "a2": {"title": "A two", "brand": "", "category": ""},
    "s1": {"title": "Shared from B", "brand": "S", "category": "CatB X"},
    "x1": {"title": "Cross item", "brand": "XB", "category": "CatC"},
    "b1": {"title": "B one", "brand": "", "category": ""},
    "c1": {"title": "C one", "brand": "", "category": ""},
    "c2": {"title": "C two", "brand": "", "category": ""},
}
# CatA: r1 -> x1@90, a1@100, s1@100; r2 -> a1@50, a2@50; r3 has nothing. CatB: r1, r4, r5. CatC: r6, r7.
EXPECTED_TRAIN = [["x1", "a1", "s1"], ["a1", "a2"], ["b1"], ["b1", "s1"], ["b1"]]
EXPECTED_DEV = [["c1", "c2"], ["c1"]]


@pytest.fixture
def raw(tmp_path) -> Path:
    root = tmp_path / "raw"
    root.mkdir()
    for name, lines in RAW.items():
        write_gz(root / name, lines)
    return root


def test_meta_data_process_matches_hand_worked_output(raw, tmp_path):
    out = tmp_path / "out"
    stats = amazon.process_pretrain_meta(raw, raw, out, TRAIN + DEV, progress=False)
    assert read_json(out / "meta_data.json") == EXPECTED_META
    assert read_json(out / "stats.json") == stats
    assert stats["items"] == 7
    assert stats["meta_records_with_title"] == 9  # a1 a2 s1 u1 | b1 s1 | c1 c2 x1
    assert stats["reviewed_items"] == 9  # a1 a2 s1 x1 n1 zz b1 c1 c2
    assert stats["reviewed_items_without_meta"] == 2  # n1, zz
    assert stats["replaced_meta_records"] == 1  # s1
    assert stats["lines_read"] == 5 + 3 + 3 + 8 + 4 + 4
    assert stats["lines_skipped"] == {"missing_field": 1, "no_title": 2, "unparseable": 1}


def test_interaction_data_process_matches_hand_worked_output(raw, tmp_path):
    out = tmp_path / "out"
    amazon.process_pretrain_meta(raw, raw, out, TRAIN + DEV, progress=False)
    stats = amazon.process_pretrain_interactions(raw, out / "meta_data.json", out, TRAIN, DEV, progress=False)
    assert read_json(out / "train.json") == EXPECTED_TRAIN
    assert read_json(out / "dev.json") == EXPECTED_DEV
    assert read_json(out / "stats.json") == stats
    train, dev = stats["train"], stats["dev"]
    assert (train["sequences"], train["interactions"], train["items"]) == (5, 9, 5)
    assert (train["single_item_sequences"], train["interactions_without_meta"], train["avg_seq_len"]) == (
        2,
        2,
        1.8,
    )
    assert (dev["sequences"], dev["interactions"], dev["items"], dev["single_item_sequences"]) == (2, 3, 2, 1)
    assert [f["sequences"] for f in train["files"]] == [2, 3]
    assert train["files"][1]["python_literal"] == 1
    assert (stats["users"], stats["items"], stats["interactions"], stats["meta_items"]) == (7, 7, 12, 7)
    assert stats["lines_read"] == 16
    assert stats["lines_skipped"] == {"missing_field": 1, "unparseable": 1}


def test_build_pretrain_sequences_sorts_by_time_then_asin():
    reviews = [("u", "b", 2), ("v", "a", 1), ("u", "a", 2), ("u", "c", 1), ("u", "missing", 0), ("v", "a", 1)]
    seqs, stats = amazon.build_pretrain_sequences(reviews, {"a": {}, "b": {}, "c": {}})
    assert seqs == [["c", "a", "b"], ["a", "a"]]  # a repeated review is kept, as the reference does
    assert stats == {
        "sequences": 2,
        "interactions": 5,
        "items": 3,
        "interactions_without_meta": 1,
        "single_item_sequences": 0,
    }


def test_empty_splits_are_valid_json(raw, tmp_path):
    out = tmp_path / "out"
    (out).mkdir()
    (out / "meta_data.json").write_text("{}")
    stats = amazon.process_pretrain_interactions(raw, out / "meta_data.json", out, TRAIN, DEV, progress=False)
    assert read_json(out / "train.json") == [] and read_json(out / "dev.json") == []
    assert stats["train"]["interactions_without_meta"] == 11 and stats["dev"]["avg_seq_len"] == 0.0


def load_cli(path: Path):
    spec = importlib.util.spec_from_file_location(f"cli_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_clis_run_end_to_end(raw, tmp_path, capsys):
    out = tmp_path / "out"
    common = ["--seq_root", str(raw), "--output_dir", str(out), "--no_progress"]
    assert load_cli(META_CLI).main(["--meta_root", str(raw), *common, "--categories", *TRAIN, *DEV]) == 0
    # --meta_file defaults to OUTPUT_DIR/meta_data.json
    assert (
        load_cli(INTERACTION_CLI).main([*common, "--train_categories", *TRAIN, "--dev_categories", *DEV]) == 0
    )
    printed = capsys.readouterr().out
    assert f"meta_file = {out / 'meta_data.json'}" in printed
    assert read_json(out / "train.json") == EXPECTED_TRAIN
    assert read_json(out / "dev.json") == EXPECTED_DEV
    assert read_json(out / "meta_data.json") == EXPECTED_META


def test_default_categories_are_the_papers(tmp_path):
    args = load_cli(INTERACTION_CLI).parse_args(["--seq_root", "s", "--output_dir", "o"])
    assert args.train_categories == [
        "Automotive",
        "Cell_Phones_and_Accessories",
        "Clothing_Shoes_and_Jewelry",
        "Electronics",
        "Grocery_and_Gourmet_Food",
        "Home_and_Kitchen",
        "Movies_and_TV",
    ]
    assert args.dev_categories == ["CDs_and_Vinyl"]
    meta_args = load_cli(META_CLI).parse_args(["--meta_root", "m", "--seq_root", "s", "--output_dir", "o"])
    assert meta_args.categories == args.train_categories + args.dev_categories


def test_missing_files_exit_non_zero_naming_them(raw, tmp_path):
    (raw / "CatB_5.json.gz").unlink()
    out = tmp_path / "out"
    cmd = [sys.executable, str(META_CLI), "--meta_root", str(raw), "--seq_root", str(raw),
           "--output_dir", str(out), "--categories", *TRAIN, *DEV]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1
    assert str(raw / "CatB_5.json.gz") in result.stderr
    assert not out.exists()

    # The interaction step: a missing meta_data.json, then a missing review file.
    cli = load_cli(INTERACTION_CLI)
    argv = [
        "--seq_root",
        str(raw),
        "--output_dir",
        str(out),
        "--train_categories",
        "CatA",
        "--dev_categories",
        "CatC",
    ]
    assert cli.main([*argv, "--no_progress"]) == 1
    out.mkdir()
    (out / "meta_data.json").write_text("{}")
    assert (
        cli.main([*argv[:4], "--train_categories", "CatB", "--dev_categories", "CatC", "--no_progress"]) == 1
    )
    assert not (out / "train.json").exists()


def test_missing_file_messages_name_the_paths(raw, tmp_path, capsys):
    (raw / "CatB_5.json.gz").unlink()
    (raw / "meta_CatC.json.gz").unlink()
    out = tmp_path / "out"
    assert load_cli(META_CLI).main(["--meta_root", str(raw), "--seq_root", str(raw), "--output_dir", str(out),
                                    "--categories", *TRAIN, *DEV]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert str(raw / "meta_CatC.json.gz") in err
    cli = load_cli(INTERACTION_CLI)
    argv = [
        "--seq_root",
        str(raw),
        "--output_dir",
        str(out),
        "--train_categories",
        "CatA",
        "--dev_categories",
        "CatC",
    ]
    assert cli.main(argv) == 1
    assert str(out / "meta_data.json") in capsys.readouterr().err
    assert cli.main([*argv[:4], "--train_categories", "CatA", "CatB", "--dev_categories", "CatC"]) == 1
    assert str(raw / "CatB_5.json.gz") in capsys.readouterr().err
