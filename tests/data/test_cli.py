"""The processing commands: the entry points in recformer/cli/, and the reference-path scripts
(finetune_data/process.py, pretrain_data/*.py) that run them with the same flags."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recformer.cli import pretrain_interactions, pretrain_meta, process_finetune
from recformer.fileio import read_json

from ..helpers import load_cli
from .finetune_case import EXPECTED
from .pretrain_case import DEV, EXPECTED_DEV, EXPECTED_META, EXPECTED_TRAIN, TRAIN

REPO = Path(__file__).resolve().parents[2]
FINETUNE_SCRIPT = REPO / "finetune_data" / "process.py"
META_SCRIPT = REPO / "pretrain_data" / "meta_data_process.py"
INTERACTION_SCRIPT = REPO / "pretrain_data" / "interaction_data_process.py"

# Every command with its reference script and its flags (the reference scripts' names, never renamed).
COMMANDS = {
    "recformer-process-finetune": (
        process_finetune,
        FINETUNE_SCRIPT,
        ["--file_path", "--meta_file_path", "--output_path", "--min_seq_len", "--user_sample_rate", "--seed",
         "--no_progress"],
    ),
    "recformer-pretrain-meta": (
        pretrain_meta,
        META_SCRIPT,
        ["--meta_root", "--seq_root", "--output_dir", "--categories", "--no_progress"],
    ),
    "recformer-pretrain-interactions": (
        pretrain_interactions,
        INTERACTION_SCRIPT,
        ["--seq_root", "--output_dir", "--meta_file", "--train_categories", "--dev_categories",
         "--no_progress"],
    ),
}  # fmt: skip


def test_entry_points_are_declared_in_pyproject():
    tomllib = pytest.importorskip("tomllib")
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for name, (module, _, _) in COMMANDS.items():
        assert scripts[name] == f"{module.__name__}:main"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_flags_are_the_reference_scripts(name):
    module, script, flags = COMMANDS[name]
    options = [o for action in module.build_parser()._actions for o in action.option_strings if o != "-h"]
    assert sorted(options) == sorted([*flags, "--help"])
    assert load_cli(script).main is module.main  # the script runs the same command


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_reference_scripts_print_help(name):
    _, script, flags = COMMANDS[name]
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert all(flag in result.stdout for flag in flags)


def test_finetune_script_writes_outputs_and_stats(finetune_raw, tmp_path, capsys):
    reviews, meta = finetune_raw
    out = tmp_path / "cli_out"
    argv = ["--file_path", str(reviews), "--meta_file_path", str(meta), "--output_path", str(out),
            "--min_seq_len", "4", "--user_sample_rate", "1.0", "--seed", "3", "--no_progress"]  # fmt: skip
    assert load_cli(FINETUNE_SCRIPT).main(argv) == 0
    printed = capsys.readouterr().out
    assert f"output_path = {out}" in printed and '"users": 2' in printed
    for name, expected in EXPECTED.items():
        assert read_json(out / name) == expected, name
    assert read_json(out / "stats.json")["seed"] == 3


@pytest.mark.parametrize("bad", [["--min_seq_len", "2"], ["--user_sample_rate", "0"]])
def test_finetune_script_refuses_bad_settings(finetune_raw, tmp_path, bad, capsys):
    argv = [
        "--file_path",
        str(finetune_raw[0]),
        "--meta_file_path",
        str(finetune_raw[1]),
        "--output_path",
        str(tmp_path / "o"),
        *bad,
    ]
    with pytest.raises(SystemExit) as e:
        load_cli(FINETUNE_SCRIPT).main(argv)
    assert e.value.code == 2
    assert bad[0] in capsys.readouterr().err


def test_finetune_script_missing_file_exits_non_zero_naming_it(finetune_raw, tmp_path):
    missing = tmp_path / "absent" / "Missing_5.json.gz"
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        str(FINETUNE_SCRIPT),
        "--file_path",
        str(missing),
        "--meta_file_path",
        str(finetune_raw[1]),
        "--output_path",
        str(out),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1
    assert str(missing) in result.stderr
    assert not out.exists()


def test_pretrain_scripts_run_end_to_end(pretrain_raw, tmp_path, capsys):
    out = tmp_path / "out"
    common = ["--seq_root", str(pretrain_raw), "--output_dir", str(out), "--no_progress"]
    assert (
        load_cli(META_SCRIPT).main(["--meta_root", str(pretrain_raw), *common, "--categories", *TRAIN, *DEV])
        == 0
    )
    # --meta_file defaults to OUTPUT_DIR/meta_data.json
    assert (
        load_cli(INTERACTION_SCRIPT).main([*common, "--train_categories", *TRAIN, "--dev_categories", *DEV])
        == 0
    )
    printed = capsys.readouterr().out
    assert f"meta_file = {out / 'meta_data.json'}" in printed
    assert read_json(out / "train.json") == EXPECTED_TRAIN
    assert read_json(out / "dev.json") == EXPECTED_DEV
    assert read_json(out / "meta_data.json") == EXPECTED_META


def test_default_categories_are_the_papers():
    args = pretrain_interactions.parse_args(["--seq_root", "s", "--output_dir", "o"])
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
    meta_args = pretrain_meta.parse_args(["--meta_root", "m", "--seq_root", "s", "--output_dir", "o"])
    assert meta_args.categories == args.train_categories + args.dev_categories


def test_missing_files_exit_non_zero_naming_them(pretrain_raw, tmp_path):
    (pretrain_raw / "CatB_5.json.gz").unlink()
    out = tmp_path / "out"
    raw = pretrain_raw
    cmd = [sys.executable, str(META_SCRIPT), "--meta_root", str(raw), "--seq_root", str(raw),
           "--output_dir", str(out), "--categories", *TRAIN, *DEV]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1
    assert str(pretrain_raw / "CatB_5.json.gz") in result.stderr
    assert not out.exists()

    # The interaction step: a missing meta_data.json, then a missing review file.
    cli = load_cli(INTERACTION_SCRIPT)
    argv = ["--seq_root", str(pretrain_raw), "--output_dir", str(out), "--train_categories", "CatA"]
    argv += ["--dev_categories", "CatC"]
    assert cli.main([*argv, "--no_progress"]) == 1
    out.mkdir()
    (out / "meta_data.json").write_text("{}")
    assert (
        cli.main([*argv[:4], "--train_categories", "CatB", "--dev_categories", "CatC", "--no_progress"]) == 1
    )
    assert not (out / "train.json").exists()


def test_missing_file_messages_name_the_paths(pretrain_raw, tmp_path, capsys):
    (pretrain_raw / "CatB_5.json.gz").unlink()
    (pretrain_raw / "meta_CatC.json.gz").unlink()
    out = tmp_path / "out"
    raw = pretrain_raw
    roots = ["--meta_root", str(raw), "--seq_root", str(raw), "--output_dir", str(out)]
    assert load_cli(META_SCRIPT).main([*roots, "--categories", *TRAIN, *DEV]) == 1
    err = capsys.readouterr().err
    assert str(pretrain_raw / "meta_CatC.json.gz") in err
    cli = load_cli(INTERACTION_SCRIPT)
    argv = ["--seq_root", str(pretrain_raw), "--output_dir", str(out), "--train_categories", "CatA"]
    argv += ["--dev_categories", "CatC"]
    assert cli.main(argv) == 1
    assert str(out / "meta_data.json") in capsys.readouterr().err
    assert cli.main([*argv[:4], "--train_categories", "CatA", "CatB", "--dev_categories", "CatC"]) == 1
    assert str(pretrain_raw / "CatB_5.json.gz") in capsys.readouterr().err
