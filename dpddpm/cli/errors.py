"""What the command line reports when a command fails or is stopped.

A user error (a missing, unreadable or corrupt file, an output that cannot be written, a bad combination of
options, a model or data that does not match a file) prints its whole message and exits with status 2; anything
else is a bug in dpddpm and keeps its traceback. Ctrl-C exits with 130 and SIGTERM with 143, naming the file in
which a cost-matrix run left its finished rows.
"""

from __future__ import annotations

import argparse
import errno
import sys

import torch

from ..files import Terminated


class UsageError(ValueError):
    """A bad combination of command-line arguments."""


#: exceptions that report what the user gave (a path, an option, a file's contents, a model); anything else is
#: a bug in dpddpm and keeps its traceback. NotImplementedError: a model feature dpddpm does not support;
#: FloatingPointError: NaN/Inf in the model's output (raised by validation.check_finite).
USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    NotImplementedError,
    FloatingPointError,
)

#: what to do about an error the operating system reported on a path
_OS_HINTS = {
    errno.EACCES: "check its permissions, or choose another path",
    errno.EPERM: "check its permissions, or choose another path",
    errno.EISDIR: "it is a folder; give a file",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EROFS: "the file system is read-only; choose another path",
    errno.ENOSPC: "the disk is full; free some space or choose another path",
    errno.EDQUOT: "the disk quota is exceeded; free some space or choose another path",
}


def user_error_message(exc: BaseException) -> str | None:
    """The whole message to show for a user error, or None for an internal error (which keeps its traceback)."""
    if isinstance(exc, OSError) and exc.strerror and (exc.errno in _OS_HINTS or isinstance(exc, USER_ERRORS)):
        # raised by the operating system: "[Errno 13] Permission denied: 'x'" reads better as a sentence
        what = exc.strerror if exc.filename is None else f"cannot access {exc.filename}: {exc.strerror}"
        hint = _OS_HINTS.get(exc.errno)
        return what + (f" ({hint})" if hint else "")
    if isinstance(exc, ImportError):  # a missing optional extra, named with its install line by dpddpm
        return str(exc) if "pip install" in str(exc) else None
    if isinstance(exc, torch.cuda.OutOfMemoryError):  # a resource limit the user can act on
        return (
            "out of GPU memory: lower --batch-size (a cost-matrix run keeps its finished rows; continue it "
            "with --resume)"
        )
    if isinstance(exc, USER_ERRORS):
        return str(exc).strip() or type(exc).__name__
    return None


def report_error(args: argparse.Namespace, exc: Exception) -> bool:
    """Print a user error whole and return True; False for an internal error, which the caller re-raises."""
    message = user_error_message(exc)
    source = getattr(args, "checkpoint", None) or getattr(args, "diffusers", None)
    if message is not None and isinstance(exc, FloatingPointError) and source:  # say which weights computed it
        message += f" (the model's weights in {source} may be damaged, or do not fit its flags)"
    if message is not None:
        print(f"dpddpm {args.command}: error: {message}", file=sys.stderr)
    return message is not None


def report_stopped(args: argparse.Namespace, exc: KeyboardInterrupt) -> int:
    """Report Ctrl-C (exit 130) or SIGTERM (143), and where finished cost-matrix rows wait for --resume."""
    terminated = isinstance(exc, Terminated)
    what = "terminated (SIGTERM)" if terminated else "interrupted"
    rows = getattr(args, "rows_file", None)
    if rows is not None and rows.exists():
        what += f"; finished rows are saved in {rows}; continue with --resume"
    print(f"dpddpm {args.command}: {what}", file=sys.stderr)
    return 143 if terminated else 130
