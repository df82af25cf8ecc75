"""recommend.py end to end: output format and order, index reuse, every bad-input case, atomic output."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import recformer.runtime as runtime_module
from recformer import Recommender
from recformer.cli import recommend as recommend_cli

from .finetune_fixtures import make_dataset, make_model_folder, make_pretrained_checkpoint

ROOT = Path(__file__).resolve().parents[1]
USERS = [
    {"user": "u1", "history": ["B000000001", "B000000002"]},
    {"user": "u2", "history": ["B000000005", {"title": "red shoe", "brand": "acme"}]},
    {"user": 3, "history": ["B000000009", "B000000009", "B000000011"]},
]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("reccli")
    data = make_dataset(root)
    return {"model": make_model_folder(root), "ckpt": make_pretrained_checkpoint(root), "meta": data / "meta_data.json"}


@pytest.fixture(scope="module")
def rec(assets):
    return Recommender.from_pretrained(assets["ckpt"], assets["meta"], assets["model"], device="cpu", progress=False)


def write_input(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def argv(assets, inp: Path, out: Path, *extra: str, ckpt=True, items=True) -> list[str]:
    args = ["--input", str(inp), "--output", str(out), "--device", "cpu", "--no_progress", "--model_name_or_path",
            str(assets["model"]), *extra]  # fmt: skip
    if ckpt:
        args += ["--ckpt", str(assets["ckpt"])]
    if items:
        args += ["--items", str(assets["meta"])]
    return args


def run(args, capsys) -> tuple[int, str, str]:
    code = recommend_cli.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_output(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("keep", [False, True])
def test_end_to_end_output_in_input_order(assets, rec, tmp_path, capsys, keep):
    inp, out = write_input(tmp_path / "in.jsonl", USERS), tmp_path / "recs.jsonl"
    code, stdout, err = run(argv(assets, inp, out, "--k", "4", *(["--keep_history"] if keep else [])), capsys)
    assert code == 0, err
    rows = read_output(out)
    assert [r["user"] for r in rows] == ["u1", "u2", 3]
    expected = rec.recommend([u["history"] for u in USERS], k=4, exclude_history=not keep)
    for row, want, user in zip(rows, expected, USERS):
        assert set(row) == {"user", "items", "scores"}
        assert row["items"] == [i for i, _ in want]
        assert row["scores"] == pytest.approx([s for _, s in want], abs=1e-5)
        assert row["scores"] == sorted(row["scores"], reverse=True)
        if not keep:
            assert not set(row["items"]) & {h for h in user["history"] if isinstance(h, str)}
    assert "3 users, 30 items, top 4" in stdout and f"output: {out}" in stdout


def test_with_text_adds_each_recommended_items_text(assets, rec, tmp_path, capsys):
    inp, out = write_input(tmp_path / "in.jsonl", USERS), tmp_path / "recs.jsonl"
    code, _, err = run(argv(assets, inp, out, "--k", "3", "--with_text"), capsys)
    assert code == 0, err
    meta = json.loads(assets["meta"].read_text())
    plain = recommend_cli.main(argv(assets, inp, tmp_path / "plain.jsonl", "--k", "3"))
    assert plain == 0
    for row, same in zip(read_output(out), read_output(tmp_path / "plain.jsonl")):
        assert list(row) == ["user", "items", "scores", "texts"]
        assert (row["items"], row["scores"]) == (same["items"], same["scores"])  # only the texts are added
        assert row["texts"] == [" | ".join(v for v in meta[i].values() if v) for i in row["items"]]


def test_with_text_is_null_for_an_index_item_that_items_lacks(assets, tmp_path, capsys):
    inp, out, index = write_input(tmp_path / "in.jsonl", USERS[:1]), tmp_path / "recs.jsonl", tmp_path / "index"
    assert run(argv(assets, inp, out, "--index_dir", str(index)), capsys)[0] == 0
    meta = json.loads(assets["meta"].read_text())
    some = dict(list(meta.items())[:3])
    catalogue = tmp_path / "some.jsonl"
    catalogue.write_text("".join(json.dumps({"id": k, **v}) + "\n" for k, v in some.items()))
    extra = argv(assets, inp, out, "--index_dir", str(index), "--k", "30", "--with_text", items=False)
    code, _, err = run([*extra, "--items", str(catalogue)], capsys)
    assert code == 0, err
    row = read_output(out)[0]
    assert len(row["items"]) == 28  # 30 items, 2 in the history
    for item, text in zip(row["items"], row["texts"]):
        assert text == (" | ".join(v for v in some[item].values() if v) if item in some else None), item


def test_with_text_needs_the_catalogue(assets, tmp_path, capsys):
    inp, out = write_input(tmp_path / "in.jsonl", USERS), tmp_path / "recs.jsonl"
    code, _, err = run(argv(assets, inp, out, "--index_dir", str(tmp_path / "i"), "--with_text", items=False), capsys)
    assert code == 2 and err == "error: --with_text needs --items (the catalogue that holds the item texts)\n"
    assert not out.exists()


def test_compile_reaches_the_encoder(assets, tmp_path, capsys, monkeypatch):
    from recformer.model.modeling import RecformerModel

    compiled = []
    monkeypatch.setattr(RecformerModel, "compile", lambda self, *a, **k: compiled.append(type(self).__name__))
    inp, out, index = write_input(tmp_path / "in.jsonl", USERS), tmp_path / "recs.jsonl", tmp_path / "index"
    for _ in range(2):  # a new index, then the saved one
        code, _, err = run(argv(assets, inp, out, "--index_dir", str(index), "--compile"), capsys)
        assert code == 0, err
    assert compiled == ["RecformerModel", "RecformerModel"]


def test_index_dir_is_written_then_reused_and_extended(assets, tmp_path, capsys, monkeypatch):
    inp, out, index = write_input(tmp_path / "in.jsonl", USERS), tmp_path / "recs.jsonl", tmp_path / "index"
    code, stdout, err = run(argv(assets, inp, out, "--index_dir", str(index), "--index_dtype", "float16"), capsys)
    assert code == 0, err
    assert f"index written to {index}" in stdout
    first = read_output(out)

    meta = json.loads(assets["meta"].read_text())
    meta["B000000003"] = {"title": "rewritten text", "brand": "other"}
    catalogue = tmp_path / "items.jsonl"
    catalogue.write_text("".join(json.dumps({"id": k, **v}) + "\n" for k, v in [*meta.items(), ("NEW1", {"title": "wool hat"})]))
    encoded = []
    original = runtime_module.encode_items
    monkeypatch.setattr(runtime_module, "encode_items", lambda enc, tok, table, *a, **kw: encoded.append(len(table)) or original(enc, tok, table, *a, **kw))
    monkeypatch.setattr(Recommender, "from_pretrained", lambda *a, **kw: pytest.fail("the saved index was not reused"))
    extra = argv(assets, inp, out, "--index_dir", str(index), items=False) + ["--items", str(catalogue)]
    code, stdout, err = run(extra, capsys)
    assert code == 0, err
    assert encoded == [2] and "(1 items added, 1 re-encoded)" in stdout
    saved = json.loads((index / "index.json").read_text())
    assert saved["num_items"] == 31 and saved["ids"][-1] == "NEW1" and saved["dtype"] == "float16"  # kept

    # the index alone (no checkpoint, no catalogue) serves histories that use the new id
    write_input(inp, [*USERS, {"user": "new", "history": ["NEW1"]}])
    code, stdout, err = run(argv(assets, inp, out, "--index_dir", str(index), "--k", "31", ckpt=False, items=False), capsys)
    assert code == 0, err
    assert encoded == [2] and f"index {index}" in stdout
    rows = read_output(out)
    assert len(rows) == 4 and "NEW1" in rows[0]["items"] and "NEW1" not in rows[3]["items"] and len(rows[3]["items"]) == 30
    assert rows[0]["items"] != first[0]["items"] or rows[0]["scores"] != first[0]["scores"]


@pytest.mark.parametrize(
    "lines, message",
    [
        ([USERS[0], "{not json"], r"in.jsonl line 2: not valid JSON"),
        ([{"user": "a"}], r'in.jsonl line 1: no "history" key'),
        ([USERS[0], {"user": "a", "history": []}], r'in.jsonl line 2: "history" is empty'),
        ([{"user": "a", "history": "B000000001"}], r'in.jsonl line 1: "history" must be a list'),
        ([["B000000001"]], r'in.jsonl line 1: expected an object \{"user": ..., "history": \[...\]\}, got list'),
        ([{"user": "a", "history": ["B000000001", 1.5]}], r"in.jsonl line 1, history item 1: an item id must be a string or an integer, got float"),
        ([USERS[0], {"user": "b", "history": ["B000000001", "NOPE"]}], r"in.jsonl line 2, history item 1: unknown item id 'NOPE'"),
        ([], r"in.jsonl: no histories \(the file is empty\)"),
        ([USERS[0], '{"user": "a", "history": ["B000000001"], "user": "b"}'], r"in.jsonl line 2: key 'user' appears twice in one JSON object"),
    ],
)
def test_bad_input_is_refused_naming_the_line_and_nothing_is_written(assets, tmp_path, capsys, lines, message):
    inp, out = write_input(tmp_path / "in.jsonl", lines), tmp_path / "out" / "recs.jsonl"
    code, _, err = run(argv(assets, inp, out), capsys)
    assert code == 2
    assert err.startswith("error: ") and re.search(message, err), err
    assert not out.exists() and (not out.parent.exists() or not any(out.parent.iterdir()))


def test_unknown_ids_can_be_skipped_and_are_counted(assets, tmp_path, capsys):
    lines = [USERS[0], {"user": "b", "history": ["NOPE", "B000000004", "ALSO_NOPE"]}, {"user": "c", "history": ["X"]}]
    inp, out = write_input(tmp_path / "in.jsonl", lines), tmp_path / "recs.jsonl"
    code, stdout, err = run(argv(assets, inp, out, "--on_unknown", "skip", "--k", "3"), capsys)
    assert code == 0, err
    rows = read_output(out)
    assert [len(r["items"]) for r in rows] == [3, 3, 0] and rows[2] == {"user": "c", "items": [], "scores": []}
    assert "3 unknown ids skipped, 1 users left with no item got none" in stdout
    code, stdout, _ = run(argv(assets, inp, tmp_path / "plain.jsonl", "--k", "3"), capsys)
    assert code == 2 and not (tmp_path / "plain.jsonl").exists()


def test_k_is_checked_and_clipped(assets, tmp_path, capsys, caplog):
    inp, out = write_input(tmp_path / "in.jsonl", USERS[:1]), tmp_path / "recs.jsonl"
    with pytest.raises(SystemExit) as exit_info:
        recommend_cli.main(argv(assets, inp, out, "--k", "0"))
    assert exit_info.value.code == 2 and "--k: must be >= 1, got 0" in capsys.readouterr().err
    with caplog.at_level(logging.WARNING):
        code, _, err = run(argv(assets, inp, out, "--k", "500"), capsys)
    assert code == 0, err
    assert "k=500 is larger than the catalogue (30 items)" in caplog.text
    assert len(read_output(out)[0]["items"]) == 28  # 30 items, 2 in the history
    assert "clipped to its size with a warning" in " ".join(recommend_cli.build_parser().format_help().split())


def test_index_from_another_checkpoint_is_refused(assets, tmp_path, capsys):
    inp, index = write_input(tmp_path / "in.jsonl", USERS), tmp_path / "index"
    assert run(argv(assets, inp, tmp_path / "a.jsonl", "--index_dir", str(index)), capsys)[0] == 0
    wide = make_pretrained_checkpoint(tmp_path, hidden_size=48)
    args = argv(assets, inp, tmp_path / "b.jsonl", "--index_dir", str(index), ckpt=False) + ["--ckpt", str(wide)]
    code, _, err = run(args, capsys)
    assert code == 2 and "has hidden size 48, but the index in" in err and "has hidden size 32" in err
    other = make_pretrained_checkpoint(tmp_path, seed=3)
    args = argv(assets, inp, tmp_path / "b.jsonl", "--index_dir", str(index), ckpt=False) + ["--ckpt", str(other)]
    code, _, err = run(args, capsys)
    assert code == 2 and "the checkpoint differs" in err and not (tmp_path / "b.jsonl").exists()
    (tmp_path / "not_an_index").mkdir()
    (tmp_path / "not_an_index" / "notes.txt").write_text("mine")
    code, _, err = run(argv(assets, inp, tmp_path / "c.jsonl", "--index_dir", str(tmp_path / "not_an_index")), capsys)
    assert code == 2 and "exists and is not a saved index" in err
    assert (tmp_path / "not_an_index" / "notes.txt").read_text() == "mine"


def test_nan_weights_or_a_nan_index_stop_with_one_line_and_no_output(assets, tmp_path, capsys):
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    inp = write_input(tmp_path / "in.jsonl", USERS)
    state = torch.load(assets["ckpt"], weights_only=True)
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, tmp_path / "nan.bin")
    args = argv(assets, inp, tmp_path / "a.jsonl", ckpt=False) + ["--ckpt", str(tmp_path / "nan.bin")]
    code, _, err = run(args, capsys)
    assert code == 2 and not (tmp_path / "a.jsonl").exists()
    assert err.startswith("error: index: 30 of 30 item vectors are not finite (items 'B000000000',") and err.count("\n") == 1

    index = tmp_path / "index"
    assert run(argv(assets, inp, tmp_path / "b.jsonl", "--index_dir", str(index)), capsys)[0] == 0
    with safe_open(str(index / "index.safetensors"), framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    tensors["vectors"][7, 3] = float("inf")
    save_file(tensors, str(index / "index.safetensors"), metadata=metadata)
    code, _, err = run(argv(assets, inp, tmp_path / "c.jsonl", "--index_dir", str(index), ckpt=False, items=False), capsys)
    assert code == 2 and not (tmp_path / "c.jsonl").exists()
    assert err == f"error: {index / 'index.safetensors'}: 1 of 30 item vectors are not finite (items 'B000000007'); " \
                  "the encoder gives NaN or infinite outputs, or the vectors are damaged\n"


def test_an_interrupted_run_leaves_no_output_file(assets, tmp_path, capsys, monkeypatch):
    inp, out = write_input(tmp_path / "in.jsonl", USERS), tmp_path / "recs.jsonl"
    out.write_text("previous run\n")
    calls = []
    original = Recommender.recommend

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(recommend_cli, "USERS_PER_BLOCK", 1)
    monkeypatch.setattr(Recommender, "recommend", interrupted)
    with pytest.raises(KeyboardInterrupt):
        recommend_cli.main(argv(assets, inp, out))
    assert out.read_text() == "previous run\n"  # untouched: the partial output never replaced it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "recs.jsonl"]


def test_the_script_runs(assets, tmp_path):
    inp, out = write_input(tmp_path / "in.jsonl", USERS[:2]), tmp_path / "recs.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "recommend.py"), *argv(assets, inp, out, "--k", "2")],
                            capture_output=True, text=True, env=env, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [len(r["items"]) for r in read_output(out)] == [2, 2] and "2 users, 30 items, top 2" in result.stdout


# recommend.py whose index load waits (up to 8 s) until the other run has loaded too, so that two runs
# that are not kept apart both read the index before either saves it.
RACING_RECOMMEND = """
import runpy, sys, time
from pathlib import Path
from recformer.inference.recommender import Recommender

tag, flags, script = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
load = Recommender.load.__func__

def racing_load(cls, *args, **kwargs):
    rec = load(cls, *args, **kwargs)
    (flags / f"loaded-{tag}").touch()
    deadline = time.time() + 8
    while len(list(flags.glob("loaded-*"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    return rec

Recommender.load = classmethod(racing_load)
sys.argv = [script, *sys.argv[4:]]
runpy.run_path(script, run_name="__main__")
"""


def test_two_concurrent_runs_adding_items_to_one_index_keep_both_additions(assets, tmp_path, capsys):
    """Real processes at once: the second waits for the first's lock, loads what it saved, adds its own."""
    inp, index = write_input(tmp_path / "in.jsonl", USERS[:1]), tmp_path / "index"
    (tmp_path / "racing.py").write_text(RACING_RECOMMEND)
    (tmp_path / "flags").mkdir()
    code, _, err = run(argv(assets, inp, tmp_path / "first.jsonl", "--index_dir", str(index)), capsys)
    assert code == 0, err
    meta = json.loads(assets["meta"].read_text())
    procs = []
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for tag in ("A", "B"):
        catalogue = tmp_path / f"items-{tag}.jsonl"
        new = [(f"NEW{tag}{i}", {"title": f"new item {tag} {i}"}) for i in range(5)]
        catalogue.write_text("".join(json.dumps({"id": k, **v}) + "\n" for k, v in [*meta.items(), *new]))
        args = argv(assets, inp, tmp_path / f"out-{tag}.jsonl", "--index_dir", str(index), ckpt=False, items=False)
        command = [sys.executable, str(tmp_path / "racing.py"), tag, str(tmp_path / "flags"), str(ROOT / "recommend.py")]
        procs.append(subprocess.Popen([*command, *args, "--items", str(catalogue)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path))  # fmt: skip
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in results]
    assert all("(5 items added, 0 re-encoded)" in out for out, _ in results)
    saved = json.loads((index / "index.json").read_text())
    assert saved["num_items"] == 40
    assert {i for i in saved["ids"] if i.startswith("NEW")} == {f"NEW{t}{i}" for t in "AB" for i in range(5)}
    assert len(Recommender.load(index, device="cpu", progress=False)) == 40


def test_output_is_checked_before_any_input_is_read(assets, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    missing = tmp_path / "missing.jsonl"  # would be refused too, but the output is checked first
    code, _, err = run(argv(assets, missing, tmp_path / "file" / "recs.jsonl"), capsys)
    assert code == 2 and err == f"error: {tmp_path / 'file' / 'recs.jsonl'}: cannot be created: {tmp_path / 'file'} is a file, not a folder\n"


def test_output_equal_to_input_or_a_special_file_is_refused(assets, tmp_path, capsys):
    inp = write_input(tmp_path / "in.jsonl", USERS)
    before = inp.read_text()
    for out in (inp, tmp_path / "." / "in.jsonl"):
        code, _, err = run(argv(assets, inp, out), capsys)
        assert code == 2 and err == f"error: --output {out}: is also --input; writing it would destroy that input\n"
    assert inp.read_text() == before
    os.mkfifo(tmp_path / "fifo")
    for special in (tmp_path / "fifo", Path("/dev/full")):
        code, _, err = run(argv(assets, inp, special), capsys)
        assert code == 2 and err.startswith(f"error: {special}: is a special file") and err.count("\n") == 1
    assert Path("/dev/full").is_char_device()


def test_output_through_a_symbolic_link_and_to_stdout(assets, tmp_path, capsys):
    inp = write_input(tmp_path / "in.jsonl", USERS[:2])
    target = tmp_path / "real.jsonl"
    target.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    code, _, err = run(argv(assets, inp, link, "--k", "2"), capsys)
    assert code == 0, err
    assert link.is_symlink() and [len(r["items"]) for r in read_output(target)] == [2, 2]
    code, out, err = run(argv(assets, inp, Path("-"), "--k", "2"), capsys)
    assert code == 0, err
    assert [json.loads(line)["user"] for line in out.splitlines()] == ["u1", "u2"]  # only the JSON lines
    assert "2 users, 30 items, top 2" in err and "output: -" in err


def test_an_unsupported_device_is_one_line(assets, tmp_path, capsys):
    inp = write_input(tmp_path / "in.jsonl", USERS[:1])
    code, _, err = run([*argv(assets, inp, tmp_path / "recs.jsonl"), "--device", "mps"], capsys)
    assert code == 2 and err == "error: --device mps: not supported; expected auto, cpu, cuda, cuda:N or a GPU index\n"


def test_new_items_are_never_saved_over_an_index_folder_recformer_did_not_write(assets, tmp_path, capsys, monkeypatch):
    inp, index = write_input(tmp_path / "in.jsonl", USERS[:1]), tmp_path / "index"
    code, _, err = run(argv(assets, inp, tmp_path / "recs.jsonl", "--index_dir", str(index)), capsys)
    assert code == 0, err
    (index / ".recformer-folder.json").unlink()  # e.g. a folder copied together by hand
    (index / "notes.txt").write_text("mine")
    monkeypatch.setattr(Recommender, "load", lambda *a, **k: pytest.fail("the index was read before the check"))
    code, _, err = run(argv(assets, inp, tmp_path / "recs.jsonl", "--index_dir", str(index), ckpt=False), capsys)
    assert code == 2 and err == (f"error: {index}: exists and was not written by recformer (no .recformer-folder.json); "
                                 "not replacing it, move it away or choose another path\n")  # fmt: skip
    assert (index / "notes.txt").read_text() == "mine" and (index / "index.json").is_file()
