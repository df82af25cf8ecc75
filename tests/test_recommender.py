"""Recommender: top-k equals the loaded encoder's cosine ranking, cold start, add_items, save/load, refusals."""

from __future__ import annotations

import errno
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import recformer.inference.evaluation as evaluation_module
import recformer.runtime as runtime_module
from recformer import RecformerModel, RecformerTokenizer, Recommender, load_checkpoint
from recformer.inference.index_files import IndexMismatch
from recformer.inference.inputs import InputError, read_items
from recformer.inference.recommender import UnknownItemError
from recformer.io.folders import OutputPathError
from recformer.metrics import NonFiniteScores

from .finetune_fixtures import finetune_config, make_dataset, make_model_folder, make_pretrained_checkpoint

CPU = dict(device="cpu", progress=False)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("rec")
    data = make_dataset(root)
    return {
        "root": root,
        "model": make_model_folder(root),
        "ckpt": make_pretrained_checkpoint(root),
        "meta_path": data / "meta_data.json",
        "meta": json.loads((data / "meta_data.json").read_text()),
    }


@pytest.fixture(scope="module")
def rec(assets) -> Recommender:
    return Recommender.from_pretrained(assets["ckpt"], assets["meta_path"], assets["model"], **CPU)


def build(assets, items=None, **kwargs) -> Recommender:
    return Recommender.from_pretrained(assets["ckpt"], items or assets["meta_path"], assets["model"], **{**CPU, **kwargs})


def ids(results):
    return [[item for item, _ in row] for row in results]


def reference_scores(assets, histories) -> tuple[list[str], torch.Tensor]:
    """Cosine / temperature of each history against every item, straight from the loaded encoder."""
    config = finetune_config()
    tokenizer = RecformerTokenizer.from_pretrained(str(assets["model"]), config)
    encoder = RecformerModel(config).eval()
    load_checkpoint(encoder, assets["ckpt"])
    meta = assets["meta"]
    with torch.no_grad():
        items = encoder(**tokenizer([[attrs] for attrs in meta.values()], return_tensor=True)).pooler_output
        seqs = [[meta[e] if isinstance(e, str) else e for e in h] for h in histories]
        pooled = encoder(**tokenizer(seqs, return_tensor=True)).pooler_output
    return list(meta), F.cosine_similarity(pooled[:, None], items[None], dim=-1) / config.temp


HISTORIES = [["B000000001", "B000000002", "B000000003"], ["B000000010"], ["B000000007", "B000000020", "B000000007"]]


@pytest.mark.parametrize("exclude", [True, False])
def test_recommend_is_the_cosine_ranking_of_the_loaded_encoder(rec, assets, exclude):
    names, scores = reference_scores(assets, HISTORIES)
    if exclude:
        for b, history in enumerate(HISTORIES):
            scores[b, [names.index(i) for i in history]] = float("-inf")
    got = rec.recommend(HISTORIES, k=5, exclude_history=exclude)
    for b, row in enumerate(got):
        values, order = scores[b].sort(descending=True, stable=True)
        assert [item for item, _ in row] == [names[i] for i in order[:5]]
        assert [s for _, s in row] == pytest.approx(values[:5].tolist(), abs=1e-4)
        if exclude:
            assert not set(HISTORIES[b]) & {item for item, _ in row}
    kept = ids(rec.recommend(HISTORIES, k=30, exclude_history=False))
    assert any(set(h) & set(row[:5]) for h, row in zip(HISTORIES, kept))  # excluding made a difference


def test_cold_start_attribute_dicts_encode_as_their_items(rec, assets):
    meta = assets["meta"]
    by_id = rec.recommend([["B000000001", "B000000002"]], k=6, exclude_history=False)
    by_text = rec.recommend([["B000000001", dict(meta["B000000002"])]], k=6, exclude_history=False)
    assert by_text == by_id
    # an attribute dict is not an item of the index: it is not excluded, its id is
    excluded = ids(rec.recommend([["B000000001", "B000000002"]], k=29))[0]
    as_dict = ids(rec.recommend([["B000000001", dict(meta["B000000002"])]], k=29))[0]
    assert "B000000002" not in excluded and "B000000002" in as_dict
    names, scores = reference_scores(assets, [[{"title": "warm wool sock", "brand": "new brand"}]])
    got = rec.recommend([[{"title": "warm wool sock", "brand": "new brand"}]], k=3)[0]
    assert [i for i, _ in got] == [names[j] for j in scores[0].sort(descending=True, stable=True).indices[:3]]


def test_candidates_restrict_the_choice(rec):
    pool = ["B000000005", "B000000009", "B000000011", "B000000001", "B000000013"]
    full = ids(rec.recommend(HISTORIES, k=30))
    got = ids(rec.recommend(HISTORIES, k=3, candidates=pool))
    for row, everything in zip(got, full):
        assert row == [i for i in everything if i in pool][:3]
    per_history = [["B000000011", "B000000012"], ["B000000010", "B000000004"], ["B000000025"]]
    got = ids(rec.recommend(HISTORIES, k=3, candidates=per_history))
    assert got == [[i for i in everything if i in cands][:3] for everything, cands in zip(full, per_history)]
    assert got[1] == ["B000000004"]  # B000000010 is in that history


def test_bad_calls_are_refused_with_the_reason(rec, caplog):
    with pytest.raises(UnknownItemError, match=r"history 1, item 1: unknown item id 'NOPE' \(not in the index of 30 items"):
        rec.recommend([["B000000001"], ["B000000002", "NOPE"]])
    with pytest.raises(UnknownItemError, match=r"candidates: unknown item id 'X1'"):
        rec.recommend([["B000000001"]], candidates=["B000000002", "X1"])
    with pytest.raises(ValueError, match=r"history 1: expected a non-empty list of item ids or attribute dicts"):
        rec.recommend([["B000000001"], []])
    with pytest.raises(TypeError, match="histories must be a list of histories"):
        rec.recommend("B000000001")
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        rec.recommend([["B000000001"]], k=0)
    with caplog.at_level(logging.WARNING, logger="recformer.inference.recommender"):
        got = rec.recommend([["B000000001", "B000000002"]], k=100)
    assert "k=100 is larger than the catalogue (30 items): returning at most 30 per history" in caplog.text
    assert len(got[0]) == 28 and len(set(ids(got)[0])) == 28


def test_unknown_attention_is_refused_with_the_valid_names(assets):
    with pytest.raises(ValueError, match=r"^unknown attn_implementation 'fast'; valid names: auto, eager, sdpa, flex_attention$"):
        build(assets, attn_implementation="fast")


def test_every_attention_implementation_gives_the_same_recommendations(assets):
    histories = [["B000000001", "B000000002"], ["B000000003"], ["B000000004", "B000000001", "B000000007"]]
    eager = build(assets, attn_implementation="eager", batch_size=2)
    assert eager.model.config._attn_implementation == "eager"
    expected = eager.encode_histories(histories)
    for name in ("sdpa", "flex_attention", "auto"):
        rec = build(assets, attn_implementation=name)
        assert rec.model.config._attn_implementation == name
        torch.testing.assert_close(rec.vectors, eager.vectors, atol=1e-5, rtol=0)
        torch.testing.assert_close(rec.encode_histories(histories), expected, atol=1e-5, rtol=0)
        assert ids(rec.recommend(histories, k=5)) == ids(eager.recommend(histories, k=5))


class EncodeSpy:
    """Counts the items `encode_items` is asked to encode (directly, or sharded)."""

    def __init__(self, monkeypatch):
        self.calls: list[int] = []
        original = runtime_module.encode_items

        def spy(encoder, tokenizer, table, *args, **kwargs):
            self.calls.append(len(table))
            return original(encoder, tokenizer, table, *args, **kwargs)

        monkeypatch.setattr(runtime_module, "encode_items", spy)
        monkeypatch.setattr(evaluation_module, "encode_items", spy)


def test_add_items_encodes_only_new_and_changed_items(assets, monkeypatch):
    spy = EncodeSpy(monkeypatch)
    rec = build(assets, attn_implementation="eager")
    assert spy.calls == [30]
    before = rec.vectors.clone()
    assert rec.add_items(assets["meta_path"]) == (0, 0) and spy.calls == [30]  # nothing new: nothing encoded

    meta = assets["meta"]
    new = {"title": "purple velvet slipper", "brand": "never seen"}
    changed = {"title": "a completely different text", "brand": "zen"}
    update = {"B000000002": dict(meta["B000000002"]), "NEW1": new, "B000000001": changed}
    assert rec.add_items(update) == (1, 1)
    assert spy.calls == [30, 2]  # the new item and the changed one, nothing else
    assert len(rec) == 31 and rec.ids[-1] == "NEW1" and rec.ids[:30] == list(meta)
    unchanged = [i for i in range(30) if i != 1]
    assert torch.equal(rec.vectors[unchanged], before[unchanged])

    fresh = build(assets, {**meta, "B000000001": changed, "NEW1": new})  # everything encoded from scratch
    torch.testing.assert_close(rec.vectors, fresh.vectors, atol=1e-5, rtol=1e-5)
    for row in (0, 1, 2, 30):
        assert rec.items[row] == fresh.items[row]
    assert np.array_equal(rec.digests, fresh.digests)
    # cold start: a one-item history is encoded exactly as the item, so the new item ranks first (cosine 1)
    (top, score), *_ = rec.recommend([[new]], k=3)[0]
    assert top == "NEW1" and score == pytest.approx(1 / finetune_config().temp, rel=1e-5)
    assert "NEW1" in ids(rec.recommend([["B000000003"]], k=31))[0]


def test_save_and_load_round_trip_without_catalogue_or_checkpoint(assets, tmp_path):
    ckpt = Path(shutil.copy(assets["ckpt"], tmp_path / "ckpt.bin"))
    meta = Path(shutil.copy(assets["meta_path"], tmp_path / "meta_data.json"))
    rec = Recommender.from_pretrained(ckpt, meta, assets["model"], **CPU)
    expected = rec.recommend(HISTORIES, k=5)
    rec.save(tmp_path / "index")
    rec.save(tmp_path / "index16", dtype="float16")
    ckpt.unlink()
    meta.unlink()

    loaded = Recommender.load(tmp_path / "index", **CPU)
    assert torch.equal(loaded.vectors, rec.vectors)
    assert loaded.ids == rec.ids and np.array_equal(loaded.digests, rec.digests)
    assert all(loaded.items[i] == rec.items[i] for i in range(len(rec)))
    assert loaded.fingerprint == rec.fingerprint
    assert loaded.recommend(HISTORIES, k=5) == expected

    half = Recommender.load(tmp_path / "index16", **CPU)
    assert half.vectors.dtype == torch.float32
    torch.testing.assert_close(half.vectors, rec.vectors, rtol=1e-3, atol=1e-3)
    got = half.recommend(HISTORIES, k=5)
    assert ids(got) == ids(expected)
    assert [s for row in got for _, s in row] == pytest.approx([s for row in expected for _, s in row], rel=2e-3)
    assert json.loads((tmp_path / "index16" / "index.json").read_text())["dtype"] == "float16"
    assert (tmp_path / "index16" / "index.safetensors").stat().st_size < (tmp_path / "index" / "index.safetensors").stat().st_size


def test_save_is_atomic(rec, tmp_path, monkeypatch):
    rec.save(tmp_path / "index")
    before = (tmp_path / "index" / "index.json").read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(rec.tokenizer), "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        rec.save(tmp_path / "index", dtype="float16")
    assert (tmp_path / "index" / "index.json").read_bytes() == before  # the old index is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]  # no temporary folder left
    with pytest.raises(OSError):
        rec.save(tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


def test_save_never_deletes_or_moves_what_recformer_did_not_write(rec, tmp_path):
    user = tmp_path / "thesis"
    user.mkdir()
    (user / "thesis.txt").write_text("years of work")
    (tmp_path / "notes.txt").write_text("notes")
    for path in (user, tmp_path / "notes.txt"):
        with pytest.raises(OutputPathError) as e:
            rec.save(path)
        assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)
    assert [p.name for p in user.iterdir()] == ["thesis.txt"] and (user / "thesis.txt").read_text() == "years of work"
    assert (tmp_path / "notes.txt").read_text() == "notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "thesis"]
    rec.save(tmp_path / "index")
    rec.save(tmp_path / "index", dtype="float16")  # an index recformer wrote is replaced
    assert Recommender.load(tmp_path / "index", **CPU).saved_dtype == "float16"


def test_concurrent_saves_of_different_orders_never_mix(assets, tmp_path):
    """Two indexes of one catalogue in different orders saved at once: the folder is one of them, whole."""
    import threading

    forward = build(assets)
    meta = assets["meta"]
    backward = build(assets, {k: meta[k] for k in reversed(list(meta))})
    start = threading.Barrier(2)
    errors = []

    def save(rec):
        start.wait()
        try:
            for _ in range(2):
                rec.save(tmp_path / "index")
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=save, args=(r,)) for r in (forward, backward)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    loaded = Recommender.load(tmp_path / "index", **CPU)
    source = forward if loaded.ids == forward.ids else backward
    assert loaded.ids == source.ids and torch.equal(loaded.vectors, source.vectors)  # ids and vectors agree
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


def test_an_index_save_on_a_full_disk_names_the_file(rec, tmp_path, monkeypatch):
    from recformer.io import fileio

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", no_space)
    with pytest.raises(OSError) as e:
        rec.save(tmp_path / "index")
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(tmp_path / "index" / "index.safetensors"))
    assert not (tmp_path / "index").exists()


def test_a_save_killed_between_its_renames_is_recovered_on_load(rec, tmp_path):
    rec.save(tmp_path / "index")
    (tmp_path / "index").rename(tmp_path / ".index.old")  # what a kill between the two renames leaves
    (tmp_path / ".index.a1b2c3.tmp").mkdir()
    loaded = Recommender.load(tmp_path / "index", **CPU)
    assert loaded.ids == rec.ids
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


def test_batch_size_numpy_k_and_empty_items_are_checked(rec, assets, tmp_path):
    rec.save(tmp_path / "index")
    for bad in (-3, 0, 2.5, True):
        with pytest.raises(ValueError, match=rf"^batch_size must be an integer >= 1 or None, got {bad!r}$"):
            Recommender.load(tmp_path / "index", **{**CPU, "batch_size": bad})
        with pytest.raises(ValueError, match="^batch_size must be"):
            build(assets, batch_size=bad)
    assert rec.recommend(HISTORIES, k=np.int64(3)) == rec.recommend(HISTORIES, k=3)
    with pytest.raises(InputError, match=r"^items: expected a catalogue file path or a dict id -> \{attribute: text\}, got list \[\]$"):
        Recommender.from_pretrained(assets["ckpt"], [], assets["model"], **CPU)
    with pytest.raises(InputError, match=r"^items: the catalogue is empty$"):
        rec.add_items({})


def test_add_items_refuses_a_lone_surrogate_at_once(assets):
    rec = build(assets)
    for items in ({"N1": {"title": "bad \ud800 text"}}, {"N\udc00": {"title": "fine"}}):
        with pytest.raises(InputError, match=r"^items: item .*: the id or a text is not valid Unicode \(a lone surrogate"):
            rec.add_items(items)
    assert len(rec) == 30


def test_an_index_without_its_config_is_named(rec, tmp_path):
    rec.save(tmp_path / "index")
    (tmp_path / "index" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=rf"^{tmp_path / 'index' / 'config.json'}: missing from the saved index"):
        Recommender.load(tmp_path / "index", **CPU)


def test_load_refuses_another_checkpoint_tokenizer_or_fields(rec, assets, tmp_path):
    rec.save(tmp_path / "index")
    same = Recommender.load(tmp_path / "index", assets["ckpt"], assets["model"], {"max_attr_num": 3}, **CPU)
    assert same.recommend(HISTORIES[:1], k=3) == rec.recommend(HISTORIES[:1], k=3)

    wide = make_pretrained_checkpoint(tmp_path, hidden_size=48)
    with pytest.raises(IndexMismatch, match=rf"{wide} has hidden size 48, but the index in .*index has hidden size 32"):
        Recommender.load(tmp_path / "index", checkpoint=wide, **CPU)
    other = make_pretrained_checkpoint(tmp_path, seed=1)
    with pytest.raises(IndexMismatch, match=r"index was built with something else: the checkpoint differs \(index \w+, given \w+\)\.") as e:
        Recommender.load(tmp_path / "index", checkpoint=other, **CPU)
    assert "tokenizer" not in str(e.value) and "fields" not in str(e.value)

    folder = tmp_path / "other-tokenizer"
    shutil.copytree(assets["model"], folder)
    merges = (folder / "merges.txt").read_text().splitlines()
    (folder / "merges.txt").write_text("\n".join(merges[:-3]) + "\n")  # three merges fewer
    with pytest.raises(IndexMismatch, match=r"something else: the tokenizer differs \(index \w+, given \w+\)\.") as e:
        Recommender.load(tmp_path / "index", assets["ckpt"], folder, **CPU)
    assert "checkpoint differs" not in str(e.value)
    with pytest.raises(IndexMismatch, match=r"the Recformer fields differ \(max_attr_num: index 3, given 2\)"):
        Recommender.load(tmp_path / "index", fields={"max_attr_num": 2, "max_token_num": None}, **CPU)
    with pytest.raises(FileNotFoundError, match=r"not a saved Recformer index \(no index.json\)"):
        Recommender.load(tmp_path, **CPU)


def test_index_cache_is_reused(assets, tmp_path, monkeypatch):
    first = build(assets, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("item_table-*.pt"))) == 1
    spy = EncodeSpy(monkeypatch)
    again = build(assets, cache_dir=tmp_path)
    assert spy.calls == [] and torch.equal(again.vectors, first.vectors)
    build(assets, {**assets["meta"], "X": {"title": "one more"}}, cache_dir=tmp_path)  # other items: other key
    assert spy.calls == [31] and len(list(tmp_path.glob("item_table-*.pt"))) == 2


def test_catalogue_forms_and_checkpoint_forms_agree(rec, assets, tmp_path):
    meta = assets["meta"]
    lines = tmp_path / "items.jsonl"
    lines.write_text("\n".join(json.dumps({"id": k, **v}) for k, v in meta.items()) + "\n\n")
    for source in (lines, meta):
        other = build(assets, source)
        assert other.ids == rec.ids and torch.equal(other.vectors, rec.vectors)
    # a save_pretrained folder (config + tokenizer inside) needs no model_name_or_path
    state = torch.load(assets["ckpt"])
    encoder = RecformerModel(finetune_config())
    load_checkpoint(encoder, state)
    encoder.save_pretrained(tmp_path / "folder")
    RecformerTokenizer.from_pretrained(str(assets["model"]), encoder.config).save_pretrained(str(tmp_path / "folder"))
    from_folder = Recommender.from_pretrained(tmp_path / "folder", meta, **CPU)
    torch.testing.assert_close(from_folder.vectors, rec.vectors)
    # a finetuned best_model.bin: its own item table is not the index; the catalogue's items are
    finetuned = {**state, "item_embedding.weight": torch.randn(7, 32)}
    torch.save({k: v for k, v in finetuned.items() if not k.startswith("lm_head.")}, tmp_path / "best_model.bin")
    fine = Recommender.from_pretrained(tmp_path / "best_model.bin", meta, assets["model"], **CPU)
    assert len(fine) == 30 and torch.equal(fine.vectors, rec.vectors)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("items.jsonl", '{"id": "A", "title": "x"}\nnot json\n', r"items.jsonl line 2: not valid JSON"),
        ("items.jsonl", '{"title": "x"}\n', r'items.jsonl line 1: expected an object with an "id" key'),
        ("items.jsonl", '{"id": "A"}\n{"id": "B"}\n{"id": "A", "t": "y"}\n', r"items.jsonl line 3: item id 'A' repeats line 1"),
        ("items.jsonl", '{"id": true, "title": "x"}\n', r"items.jsonl line 1: an item id must be a string or an integer, got bool"),
        ("items.jsonl", '{"id": "A", "title": "x"}\n[1, 2]\n', r'items.jsonl line 2: expected an object with an "id" key'),
        ("meta.json", '{"A": {"title": "x"}, "B": "just text"}', r"meta.json: item 'B': expected a dict of attribute -> text, got str"),
        ("meta.json", '[{"A": 1}]', r"meta.json: expected an object \{id: \{attribute: text\}\} or JSON lines, got a JSON list"),
        ("meta.json", "", r"meta.json: the catalogue is empty"),
        ("meta.json", '{"A": {"title": "x"}, "A": {"title": "y"}}', r"meta.json: key 'A' appears twice in one JSON object$"),
        ("meta.json", '{"A": {"title": "x", "title": "y"}}', r"meta.json: key 'title' appears twice in one JSON object$"),
        ("items.jsonl", '{"id": "A", "title": "x"}\n{"id": "B", "id": "C"}\n',
         r"items.jsonl line 2: key 'id' appears twice in one JSON object$"),
    ],
)
def test_bad_catalogues_name_the_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(InputError, match=message):
        read_items(tmp_path / name)


def test_catalogue_ids_and_forms(tmp_path):
    (tmp_path / "one.json").write_text('{"id": 7, "title": "one item, JSON lines"}\n')
    assert read_items(tmp_path / "one.json") == (["7"], [{"title": "one item, JSON lines"}])
    (tmp_path / "meta.json").write_text('{"id": {"title": "an item whose id is id"}}')
    assert read_items(tmp_path / "meta.json") == (["id"], [{"title": "an item whose id is id"}])
    with pytest.raises(InputError, match=r"items: item id '1' appears twice"):
        read_items({1: {"t": "a"}, "1": {"t": "b"}})
    with pytest.raises(FileNotFoundError, match=r"missing.json: file not found"):
        read_items(tmp_path / "missing.json")


def test_model_sources_one_rule_for_every_command(tmp_path):
    """--model_name_or_path; else the checkpoint's own (save_pretrained folder, or a run folder's model);
    else the default Longformer."""
    from recformer.model.configuration import DEFAULT_MODEL
    from recformer.runtime import model_sources

    released = tmp_path / "pretrain_ckpt" / "recformer_seqrec_ckpt.bin"
    released.parent.mkdir()
    released.write_bytes(b"weights")
    assert model_sources(released, None) == (DEFAULT_MODEL, DEFAULT_MODEL)
    assert model_sources(released, "models/mine") == ("models/mine", "models/mine")
    run = tmp_path / "run"
    run.mkdir()
    (run / "best_model.bin").write_bytes(b"weights")
    (run / "args.json").write_text(json.dumps({"model_name_or_path": "models/longformer-small"}))
    assert model_sources(run / "best_model.bin", None) == ("models/longformer-small", "models/longformer-small")
    (run / "best_model").mkdir()
    (run / "best_model" / "config.json").write_text("{}")
    (run / "best_model" / "vocab.json").write_text("{}")
    best = str(run / "best_model")
    assert model_sources(run / "best_model.bin", None) == (best, best)
    assert model_sources(run / "best_model", None) == (best, best)  # the save_pretrained folder itself
    (run / "args.json").write_text(json.dumps({"model_name_or_path": None}))
    (run / "best_model" / "config.json").unlink()
    assert model_sources(run / "best_model.bin", None) == (DEFAULT_MODEL, DEFAULT_MODEL)


def nan_checkpoint(assets, folder: Path) -> Path:
    """The tiny checkpoint with NaN word embeddings: every vector the encoder gives is NaN."""
    state = torch.load(assets["ckpt"], weights_only=True)
    state["longformer.embeddings.word_embeddings.weight"] = torch.full_like(state["longformer.embeddings.word_embeddings.weight"], float("nan"))
    path = folder / "nan.bin"
    torch.save(state, path)
    return path


def test_non_finite_item_and_history_vectors_are_refused(assets, tmp_path):
    with pytest.raises(NonFiniteScores, match=r"^index: 30 of 30 item vectors are not finite \(items 'B000000000', "
                                              r"'B000000001', 'B000000002', 'B000000003', 'B000000004' and 25 more\)"):
        Recommender.from_pretrained(nan_checkpoint(assets, tmp_path), assets["meta_path"], assets["model"], **CPU)

    rec = build(assets)
    before = rec.vectors.clone()
    with torch.no_grad():
        rec.model.longformer.embeddings.word_embeddings.weight.fill_(float("nan"))  # the encoder breaks
    with pytest.raises(NonFiniteScores, match=r"^add_items: 1 of 1 item vectors are not finite \(items 'NEW'\)"):
        rec.add_items({"NEW": {"title": "new"}})
    assert len(rec) == 30 and torch.equal(rec.vectors, before)  # the index is untouched
    with pytest.raises(NonFiniteScores, match=r"^2 of 2 history vectors are not finite \(rows 0, 1\)"):
        rec.recommend([["B000000001"], [{"title": "cold"}]], k=3)
