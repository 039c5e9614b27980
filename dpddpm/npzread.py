"""Reading ``.npz`` archives without trusting them: :func:`npz_arrays`.

Each member's ``.npy`` header is checked against what the archive holds for it and against the machine's memory
before anything is read, so a crafted header cannot make a reader allocate terabytes; members that hold Python
objects (pickles) are refused.
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: the most memory one array read from an ``.npz`` may take, as a share of the machine's memory
_NPZ_MEMORY_SHARE = 0.5
#: deflate cannot expand data more than ~1032 times
_DEFLATE_MAX_RATIO = 1100


def _physical_memory() -> int:
    """The machine's memory in bytes (2**40 when unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 2**40


def _check_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, file_size: int) -> None:
    """Refuse an ``.npy`` member whose header declares more data than it holds, or than memory allows."""
    with archive.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = header(fh, max_header_size=10_000)
        header_bytes = fh.tell()
    if dtype.hasobject:
        raise ValueError(f"array {info.filename!r} holds Python objects, which dpddpm never writes nor reads")
    declared = math.prod(shape) * dtype.itemsize
    expand = 1 if info.compress_type == zipfile.ZIP_STORED else _DEFLATE_MAX_RATIO
    if (
        declared + header_bytes != info.file_size
        or info.compress_size > file_size
        or info.file_size > expand * max(info.compress_size, 1)
    ):
        raise ValueError(
            f"array {info.filename!r} declares shape {shape} ({declared} bytes) but the archive holds "
            f"{info.file_size} bytes for it"
        )
    if declared > _NPZ_MEMORY_SHARE * _physical_memory():
        raise ValueError(f"array {info.filename!r} of shape {shape} needs {declared / 2**30:.1f} GiB, more than memory")


def npz_arrays(path: str | os.PathLike, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file (only ``names``, when given), read without pickles.

    Each member's ``.npy`` header is read first and its declared size compared with the bytes the archive
    holds for it and with the machine's memory, so a forged header is refused before anything is allocated.

    Raises:
        ValueError: not a zip archive of ``.npy`` arrays, a member that declares more than it holds, or
            truncated or corrupt bytes (the caller adds the file's name and the fix).
    """
    path = Path(path)
    file_size = path.stat().st_size
    with open(path, "rb") as fh:  # np.load reads anything else as a pickle and then suggests allow_pickle=True
        if fh.read(4) != b"PK\x03\x04":
            raise ValueError("not an .npz archive")
    try:
        with zipfile.ZipFile(path) as archive:
            members = {i.filename[: -len(".npy")]: i for i in archive.infolist() if i.filename.endswith(".npy")}
            wanted = list(members) if names is None else [n for n in names if n in members]
            for name in wanted:
                _check_member(archive, members[name], file_size)
        with np.load(path, allow_pickle=False) as f:
            return {name: f[name] for name in wanted}
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        OSError,
        KeyError,
        OverflowError,
        SyntaxError,
        NotImplementedError,  # zipfile: an unknown version or compression method
        RuntimeError,  # zipfile: an encrypted member
    ) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"truncated or corrupt ({reason})") from None
