"""Command-line entry points: installed names, --help, thin shims, and which way dependencies point."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from .helpers import load_cli

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {  # installed name -> (module, reference-named top-level script)
    "recformer-finetune": ("recformer.cli.finetune", "finetune.py"),
    "recformer-pretrain": ("recformer.cli.pretrain", "lightning_pretrain.py"),
    "recformer-save-longformer-ckpt": ("recformer.cli.save_longformer_ckpt", "save_longformer_ckpt.py"),
    "recformer-convert-pretrain-ckpt": ("recformer.cli.convert_pretrain_ckpt", "convert_pretrain_ckpt.py"),
    "recformer-evaluate": ("recformer.cli.evaluate", "evaluate.py"),
    "recformer-recommend": ("recformer.cli.recommend", "recommend.py"),
    "recformer-report": ("recformer.cli.report", "report.py"),
}
FLAGS = {  # one flag of each command that its help must list
    "recformer-finetune": "--pretrain_ckpt",
    "recformer-pretrain": "--longformer_ckpt",
    "recformer-save-longformer-ckpt": "--model_name_or_path",
    "recformer-convert-pretrain-ckpt": "--lightning_ckpt",
    "recformer-evaluate": "--reencode_items",
    "recformer-recommend": "--on_unknown",
    "recformer-report": "--zero_shot",
}


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module a file imports (relative imports resolved inside `recformer`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base]) if base else ".".join(parent)
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def test_entry_points_are_declared():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name, (module, _) in COMMANDS.items():
        assert scripts[name] == f"{module}:main"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_answers_help(name, capsys):
    module = importlib.import_module(COMMANDS[name][0])
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert FLAGS[name] in capsys.readouterr().out
    assert FLAGS[name] in module.build_parser().format_help()


@pytest.mark.parametrize("name", list(COMMANDS))
def test_top_level_scripts_are_shims_of_the_commands(name):
    module, script = COMMANDS[name]
    shim = load_cli(ROOT / script)
    assert shim.main is importlib.import_module(module).main
    assert imported_modules(ROOT / script) == {"sys", module, f"{module}.main"}


def test_shim_runs_as_a_script():
    result = subprocess.run([sys.executable, str(ROOT / "save_longformer_ckpt.py"), "--help"],
                            capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert result.returncode == 0 and "--max_token_num" in result.stdout


# The one shared helper outside the library: the GPU pretraining check builds its inputs with the test suite's
# synthetic makers (a random Longformer folder and corpus), so both run on the same kind of data.
SHARED_HELPERS = {"tests.synthetic", "tests.synthetic.make_longformer_folder", "tests.synthetic.write_corpus"}


def test_no_script_imports_another_script():
    scripts = {p.stem for p in ROOT.glob("*.py")} | {"finetune_data", "pretrain_data", "bench", "tests", "scripts"}
    for path in [*ROOT.glob("*.py"), *ROOT.glob("bench/*.py"), *ROOT.glob("scripts/**/*.py")]:
        bad = {m for m in imported_modules(path) if m.split(".")[0] in scripts} - SHARED_HELPERS
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_library_never_imports_the_finetuning_loop_or_a_command():
    for path in (ROOT / "recformer").rglob("*.py"):
        if path.parent.name == "cli":
            continue
        modules = imported_modules(path)
        assert not {m for m in modules if m.startswith(("recformer.train.finetune.", "recformer.cli"))}, path
        if path.name != "finetune.py":
            assert "recformer.train.finetune" not in modules and not any(
                m.startswith("recformer.train.finetune.") for m in modules
            ), path


def test_every_command_stops_through_run_command_with_the_error_s_exit_code(capsys, monkeypatch):
    """2 for bad input (a RecformerError, an OSError naming its file, a ValueError), 1 for a failure that is not
    the input's; one `error:` line each; another rank's failure prints nothing here."""
    from recformer.cli import run_command
    from recformer.data.finetune_reader import DataError
    from recformer.errors import RecformerFailure

    def raising(error):
        def body():
            raise error

        return body

    monkeypatch.delenv("RANK", raising=False)
    assert run_command(lambda: None) == 0 and run_command(lambda: 3) == 3
    cases = [
        (DataError("data/train.json line 3: not valid JSON"), 2, "error: data/train.json line 3: not valid JSON\n"),
        (FileNotFoundError(2, "No such file or directory", "ckpt.bin"), 2, "error: ckpt.bin: No such file or directory\n"),
        (ValueError("--k must be >= 1"), 2, "error: --k must be >= 1\n"),
        (RecformerFailure("stage 1 epoch 2 step 7: the loss is nan"), 1, "error: stage 1 epoch 2 step 7: the loss is nan\n"),
    ]
    for error, code, line in cases:
        assert run_command(raising(error)) == code
        assert capsys.readouterr().err == line
    other_rank = DataError("rank 1: injected failure")
    other_rank.failed_rank = 1  # what distributed.RankFailure carries
    assert run_command(raising(other_rank)) == 2 and capsys.readouterr().err == ""
    with pytest.raises(KeyError):  # an unexpected error keeps its traceback
        run_command(raising(KeyError("bug")))


def fake_exit(code: int):
    raise SystemExit(f"exit {code}")


def test_a_collective_that_lost_its_peer_is_one_line_not_a_backend_traceback(capsys, monkeypatch):
    from recformer.cli import run_command

    monkeypatch.setattr(os, "_exit", fake_exit)

    def broken_collective():
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:29500")

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit, match="^exit 1$"):  # a process of a launch leaves at once (leave_launch)
        run_command(broken_collective)
    assert capsys.readouterr().err == (
        "error: another process of this launch stopped ([../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection "
        "closed by peer [127.0.0.1]:29500); its own error says why\n"
    )
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: the same error is a bug, with its traceback
    with pytest.raises(RuntimeError):
        run_command(broken_collective)


def test_a_failing_process_of_a_launch_exits_at_once_with_its_status(capsys, monkeypatch):
    """Under torchrun a rank that stops on an error exits before the interpreter frees its frames (which
    could block on a collective its peers wait in); in one process the status is returned as usual."""
    from recformer.cli import run_command

    def bad_input():
        raise ValueError("--data_path x: no such folder")

    monkeypatch.setattr(os, "_exit", fake_exit)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit, match="^exit 2$"):
        run_command(bad_input)
    assert capsys.readouterr().err == "error: rank 1: --data_path x: no such folder\n"
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert run_command(bad_input) == 2
