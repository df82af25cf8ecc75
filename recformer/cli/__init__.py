"""Command-line entry points (`[project.scripts]` in pyproject.toml; the top-level scripts are shims).

Each module has `build_parser()` and `main(argv=None) -> int`: parse, build library objects, call
one library function, print. Every command exits 0 on success, 2 on bad input and 1 on a failure that
is not the input's (a diverged run), each named in one `error:` line (`run_command`; the exit status is
`recformer.errors.exit_code` of the error); an unexpected exception keeps its traceback (status 1).

Every module imports only argparse, `recformer.args` and other modules free of torch and transformers at
the top; the model libraries load in `main` after the arguments are parsed and checked, so that `--help`
and argument errors answer at once (`bench/bench_startup.py`, `tests/test_startup.py`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from recformer.errors import RecformerError, error_line, exit_code


def argument_error(args: Any) -> int | None:
    """2 after printing the one `error:` line (on rank 0 of a torchrun launch only, as every rank meets it)
    when the parsed `args` fail their `validate()`; None when they pass."""
    try:
        args.validate()
    except ValueError as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    return None


def run_command(body: Callable[[], int | None]) -> int:
    """Run a command's body and return its exit status: its own (None is 0), or, when it stops on a library
    error (`RecformerError`) or bad input the standard library reports (`OSError`, `ValueError`), that
    error's status (`errors.exit_code`) after one `error:` line.

    Under torchrun the rank that failed prints the line (prefixed by its rank unless it is rank 0); the
    other ranks stop with the same status and print nothing (their error is a `RankFailure`).
    """
    try:
        return body() or 0
    except (RecformerError, OSError, ValueError) as e:
        if getattr(e, "failed_rank", None) is None:  # not another rank's failure, reported there
            rank = os.environ.get("RANK", "0")
            prefix = f"rank {rank}: " if rank != "0" else ""
            print(f"error: {prefix}{error_line(e)}", file=sys.stderr, flush=True)
        return exit_code(e)
