"""The matrix of ELBO edge costs that the optimizer runs on, and its file format.

Indexing is by 1-based time. For a model with T steps:
    kl[t, s]      = L(t, s), the KL edge t -> s, valid for 2 <= t <= T and 1 <= s < t
    decoder[u]    = -log p(x_0 | x_1) when the next kept time above 1 is u, valid for 2 <= u <= T
    prior[t]      = KL(q(x_t | x_0) || N(0, I)), valid for 1 <= t <= T
    stderr, decoder_stderr, prior_stderr: Monte-Carlo standard errors of those means
    counts[t]     = number of samples behind row t (row 1 is the decoder row); 0 = not computed yet
All values are float64 bits/dim. Entries outside the valid ranges are set to NaN by the constructor, whatever
was passed in, so a hand-built matrix can never offer the optimizer an edge s >= t.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .files import atomic_write, npz_path

FORMAT_VERSION = 2  # 2: only the computed rows' entries are stored; 1: full (T+1, T+1) matrices

#: metadata that identifies the model and how it was run: every part of a merge must agree on these
MERGE_KEYS = ("variance", "num_bins", "clip_denoised", "weights_fingerprint", "autocast")


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


def _data_id(costs: "CostMatrix") -> str:
    """What identifies a matrix's data: its fingerprint, or (for hand-built matrices) its prior vector."""
    fp = costs.meta.get("data_fingerprint")
    if fp:
        return str(fp)
    return "prior:" + hashlib.sha256(np.nan_to_num(costs.prior, nan=-1.0).tobytes()).hexdigest()[:16]


def _require_same(a: dict[str, Any], b: dict[str, Any], keys: Sequence[str], name_b: str, name_a: str) -> None:
    """Raise ValueError naming every key in ``keys`` recorded in both ``a`` and ``b`` with different values."""
    wrong = [k for k in keys if k in a and k in b and a[k] != b[k]]
    if wrong:
        detail = "; ".join(f"{k}: {a[k]!r} in {name_a}, {b[k]!r} in {name_b}" for k in wrong)
        raise ValueError(f"{name_b} comes from another model or setting than {name_a} ({detail})")


def valid_edges(T: int) -> np.ndarray:
    """Boolean (T+1, T+1): True where an edge t -> s exists, i.e. 2 <= t <= T and 1 <= s < t."""
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
        valid = valid_edges(n - 1)
        self.kl[~valid] = np.nan
        self.decoder = self._vector(self.decoder, "decoder", n, first=2)
        self.prior = self._vector(self.prior, "prior", n, first=1)
        if self.stderr is not None:
            arr = np.array(self.stderr, dtype=np.float64)
            if arr.shape != (n, n):
                raise ValueError(f"stderr must have shape {(n, n)}, got {arr.shape}")
            arr[~valid] = np.nan
            self.stderr = arr
        if self.decoder_stderr is not None:
            self.decoder_stderr = self._vector(self.decoder_stderr, "decoder_stderr", n, first=2)
        if self.prior_stderr is not None:
            self.prior_stderr = self._vector(self.prior_stderr, "prior_stderr", n, first=1)
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
    def _vector(x, name: str, n: int, first: int) -> np.ndarray:
        """A float64 copy of a (T+1,) vector with its entries below ``first`` (no such time) set to NaN."""
        arr = np.array(x, dtype=np.float64)
        if arr.shape != (n,):
            raise ValueError(f"{name} must have shape {(n,)} to match kl, got {arr.shape}")
        arr[:first] = np.nan
        return arr

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
        """Write one ``.npz`` file atomically (a temp file in the same folder, then a rename).

        Only what the computed rows hold is stored: the entries L(t, 1..t-1) of each finished row, packed
        row after row (half of a (T+1)^2 matrix when complete, a few rows' worth for a shard).
        """
        rows = np.flatnonzero(self.rows_done[2:]) + 2  # finished KL rows t >= 2
        arrays = {"rows": rows, "kl_packed": _pack(self.kl, rows), "decoder": self.decoder, "prior": self.prior,
                  "counts": self.counts}
        if self.stderr is not None:
            arrays["stderr_packed"] = _pack(self.stderr, rows)
        for name in ("decoder_stderr", "prior_stderr"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        meta = dict(self.meta, T=self.T, format_version=FORMAT_VERSION)
        return atomic_write(npz_path(path), lambda fh: np.savez(fh, meta=np.array(json.dumps(meta)), **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike, *, expect: dict[str, Any] | None = None) -> "CostMatrix":
        """Read a file written by :meth:`save` (this format, or format 1 with full matrices).

        Args:
            expect: metadata that must match (e.g. ``{"T": 4000, "variance": "learned_range"}``).
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no cost-matrix file at {path}")
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder; expected a cost-matrix .npz file")
        with open(path, "rb") as fh:  # refuse non-zip files before numpy suggests unpickling them
            if fh.read(4) != b"PK\x03\x04":
                raise ValueError(f"{path} is not a dpddpm cost-matrix file (not an .npz archive); "
                                 f"recompute it with `dpddpm costs`")
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
            meta = json.loads(str(arrays.pop("meta")))
            if meta.get("format_version", 1) >= 2:
                T = int(meta["T"])
                rows = arrays.pop("rows")
                arrays["kl"] = _unpack(arrays.pop("kl_packed"), rows, T)
                if "stderr_packed" in arrays:
                    arrays["stderr"] = _unpack(arrays.pop("stderr_packed"), rows, T)
        except (OSError, ValueError, KeyError, EOFError) as exc:  # zip, format or JSON errors: say which file
            raise ValueError(f"{path} is not a readable dpddpm cost-matrix file ({exc}); "
                             f"recompute it with `dpddpm costs`") from None
        if "kl" not in arrays:
            raise ValueError(f"{path} is not a dpddpm cost-matrix file (no 'kl' array)")
        meta.pop("format_version", None)
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
    def merge(cls, parts: Sequence["CostMatrix"], names: Sequence[str] | None = None) -> "CostMatrix":
        """Combine partial matrices computed on disjoint rows of the same data, or on disjoint data.

        Each row's mean and standard error are turned back into (count, sum, sum of squared deviations)
        and pooled (Chan et al.), so standard errors of the merged matrix are those of one run over all
        samples, up to round-off.

        Args:
            parts: the partial matrices.
            names: how to name each part in error messages (e.g. its file); default "part 0", "part 1", ...

        Raises:
            ValueError: the parts come from different models or settings (names the key that differs); two
                parts on the same data share a row (their samples would count twice; this includes merging a
                matrix with itself); or parts on different data cover different rows (the merged rows would
                each rest on other images).
        """
        if not parts:
            raise ValueError("nothing to merge")
        names = [f"part {i}" for i in range(len(parts))] if names is None else [str(n) for n in names]
        T = parts[0].T
        for name, p in zip(names, parts):
            if p.T != T:
                raise ValueError(f"cannot merge cost matrices with different T ({T} in {names[0]}, {p.T} in {name})")
            if (p.counts < 0).any() and len(parts) > 1:
                raise ValueError(f"cannot merge {name}: it carries no sample counts")
            _require_same(parts[0].meta, p.meta, MERGE_KEYS, name, names[0])
        data_ids = [_data_id(p) for p in parts]
        same_data = len(set(data_ids)) == 1
        done = np.array([p.rows_done for p in parts])
        if same_data:
            overlap = done.sum(axis=0) > 1
            if overlap.any():
                t = int(np.flatnonzero(overlap)[0])
                sharing = [n for n, d in zip(names, done[:, t]) if d]
                raise ValueError(
                    f"the parts share {int(overlap.sum())} row(s) (e.g. t = {t}, in {', '.join(sharing)}) computed on "
                    f"the same data: merging would count those samples twice; merge each shard once")
        elif not (done == done[0]).all():
            raise ValueError(
                "the parts were computed on different data but cover different rows: merged rows would each rest "
                "on other images; merge data shards only when each covers the same rows (e.g. all of them)")
        out = {k: _Pool() for k in ("kl", "decoder")}
        for p in parts:
            out["kl"].add(p.kl, p.stderr, p.counts[:, None] * valid_edges(T))
            out["decoder"].add(p.decoder[None, :], p.decoder_stderr[None, :] if p.decoder_stderr is not None
                               else None, np.broadcast_to(p.counts[1] * (np.arange(T + 1) >= 2), (1, T + 1)))
        kl, kl_se = out["kl"].result()
        dec, dec_se = out["decoder"].result()
        counts = np.sum([p.counts for p in parts], axis=0)
        meta = dict(parts[0].meta)
        if same_data:  # the prior is exact given the data: row shards share it
            prior, prior_se = parts[0].prior, parts[0].prior_stderr
        else:  # data shards: pool the prior over data points, each shard weighted by its own N
            pool = _Pool()
            for p in parts:
                n_data = float(p.meta.get("N", max(p.counts.max(), 1)))
                pool.add(p.prior, p.prior_stderr, np.full(T + 1, n_data))
            prior, prior_se = pool.result()
            meta["N"] = int(sum(p.meta.get("N", 0) for p in parts))
            meta["data_fingerprint"] = None  # no single data set (and no single noise stream) any more
            meta["data_shards"] = data_ids
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
