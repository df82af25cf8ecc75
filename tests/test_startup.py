"""Start-up of the commands: parsing, --help and argument errors never import torch or transformers
(a behavioural check on sys.modules; bench/bench_startup.py measures the seconds), and the help text
of every parser: a line for every flag, the defaults, the examples' line breaks."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = sorted(p.stem for p in (ROOT / "recformer" / "cli").glob("*.py") if p.stem != "__init__")
HEAVY = ("torch", "transformers", "pytorch_lightning", "lightning", "deepspeed", "numpy")
# Arguments that parse, for each command, and a value that its validation refuses (None: it has no validation).
VALID = {
    "convert_pretrain_ckpt": ["--lightning_ckpt", "l.ckpt", "--longformer_ckpt", "s.bin", "--output_dir", "o"],
    "evaluate": ["--ckpt", "c.bin", "--data_path", "d"],
    "finetune": ["--pretrain_ckpt", "c.bin", "--data_path", "d"],
    "pretrain": ["--train_file", "t", "--dev_file", "d", "--item_attr_file", "m", "--output_dir", "o"],
    "pretrain_interactions": ["--seq_root", "s", "--output_dir", "o"],
    "pretrain_meta": ["--meta_root", "m", "--seq_root", "s", "--output_dir", "o"],
    "process_finetune": ["--file_path", "r.json", "--meta_file_path", "m.json", "--output_path", "o"],
    "recommend": ["--ckpt", "c.bin", "--items", "i.json", "--input", "h.jsonl", "--output", "r.jsonl"],
    "report": ["runs/a"],
    "save_longformer_ckpt": [],
}
REFUSED = {
    "evaluate": (["--fp16", "--bf16"], "error: --fp16 and --bf16 are exclusive"),
    "finetune": (["--metric_ks", "5", "50"], "error: --metric_ks must include 10"),
    "pretrain": (["--valid_step", "0"], "error: --valid_step must be >= 1, got 0"),
    "recommend": (["--attn_implementation", "flash"], "error: --attn_implementation: unknown attn_implementation"),
}

PROBE = """
import contextlib, io, json, sys
module = __import__("recformer.cli." + sys.argv[1], fromlist=["main"])
args = module.build_parser().parse_args(json.loads(sys.argv[2]))
outcome = {}
for name, argv in (("help", ["--help"]), ("missing", [] if json.loads(sys.argv[2]) else None),
                   ("refused", json.loads(sys.argv[3]))):
    if argv is None:
        continue
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(err):
        try:
            code = module.main(argv)
        except SystemExit as e:
            code = e.code
    outcome[name] = [code, out.getvalue(), err.getvalue()]
outcome["heavy"] = sorted(m for m in json.loads(sys.argv[4]) if m in sys.modules)
print(json.dumps(outcome))
"""


@pytest.mark.parametrize("command", COMMANDS)
def test_parsing_help_and_argument_errors_import_no_model_library(command):
    refused = REFUSED.get(command)
    argv = [sys.executable, "-c", PROBE, command, json.dumps(VALID[command]),
            json.dumps(VALID[command] + refused[0] if refused else None), json.dumps(HEAVY)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["heavy"] == []
    assert outcome["help"][0] == 0 and "--help" in outcome["help"][1]
    if VALID[command]:  # a required flag is missing: argparse's usage error
        assert outcome["missing"][0] == 2 and "required" in outcome["missing"][2]
    if refused:
        code, _, err = outcome["refused"]
        assert code == 2 and err.startswith(refused[1]) and err.count("\n") == 1, err


def parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    return [(c, importlib.import_module(f"recformer.cli.{c}").build_parser()) for c in COMMANDS]


@pytest.mark.parametrize("command, parser", parsers(), ids=COMMANDS)
def test_every_flag_has_a_help_line(command, parser):
    for action in parser._actions:
        assert action.help and action.help.strip(), f"{command}: {action.option_strings} has no help"


@pytest.mark.parametrize("command, parser", parsers(), ids=COMMANDS)
def test_help_shows_the_defaults_and_keeps_the_examples_line_breaks(command, parser):
    text = parser.format_help()
    for action in parser._actions:
        if action.required or action.nargs == 0 or action.default in (None, argparse.SUPPRESS):
            continue
        shown = " ".join(map(str, action.default)) if isinstance(action.default, list) else str(action.default)
        help_line = parser._get_formatter()._get_help_string(action) % vars(action)
        assert "default" in help_line and (shown in help_line or "default:" in action.help), (command, help_line)
    module = importlib.import_module(f"recformer.cli.{command}")
    for line in module.__doc__.strip().splitlines():
        assert line.rstrip() in text.splitlines() or not line.strip(), f"{command}: description line lost: {line!r}"


def test_the_examples_are_shell_lines():
    for command in COMMANDS:
        doc = importlib.import_module(f"recformer.cli.{command}").__doc__
        for line in doc.splitlines():
            assert len(line) <= 120, f"{command}: {line!r}"  # a lost line break joins two lines
            if "\\" in line:
                assert line.endswith(" \\"), f"{command}: {line!r}"


def test_help_names_only_functions_that_exist():
    for command, parser in parsers():
        for action in parser._actions:
            for name in {w.strip(",.;()") for w in (action.help or "").split() if w.startswith("recformer.")}:
                module, attr = name.rsplit(".", 1)
                assert hasattr(importlib.import_module(module), attr), f"{command} {action.option_strings}: {name}"


@pytest.mark.parametrize("command", ["finetune", "evaluate", "recommend", "pretrain"])
def test_help_does_not_send_the_reader_to_itself(command):
    text = importlib.import_module(f"recformer.cli.{command}").build_parser().format_help()
    assert "--help" not in text.split("options:")[0]
