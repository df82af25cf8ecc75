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

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from recformer.errors import FAILURE, RecformerError, error_line, exit_code


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
    other ranks stop with the same status and print nothing (their error is a `RankFailure`). A process of
    a multi-process launch that stops on an error leaves at once (`leave_launch`).
    """
    rank = os.environ.get("RANK", "0")
    prefix = f"rank {rank}: " if rank != "0" else ""
    try:
        return body() or 0
    except (RecformerError, OSError, ValueError) as e:
        if getattr(e, "failed_rank", None) is None:  # not another rank's failure, reported there
            print(f"error: {prefix}{error_line(e)}", file=sys.stderr, flush=True)
        return leave_launch(exit_code(e))  # inside the handler: before the error and its frames are freed
    except RuntimeError as e:
        if not lost_peer(e):
            raise
        reason = error_line(e).split(" (", 1)[0][:200]
        print(f"error: {prefix}another process of this launch stopped ({reason}); its own error says why",
              file=sys.stderr, flush=True)  # fmt: skip
        return leave_launch(FAILURE)


def leave_launch(code: int) -> int:
    """`code`, or, in a process of a multi-process launch (WORLD_SIZE > 1), exit with it now, after flushing
    the logs and the console.

    A rank that stopped on its own error while the others wait in a collective for it (a gradient
    all-reduce) must not wait for the interpreter's clean-up: freeing the error's frames, which hold the
    distributed model, blocked on the collective the others are stuck in, and then no process of the
    launch ever ended. Once this process has exited, torchrun stops the others.
    """
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return code
    logging.shutdown()  # flushes and closes every handler (the run folder's run.log among them)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# What the process-group backends say when a peer process has gone away.
LOST_PEER_SIGNS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted")


def lost_peer(error: BaseException) -> bool:
    """Whether `error` is a collective of a torchrun launch (WORLD_SIZE > 1) that failed because another
    process stopped: torch.distributed's backend errors, or gloo/NCCL's connection errors. The process that
    stopped first reports its own error; the others then say so in one line instead of a backend traceback."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return False
    if type(error).__name__ in ("DistBackendError", "DistNetworkError", "DistStoreError"):
        return True
    return any(sign in str(error) for sign in LOST_PEER_SIGNS)
