"""The matrix of ELBO edge costs that the optimizer runs on, and its file format.

Indexing is by 1-based time. For a model with T steps:
    kl[t, s]      = L(t, s), the KL edge t -> s, valid for 2 <= t <= T and 1 <= s < t
    decoder[u]    = -log p(x_0 | x_1) when the next kept time above 1 is u, valid for 2 <= u <= T
    prior[t]      = KL(q(x_t | x_0) || N(0, I)), valid for 1 <= t <= T
    stderr, decoder_stderr, prior_stderr: Monte-Carlo standard errors of those means
    counts[t]     = number of samples behind row t (row 1 is the decoder row); 0 = not computed yet
    mse[t]        = m_t, the mean over images and dimensions of (x_0 - x^_0(x_t))^2 that row t saw, and
    mse_stderr[t]   its standard error over images (None in hand-built matrices and older files); the
                    analytic variances of :mod:`dpddpm.analytic` are made from them
    info          = the :class:`~dpddpm.runinfo.RunInfo` of the run: model settings, data and weight
                    fingerprints, seed (all None for a hand-built matrix)
    image_hashes  = uint64 (N,): one hash per data point (None in hand-built matrices and older files), so that
                    a merge of data shards can refuse shards that share an image
All values are float64 bits/dim. Entries outside the valid ranges are set to NaN by the constructor, whatever
was passed in, so a hand-built matrix can never offer the optimizer an edge s >= t.
"""

from __future__ import annotations

import hashlib
import os
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .files import atomic_write, npz_arrays, npz_path, parse_json
from .runinfo import RunInfo
from .validation import check_int

FORMAT_VERSION = 2  # 2: only the computed rows' entries are stored; 1: full (T+1, T+1) matrices


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


def valid_edges(T: int) -> np.ndarray:
    """Boolean (T+1, T+1): True where an edge t -> s exists, i.e. 2 <= t <= T and 1 <= s < t."""
    t = np.arange(T + 1)[:, None]
    s = np.arange(T + 1)[None, :]
    return (s >= 1) & (s < t)


class CostMatrix:
    """ELBO edge costs of one model on one data set (see the module docstring for the layout).

    Args:
        kl: (T+1, T+1) means of the edges, ``kl[t, s]`` = L(t, s); copied to float64.
        decoder: (T+1,) means of the decoder term, ``decoder[u]`` for the next kept time u above 1.
        prior: (T+1,) means of the prior term, ``prior[t]`` for a chain that starts at t.
        stderr, decoder_stderr, prior_stderr: their standard errors, or None.
        counts: (T+1,) samples per row; None for a hand-built matrix (every row then counts as computed).
        mse, mse_stderr: (T+1,) error of x^_0 per row and its standard error, or None.
        info: what the matrix was computed from; its T must be None or match kl.
        meta: the same as a plain dict (:meth:`RunInfo.from_dict`), e.g. ``dict(costs.meta, seed=1)``.
        image_hashes: uint64 (N,), one hash per data point (:func:`dpddpm.fingerprint.image_hashes`), or None.
    """

    def __init__(
        self,
        kl,
        decoder,
        prior,
        stderr=None,
        decoder_stderr=None,
        prior_stderr=None,
        counts=None,
        mse=None,
        mse_stderr=None,
        *,
        info: RunInfo | None = None,
        meta: Mapping[str, Any] | None = None,
        image_hashes: np.ndarray | None = None,
    ) -> None:
        if info is not None and meta is not None:
            raise TypeError("pass the run's info or its meta dict, not both")
        self.kl = _matrix(kl, "kl")
        n = self.kl.shape[0]
        self.stderr = None if stderr is None else _matrix(stderr, "stderr", n)
        self.decoder = _vector(decoder, "decoder", n, first=2)
        self.prior = _vector(prior, "prior", n, first=1)
        self.decoder_stderr = None if decoder_stderr is None else _vector(decoder_stderr, "decoder_stderr", n, 2)
        self.prior_stderr = None if prior_stderr is None else _vector(prior_stderr, "prior_stderr", n, 1)
        self.mse = None if mse is None else _vector(mse, "mse", n, 1)
        self.mse_stderr = None if mse_stderr is None else _vector(mse_stderr, "mse_stderr", n, 1)
        if counts is None:
            counts = np.r_[0, np.full(n - 1, -1)]  # -1: unknown, treated as computed
        self.counts = _counts(counts, n)
        self.info = info if info is not None else RunInfo.from_dict(meta or {})
        self.image_hashes = None if image_hashes is None else _hashes(image_hashes, self.info.N)
        self._validate_values()

    @classmethod
    def empty(
        cls, prior: np.ndarray, prior_stderr: np.ndarray, info: RunInfo, image_hashes: np.ndarray | None = None
    ) -> CostMatrix:
        """A matrix with no row computed yet (NaN everywhere, counts 0) for the (T+1,) prior of its data."""
        n = len(prior)
        return cls(
            kl=np.full((n, n), np.nan),
            decoder=np.full(n, np.nan),
            prior=prior,
            stderr=np.full((n, n), np.nan),
            decoder_stderr=np.full(n, np.nan),
            prior_stderr=prior_stderr,
            counts=np.zeros(n, dtype=np.int64),
            mse=np.full(n, np.nan),
            mse_stderr=np.full(n, np.nan),
            info=info,
            image_hashes=image_hashes,
        )

    def _validate_values(self) -> None:
        T = self.T
        done = self.rows_done
        tri = valid_edges(T) & done[:, None]
        bad = tri & ~np.isfinite(self.kl)
        if bad.any():
            t, s = np.argwhere(bad)[0]
            raise ValueError(f"the cost matrix holds {int(bad.sum())} NaN/Inf KL value(s), e.g. kl[{t}, {s}]")
        if done[1] and not np.all(np.isfinite(self.decoder[2:])):
            raise ValueError("the decoder costs hold NaN/Inf values")
        if not np.all(np.isfinite(self.prior[1:])):
            raise ValueError("the prior costs hold NaN/Inf values")

    # ------------------------------------------------------------------ run info
    @property
    def info(self) -> RunInfo:
        """The :class:`RunInfo` of the run that made this matrix (its T always that of the matrix)."""
        return self._info

    @info.setter
    def info(self, info: RunInfo) -> None:
        if info.T is not None and info.T != self.T:
            raise ValueError(f"the run info records T = {info.T} but the cost matrix has T = {self.T}")
        self._info = info.replace(T=self.T)

    @property
    def meta(self) -> Mapping[str, Any]:
        """A read-only dict view of :attr:`info` (recorded fields and extra keys), e.g. ``costs.meta["N"]``.

        Assigning a dict replaces :attr:`info`; to change one field use ``costs.info = costs.info.replace(...)``.
        """
        return types.MappingProxyType(self.info.as_dict())

    @meta.setter
    def meta(self, meta: Mapping[str, Any]) -> None:
        self.info = RunInfo.from_dict(meta)

    # ------------------------------------------------------------------ rows
    @property
    def T(self) -> int:
        return self.kl.shape[0] - 1

    @property
    def rows_done(self) -> np.ndarray:
        """Which rows are computed, a boolean array of shape (T+1,) (row 1 is the decoder row)."""
        done = self.counts != 0
        done[0] = False
        return done

    @property
    def is_complete(self) -> bool:
        return bool(self.rows_done[1:].all())

    def require_complete(self) -> None:
        if not self.is_complete:
            missing = np.flatnonzero(~self.rows_done[1:]) + 1
            raise ValueError(
                f"the cost matrix is partial: {missing.size} of {self.T} rows are missing "
                f"(first: t = {missing[:5].tolist()}); finish or merge the run first"
            )

    def _row_view(self, t: int) -> tuple[np.ndarray, np.ndarray | None, slice]:
        """(means, standard errors or None, the row's columns): views into kl and stderr, or into the decoder
        vectors for t = 1."""
        if t == 1:
            return self.decoder, self.decoder_stderr, slice(2, None)
        return self.kl[t], None if self.stderr is None else self.stderr[t], slice(1, t)

    def row(self, t: int) -> tuple[np.ndarray, np.ndarray | None, int]:
        """(mean, stderr, count) of row t: L(t, 1..t-1) for t >= 2, decoder[2..T] for t = 1 (views, not copies)."""
        mean, se, cols = self._row_view(t)
        return mean[cols], None if se is None else se[cols], int(self.counts[t])

    def set_row(
        self,
        t: int,
        mean: np.ndarray,
        stderr: np.ndarray | None,
        count: int,
        mse: float = np.nan,
        mse_stderr: float = np.nan,
    ) -> None:
        """Store finished row t (see :meth:`row`) and its error of x^_0 in place; a missing stderr is NaN.

        Raises:
            ValueError: the row holds NaN or Inf values.
        """
        if not np.all(np.isfinite(mean)):
            raise ValueError(f"row t = {t} of the cost matrix holds NaN/Inf values")
        n = self.T + 1
        if self.stderr is None:
            self.stderr = np.full((n, n), np.nan)
        if self.decoder_stderr is None:
            self.decoder_stderr = np.full(n, np.nan)
        means, ses, cols = self._row_view(t)
        means[cols], ses[cols] = mean, np.nan if stderr is None else stderr
        self.counts[t] = count
        if self.mse is None:
            self.mse, self.mse_stderr = np.full(n, np.nan), np.full(n, np.nan)
        self.mse[t], self.mse_stderr[t] = mse, mse_stderr

    def copy_rows(self, other: CostMatrix) -> None:
        """Take every finished row of ``other`` (same T), with its error of x^_0, into this matrix, in place."""
        for t in np.flatnonzero(other.rows_done):
            t = int(t)
            mse = (np.nan, np.nan) if other.mse is None else (other.mse[t], other.mse_stderr[t])
            self.set_row(t, *other.row(t), *mse)

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write one ``.npz`` file atomically (a temp file in the same folder, then a rename).

        Only what the computed rows hold is stored: the entries L(t, 1..t-1) of each finished row, packed
        row after row (half of a (T+1)^2 matrix when complete, a few rows' worth for a shard). The run info
        is the ``meta`` entry, a JSON string.
        """
        rows = np.flatnonzero(self.rows_done[2:]) + 2  # finished KL rows t >= 2
        arrays = {
            "rows": rows,
            "kl_packed": _pack(self.kl, rows),
            "decoder": self.decoder,
            "prior": self.prior,
            "counts": self.counts,
        }
        if self.stderr is not None:
            arrays["stderr_packed"] = _pack(self.stderr, rows)
        for name in ("decoder_stderr", "prior_stderr", "mse", "mse_stderr", "image_hashes"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        meta = np.array(self.info.to_json(format_version=FORMAT_VERSION, checksum=_checksum(arrays)))
        return atomic_write(npz_path(path), lambda fh: np.savez(fh, meta=meta, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike, *, expect: dict[str, Any] | None = None) -> CostMatrix:
        """Read a file written by :meth:`save` (this format, or format 1 with full matrices).

        Args:
            expect: run info that must match (e.g. ``{"T": 4000, "variance": "learned_range"}``).
        Every array and every meta field is checked for its type, shape and range (a file that fails names itself
        in a ValueError); an array whose header declares more data than the file holds is refused unread.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no cost-matrix file at {path}")
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder; expected a cost-matrix .npz file")
        try:
            arrays, info = _read(path)
            costs = cls(info=info, **arrays)
        except (ValueError, TypeError, KeyError, IndexError, RecursionError, OverflowError) as exc:
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).strip() or type(exc).__name__
            raise ValueError(
                f"{path} is not a readable dpddpm cost-matrix file ({reason}); recompute it with `dpddpm costs`"
            ) from None
        if expect:
            costs.check_meta(expect, source=str(path))
        return costs

    def check_meta(self, expect: dict[str, Any], source: str = "the cost matrix") -> None:
        """Raise if ``expect`` disagrees with the recorded run info (fields not recorded are not compared)."""
        have = self.meta
        wrong = {k: (v, have.get(k)) for k, v in expect.items() if k in have and have[k] != v}
        if wrong:
            detail = ", ".join(f"{k}: expected {v!r}, found {h!r}" for k, (v, h) in wrong.items())
            raise ValueError(f"{source} does not match: {detail}")

    # ------------------------------------------------------------------ combining runs
    @classmethod
    def merge(cls, parts: Sequence[CostMatrix], names: Sequence[str] | None = None) -> CostMatrix:
        """Combine partial matrices of disjoint rows or disjoint data: see :func:`dpddpm.merge.merge`."""
        from .merge import merge  # merge builds CostMatrix objects: imported on use

        return merge(parts, names)

    def __repr__(self) -> str:
        state = "complete" if self.is_complete else f"{int(self.rows_done.sum())}/{self.T} rows"
        return f"CostMatrix(T={self.T}, {state}, meta={dict(self.meta)})"


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
}
#: the largest T a file may declare (a (T+1, T+1) float64 matrix of T = 2**15 takes 8 GiB)
MAX_T = 2**15


def _read(path: Path) -> tuple[dict[str, np.ndarray], RunInfo]:
    """The constructor's arrays and the run info of a file of format 1 or 2, each checked for type and shape."""
    arrays = npz_arrays(path)
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
        raise ValueError(f"unknown format_version {version!r} (this dpddpm reads 1 and 2; a newer one wrote it?)")
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
        kinds = {"counts": "iu", "rows": "iu", "image_hashes": "u"}.get(name, "f")
        if arr.dtype.kind not in kinds or (name == "image_hashes" and arr.dtype != np.uint64):
            raise ValueError(f"array {name!r} has dtype {arr.dtype}, which dpddpm never writes there")
    if version >= 2:
        T = check_int(meta.get("T"), "meta 'T'", low=2, high=MAX_T)
        rows = arrays.pop("rows")
        if rows.ndim != 1 or rows.dtype.kind not in "iu":
            raise ValueError(f"'rows' must be a 1-D integer array, got {rows.dtype} {rows.shape}")
        if rows.size and (rows.min() < 2 or rows.max() > T or np.any(np.diff(rows) <= 0)):
            raise ValueError(f"'rows' must be increasing times in 2..T = {T}")
        for name in ("kl_packed", "stderr_packed"):
            if name in arrays:
                arrays[name[: -len("_packed")]] = _unpack(arrays.pop(name), rows, T)
        counts = arrays["counts"]
        if counts.shape == (T + 1,) and np.any(counts[rows] == 0):
            raise ValueError("'rows' lists rows whose count is 0")
    elif arrays["kl"].ndim != 2 or not 3 <= arrays["kl"].shape[0] <= MAX_T + 1:
        raise ValueError(f"'kl' must be a (T+1, T+1) matrix with 2 <= T <= {MAX_T}, got shape {arrays['kl'].shape}")
    return arrays, RunInfo.from_dict(meta)


def _checksum(arrays: Mapping[str, np.ndarray]) -> str:
    """A hash of every array but ``meta`` (names, dtypes, shapes and bytes): a damaged file cannot pass for a
    valid one, while its meta JSON stays readable and editable (its fields are checked one by one)."""
    h = hashlib.sha256()
    for name in sorted(k for k in arrays if k != "meta"):
        arr = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{arr.dtype.str}:{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:32]


def _counts(counts, n: int) -> np.ndarray:
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


def _hashes(hashes, n: int | None) -> np.ndarray:
    """uint64 (N,) per-image hashes; N must match the run info's when it records one."""
    arr = np.asarray(hashes)
    if arr.ndim != 1 or arr.dtype != np.uint64:
        raise ValueError(f"image_hashes must be a uint64 (N,) array, got {arr.dtype} {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"image_hashes holds {arr.shape[0]} hashes for N = {n} images")
    return arr.copy()


def _matrix(x, name: str, n: int | None = None) -> np.ndarray:
    """A float64 copy of a square (T+1, T+1) matrix with NaN outside the valid edges s < t."""
    arr = np.array(x, dtype=np.float64)
    if n is None and (arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] < 3):
        raise ValueError(f"{name} must be a square (T+1, T+1) matrix with T >= 2, got shape {arr.shape}")
    if n is not None and arr.shape != (n, n):
        raise ValueError(f"{name} must have shape {(n, n)}, got {arr.shape}")
    arr[~valid_edges(arr.shape[0] - 1)] = np.nan
    return arr


def _vector(x, name: str, n: int, first: int) -> np.ndarray:
    """A float64 copy of a (T+1,) vector with its entries below ``first`` (no such time) set to NaN."""
    arr = np.array(x, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape {(n,)} to match kl, got {arr.shape}")
    arr[:first] = np.nan
    return arr
