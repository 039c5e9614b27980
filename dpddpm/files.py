"""Writing files safely.

- :func:`atomic_write`: a temp file in the target's folder, flushed to disk, then renamed over the target, so a
  reader never sees half a file.
- :func:`claim_output`: an exclusive lock on an output path for the length of a run, so two runs can never
  both write it (the second is refused at once), and temp files that a killed run left behind are removed.
- :func:`read_json`: a JSON file, or an error that names it; :func:`write_json`: one, atomically.
- :func:`sigterm_raises`: SIGTERM (what torchrun and job schedulers send) raises :class:`Terminated`, so the
  same cleanup that saves work on Ctrl-C runs on SIGTERM too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM inside :func:`sigterm_raises`."""


def read_json(path: str | os.PathLike, what: str) -> Any:
    """The parsed contents of a JSON file; a file that is not JSON text raises a ValueError naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{what} {path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); fix or re-create it"
        ) from None
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path} is not a JSON text file (it is not UTF-8); check the path") from None


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON text (with a final newline) through :func:`atomic_write`; returns the path."""
    text = (json.dumps(obj, indent=2) + "\n").encode()
    return atomic_write(path, lambda fh: fh.write(text))


def npz_path(path: str | os.PathLike) -> Path:
    """The file that is actually written for ``path``: ``.npz`` is appended when missing."""
    path = Path(path)
    if path.suffix == ".npz":
        return path
    return path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")


def _temp_name(path: Path) -> Path:
    """A hidden temp file beside ``path``: ``.<name>.<random>.tmp`` (see :func:`remove_stale_temps`)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(fh)`` on a temp file beside ``path``, fsync it, then rename it to ``path``.

    A reader never sees a half-written file, and an interrupted write leaves the old file intact. A temp file
    that survives a SIGKILL is removed by the next :func:`claim_output` of the same path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete the temp files that :func:`atomic_write` left beside ``path`` when a run was killed mid-write.

    Only safe while holding :func:`claim_output` on ``path`` (no live writer can own them then).
    """
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.*.tmp"))
    for tmp in stale:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return stale


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file that guards ``path``: ``.<name>.lock`` in the same folder."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def claim_output(path: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on the output ``path`` for the duration of the ``with`` block.

    The lock is an ``flock`` on ``.<name>.lock``: the kernel releases it when the process dies, even by
    SIGKILL, so a crashed run never blocks the next one. Stale temp files of ``path`` are removed once the
    lock is held, and the lock file itself is removed on exit.

    Raises:
        FileExistsError: another live process holds the lock (its pid is named when known).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_path(path)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise FileExistsError(
                f"another run (pid {holder}) is writing {path}; wait for it to finish or choose another output"
            ) from None
        # The holder before us may have unlinked the lock file after we opened it: then our lock guards a
        # file nobody else will open, so start again on the current one.
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        remove_stale_temps(path)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)  # releases the flock


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Inside the block, SIGTERM raises :class:`Terminated` in the main thread (elsewhere: no change).

    The previous handler is restored on exit. Outside the main thread Python cannot install handlers, so the
    block then runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated("terminated by SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
