"""The one exception base of the library, and how a command turns an exception into its exit code.

Every error the library raises on purpose is a `RecformerError`, whose message is one line naming the
file, line, key or flag at fault. Errors about bad input (a file, a flag, a checkpoint, data) are also
`ValueError`s, as they were before the common base existed, so `except ValueError` keeps working;
failures that are not the user's input (a diverged run, another rank's failure) set `exit_code` 1.

Commands exit 2 on bad input and 1 on an internal failure (`exit_code`), and print one `error:` line
for either; an unexpected exception keeps its traceback. Importing this module costs nothing (no torch),
so the data commands use it too.
"""

from __future__ import annotations

BAD_INPUT = 2
FAILURE = 1


class RecformerError(Exception):
    """Base of every error the library raises on purpose; its message is one line.

    `exit_code`: what a command exits with when it stops on this error (2: bad input, 1: a failure
    that is not the input's fault).
    """

    exit_code = BAD_INPUT


class RecformerFailure(RecformerError):
    """A run that failed for a reason other than its input (e.g. the loss diverged): exit code 1."""

    exit_code = FAILURE


def exit_code(error: BaseException) -> int:
    """The exit code of a command that stops on `error`: the error's own, 2 for bad input that the standard
    library reports (a missing or unreadable file, an invalid value), else 1."""
    if isinstance(error, RecformerError):
        return error.exit_code
    if isinstance(error, (OSError, ValueError)):
        return BAD_INPUT
    return FAILURE


def error_line(error: BaseException) -> str:
    """One line for an error: an `OSError` with a file name as "path: reason", anything else as its text."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        target = f" -> {error.filename2}" if error.filename2 is not None else ""
        return f"{error.filename}{target}: {error.strerror}"
    text = str(error).replace("\n", " ")
    return text or type(error).__name__
