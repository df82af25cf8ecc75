"""What the processing commands (`recformer/cli/`) do around their step: print the arguments, run it, and
print a stats summary, or one error line naming the file."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from recformer.data.formats import STATS, DataFile
from recformer.errors import error_line, exit_code
from recformer.io.fileio import dumps_json


def dump_stats(stats: Mapping[str, Any], per_file: bool = False) -> str:
    """Stats as indented JSON text, for printing; the per-file lists are left out unless `per_file`."""

    def brief(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: brief(v) for k, v in value.items() if per_file or not _is_file_list(v)}
        return value

    return dumps_json(brief(stats), indent=True).decode("utf-8")


def _is_file_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def format_args(args: Any) -> str:
    """Resolved command-line arguments, one per line, for the scripts to print once."""
    return "arguments:\n" + "\n".join(f"  {k} = {v}" for k, v in vars(args).items())


def run_cli(
    args: Any,
    output_dir: str | os.PathLike,
    job: Callable[[], Mapping[str, Any]],
    stats_file: DataFile = STATS,
) -> int:
    """Print the arguments, run `job()`, print a stats summary (or one error line naming the file) and
    return the exit code: 0, or 2 for bad input (`recformer.errors.exit_code`)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(format_args(args))
    try:
        stats = job()
    except (OSError, ValueError) as e:
        print(f"error: {error_line(e)}", file=sys.stderr)
        return exit_code(e)
    print(dump_stats({"args": vars(args), **stats}))
    print(f"full stats: {os.path.join(output_dir, stats_file.name)}")
    return 0
