"""The pretraining-corpus writer against outputs worked out by hand (tests/data/pretrain_case.py)."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from recformer.data import pretrain_writer
from recformer.io.fileio import read_json

from .pretrain_case import DEV, EXPECTED_DEV, EXPECTED_META, EXPECTED_TRAIN, TRAIN


def test_meta_data_process_matches_hand_worked_output(pretrain_raw, tmp_path):
    out = tmp_path / "out"
    stats = pretrain_writer.process_pretrain_meta(
        pretrain_raw, pretrain_raw, out, TRAIN + DEV, progress=False
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["meta_data.json", "meta_stats.json", "meta_manifest.json"]
    )
    assert read_json(out / "meta_data.json") == EXPECTED_META
    assert read_json(out / "meta_stats.json") == stats
    assert list(read_json(out / "meta_manifest.json")["files"]) == ["meta_data.json", "meta_stats.json"]
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
    # Each step has its own stats file and manifest: the interaction step leaves the meta step's alone.
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["meta_data.json", "meta_stats.json", "meta_manifest.json"]
        + ["train.json", "dev.json", "interaction_stats.json", "interaction_manifest.json"]
    )
    assert read_json(out / "train.json") == EXPECTED_TRAIN
    assert read_json(out / "dev.json") == EXPECTED_DEV
    assert read_json(out / "interaction_stats.json") == stats
    assert read_json(out / "meta_stats.json")["items"] == 7
    manifest = read_json(out / "interaction_manifest.json")
    assert list(manifest["files"]) == ["train.json", "dev.json", "interaction_stats.json"]
    meta_bytes = (out / "meta_data.json").read_bytes()
    assert manifest["inputs"]["meta_data.json"] == {
        "path": str(out / "meta_data.json"),
        "size": len(meta_bytes),
        "sha256": hashlib.sha256(meta_bytes).hexdigest(),
    }
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
        "duplicate_reviews": 1,  # v reviewed a twice
    }


def test_an_empty_meta_file_or_category_is_an_error_naming_the_file(pretrain_raw, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "meta_data.json").write_text("{}")
    with pytest.raises(ValueError, match=re.escape(f"{out / 'meta_data.json'}: holds no items")):
        pretrain_writer.process_pretrain_interactions(
            pretrain_raw, out / "meta_data.json", out, TRAIN, DEV, progress=False
        )
    # CatC's reviews are of c1 and c2 only: without them, the dev category gives no sequence.
    (out / "meta_data.json").write_text(json.dumps({a: EXPECTED_META[a] for a in ("a1", "a2", "b1")}))
    with pytest.raises(
        ValueError, match=re.escape(f"{pretrain_raw / 'CatC_5.json.gz'}: none of its 3 reviews")
    ):
        pretrain_writer.process_pretrain_interactions(
            pretrain_raw, out / "meta_data.json", out, TRAIN, DEV, progress=False
        )
    assert sorted(p.name for p in out.iterdir()) == ["meta_data.json"]  # nothing written, nothing left
