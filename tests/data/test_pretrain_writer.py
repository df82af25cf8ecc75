"""The pretraining-corpus writer against outputs worked out by hand (tests/data/pretrain_case.py)."""

from __future__ import annotations

from recformer.data import pretrain_writer
from recformer.data.formats import PRETRAIN
from recformer.fileio import read_json

from .pretrain_case import DEV, EXPECTED_DEV, EXPECTED_META, EXPECTED_TRAIN, TRAIN


def test_meta_data_process_matches_hand_worked_output(pretrain_raw, tmp_path):
    out = tmp_path / "out"
    stats = pretrain_writer.process_pretrain_meta(
        pretrain_raw, pretrain_raw, out, TRAIN + DEV, progress=False
    )
    assert sorted(p.name for p in out.iterdir()) == sorted([PRETRAIN.meta_data.name, PRETRAIN.stats.name])
    assert read_json(out / "meta_data.json") == EXPECTED_META
    assert read_json(out / "stats.json") == stats
    assert stats["items"] == 7
    assert stats["meta_records_with_title"] == 9  # a1 a2 s1 u1 | b1 s1 | c1 c2 x1
    assert stats["reviewed_items"] == 9  # a1 a2 s1 x1 n1 zz b1 c1 c2
    assert stats["reviewed_items_without_meta"] == 2  # n1, zz
    assert stats["replaced_meta_records"] == 1  # s1
    assert stats["lines_read"] == 5 + 3 + 3 + 8 + 4 + 4
    assert stats["lines_skipped"] == {"missing_field": 1, "no_title": 2, "unparseable": 1}


def test_interaction_data_process_matches_hand_worked_output(pretrain_raw, tmp_path):
    out = tmp_path / "out"
    pretrain_writer.process_pretrain_meta(pretrain_raw, pretrain_raw, out, TRAIN + DEV, progress=False)
    stats = pretrain_writer.process_pretrain_interactions(
        pretrain_raw, out / "meta_data.json", out, TRAIN, DEV, progress=False
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f.name for f in (PRETRAIN.meta_data, PRETRAIN.train, PRETRAIN.dev, PRETRAIN.stats)
    )
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
    seqs, stats = pretrain_writer.build_pretrain_sequences(reviews, {"a": {}, "b": {}, "c": {}})
    assert seqs == [["c", "a", "b"], ["a", "a"]]  # a repeated review is kept, as the reference does
    assert stats == {
        "sequences": 2,
        "interactions": 5,
        "items": 3,
        "interactions_without_meta": 1,
        "single_item_sequences": 0,
    }


def test_empty_splits_are_valid_json(pretrain_raw, tmp_path):
    out = tmp_path / "out"
    (out).mkdir()
    (out / "meta_data.json").write_text("{}")
    stats = pretrain_writer.process_pretrain_interactions(
        pretrain_raw, out / "meta_data.json", out, TRAIN, DEV, progress=False
    )
    assert read_json(out / "train.json") == [] and read_json(out / "dev.json") == []
    assert stats["train"]["interactions_without_meta"] == 11 and stats["dev"]["avg_seq_len"] == 0.0
