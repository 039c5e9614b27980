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
All values are float64 bits/dim. Entries outside the valid ranges are set to NaN by the constructor, whatever
was passed in, so a hand-built matrix can never offer the optimizer an edge s >= t.
"""

from __future__ import annotations

import json
import os
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .files import atomic_write, npz_path
from .runinfo import RunInfo

FORMAT_VERSION = 2  # 2: only the computed rows' entries are stored; 1: full (T+1, T+1) matrices


def _pack(matrix: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The entries matrix[t, 1:t] of the given rows, concatenated: float64 (sum(t - 1),)."""
    if len(rows) == 0:
        return np.zeros(0)
    return np.concatenate([matrix[t, 1:t] for t in rows])


def _unpack(packed: np.ndarray, rows: np.ndarray, T: int) -> np.ndarray:
    """Inverse of :func:`_pack`: a (T+1, T+1) matrix, NaN outside the given rows."""
    out = np.full((T + 1, T + 1), np.nan)
    lengths = np.asarray(rows, dtype=np.int64) - 1
    if lengths.sum() != packed.size:
        raise ValueError(f"packed rows hold {packed.size} values, expected {int(lengths.sum())}")
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
        kl, decoder, prior: (T+1, T+1), (T+1,), (T+1,) means; copied to float64.
        stderr, decoder_stderr, prior_stderr: their standard errors, or None.
        counts: (T+1,) samples per row; None for a hand-built matrix (every row then counts as computed).
        mse, mse_stderr: (T+1,) error of x^_0 per row and its standard error, or None.
        info: what the matrix was computed from; its T must be None or match kl.
        meta: the same as a plain dict (:meth:`RunInfo.from_dict`), e.g. ``dict(costs.meta, seed=1)``.
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
        self.counts = np.array(counts, dtype=np.int64)
        if self.counts.shape != (n,):
            raise ValueError(f"counts must have shape {(n,)}, got {self.counts.shape}")
        self.info = info if info is not None else RunInfo.from_dict(meta or {})
        self._validate_values()

    @classmethod
    def empty(cls, prior: np.ndarray, prior_stderr: np.ndarray, info: RunInfo) -> CostMatrix:
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
        """Boolean (T+1,): which rows are computed (row 1 is the decoder row)."""
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
        for name in ("decoder_stderr", "prior_stderr", "mse", "mse_stderr"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        meta = np.array(self.info.to_json(format_version=FORMAT_VERSION))
        return atomic_write(npz_path(path), lambda fh: np.savez(fh, meta=meta, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike, *, expect: dict[str, Any] | None = None) -> CostMatrix:
        """Read a file written by :meth:`save` (this format, or format 1 with full matrices).

        Args:
            expect: run info that must match (e.g. ``{"T": 4000, "variance": "learned_range"}``).
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no cost-matrix file at {path}")
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder; expected a cost-matrix .npz file")
        with open(path, "rb") as fh:  # refuse non-zip files before numpy suggests unpickling them
            if fh.read(4) != b"PK\x03\x04":
                raise ValueError(
                    f"{path} is not a dpddpm cost-matrix file (not an .npz archive); recompute it with `dpddpm costs`"
                )
        try:
            arrays, info = _read(path)
        except (OSError, ValueError, TypeError, KeyError, EOFError) as exc:  # zip, format or JSON errors
            raise ValueError(
                f"{path} is not a readable dpddpm cost-matrix file ({exc}); recompute it with `dpddpm costs`"
            ) from None
        if "kl" not in arrays:
            raise ValueError(f"{path} is not a dpddpm cost-matrix file (no 'kl' array)")
        costs = cls(info=info, **arrays)
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


def _read(path: Path) -> tuple[dict[str, np.ndarray], RunInfo]:
    """The constructor's arrays and the run info of a file of format 1 or 2."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays.pop("meta")))
    if meta.pop("format_version", 1) >= 2:
        T = int(meta["T"])
        rows = arrays.pop("rows")
        arrays["kl"] = _unpack(arrays.pop("kl_packed"), rows, T)
        if "stderr_packed" in arrays:
            arrays["stderr"] = _unpack(arrays.pop("stderr_packed"), rows, T)
    return arrays, RunInfo.from_dict(meta)


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
