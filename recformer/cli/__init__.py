"""Command-line entry points (`[project.scripts]` in pyproject.toml; the top-level scripts are shims).

Each module has `build_parser()` and `main(argv=None) -> int`: parse, build library objects, call
one library function, print. Exit code 2 means bad input, named in one `error:` line.

Every module imports only argparse, `recformer.args` and other modules free of torch and transformers at
the top; the model libraries load in `main` after the arguments are parsed and checked, so that `--help`
and argument errors answer at once (`bench/bench_startup.py`, `tests/test_startup.py`).
"""

from __future__ import annotations

import os
import sys
from typing import Any


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
