"""The finetuning-folder reader: a round trip through the writer, and one clear error per kind of bad file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from recformer.data.finetune_reader import DataError, load_finetune_data, popularity_scores
from recformer.data.finetune_writer import process_finetune

from .finetune_case import EXPECTED


@pytest.fixture
def folder(finetune_raw, tmp_path):
    out = tmp_path / "Tiny"
    process_finetune(*finetune_raw, out, progress=False)
    return out


def test_reads_what_the_writer_wrote(folder):
    data = load_finetune_data(folder)
    assert data.name == "Tiny"
    assert (data.train, data.val, data.test) == (
        EXPECTED["train.json"],
        EXPECTED["val.json"],
        EXPECTED["test.json"],
    )
    assert data.item2id == EXPECTED["smap.json"]
    # Items in id order: C A B F E; H has metadata but was never reviewed, so it is no item.
    meta = EXPECTED["meta_data.json"]
    assert data.items == [meta[a] for a in ("C", "A", "B", "F", "E")] and data.num_items == 5
    assert data.train_sequences() == [[3, 1, 2], [1, 0]]
    assert data.dev_pairs() == [([3, 1, 2], 0), ([1, 0], 2)]
    assert data.test_pairs() == [([3, 1, 2, 0], 4), ([1, 0, 2], 4)]


@pytest.mark.parametrize(
    "file, content, message",
    [
        (
            "train.json",
            [[3, 1, 2]],
            'train.json: expected a JSON object {user id: [item ids]} (e.g. {"0": [3, 1, 2]}), got list',
        ),
        ("val.json", {"0": [0], "7": [1]}, "val.json: user 7 has no sequence in train.json"),
        (
            "test.json",
            {"0": [5]},
            "test.json: user 0: item id 5 is not in the item map (ids 0..4 from smap.json)",
        ),
        ("test.json", {"0": ["4"]}, "test.json: user 0: expected a list of integer item ids, got ['4']"),
        (
            "smap.json",
            {"C": 0, "A": 1, "B": 1},
            "smap.json: item ids must be 0..2 without gaps or repeats (id 1 ",
        ),
        ("smap.json", [], 'smap.json: expected a non-empty JSON object {asin: item id} (e.g. {"B0001": 0, '),
        ("meta_data.json", [], "meta_data.json: expected a JSON object mapping each asin to its attributes"),
        (
            "meta_data.json",
            {"C": {"title": "Gamma"}},
            "smap.json: item 'A' (id 1) has no entry in meta_data.json",
        ),
    ],
)
def test_bad_files_are_refused_naming_file_and_key(folder, file, content, message):
    (folder / "manifest.json").unlink(
        missing_ok=True
    )  # a folder edited by hand (as without a manifest: the original code's)
    (folder / file).write_text(json.dumps(content))
    with pytest.raises(DataError) as e:
        load_finetune_data(folder)
    assert f"{folder}/{message}" in str(e.value)  # the full path of the file at fault, then the problem


def test_missing_folder_and_missing_file(folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: data folder not found"):
        load_finetune_data(tmp_path / "nowhere")
    (folder / "val.json").unlink()
    with pytest.raises(FileNotFoundError, match="val.json: file not found"):
        load_finetune_data(folder)
    # umap.json is not needed to read the folder.
    (folder / "umap.json").unlink()
    assert load_finetune_data(folder, dev_file="test.json").val == EXPECTED["test.json"]


def test_popularity_scores_count_interactions():
    scores = popularity_scores([[0, 1, 1], [2]], num_items=4)
    assert scores.dtype == torch.float64
    assert scores.tolist() == [1.0, 2.0, 1.0, 0.0]
    assert popularity_scores([], num_items=3).tolist() == [0.0, 0.0, 0.0]


def edit(folder, name, content):
    """Change a file of a folder by hand, as the manifest's refusal says to do it (without the manifest)."""
    (folder / "manifest.json").unlink(missing_ok=True)
    (folder / name).write_text(json.dumps(content))


@pytest.mark.parametrize("name", ["val.json", "test.json"])
def test_a_target_file_without_any_target_is_refused_at_load_time(folder, name):
    edit(folder, name, {"0": [], "1": []})  # fit() would fail only after an epoch, in torch.cat
    with pytest.raises(DataError) as e:
        load_finetune_data(folder)
    assert str(e.value).startswith(f"{folder / name}: no user has a target item (every list is empty)")
    edit(folder, name, {"0": [], "1": [2]})  # one user without a target is allowed, as before
    assert len(load_finetune_data(folder).dev_pairs() + load_finetune_data(folder).test_pairs()) == 3


@pytest.mark.parametrize("name", ["val.json", "test.json"])
def test_a_user_with_several_targets_is_refused(folder, name):
    edit(folder, name, {"0": [0, 4], "1": [2]})  # was cut to the first item without a word
    with pytest.raises(DataError) as e:
        load_finetune_data(folder)
    assert str(e.value).startswith(
        f"{folder / name}: user 0 has 2 target items [0, 4]; expected a JSON object"
    )


def test_an_item_without_attributes_is_refused(folder):
    meta = dict(EXPECTED["meta_data.json"], A={})
    edit(folder, "meta_data.json", meta)
    with pytest.raises(DataError) as e:
        load_finetune_data(folder)
    assert (
        str(e.value)
        == f"{folder / 'meta_data.json'}: item 'A' (id 1) has no attributes ({{}}): it has no text"
    )


def test_a_folder_whose_processing_run_stopped_is_refused(folder):
    (folder / "manifest.json.incomplete").write_text("")
    with pytest.raises(DataError) as e:
        load_finetune_data(folder)
    assert str(e.value) == (
        f"{folder}: incomplete: a run of recformer-process-finetune (finetune_data/process.py) stopped while "
        "replacing its files (manifest.json.incomplete is still there); re-run it"
    )


def test_a_folder_mixing_two_runs_is_refused(folder, finetune_raw, tmp_path):
    other = tmp_path / "other"
    process_finetune(*finetune_raw, other, min_seq_len=3, progress=False)
    (folder / "val.json").write_bytes((other / "val.json").read_bytes())  # the other run's val.json
    with pytest.raises(DataError) as e:
        load_finetune_data(folder)
    assert str(e.value).startswith(
        f"{folder / 'val.json'}: is not the file that manifest.json beside it records (size or SHA-256 "
        "differ): the folder mixes files of different runs; re-run recformer-process-finetune"
    )


def test_a_folder_of_the_original_scripts_loads_unchanged(tmp_path):
    """No manifest, no marker (as the original code and the first release wrote them): read as it is."""
    golden = Path(__file__).resolve().parents[1] / "fixtures" / "processed_golden" / "finetune"
    folder = tmp_path / "Tiny"
    shutil.copytree(golden, folder)
    data = load_finetune_data(folder)
    assert (data.train, data.val, data.test) == (
        EXPECTED["train.json"],
        EXPECTED["val.json"],
        EXPECTED["test.json"],
    )
