"""The cost-matrix file format, and the checks of each field of a :class:`~dpddpm.costmatrix.CostMatrix`.

A cost file is one ``.npz`` archive (see :mod:`dpddpm.costmatrix` for what each array means):

- format 2 (written now): ``rows``, the finished KL rows t >= 2, increasing; ``kl_packed`` and ``stderr_packed``,
  the entries L(t, 1..t-1) of those rows concatenated row after row; ``decoder``, ``prior``, ``counts`` and the
  optional (T+1,) vectors ``decoder_stderr``, ``prior_stderr``, ``mse``, ``mse_stderr``, and ``image_hashes``;
- format 1 (still read): the full (T+1, T+1) matrices ``kl`` and ``stderr`` instead of the packed rows.

The run info is the ``meta`` entry, a JSON string that also records ``format_version`` and ``checksum`` (a hash of
every other array, so a damaged file cannot pass for a valid one). Every array and meta field is checked for its
type, shape and range on reading, and arrays are read through :func:`dpddpm.npzread.npz_arrays`, which
refuses a header that declares more data than the file holds.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

from .files import atomic_write, npz_path, parse_json
from .floatplanes import fits_float32, from_planes, savez_deflated, to_planes
from .npzread import npz_arrays
from .runinfo import RunInfo
from .validation import check_int


class CostFields(Protocol):
    """What a file holds: the fields of a :class:`~dpddpm.costmatrix.CostMatrix` (typed here without importing
    it, since the matrix builds on this module)."""

    kl: np.ndarray
    stderr: np.ndarray | None
    decoder: np.ndarray
    decoder_stderr: np.ndarray | None
    prior: np.ndarray
    prior_stderr: np.ndarray | None
    counts: np.ndarray
    mse: np.ndarray | None
    mse_stderr: np.ndarray | None
    image_hashes: np.ndarray | None
    info: RunInfo

    @property
    def rows_done(self) -> np.ndarray: ...


#: 3: format 2 in byte planes, deflated, standard errors in float32 (half the size or less); 2: only the computed
#: rows' entries; 1: full (T+1, T+1) matrices. Every format is read.
FORMAT_VERSION = 3
#: the arrays of each file format: (required, optional)
_ARRAYS = {
    1: (
        {"meta", "kl", "decoder", "prior"},
        {"stderr", "decoder_stderr", "prior_stderr", "counts", "mse", "mse_stderr", "image_hashes"},
    ),
    2: (
        {"meta", "rows", "kl_packed", "decoder", "prior", "counts"},
        {"stderr_packed", "decoder_stderr", "prior_stderr", "mse", "mse_stderr", "image_hashes"},
    ),
    3: (
        {"meta", "rows", "kl_planes", "decoder", "prior", "counts"},
        {"stderr_planes", "decoder_stderr", "prior_stderr", "mse", "mse_stderr", "image_hashes"},
    ),
}
#: format 3 stores the packed edges as byte planes (:mod:`dpddpm.floatplanes`): the costs exactly (float64), their
#: standard errors (an estimate's own uncertainty, used for error bars) to float32's 7 digits when float32 holds them
_PLANES = ("kl", "stderr")
#: the largest T a file may declare (a (T+1, T+1) float64 matrix of T = 2**15 takes 8 GiB)
MAX_T = 2**15

Built = TypeVar("Built")


@functools.lru_cache(maxsize=4)
def valid_edges(T: int) -> np.ndarray:
    """Boolean (T+1, T+1), read-only: True where an edge t -> s exists, i.e. 2 <= t <= T and 1 <= s < t.

    Cached: every matrix of a run asks for the same 16 MB mask at T = 4000.
    """
    t = np.arange(T + 1)[:, None]
    s = np.arange(T + 1)[None, :]
    mask = (s >= 1) & (s < t)
    mask.setflags(write=False)
    return mask


@functools.lru_cache(maxsize=4)
def _no_edges(T: int) -> np.ndarray:
    """The complement of :func:`valid_edges`, cached and read-only."""
    mask = ~valid_edges(T)
    mask.setflags(write=False)
    return mask


# ---------------------------------------------------------------------------------------------------- writing
def write_costs(costs: CostFields, path: str | os.PathLike) -> Path:
    """Write ``costs`` as one format-3 ``.npz`` file atomically (see :meth:`CostMatrix.save`); returns the path."""
    rows = np.flatnonzero(costs.rows_done[2:]) + 2  # finished KL rows t >= 2
    arrays = {
        "rows": rows,
        "kl_planes": to_planes(_pack(costs.kl, rows), np.float64),
        "decoder": costs.decoder,
        "prior": costs.prior,
        "counts": costs.counts,
    }
    if costs.stderr is not None:
        stderr = _pack(costs.stderr, rows)
        arrays["stderr_planes"] = to_planes(stderr, np.float32 if fits_float32(stderr) else np.float64)
    for name in ("decoder_stderr", "prior_stderr", "mse", "mse_stderr", "image_hashes"):
        if getattr(costs, name) is not None:
            arrays[name] = getattr(costs, name)
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    meta = np.array(costs.info.to_json(format_version=FORMAT_VERSION, checksum=_checksum(arrays)))
    return atomic_write(npz_path(path), lambda fh: savez_deflated(fh, {"meta": meta, **arrays}))


def _pack(matrix: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The entries matrix[t, 1:t] of the given rows, concatenated: float64 (sum(t - 1),)."""
    if len(rows) == 0:
        return np.zeros(0)
    return np.concatenate([matrix[t, 1:t] for t in rows])


def _unpack(packed: np.ndarray, rows: np.ndarray, T: int) -> np.ndarray:
    """Inverse of :func:`_pack`: a (T+1, T+1) matrix, NaN outside the given rows."""
    lengths = np.asarray(rows, dtype=np.int64) - 1
    if packed.ndim != 1 or lengths.sum() != packed.size:
        raise ValueError(f"packed rows hold {packed.size} values, expected {int(lengths.sum())}")
    out = np.full((T + 1, T + 1), np.nan)
    for t, chunk in zip(rows, np.split(packed, np.cumsum(lengths)[:-1])):
        out[t, 1:t] = chunk
    return out


def _checksum(arrays: Mapping[str, np.ndarray]) -> str:
    """A hash of every array but ``meta`` (names, dtypes, shapes and bytes): a damaged file cannot pass for a
    valid one, while its meta JSON stays readable and editable (its fields are checked one by one)."""
    h = hashlib.sha256()
    for name in sorted(k for k in arrays if k != "meta"):
        arr = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{arr.dtype.str}:{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:32]


# ---------------------------------------------------------------------------------------------------- reading
def read_costs(path: str | os.PathLike, build: Callable[..., Built]) -> Built:
    """``build(info=..., **arrays)`` on the checked contents of a cost file of format 1, 2 or 3.

    Raises:
        FileNotFoundError, IsADirectoryError: no file at ``path``.
        ValueError: the file, or what ``build`` makes of it, fails a check; the message names the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no cost-matrix file at {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; expected a cost-matrix .npz file")
    try:
        arrays, info = _read(path)
        return build(info=info, **arrays)
    except (ValueError, TypeError, KeyError, IndexError, RecursionError, OverflowError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).strip() or type(exc).__name__
        raise ValueError(
            f"{path} is not a readable dpddpm cost-matrix file ({reason}); recompute it with `dpddpm costs`"
        ) from None


def _read(path: Path) -> tuple[dict[str, np.ndarray], RunInfo]:
    """The constructor's arrays and the run info of a file of format 1, 2 or 3, each checked for type and shape."""
    arrays = npz_arrays(path)
    meta, version = _read_meta(arrays)
    required, optional = _ARRAYS[version]
    missing, extra = sorted(required - {"meta"} - set(arrays)), sorted(set(arrays) - required - optional)
    if missing or extra:
        raise ValueError(
            ("missing arrays " + ", ".join(map(repr, missing)) if missing else "")
            + ("; " if missing and extra else "")
            + ("unknown arrays " + ", ".join(map(repr, extra)) if extra else "")
        )
    checksum = meta.pop("checksum", None)  # files from before checksums were recorded have none
    if checksum is not None and checksum != _checksum(arrays):
        raise ValueError("its arrays do not match the checksum it was saved with: the file is damaged")
    for name, arr in arrays.items():  # costs are floats, counts and rows integers, hashes uint64: nothing cast
        kinds = {"counts": "iu", "rows": "iu", "image_hashes": "u"}.get(name, "u" if name.endswith("_planes") else "f")
        exact = {"image_hashes": np.uint64, "kl_planes": np.uint8, "stderr_planes": np.uint8}.get(name)
        if arr.dtype.kind not in kinds or (exact is not None and arr.dtype != exact):
            raise ValueError(f"array {name!r} has dtype {arr.dtype}, which dpddpm never writes there")
    if version >= 2:
        _unpack_rows(arrays, check_int(meta.get("T"), "meta 'T'", low=2, high=MAX_T))
    elif arrays["kl"].ndim != 2 or not 3 <= arrays["kl"].shape[0] <= MAX_T + 1:
        raise ValueError(f"'kl' must be a (T+1, T+1) matrix with 2 <= T <= {MAX_T}, got shape {arrays['kl'].shape}")
    return arrays, RunInfo.from_dict(meta)


def _read_meta(arrays: dict[str, np.ndarray]) -> tuple[dict, int]:
    """Take the ``meta`` entry out of ``arrays``: (the run info's JSON object, the format version it records)."""
    if "meta" not in arrays:
        raise ValueError("no 'meta' entry")
    meta_array = arrays.pop("meta")
    if meta_array.shape != () or meta_array.dtype.kind != "U":
        raise ValueError("its 'meta' entry is not a JSON string")
    meta = parse_json(str(meta_array))
    if not isinstance(meta, dict):
        raise ValueError("its 'meta' entry is not a JSON object")
    version = meta.pop("format_version", 1)
    if isinstance(version, bool) or version not in _ARRAYS:
        raise ValueError(f"unknown format_version {version!r} (this dpddpm reads 1, 2 and 3; a newer one wrote it?)")
    return meta, version


def _unpack_rows(arrays: dict[str, np.ndarray], T: int) -> None:
    """Formats 2 and 3: replace ``rows`` and the packed arrays by full (T+1, T+1) matrices ``kl`` and ``stderr``."""
    rows = arrays.pop("rows")
    if rows.ndim != 1 or rows.dtype.kind not in "iu":
        raise ValueError(f"'rows' must be a 1-D integer array, got {rows.dtype} {rows.shape}")
    if rows.size and (rows.min() < 2 or rows.max() > T or np.any(np.diff(rows) <= 0)):
        raise ValueError(f"'rows' must be increasing times in 2..T = {T}")
    for name in _PLANES:  # format 3: the packed values from their byte planes
        if f"{name}_planes" in arrays:
            arrays[f"{name}_packed"] = from_planes(arrays.pop(f"{name}_planes"))
    for name in ("kl_packed", "stderr_packed"):
        if name in arrays:
            arrays[name[: -len("_packed")]] = _unpack(arrays.pop(name), rows, T)
    counts = arrays["counts"]
    if counts.shape == (T + 1,) and np.any(counts[rows] == 0):
        raise ValueError("'rows' lists rows whose count is 0")


# ---------------------------------------------------------------------------------------------------- fields
def as_counts(counts, n: int) -> np.ndarray:
    """(T+1,) int64 sample counts: integers >= -1 (-1: unknown), never fractions."""
    arr = np.asarray(counts)
    if arr.shape != (n,):
        raise ValueError(f"counts must have shape {(n,)}, got {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError("counts must be whole numbers")
    elif arr.dtype.kind not in "iub":
        raise ValueError(f"counts must be integers, got dtype {arr.dtype}")
    if np.any(arr < -1) or np.any(arr > 2**53):
        raise ValueError("counts must be >= 0 (or -1: unknown)")
    return arr.astype(np.int64)


def as_hashes(hashes, n: int | None) -> np.ndarray:
    """uint64 (N,) per-image hashes; N must match the run info's when it records one."""
    arr = np.asarray(hashes)
    if arr.ndim != 1 or arr.dtype != np.uint64:
        raise ValueError(f"image_hashes must be a uint64 (N,) array, got {arr.dtype} {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"image_hashes holds {arr.shape[0]} hashes for N = {n} images")
    return arr.copy()


def as_matrix(x, name: str, n: int | None = None, copy: bool = True) -> np.ndarray:
    """A float64 square (T+1, T+1) matrix with NaN outside the valid edges s < t: a copy, or ``x`` itself when
    ``copy`` is False and it is already float64 (for arrays made for the matrix, e.g. by :meth:`CostMatrix.empty`)."""
    arr = np.array(x, dtype=np.float64) if copy else np.asarray(x, dtype=np.float64)
    if n is None and (arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] < 3):
        raise ValueError(f"{name} must be a square (T+1, T+1) matrix with T >= 2, got shape {arr.shape}")
    if n is not None and arr.shape != (n, n):
        raise ValueError(f"{name} must have shape {(n, n)}, got {arr.shape}")
    np.copyto(arr, np.nan, where=_no_edges(arr.shape[0] - 1))
    return arr


def as_vector(x, name: str, n: int, first: int) -> np.ndarray:
    """A float64 copy of a (T+1,) vector with its entries below ``first`` (no such time) set to NaN."""
    arr = np.array(x, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape {(n,)} to match kl, got {arr.shape}")
    arr[:first] = np.nan
    return arr
