"""Writing files safely.

- :func:`atomic_write`: a temp file in the target's folder, flushed to disk, then renamed over the target, so a
  reader never sees half a file.
- :func:`claim_output`: an exclusive lock on an output path for the length of a run, so two runs can never
  both write it (the second is refused at once), and temp files that a killed run left behind are removed.
- :func:`read_json`: a JSON file, or an error that names it; :func:`write_json`: one, atomically.
- :func:`sigterm_raises`: SIGTERM (what torchrun and job schedulers send) raises :class:`Terminated`, so the
  same cleanup that saves work on Ctrl-C runs on SIGTERM too; :func:`signals_ignored` shields the save that
  such an interruption triggers from a second Ctrl-C or SIGTERM.

Locks and temp files never follow symbolic links: a link planted in a shared folder cannot redirect a write.
Reading ``.npz`` archives safely is :mod:`dpddpm.npzread`'s work.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import json
import math
import os
import re
import secrets
import signal
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

#: the largest JSON file read (bytes): every JSON file dpddpm reads is a few hundred kB at most
MAX_JSON_BYTES = 64 * 2**20


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM inside :func:`sigterm_raises`."""


def read_json(path: str | os.PathLike, what: str) -> Any:
    """The parsed contents of a JSON file; a file that is not JSON text raises a ValueError naming it.

    Files over :data:`MAX_JSON_BYTES` and nesting too deep to parse are refused the same way.
    """
    size = Path(path).stat().st_size
    if size > MAX_JSON_BYTES:
        raise ValueError(f"{what} {path} is {size} bytes, far larger than such a file can be; check the path")
    try:
        return parse_json(Path(path).read_text(encoding="utf-8"))
    except RecursionError:
        raise ValueError(f"{what} {path} is nested too deeply to be such a file; fix or re-create it") from None
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{what} {path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); fix or re-create it"
        ) from None
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path} is not a JSON text file (it is not UTF-8); check the path") from None


def parse_json(text: str) -> Any:
    """``json.loads`` that refuses the non-standard constants NaN, Infinity and -Infinity (a ValueError)."""

    def refuse(name: str) -> Any:
        raise json.JSONDecodeError(f"{name} is not JSON", text, 0)

    return json.loads(text, parse_constant=refuse)


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None (JSON's null), in nested dicts and lists."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON text (with a final newline) through :func:`atomic_write`; returns the path.

    NaN and infinite floats are written as null (standard JSON has no NaN).
    """
    text = (json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n").encode()
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
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
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

    Only safe while holding :func:`claim_output` on ``path`` (no live writer can own them then). Only regular
    files named exactly like :func:`_temp_name`'s are removed: the name is escaped (``c[1].npz`` must not match
    another run's ``.c1.npz.*.tmp``), and links or folders are left alone.
    """
    path = Path(path)
    exact = re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]{{8}}\.tmp")
    stale = []
    for tmp in sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp")):
        try:
            regular = stat.S_ISREG(os.lstat(tmp).st_mode)
        except FileNotFoundError:
            continue
        if regular and exact.fullmatch(tmp.name):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            stale.append(tmp)
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

    Every command that writes a cost or variances file takes this one lock. The lock file is opened without
    following links and must be a regular file, so a link planted as ``.<name>.lock`` cannot make a run
    truncate another file.

    Raises:
        FileExistsError: another live process holds the lock (its pid is named when known), or the lock's
            name is taken by a link, a folder or another non-regular file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_path(path)
    while True:
        fd = _open_lock(lock, path)
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


def _open_lock(lock: Path, path: Path) -> int:
    """Open (creating) the lock file ``lock`` of ``path`` without following a link; refuse anything not regular."""
    refuse = (
        f"the lock file {lock} of {path} is not a regular file (a link, folder or device): remove it if no "
        "run is writing the output, or choose another output"
    )
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.EMLINK):
            raise FileExistsError(refuse) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FileExistsError(refuse)
    return fd


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Inside the block, SIGINT and SIGTERM are ignored (in the main thread; elsewhere: no change).

    Wraps the save that an interruption triggers, so that a second Ctrl-C or SIGTERM cannot abort it and lose
    every finished row; the previous handlers are restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
