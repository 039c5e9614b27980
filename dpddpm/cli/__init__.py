"""The ``dpddpm`` command line: cost matrices, optimal schedules, ELBOs, samples, exports, Table 1.

Every subcommand has ``--help``. The command line only parses (:mod:`.parser`), loads what its options name
(:mod:`.inputs`), calls the library (:mod:`.commands`, :mod:`.merging`, :mod:`.samples`) and reports
(:mod:`.errors`): errors that are the user's print their whole message and exit with code 2, without a
traceback; anything else is a bug and keeps its traceback; Ctrl-C exits with 130, SIGTERM with 143. Outputs are
checked before any model or data is loaded.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from . import commands, inputs
from .errors import USER_ERRORS, UsageError, report_error, report_stopped, user_error_message
from .inputs import check_output, load_data, load_model
from .parser import build_parser

__all__ = [
    "USER_ERRORS",
    "UsageError",
    "build_parser",
    "check_output",
    "commands",
    "inputs",
    "load_data",
    "load_model",
    "main",
    "user_error_message",
]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dpddpm`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's shutdown
        return status
    except BrokenPipeError:  # e.g. `dpddpm schedule ... | head -1`: the reader has all it wanted
        _silence_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for a command stopped by a closed pipe
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM during a cost-matrix run (files.Terminated)
        return report_stopped(args, exc)
    except Exception as exc:
        if not report_error(args, exc):
            raise
        return 2


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush cannot fail on a closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured in tests)
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
