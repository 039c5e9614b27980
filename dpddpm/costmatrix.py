"""The matrix of ELBO edge costs that the optimizer runs on (its file format: :mod:`dpddpm.costfile`).

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

import os
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .costfile import as_counts, as_hashes, as_matrix, as_vector, read_costs, valid_edges, write_costs
from .runinfo import RunInfo


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
        copy: copy ``kl`` and ``stderr`` (default); False lets the matrix take over float64 arrays made for it
            (two 128 MB copies fewer at T = 4000).
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
        copy: bool = True,
    ) -> None:
        if info is not None and meta is not None:
            raise TypeError("pass the run's info or its meta dict, not both")
        self.kl = as_matrix(kl, "kl", copy=copy)
        n = self.kl.shape[0]
        self.stderr = None if stderr is None else as_matrix(stderr, "stderr", n, copy=copy)
        self.decoder = as_vector(decoder, "decoder", n, first=2)
        self.prior = as_vector(prior, "prior", n, first=1)
        self.decoder_stderr = None if decoder_stderr is None else as_vector(decoder_stderr, "decoder_stderr", n, 2)
        self.prior_stderr = None if prior_stderr is None else as_vector(prior_stderr, "prior_stderr", n, 1)
        self.mse = None if mse is None else as_vector(mse, "mse", n, 1)
        self.mse_stderr = None if mse_stderr is None else as_vector(mse_stderr, "mse_stderr", n, 1)
        if counts is None:
            counts = np.r_[0, np.full(n - 1, -1)]  # -1: unknown, treated as computed
        self.counts = as_counts(counts, n)
        self.info = info if info is not None else RunInfo.from_dict(meta or {})
        self.image_hashes = None if image_hashes is None else as_hashes(image_hashes, self.info.N)
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
            copy=False,  # the two (T+1, T+1) matrices were made for it
        )

    def _validate_values(self) -> None:
        T = self.T
        done = self.rows_done
        if done[2:].any():  # an empty matrix (a run's start) has no KL row to scan
            bad = valid_edges(T) & done[:, None] & ~np.isfinite(self.kl)
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
        return write_costs(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, expect: dict[str, Any] | None = None) -> CostMatrix:
        """Read a file written by :meth:`save` (this format, or format 1 with full matrices).

        Args:
            expect: run info that must match (e.g. ``{"T": 4000, "variance": "learned_range"}``).
        Every array and every meta field is checked for its type, shape and range (a file that fails names itself
        in a ValueError); an array whose header declares more data than the file holds is refused unread.
        """
        costs = read_costs(path, cls)
        if expect:
            costs.check_meta(expect, source=str(Path(path)))
        return costs

    def check_meta(self, expect: dict[str, Any], source: str = "the cost matrix") -> None:
        """Raise if ``expect`` disagrees with the recorded run info (fields not recorded are not compared)."""
        have = self.meta
        wrong = {k: (v, have.get(k)) for k, v in expect.items() if k in have and have[k] != v}
        if wrong:
            detail = ", ".join(f"{k}: expected {v!r}, found {h!r}" for k, (v, h) in wrong.items())
            raise ValueError(f"{source} does not match: {detail}")

    def __repr__(self) -> str:
        state = "complete" if self.is_complete else f"{int(self.rows_done.sum())}/{self.T} rows"
        return f"CostMatrix(T={self.T}, {state}, meta={dict(self.meta)})"
