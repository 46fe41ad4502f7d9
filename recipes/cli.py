"""What every command line of the project does with a user error: one line, exit status 2."""

from __future__ import annotations

import sys
from typing import Callable

USER_ERRORS = (ValueError, OSError, FloatingPointError)  # ConfigError, CheckpointError, data, I/O, divergence


def one_line(err: BaseException) -> str:
    """The message of a user error as one line (an OSError also names its path; a stray newline is folded)."""
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError) and err.filename:
        text = f"{err.filename}: {err.strerror or err}; check the path and its permissions"
    elif isinstance(err, FileNotFoundError) and err.filename:
        text = f"{err.filename}: file not found; check the path"
    else:
        text = str(err) or type(err).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def run_command(body: Callable[[], int | None], debug: bool, also: tuple[type[BaseException], ...] = ()) -> int:
    """Run a command's body; a user error (or one of the command's own `also` types, e.g. the pipeline's
    RuntimeError for a failed stage) prints `error: <one line>` and returns 2 (`--debug` re-raises)."""
    try:
        return body() or 0
    except (*USER_ERRORS, *also) as err:
        if debug:
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
