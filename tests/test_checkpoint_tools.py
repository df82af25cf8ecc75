"""The two checkpoint tools in-process: wrong sources refused, output problems found before any input is
read, every failed step a non-zero exit with one line (save_longformer_ckpt.py, convert_pretrain_ckpt.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from recformer.cli import convert_pretrain_ckpt, save_longformer_ckpt

from .conftest import TINY_TOKENIZER_DIR
from .pretrain_fixtures import TINY_FIELD_FLAGS, TINY_MAX_POSITIONS, make_longformer_folder


@pytest.fixture(scope="module")
def longformer(tmp_path_factory) -> Path:
    return make_longformer_folder(tmp_path_factory.mktemp("tools") / "longformer-tiny")


@pytest.fixture(scope="module")
def start(longformer, tmp_path_factory) -> Path:
    """A start point written by save_longformer_ckpt.py (file + folder)."""
    path = tmp_path_factory.mktemp("start") / "longformer-tiny.bin"
    assert save_longformer_ckpt.main(["--model_name_or_path", str(longformer), "--output", str(path), *TINY_FIELD_FLAGS]) == 0
    return path


@pytest.fixture(scope="module")
def trained(start, tmp_path_factory) -> Path:
    """A consolidated pretraining state dict as Lightning names it (the start point's weights)."""
    path = tmp_path_factory.mktemp("trained") / "consolidated.bin"
    torch.save({"model." + k: v for k, v in torch.load(start, weights_only=True).items()}, path)
    return path


def one_error_line(capsys) -> str:
    """The command's error line (progress bars of transformers may share stderr)."""
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in captured.err, captured.err
    return errors[0]


def save_start(model: Path | str, output: Path) -> int:
    return save_longformer_ckpt.main(["--model_name_or_path", str(model), "--output", str(output), *TINY_FIELD_FLAGS])


def convert(trained: Path, start: Path, out: Path, *extra: str) -> int:
    argv = ["--lightning_ckpt", str(trained), "--longformer_ckpt", str(start), "--output_dir", str(out), *extra]
    return convert_pretrain_ckpt.main(argv)


# -- save_longformer_ckpt.py --------------------------------------------------------------------------


def test_start_point_says_how_many_longformer_tensors_it_copied(longformer, tmp_path, capsys):
    assert save_start(longformer, tmp_path / "start.bin") == 0
    out = capsys.readouterr().out
    # 54 tensors: the tied LM-head decoder weight and bias are the word embeddings and the LM-head bias
    assert f"start point from {longformer}: copied 54 of 54 Longformer tensors\n" in out


def test_bert_weights_under_a_longformer_config_are_refused_naming_the_keys(tmp_path, capsys):
    """transformers loads them with every Longformer weight random, and only logs it. (A folder whose config
    says BERT is converted by recformer.io.backbones: tests/test_backbones.py.)"""
    bert = tmp_path / "bert-tiny"
    BertForMaskedLM(BertConfig(vocab_size=275, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=37, max_position_embeddings=TINY_MAX_POSITIONS)).save_pretrained(bert)  # fmt: skip
    config = json.loads((bert / "config.json").read_text())
    (bert / "config.json").write_text(json.dumps({**config, "model_type": "longformer", "attention_window": 8}))
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(TINY_TOKENIZER_DIR / name, bert)
    output = tmp_path / "start.bin"
    assert save_start(bert, output) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {bert}: its weights do not map onto the Longformer masked-LM layout: "
                           "54 of 54 Longformer tensors are not in it [lm_head.bias, ")  # fmt: skip
    assert "its keys with no Longformer place: [bert.embeddings.LayerNorm.bias, " in line
    assert not output.exists() and not (tmp_path / "start").exists()


def test_a_file_blocking_the_start_point_folder_fails_before_reading_the_model(tmp_path, capsys):
    output = tmp_path / "start.bin"
    (tmp_path / "start").write_text("in the way")
    assert save_start(tmp_path / "no-model-read", output) == 2  # the output is checked first
    assert one_error_line(capsys) == f"error: {tmp_path / 'start'}: is a file, but a folder must be written there"
    assert not output.exists()


@pytest.mark.parametrize("problem", ["output is a folder", "below a file", "not writable"])
def test_output_problems_of_save_longformer_ckpt_are_one_line(tmp_path, capsys, problem, request):
    if problem == "output is a folder":
        output = tmp_path / "start.bin"
        output.mkdir()
        expected = f"{output}: is a folder, but a file must be written there"
    elif problem == "below a file":
        (tmp_path / "file").write_text("x")
        output = tmp_path / "file" / "sub" / "start.bin"
        expected = f"{output}: cannot be created: {tmp_path / 'file'} is a file, not a folder"
    else:
        folder = request.getfixturevalue("read_only_dir")
        output = folder / "sub" / "start.bin"
        expected = f"{output}: cannot be written: {folder} is not writable (Permission denied)"
    assert save_start(tmp_path / "no-model-read", output) == 2
    assert one_error_line(capsys) == f"error: {expected}"


@pytest.mark.parametrize("name", ["./no_such_model", "/no/such/model"])
def test_a_missing_model_folder_is_named_as_a_folder(tmp_path, capsys, name):
    assert save_start(name, tmp_path / "start.bin") == 2
    assert one_error_line(capsys) == f"error: {name}: model folder not found (and not a Hugging Face hub id)"


# -- convert_pretrain_ckpt.py ---------------------------------------------------------------------------


def test_convert_writes_everything(trained, start, tmp_path, capsys):
    out = tmp_path / "released"
    assert convert(trained, start, out) == 0
    assert {p.name for p in out.iterdir()} == {"recformer_ckpt.bin", "recformer_seqrec_ckpt.bin", "recformer",
                                               "recformer_seqrec"}  # fmt: skip
    for folder in ("recformer", "recformer_seqrec"):
        assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= {p.name for p in (out / folder).iterdir()}
    assert f"wrote save_pretrained folders {out / 'recformer'}/ and {out / 'recformer_seqrec'}/" in capsys.readouterr().out


@pytest.mark.parametrize("blocked", ["recformer", "recformer_seqrec"])
def test_convert_with_a_file_blocking_a_folder_fails_before_reading(trained, start, tmp_path, capsys, blocked):
    out = tmp_path / "released"
    out.mkdir()
    (out / blocked).write_text("in the way")
    assert convert(tmp_path / "not-read.ckpt", start, out) == 2
    assert one_error_line(capsys) == f"error: {out / blocked}: is a file, but a folder must be written there"
    assert {p.name for p in out.iterdir()} == {blocked}  # nothing written


@pytest.mark.parametrize("problem", ["output is a file", "below a file", "a file name is a folder", "not writable"])
def test_output_problems_of_convert_are_one_line(start, tmp_path, capsys, problem, request):
    out = tmp_path / "released"
    if problem == "output is a file":
        out.write_text("x")
        expected = f"{out}: is a file, but a folder must be written there"
    elif problem == "below a file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "released"
        expected = f"{out}: cannot be created: {tmp_path / 'file'} is a file, not a folder"
    elif problem == "a file name is a folder":
        (out / "recformer_ckpt.bin").mkdir(parents=True)
        expected = f"{out / 'recformer_ckpt.bin'}: is a folder, but a file must be written there"
    else:
        folder = request.getfixturevalue("read_only_dir")
        out = folder / "released"
        expected = f"{out}: cannot be written: {folder} is not writable (Permission denied)"
    assert convert(tmp_path / "not-read.ckpt", start, out) == 2
    assert one_error_line(capsys) == f"error: {expected}"


def test_a_failed_save_pretrained_step_fails_the_command(trained, start, tmp_path, capsys, monkeypatch):
    """save_pretrained only logs when it cannot write; the folder must then be missing, never half there."""
    from transformers import PreTrainedModel

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", lambda self, folder, **kw: None)  # writes nothing
    out = tmp_path / "released"
    assert convert(trained, start, out) == 2
    assert one_error_line(capsys) == f"error: {out / 'recformer'}: writing it failed: config.json missing"
    assert not (out / "recformer").exists() and not list(out.glob(".recformer*"))


def test_a_folder_recformer_did_not_write_is_never_replaced(longformer, tmp_path, capsys):
    """--output m.bin with a folder m/ that is not ours (a model of the user, or the source model itself)."""
    source = Path(shutil.copytree(longformer, tmp_path / "longformer-tiny"))
    before = sorted(p.name for p in source.iterdir())
    assert save_start(source, tmp_path / "longformer-tiny.bin") == 2
    assert one_error_line(capsys) == (f"error: the folder beside --output {source}: is also --model_name_or_path; "
                                      "writing it would destroy that input")  # fmt: skip
    user = Path(shutil.copytree(longformer, tmp_path / "m"))
    (user / "README.md").write_text("my model")
    assert save_start(longformer, tmp_path / "m.bin") == 2
    assert one_error_line(capsys) == (f"error: {user}: exists and was not written by recformer (no .recformer-folder.json); "
                                      "not replacing it, move it away or choose another path")  # fmt: skip
    assert sorted(p.name for p in source.iterdir()) == before and (user / "README.md").read_text() == "my model"
    assert sorted(p.name for p in user.iterdir()) == sorted([*before, "README.md"])
    assert not (tmp_path / "m.bin").exists() and not (tmp_path / "longformer-tiny.bin").exists()
    assert save_longformer_ckpt.main(["--model_name_or_path", str(longformer), "--output", str(tmp_path / "m.bin"),
                                      "--overwrite_output_dir", *TINY_FIELD_FLAGS]) == 2  # fmt: skip
    assert "not written by recformer" in one_error_line(capsys) and (user / "README.md").read_text() == "my model"


def test_a_start_point_folder_is_replaced_only_with_overwrite_output_dir(longformer, tmp_path, capsys):
    output = tmp_path / "start.bin"
    assert save_start(longformer, output) == 0
    capsys.readouterr()
    assert save_start(longformer, output) == 2
    assert one_error_line(capsys) == (f"error: {tmp_path / 'start'}: exists (written by recformer earlier); "
                                      "pass --overwrite_output_dir to replace it")  # fmt: skip
    argv = ["--model_name_or_path", str(longformer), "--output", str(output), "--overwrite_output_dir", *TINY_FIELD_FLAGS]
    assert save_longformer_ckpt.main(argv) == 0
    assert (tmp_path / "start" / "config.json").is_file()


def test_a_pickled_pytorch_model_bin_is_one_line_naming_trust_checkpoint(longformer, tmp_path, capsys):
    from safetensors.torch import load_file

    from .helpers import WritesMarker

    folder = Path(shutil.copytree(longformer, tmp_path / "pickled"))
    weights = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "code-ran"
    torch.save({**weights, "extra": WritesMarker(marker)}, folder / "pytorch_model.bin")
    assert save_start(folder, tmp_path / "start.bin") == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {folder / 'pytorch_model.bin'}: ") and "--trust_checkpoint" in line
    assert not marker.exists() and not (tmp_path / "start.bin").exists()
    torch.save(weights, folder / "pytorch_model.bin")  # plain tensors: read without the flag
    assert save_start(folder, tmp_path / "start.bin") == 0
    assert "copied 54 of 54 Longformer tensors" in capsys.readouterr().out
