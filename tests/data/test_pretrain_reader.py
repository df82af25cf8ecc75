"""The pretraining-corpus readers (no Lightning, no torch needed)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from recformer.data.pretrain_reader import PretrainDataError, read_item_metadata, read_pretrain_sequences
from recformer.data.pretrain_writer import process_pretrain_interactions, process_pretrain_meta

from .pretrain_case import DEV, EXPECTED_DEV, EXPECTED_META, EXPECTED_TRAIN, TRAIN


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


@pytest.fixture
def corpus(pretrain_raw, tmp_path):
    """A pretraining folder written by both steps."""
    out = tmp_path / "corpus"
    process_pretrain_meta(pretrain_raw, pretrain_raw, out, TRAIN + DEV, progress=False)
    process_pretrain_interactions(pretrain_raw, out / "meta_data.json", out, TRAIN, DEV, progress=False)
    return out


def read_corpus(folder):
    meta = read_item_metadata(folder / "meta_data.json")
    train, _ = read_pretrain_sequences(folder / "train.json", meta, folder / "meta_data.json")
    dev, _ = read_pretrain_sequences(folder / "dev.json", meta, folder / "meta_data.json")
    return meta, train, dev


def test_reads_what_both_steps_wrote(corpus):
    meta, train, dev = read_corpus(corpus)
    assert meta == EXPECTED_META
    assert train == [s for s in EXPECTED_TRAIN if len(s) > 1] and dev == [
        s for s in EXPECTED_DEV if len(s) > 1
    ]


@pytest.mark.parametrize(
    "marker, files",
    [
        ("meta_manifest.json.incomplete", ["meta_data.json"]),
        ("interaction_manifest.json.incomplete", ["train.json", "dev.json"]),
    ],
)
def test_a_step_that_stopped_while_replacing_its_files_is_refused(corpus, marker, files):
    (corpus / marker).write_text("")
    meta = EXPECTED_META
    for name in files:
        with pytest.raises(PretrainDataError) as e:
            if name == "meta_data.json":
                read_item_metadata(corpus / name)
            else:
                read_pretrain_sequences(corpus / name, meta)
        assert str(e.value).startswith(f"{corpus}: incomplete: a run of recformer-pretrain-")
        assert str(e.value).endswith(f"({marker} is still there); re-run it")


def test_a_new_train_file_next_to_an_old_dev_file_is_refused(corpus, pretrain_raw, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(corpus / "meta_data.json", other / "meta_data.json")
    process_pretrain_interactions(
        pretrain_raw, other / "meta_data.json", other, ["CatA"], DEV, progress=False
    )
    (corpus / "train.json").write_bytes((other / "train.json").read_bytes())
    with pytest.raises(PretrainDataError) as e:
        read_corpus(corpus)
    assert str(e.value).startswith(
        f"{corpus / 'train.json'}: is not the file that interaction_manifest.json beside it records"
    )


def test_sequences_built_from_another_meta_file_are_refused(corpus, pretrain_raw):
    # The meta step runs again with other categories; the interaction step is not re-run.
    process_pretrain_meta(pretrain_raw, pretrain_raw, corpus, ["CatA", "CatC"], progress=False)
    with pytest.raises(PretrainDataError) as e:
        read_corpus(corpus)
    assert str(e.value) == (
        f"{corpus / 'train.json'}: was built from another meta_data.json ({corpus / 'meta_data.json'}) than "
        f"{corpus / 'meta_data.json'}: re-run recformer-pretrain-interactions "
        "(pretrain_data/interaction_data_process.py) after the meta step"
    )


def test_an_item_without_attributes_is_refused(tmp_path):
    meta = tmp_path / "meta_data.json"
    meta.write_text(json.dumps({"B1": {"title": "t"}, "B2": {}}))
    with pytest.raises(PretrainDataError) as e:
        read_item_metadata(meta)
    assert str(e.value) == f"{meta}: item 'B2' has no attributes ({{}}): it has no text"


def test_a_folder_of_the_original_scripts_is_read_as_it_is(tmp_path):
    golden = Path(__file__).resolve().parents[1] / "fixtures" / "processed_golden" / "pretrain"
    folder = tmp_path / "pretrain"
    shutil.copytree(golden, folder)
    meta, train, dev = read_corpus(folder)
    assert meta == EXPECTED_META and len(train) == 3 and len(dev) == 1
