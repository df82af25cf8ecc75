"""A saved index folder is checked against itself on load: every tampering is refused in one line naming the
file and what is wrong, and the untouched folder loads."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from recformer import RecformerTokenizer, Recommender
from recformer.inference.index_files import BrokenIndex, IndexMismatch
from recformer.metrics import NonFiniteScores
from recformer.model.tokenization import TokenizerError

from .finetune_fixtures import make_dataset, make_model_folder, make_pretrained_checkpoint

CPU = dict(device="cpu", progress=False)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tamper")
    data = make_dataset(root)
    model = make_model_folder(root)
    rec = Recommender.from_pretrained(make_pretrained_checkpoint(root), data / "meta_data.json", model, **CPU)
    rec.save(root / "index")
    return root / "index"


def edit_meta(change):
    def tamper(folder: Path) -> None:
        meta = json.loads((folder / "index.json").read_text())
        (folder / "index.json").write_text(json.dumps(change(meta)))

    return tamper


def edit_tensors(change):
    """Rewrite index.safetensors with `change(tensors)` applied, keeping the metadata it was saved with."""

    def tamper(folder: Path) -> None:
        file = str(folder / "index.safetensors")
        with safe_open(file, framework="pt") as f:
            tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
        save_file(change(tensors), file, metadata=metadata)

    return tamper


def swap_ids(meta):
    meta["ids"][3], meta["ids"][4] = meta["ids"][4], meta["ids"][3]
    return meta


def shorten_ids(meta):
    meta["ids"].pop()
    meta["num_items"] -= 1
    return meta


def duplicate_id(meta):
    meta["ids"][5] = meta["ids"][1]
    return meta


def without(key):
    def change(d):
        d.pop(key)
        return d

    return change


def fingerprint(change):
    def edit(meta):
        meta["fingerprint"] = change(meta["fingerprint"])
        return meta

    return edit


def set_tensor(name, value):
    def change(tensors):
        tensors[name] = value(tensors[name])
        return tensors

    return change


def foreign_tokenizer(folder: Path) -> None:
    """The tiny tokenizer with its last three merges dropped, saved over the index's own."""
    other = folder.parent / "other-tokenizer"
    shutil.copytree(folder.parent / "longformer-tiny", other, dirs_exist_ok=True)
    merges = (other / "merges.txt").read_text().splitlines()
    (other / "merges.txt").write_text("\n".join(merges[:-3]) + "\n")
    RecformerTokenizer.from_pretrained(str(other)).save_pretrained(str(folder))


def truncate(name, keep):
    def tamper(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: keep(len(data))])

    return tamper


def overwrite(name, content: bytes):
    def tamper(folder: Path) -> None:
        (folder / name).write_bytes(content)

    return tamper


def delete(name):
    def tamper(folder: Path) -> None:
        (folder / name).unlink()

    return tamper


def falling_offsets(offsets):
    offsets = offsets.clone()
    offsets[5] = offsets[7] + 1
    return offsets


def out_of_range(ids):
    ids = ids.clone()
    ids[10] = 9999
    return ids


def nan_row(vectors):
    vectors = vectors.clone()
    vectors[2, 0] = float("nan")
    return vectors


SAFETENSORS = r"index\.safetensors: "
CASES = {
    # the ids against the vectors
    "reordered ids": (edit_meta(swap_ids), BrokenIndex,
                      SAFETENSORS + r"the ids in index.json are not those its vectors were saved with \(reordered or replaced"),
    "shortened ids": (edit_meta(shorten_ids), BrokenIndex, SAFETENSORS + r"30 item vectors, but index.json lists 29 ids"),
    "ids shorter than num_items": (edit_meta(lambda m: {**m, "ids": m["ids"][:-1]}), BrokenIndex,
                                   r"index\.json: 29 ids, but num_items is 30"),
    "duplicated id": (edit_meta(duplicate_id), BrokenIndex,
                      r"index\.json: id 'B000000001' appears twice \(rows 1 and 5\)"),
    "ids not strings": (edit_meta(lambda m: {**m, "ids": list(range(30))}), BrokenIndex,
                        r"index\.json: ids must be a list of strings"),
    # the tokenizer against the fingerprint
    "deleted tokenizer.json": (delete("tokenizer.json"), TokenizerError, r"no tokenizer files"),
    "foreign tokenizer.json": (foreign_tokenizer, BrokenIndex,
                               r"its tokenizer files are not the tokenizer the index was built with \(hash \w+, "
                               r"index.json records \w+\)"),
    # index.json
    "index.json a list": (overwrite("index.json", b"[1, 2]"), BrokenIndex, r"index\.json: expected a JSON object, got list"),
    "index.json not JSON": (overwrite("index.json", b"{\"format\": 1,"), ValueError, r"index\.json"),
    "index.json without ids": (edit_meta(without("ids")), BrokenIndex, r"index\.json: missing keys 'ids'"),
    "fingerprint key missing": (edit_meta(fingerprint(without("tokenizer"))), BrokenIndex,
                                r"index\.json: fingerprint: missing keys 'tokenizer' \(expected exactly "
                                r"'checkpoint', 'tokenizer', 'fields'\)"),
    "fingerprint key extra": (edit_meta(fingerprint(lambda f: {**f, "seed": 1})), BrokenIndex,
                              r"index\.json: fingerprint: unexpected keys 'seed'"),
    "fingerprint not an object": (edit_meta(lambda m: {**m, "fingerprint": "abc"}), BrokenIndex,
                                  r"fingerprint must be a JSON object, got str"),
    "bad dtype": (edit_meta(lambda m: {**m, "dtype": "int8"}), BrokenIndex, r"dtype must be 'float32' or 'float16'"),
    "other format": (edit_meta(lambda m: {**m, "format": 2}), IndexMismatch, r"index\.json: index format 2, expected 1"),
    # index.safetensors
    "truncated safetensors": (truncate("index.safetensors", lambda n: n // 2), BrokenIndex,
                              SAFETENSORS + r"cannot be read \(\w+: .*\); the file is truncated or damaged"),
    "safetensors header only": (truncate("index.safetensors", lambda n: 4), BrokenIndex, SAFETENSORS + r"cannot be read"),
    "garbage safetensors": (overwrite("index.safetensors", b"\xff" * 64), BrokenIndex, SAFETENSORS + r"cannot be read"),
    "deleted safetensors": (delete("index.safetensors"), BrokenIndex, SAFETENSORS + r"missing"),
    "no vectors": (edit_tensors(without("vectors")), BrokenIndex, SAFETENSORS + r"no 'vectors' tensor"),
    "no offsets and digests": (edit_tensors(lambda t: {k: v for k, v in t.items() if k not in ("token_offsets", "item_digests")}),
                               BrokenIndex, SAFETENSORS + r"no 'token_offsets', 'item_digests' tensors"),
    "vectors of another width": (edit_tensors(set_tensor("vectors", lambda v: v[:, :16].contiguous())), BrokenIndex,
                                 SAFETENSORS + r"vectors of size 16, but index.json says hidden_size 32"),
    "vectors 1-D": (edit_tensors(set_tensor("vectors", lambda v: v.flatten())), BrokenIndex,
                    SAFETENSORS + r"vectors must be a 2-D float tensor"),
    "falling offsets": (edit_tensors(set_tensor("token_offsets", falling_offsets)), BrokenIndex,
                        SAFETENSORS + r"token_offsets must rise from 0 to the \d+ tokens, got 0\.\.\d+ falling at item"),
    "offsets past the tokens": (edit_tensors(set_tensor("token_offsets", lambda o: o + 3)), BrokenIndex,
                                SAFETENSORS + r"token_offsets must rise from 0 to the \d+ tokens, got 3\.\."),
    "offsets one short": (edit_tensors(set_tensor("token_offsets", lambda o: o[:-1].contiguous())), BrokenIndex,
                          SAFETENSORS + r"token_offsets must be 31 integers"),
    "token ids out of range": (edit_tensors(set_tensor("token_ids", out_of_range)), BrokenIndex,
                               SAFETENSORS + r"token_ids must be in \[0, 275\) \(the encoder's vocab_size\), got \d+\.\.9999"),
    "negative token ids": (edit_tensors(set_tensor("token_ids", lambda t: t - 300)), BrokenIndex,
                           SAFETENSORS + r"token_ids must be in \[0, 275\)"),
    "bad token types": (edit_tensors(set_tensor("token_types", lambda t: t * 3)), BrokenIndex,
                        SAFETENSORS + r"token_types must be 1 \(attribute name\) or 2 \(value\)"),
    "token types of another length": (edit_tensors(set_tensor("token_types", lambda t: t[:-1].contiguous())), BrokenIndex,
                                      SAFETENSORS + r"token_ids and token_types must be 1-D integer tensors of one length"),
    "digests of another shape": (edit_tensors(set_tensor("item_digests", lambda d: d[:-1].contiguous())), BrokenIndex,
                                 SAFETENSORS + r"item_digests must be uint8 \[30, 8\]"),
    "NaN vector": (edit_tensors(set_tensor("vectors", nan_row)), NonFiniteScores,
                   SAFETENSORS + r"1 of 30 item vectors are not finite \(items 'B000000002'\)"),
    "infinite vector": (edit_tensors(set_tensor("vectors", lambda v: v.index_fill(0, torch.tensor([4, 9]), float("inf")))),
                        NonFiniteScores, SAFETENSORS + r"2 of 30 item vectors are not finite \(items 'B000000004', 'B000000009'\)"),
}  # fmt: skip


def test_the_untouched_index_loads(saved, tmp_path):
    folder = shutil.copytree(saved, tmp_path / "index")
    assert len(Recommender.load(folder, **CPU)) == 30


@pytest.mark.parametrize("case", list(CASES))
def test_a_tampered_index_is_refused_in_one_line(saved, tmp_path, case):
    tamper, error, message = CASES[case]
    folder = shutil.copytree(saved, tmp_path / "index")
    shutil.copytree(saved.parent / "longformer-tiny", tmp_path / "longformer-tiny")
    tamper(folder)
    with pytest.raises(error) as raised:
        Recommender.load(folder, **CPU)
    text = str(raised.value)
    assert "\n" not in text, text
    assert str(folder) in text, text
    assert re.search(message, text), text
    # the command-line tools catch it and print this one line
    assert isinstance(raised.value, (ValueError, OSError, NonFiniteScores))
