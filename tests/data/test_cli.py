"""The processing commands: the entry points in recformer/cli/, and the reference-path scripts
(finetune_data/process.py, pretrain_data/*.py) that run them with the same flags."""

from __future__ import annotations

import errno
import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recformer.cli import pretrain_interactions, pretrain_meta, process_finetune
from recformer.data.finetune_reader import load_finetune_data
from recformer.io.fileio import read_json

from ..helpers import load_cli, write_gz
from .finetune_case import EXPECTED, META_LINES
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
         "--no_progress",
         # beyond the reference: other input formats (tests/data/test_tables.py) and the k-core filter
         "--format", "--kcore", "--user_field", "--item_field", "--time_field", "--text_fields",
         "--item_table_id_field", "--delimiter"],
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
    assert result.returncode == 2
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
    # Each step prints its own stats file; the interaction step leaves the meta step's in place.
    assert f"full stats: {out / 'meta_stats.json'}" in printed
    assert f"full stats: {out / 'interaction_stats.json'}" in printed
    assert read_json(out / "meta_stats.json")["categories"] == [*TRAIN, *DEV]
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
    assert result.returncode == 2
    assert str(pretrain_raw / "CatB_5.json.gz") in result.stderr
    assert not out.exists()

    # The interaction step: a missing meta_data.json, then a missing review file.
    cli = load_cli(INTERACTION_SCRIPT)
    argv = ["--seq_root", str(pretrain_raw), "--output_dir", str(out), "--train_categories", "CatA"]
    argv += ["--dev_categories", "CatC"]
    assert cli.main([*argv, "--no_progress"]) == 2
    out.mkdir()
    (out / "meta_data.json").write_text("{}")
    assert (
        cli.main([*argv[:4], "--train_categories", "CatB", "--dev_categories", "CatC", "--no_progress"]) == 2
    )
    assert not (out / "train.json").exists()


def test_missing_file_messages_name_the_paths(pretrain_raw, tmp_path, capsys):
    (pretrain_raw / "CatB_5.json.gz").unlink()
    (pretrain_raw / "meta_CatC.json.gz").unlink()
    out = tmp_path / "out"
    raw = pretrain_raw
    roots = ["--meta_root", str(raw), "--seq_root", str(raw), "--output_dir", str(out)]
    assert load_cli(META_SCRIPT).main([*roots, "--categories", *TRAIN, *DEV]) == 2
    err = capsys.readouterr().err
    assert str(pretrain_raw / "meta_CatC.json.gz") in err
    cli = load_cli(INTERACTION_SCRIPT)
    argv = ["--seq_root", str(pretrain_raw), "--output_dir", str(out), "--train_categories", "CatA"]
    argv += ["--dev_categories", "CatC"]
    assert cli.main(argv) == 2
    assert str(out / "meta_data.json") in capsys.readouterr().err
    assert cli.main([*argv[:4], "--train_categories", "CatA", "CatB", "--dev_categories", "CatC"]) == 2
    assert str(pretrain_raw / "CatB_5.json.gz") in capsys.readouterr().err


def run_finetune(reviews, meta, out, *extra) -> int:
    argv = ["--file_path", str(reviews), "--meta_file_path", str(meta), "--output_path", str(out), *extra]
    return process_finetune.main([*argv, "--no_progress"])


def last_error_line(capsys) -> str:
    """The one error line a failed command prints (after no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def truncated_gz(path: Path) -> Path:
    """An input that fails as soon as it is read: a check that precedes reading reports first."""
    data = gzip.compress(b'{"asin": "A"}\n' * 5000, mtime=0)
    path.write_bytes(data[: len(data) // 2])
    return path


# Each command with a runner (raw folder, output folder) and one name of the files it writes.
def _finetune(root: Path, out: Path) -> int:
    return run_finetune(root / "Cat_5.json.gz", root / "meta_Cat.json.gz", out)


def _meta(root: Path, out: Path) -> int:
    argv = [
        "--meta_root",
        str(root),
        "--seq_root",
        str(root),
        "--output_dir",
        str(out),
        "--categories",
        "Cat",
    ]
    return pretrain_meta.main([*argv, "--no_progress"])


def _interactions(root: Path, out: Path) -> int:
    argv = ["--seq_root", str(root), "--output_dir", str(out), "--meta_file", str(root / "meta_data.json")]
    return pretrain_interactions.main(
        [*argv, "--train_categories", "Cat", "--dev_categories", "Cat", "--no_progress"]
    )


RUNNERS = {
    "finetune": (_finetune, "train.json"),
    "meta": (_meta, "meta_data.json"),
    "interactions": (_interactions, "dev.json"),
}


def output_problem(problem: str, taken_name: str, tmp_path: Path, read_only: Path) -> tuple[Path, str]:
    """An unusable output location: (the output folder to give, the error line it must get)."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    if problem == "is_a_file":
        return a_file, f"error: {a_file}: is a file, but a folder must be written there"
    if problem == "below_a_file":
        return a_file / "out", f"error: {a_file / 'out'}: cannot be created: {a_file} is a file, not a folder"
    if problem == "below_a_locked_folder":
        out = read_only / "out"
        return out, f"error: {out}: cannot be written: {read_only} is not writable (Permission denied)"
    if problem == "not_writable":
        return (
            read_only,
            f"error: {read_only}: cannot be written: {read_only} is not writable (Permission denied)",
        )
    if problem == "broken_link":
        link = tmp_path / "link"
        link.symlink_to(tmp_path / "gone")
        return link, f"error: {link}: is a broken symbolic link"
    assert problem == "a_name_taken_by_a_folder"
    (tmp_path / "blocked" / taken_name).mkdir(parents=True)
    return (
        tmp_path / "blocked",
        f"error: {tmp_path / 'blocked' / taken_name}: exists and is not a file; move it away",
    )


@pytest.mark.parametrize("command", sorted(RUNNERS))
@pytest.mark.parametrize(
    "problem",
    [
        "is_a_file",
        "below_a_file",
        "below_a_locked_folder",
        "not_writable",
        "broken_link",
        "a_name_taken_by_a_folder",
    ],
)
def test_output_problems_get_one_line_before_any_input_is_read(
    command, problem, tmp_path, read_only_dir, capsys
):
    run, taken_name = RUNNERS[command]
    root = tmp_path / "raw"
    root.mkdir()
    # Inputs that fail as soon as they are read: the output check must report first.
    for name in ("Cat_5.json.gz", "meta_Cat.json.gz"):
        truncated_gz(root / name)
    (root / "meta_data.json").write_text("{not json")
    out, expected = output_problem(problem, taken_name, tmp_path, read_only_dir)
    assert run(root, out) == 2
    assert last_error_line(capsys) == expected


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_full_disk_gets_one_line_naming_the_file_and_the_old_folder_stays(finetune_raw, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_finetune(*finetune_raw, out) == 0
    old = folder_bytes(out)
    calls = []

    def fsync_fails_on_the_third_file(fd):
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.MonkeyPatch.context() as m:
        m.setattr(os, "fsync", fsync_fails_on_the_third_file)
        assert run_finetune(*finetune_raw, out, "--min_seq_len", "3") == 2
    assert last_error_line(capsys) == f"error: {out / 'train.json'}: No space left on device"
    assert folder_bytes(out) == old  # nothing replaced, no temporary file left
    assert load_finetune_data(out).train == EXPECTED["train.json"]


def test_a_run_that_fails_midway_leaves_the_old_pretraining_folder_as_it_was(pretrain_raw, tmp_path, capsys):
    out = tmp_path / "out"
    common = ["--seq_root", str(pretrain_raw), "--output_dir", str(out), "--no_progress"]
    assert pretrain_meta.main(["--meta_root", str(pretrain_raw), *common, "--categories", *TRAIN, *DEV]) == 0
    categories = ["--train_categories", *TRAIN, "--dev_categories", *DEV]
    assert pretrain_interactions.main([*common, *categories]) == 0
    old = folder_bytes(out)
    # The dev category's file is cut short: found only after train.json has been written anew.
    truncated_gz(pretrain_raw / "CatC_5.json.gz")
    assert pretrain_interactions.main([*common, *categories]) == 2
    assert last_error_line(capsys).startswith(
        f"error: {pretrain_raw / 'CatC_5.json.gz'}: the gzip stream ends"
    )
    assert folder_bytes(out) == old


def test_a_lone_surrogate_in_a_meta_line_is_cleaned_and_counted(finetune_raw, tmp_path):
    """Such a line crashed the writer half-way, leaving new umap/smap next to old files."""
    reviews, _ = finetune_raw
    meta = write_gz(
        tmp_path / "meta_S.json.gz", [*META_LINES[:-1], '{"asin": "H", "title": "Eta \\ud800", "brand": "W"}']
    )
    out = tmp_path / "out"
    assert run_finetune(reviews, meta, out) == 0
    assert read_json(out / "meta_data.json")["H"] == {"title": "Eta \ufffd", "brand": "W", "category": ""}
    assert read_json(out / "stats.json")["values_cleaned"] == {"lone_surrogate": 1}
    assert load_finetune_data(out).train == EXPECTED["train.json"]


def test_a_folder_given_as_an_input_file_is_called_a_folder(finetune_raw, tmp_path, capsys):
    folder = tmp_path / "Cat_5.json.gz"
    folder.mkdir()
    assert run_finetune(folder, finetune_raw[1], tmp_path / "out") == 2
    assert last_error_line(capsys) == f"error: input file is a folder: {folder}"


@pytest.mark.parametrize("which", ["reviews", "meta"])
@pytest.mark.parametrize("content", ["0-byte", "utf16", "no-record"])
def test_an_empty_or_unreadable_input_is_an_error_naming_it(finetune_raw, tmp_path, capsys, which, content):
    reviews, meta = finetune_raw
    bad = reviews if which == "reviews" else meta
    if content == "0-byte":  # a failed download
        bad.write_bytes(b"")
    elif content == "utf16":
        bad.write_bytes(gzip.decompress(bad.read_bytes()).decode("utf-8").encode("utf-16"))
    else:
        write_gz(bad, ["", "not json"])
    out = tmp_path / "out"
    assert run_finetune(reviews, meta, out) == 2
    assert last_error_line(capsys).startswith(f"error: {bad}: ")
    assert not out.exists()


def test_no_qualifying_user_is_an_error_naming_the_input(finetune_raw, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_finetune(*finetune_raw, out, "--min_seq_len", "9") == 2
    assert last_error_line(capsys) == (
        f"error: {finetune_raw[0]}: no user qualifies: 3 users review items of {finetune_raw[1]}, 3 of them "
        "fewer than 9 times, 0 sampled out; 3 reviews are of items without a title there"
    )
    assert not out.exists()


def test_an_empty_pretraining_meta_file_is_an_error_naming_it(pretrain_raw, tmp_path, capsys):
    (pretrain_raw / "meta_CatB.json.gz").write_bytes(b"")
    roots = [
        "--meta_root",
        str(pretrain_raw),
        "--seq_root",
        str(pretrain_raw),
        "--output_dir",
        str(tmp_path / "o"),
    ]
    assert pretrain_meta.main([*roots, "--categories", *TRAIN, *DEV, "--no_progress"]) == 2
    assert last_error_line(capsys) == (
        f"error: {pretrain_raw / 'meta_CatB.json.gz'}: the file is empty (0 bytes; an interrupted download?)"
    )
