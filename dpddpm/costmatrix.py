"""The matrix of ELBO edge costs that the optimizer runs on, and its file format.

Indexing is by 1-based time. For a model with T steps:
    kl[t, s]      = L(t, s), the KL edge t -> s, valid for 2 <= t <= T and 1 <= s < t
    decoder[u]    = -log p(x_0 | x_1) when the next kept time above 1 is u, valid for 2 <= u <= T
    prior[t]      = KL(q(x_t | x_0) || N(0, I)), valid for 1 <= t <= T
    stderr, decoder_stderr, prior_stderr: Monte-Carlo standard errors of those means
    counts[t]     = number of samples behind row t (row 1 is the decoder row); 0 = not computed yet
All values are float64 bits/dim; entries outside the valid ranges are NaN.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .files import atomic_write, npz_path

FORMAT_VERSION = 1


def _triangle(T: int) -> np.ndarray:
    """Boolean mask (T+1, T+1) of the valid KL entries: 2 <= t <= T, 1 <= s < t."""
    t = np.arange(T + 1)[:, None]
    s = np.arange(T + 1)[None, :]
    return (s >= 1) & (s < t)


@dataclass(eq=False)
class CostMatrix:
    """ELBO edge costs of one model on one data set (see the module docstring for the layout)."""

    kl: np.ndarray
    decoder: np.ndarray
    prior: np.ndarray
    stderr: np.ndarray | None = None
    decoder_stderr: np.ndarray | None = None
    prior_stderr: np.ndarray | None = None
    counts: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kl = np.array(self.kl, dtype=np.float64)
        if self.kl.ndim != 2 or self.kl.shape[0] != self.kl.shape[1] or self.kl.shape[0] < 3:
            raise ValueError(f"kl must be a square (T+1, T+1) matrix with T >= 2, got shape {self.kl.shape}")
        n = self.kl.shape[0]
        self.decoder = self._vector(self.decoder, "decoder", n)
        self.prior = self._vector(self.prior, "prior", n)
        for name in ("stderr",):
            if getattr(self, name) is not None:
                arr = np.array(getattr(self, name), dtype=np.float64)
                if arr.shape != (n, n):
                    raise ValueError(f"{name} must have shape {(n, n)}, got {arr.shape}")
                setattr(self, name, arr)
        for name in ("decoder_stderr", "prior_stderr"):
            if getattr(self, name) is not None:
                setattr(self, name, self._vector(getattr(self, name), name, n))
        if self.counts is None:
            self.counts = np.full(n, -1, dtype=np.int64)  # -1: unknown, treated as computed
            self.counts[0] = 0
        else:
            self.counts = np.array(self.counts, dtype=np.int64)
            if self.counts.shape != (n,):
                raise ValueError(f"counts must have shape {(n,)}, got {self.counts.shape}")
        self.meta = dict(self.meta)
        self._validate_values()

    @staticmethod
    def _vector(x, name: str, n: int) -> np.ndarray:
        arr = np.array(x, dtype=np.float64)
        if arr.shape != (n,):
            raise ValueError(f"{name} must have shape {(n,)} to match kl, got {arr.shape}")
        return arr

    def _validate_values(self) -> None:
        T = self.T
        done = self.rows_done
        tri = _triangle(T) & done[:, None]
        bad = tri & ~np.isfinite(self.kl)
        if bad.any():
            t, s = np.argwhere(bad)[0]
            raise ValueError(f"the cost matrix holds {int(bad.sum())} NaN/Inf KL value(s), e.g. kl[{t}, {s}]")
        if done[1] and not np.all(np.isfinite(self.decoder[2:])):
            raise ValueError("the decoder costs hold NaN/Inf values")
        if not np.all(np.isfinite(self.prior[1:])):
            raise ValueError("the prior costs hold NaN/Inf values")

    # ------------------------------------------------------------------ views
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

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write one ``.npz`` file atomically (a temp file in the same folder, then a rename)."""
        arrays = {"kl": self.kl, "decoder": self.decoder, "prior": self.prior, "counts": self.counts}
        for name in ("stderr", "decoder_stderr", "prior_stderr"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        meta = dict(self.meta, format_version=FORMAT_VERSION)
        return atomic_write(npz_path(path), lambda fh: np.savez(fh, meta=np.array(json.dumps(meta)), **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike, *, expect: dict[str, Any] | None = None) -> "CostMatrix":
        """Read a file written by :meth:`save`.

        Args:
            expect: metadata that must match (e.g. ``{"T": 4000, "variance": "learned_range"}``).
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no cost-matrix file at {path}")
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except Exception as exc:  # zip or format errors: say which file
            raise ValueError(f"{path} is not a readable cost-matrix file ({exc})") from exc
        if "kl" not in arrays or "meta" not in arrays:
            raise ValueError(f"{path} is not a dpddpm cost-matrix file (no 'kl' or 'meta' array)")
        meta = json.loads(str(arrays.pop("meta")))
        costs = cls(meta=meta, **arrays)
        if expect:
            costs.check_meta(expect, source=str(path))
        return costs

    def check_meta(self, expect: dict[str, Any], source: str = "the cost matrix") -> None:
        """Raise if ``expect`` disagrees with this matrix (T or any recorded metadata)."""
        have = dict(self.meta, T=self.T)
        wrong = {k: (v, have.get(k)) for k, v in expect.items() if k in have and have[k] != v}
        if wrong:
            detail = ", ".join(f"{k}: expected {v!r}, found {h!r}" for k, (v, h) in wrong.items())
            raise ValueError(f"{source} does not match: {detail}")

    # ------------------------------------------------------------------ combining runs
    @classmethod
    def merge(cls, parts: Sequence["CostMatrix"]) -> "CostMatrix":
        """Combine partial matrices computed on disjoint rows or disjoint data, exactly.

        Each row's mean and standard error are turned back into (count, sum, sum of squared deviations)
        and pooled, so standard errors of the merged matrix are those of one run over all samples.
        """
        if not parts:
            raise ValueError("nothing to merge")
        T = parts[0].T
        for p in parts:
            if p.T != T:
                raise ValueError(f"cannot merge cost matrices with different T ({T} and {p.T})")
            if (p.counts < 0).any() and len(parts) > 1:
                raise ValueError("cannot merge a cost matrix without sample counts")
        out = {k: _Pool() for k in ("kl", "decoder")}
        for p in parts:
            out["kl"].add(p.kl, p.stderr, p.counts[:, None] * _triangle(T))
            out["decoder"].add(p.decoder[None, :], p.decoder_stderr[None, :] if p.decoder_stderr is not None
                               else None, np.broadcast_to(p.counts[1] * (np.arange(T + 1) >= 2), (1, T + 1)))
        kl, kl_se = out["kl"].result()
        dec, dec_se = out["decoder"].result()
        counts = np.sum([p.counts for p in parts], axis=0)
        # The prior is exact given the data: pool it over data points. Shards of rows share their data
        # (identical priors); shards of data carry their own N.
        same_data = all(np.array_equal(p.prior, parts[0].prior, equal_nan=True) for p in parts)
        if same_data:
            prior, prior_se = parts[0].prior, parts[0].prior_stderr
        else:
            pool = _Pool()
            for p in parts:
                n_data = float(p.meta.get("N", max(p.counts.max(), 1)))
                pool.add(p.prior, p.prior_stderr, np.full(T + 1, n_data))
            prior, prior_se = pool.result()
        meta = dict(parts[0].meta)
        if not same_data:
            meta["N"] = int(sum(p.meta.get("N", 0) for p in parts))
        return cls(kl=kl, decoder=dec[0], prior=prior, stderr=kl_se, decoder_stderr=dec_se[0],
                   prior_stderr=prior_se, counts=counts, meta=meta)

    def __repr__(self) -> str:
        state = "complete" if self.is_complete else f"{int(self.rows_done.sum())}/{self.T} rows"
        return f"CostMatrix(T={self.T}, {state}, meta={self.meta})"


class _Pool:
    """Pools (count, mean, stderr) arrays elementwise with Chan et al.'s parallel variance formula."""

    def __init__(self) -> None:
        self.n = None
        self.mean = None
        self.m2 = None

    def add(self, mean: np.ndarray, stderr: np.ndarray | None, n: np.ndarray) -> None:
        n = np.asarray(n, dtype=np.float64)
        mean = np.where(n > 0, mean, 0.0)
        se = np.zeros_like(mean) if stderr is None else np.where(n > 1, np.nan_to_num(stderr), 0.0)
        m2 = se**2 * n * np.maximum(n - 1, 0)
        if self.n is None:
            self.n, self.mean, self.m2 = n, mean, m2
            return
        tot = self.n + n
        safe = np.where(tot > 0, tot, 1.0)
        delta = mean - self.mean
        self.mean = self.mean + delta * n / safe
        self.m2 = self.m2 + m2 + delta**2 * self.n * n / safe
        self.n = tot

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(self.n > 0, self.mean, np.nan)
            se = np.where(self.n > 1, np.sqrt(self.m2 / (self.n * (self.n - 1))), np.nan)
        return mean, se
