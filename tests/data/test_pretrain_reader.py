"""The pretraining-corpus readers (no Lightning, no torch needed)."""

from __future__ import annotations

import json
import logging

import pytest

from recformer.data.pretrain_reader import PretrainDataError, read_item_metadata, read_pretrain_sequences


@pytest.mark.parametrize(
    "content, detail",
    [
        ({"a": ["B1"]}, "the top level is dict"),
        (["B1", "B2"], "entry 0 is 'B1'"),
        ([["B1", 2]], "entry 0 is"),
    ],
)
def test_sequences_that_are_not_asin_lists(tmp_path, content, detail):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(content))
    with pytest.raises(PretrainDataError) as e:
        read_pretrain_sequences(path, {"B1", "B2"})
    assert (
        str(path) in str(e.value)
        and "expected a JSON list of asin lists" in str(e.value)
        and detail in str(e.value)
    )


def test_missing_asins_and_short_sequences_are_counted_and_skipped(tmp_path, caplog):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([["B1", "B2", "X9"], ["B1"], ["B2", "X8"], ["B2", "B1"]]))
    with caplog.at_level(logging.INFO):
        sequences, stats = read_pretrain_sequences(path, {"B1": {}, "B2": {}})
    assert sequences == [["B1", "B2"], ["B2", "B1"]]
    assert (stats.sequences_read, stats.sequences_kept, stats.missing_asins, stats.short_sequences) == (
        4,
        2,
        2,
        2,
    )
    assert "2 asins missing from the metadata skipped" in caplog.text


def test_no_usable_sequence_and_bad_metadata(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps([["B1"]]))
    with pytest.raises(PretrainDataError, match="no sequence with at least 2 known items"):
        read_pretrain_sequences(path, {"B1"})
    meta = tmp_path / "meta_data.json"
    meta.write_text(json.dumps(["B1"]))
    with pytest.raises(PretrainDataError, match="meta_data.json: expected a JSON object"):
        read_item_metadata(meta)
    with pytest.raises(PretrainDataError, match="not found"):
        read_item_metadata(tmp_path / "nope.json")
