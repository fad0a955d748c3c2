"""How the command line ends on an error: one line on stderr and the contract's exit code.

0 success; 1 some job failed (or an error that is nobody's input); 2 bad usage or bad input;
3 cannot reach the server. A traceback is printed only with `--debug`.
"""

from __future__ import annotations

import os
import sys
import traceback

import typer

from shoal.cli.render import sanitize
from shoal.core.errors import ShoalError

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, ShoalError | typer.TyperException):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return 1


def error_line(exc: BaseException) -> str:
    """The one line that tells the user what went wrong."""
    if isinstance(exc, typer.TyperException):  # usage errors from argument parsing
        message = exc.format_message()
        ctx = getattr(exc, "ctx", None)
        if ctx is not None and exc.exit_code == EXIT_BAD_INPUT:
            message += f" (see '{ctx.command_path} --help')"
    elif isinstance(exc, ShoalError):
        message = str(exc)
    elif isinstance(exc, typer.Abort):
        message = "aborted"
    elif isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        message = f"{exc.strerror}{where}"
    else:
        message = f"internal error: {type(exc).__name__}: {exc} (run with --debug for details)"
    return "shoal: " + " ".join(sanitize(message).split())  # messages can quote job data


def report(exc: BaseException, *, debug: bool) -> int:
    """Print `exc` as the user should see it and return the exit code."""
    if isinstance(exc, BrokenPipeError):
        # The reader went away (`shoal jobs | head`): not an error worth a message.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, SystemExit):  # a verb that exits by itself, as Python would
        if isinstance(exc.code, int) or exc.code is None:
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    if debug:
        traceback.print_exception(exc)
    print(error_line(exc), file=sys.stderr)
    return exit_code_for(exc)
