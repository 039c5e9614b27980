"""Frozen analytic variances: the per-time error m_t of x^_0 and the decoder's variance, fitted on one data set,
with where they were fitted (:class:`FitInfo`) and their JSON file format.

The rule that turns them into a jump's variance, sigma*^2 = beta~_{s|t} + c1^2 m_t, is :mod:`dpddpm.variances`;
the fit itself is :mod:`dpddpm.analytic`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .files import read_json, write_json
from .schedule import NoiseSchedule
from .validation import check_int

#: the decoder's log variance must lie in this range (a standard deviation from 1e-13 to 2.7 data units, the data
#: spanning [-1, 1]); the fit searches [log(1e-3 bin^2), log 4]
DECODER_LOG_VARIANCE_RANGE = (-60.0, 2.0)

FORMAT = "dpddpm-analytic-variances"


@dataclass(frozen=True)
class FitInfo:
    """Where frozen variances were fitted; ``None`` where not recorded. Saved as the ``info`` object of their file."""

    T: int | None = None
    N: int | None = None  # the number of fitting images
    data_fingerprint: str | None = None
    weights_fingerprint: str | None = None  # the model they belong to (checked before they are applied)
    seed: int | None = None  # the cost matrix's noise seed
    model_variance: str | None = None  # the variance kind of the model whose matrix they came from
    dpddpm_version: str | None = None

    @classmethod
    def from_dict(cls, info: dict[str, Any]) -> FitInfo:
        """Read the ``info`` object of a file, checking each field's type (other keys are ignored)."""
        types = {"T": int, "N": int, "seed": int}
        out = {}
        for name in cls.__dataclass_fields__:
            value = info.get(name)
            kind = types.get(name, str)
            if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
                raise ValueError(f"'info' field {name!r} must be {kind.__name__} or null, got {value!r}")
            out[name] = value
        return cls(**out)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, eq=False)
class AnalyticVariances:
    """Frozen per-time errors of x^_0, and the decoder's variance, fitted on one data set.

    Attributes:
        mse: float64 (T + 1,); mse[t] = m_t, the mean over images and dimensions of (x_0 - x^_0(x_t))^2 at time
            t, for 1 <= t <= T (mse[0] is NaN). Data units ([-1, 1] scale), squared.
        decoder_log_variance: log sigma^2 of the decoder p(x_0 | x_1), per dimension.
        info: where they were fitted (:class:`FitInfo`; a dict of its fields is accepted).
    """

    mse: np.ndarray
    decoder_log_variance: float
    info: FitInfo = field(default_factory=FitInfo)

    def __post_init__(self) -> None:
        mse = np.array(self.mse, dtype=np.float64)
        if mse.ndim != 1 or mse.shape[0] < 3:
            raise ValueError(f"mse must be a (T + 1,) vector with T >= 2, got shape {mse.shape}")
        mse[0] = np.nan
        if not np.all(np.isfinite(mse[1:])) or np.any(mse[1:] < 0):
            raise ValueError("mse must be finite and >= 0 for every 1 <= t <= T")
        dlv = self.decoder_log_variance
        if isinstance(dlv, bool) or not isinstance(dlv, (int, float, np.floating, np.integer)):
            raise TypeError(f"decoder_log_variance must be a number, got {dlv!r}")
        low, high = DECODER_LOG_VARIANCE_RANGE
        if not math.isfinite(float(dlv)) or not low <= float(dlv) <= high:
            raise ValueError(f"decoder_log_variance must be finite and lie in [{low}, {high}], got {dlv}")
        if isinstance(self.info, dict):
            object.__setattr__(self, "info", FitInfo.from_dict(self.info))
        if not isinstance(self.info, FitInfo):
            raise TypeError(f"info must be a FitInfo (or a dict of its fields), got {type(self.info).__name__}")
        mse.setflags(write=False)
        object.__setattr__(self, "mse", mse)
        object.__setattr__(self, "decoder_log_variance", float(self.decoder_log_variance))

    @property
    def T(self) -> int:
        return self.mse.shape[0] - 1

    def variance(self, sched: NoiseSchedule, t: int, s: int | np.ndarray) -> np.ndarray:
        """sigma*^2 = beta~_{s|t} + c1^2 m_t of the jumps t -> s (float64, shape of s)."""
        j = sched.jump(t, s)
        return np.asarray(j.beta_post + j.c1**2 * self.mse[t], dtype=np.float64)

    def log_variance(self, sched: NoiseSchedule, t: int, s: int) -> float:  # one jump; see jump_log_variance
        """log sigma^2 of the jump t -> s, or of the decoder for (t, s) = (1, 0)."""
        if s == 0:
            return self.decoder_log_variance
        return float(np.log(self.variance(sched, t, s)))

    def fingerprint(self) -> str:
        """A hash of the fitted values (recorded in the weights fingerprint of a model that uses them)."""
        h = hashlib.sha256(np.ascontiguousarray(np.nan_to_num(self.mse, nan=-1.0)).tobytes())
        h.update(repr(self.decoder_log_variance).encode())
        return h.hexdigest()[:16]

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write a JSON file (atomically): the curve, the decoder variance and where they were fitted."""
        doc = {
            "format": FORMAT,
            "T": self.T,
            "decoder_log_variance": self.decoder_log_variance,
            "mse": [None] + [float(m) for m in self.mse[1:]],
            "info": self.info.as_dict(),
        }
        return write_json(Path(path), doc)

    @classmethod
    def load(cls, path: str | os.PathLike) -> AnalyticVariances:
        """Read a file written by :meth:`save`, checking the type and range of every field.

        The file must record the weights fingerprint of the model it was fitted for (every file that
        :func:`fit_analytic_variances` writes does), so that it is never applied to another model unchecked.

        Raises:
            ValueError: not such a file, or a field missing, of the wrong type or out of range (names the file).
        """
        doc = read_json(Path(path), "the analytic-variances file")
        fix = "make it again with `dpddpm fit-variances`"
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"{path} is not a dpddpm analytic-variances file; {fix}")
        try:
            return cls(**_fields(doc))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the analytic-variances file {path} is damaged: {exc}; {fix}") from None


def _fields(doc: dict[str, Any]) -> dict[str, Any]:
    """The constructor's arguments from a variances file's JSON object, each checked for its type."""
    T = check_int(doc.get("T"), "T", low=2, high=2**20)
    mse = doc.get("mse")
    if not isinstance(mse, list) or len(mse) != T + 1:
        raise ValueError(f"'mse' must be a list of T + 1 = {T + 1} entries (null, then m_1 .. m_T)")
    values = mse[1:]
    if mse[0] is not None or not all(isinstance(m, (int, float)) and not isinstance(m, bool) for m in values):
        raise ValueError("'mse' must be null followed by T numbers")
    if "decoder_log_variance" not in doc:
        raise ValueError("no 'decoder_log_variance'")
    info = doc.get("info")
    if not isinstance(info, dict):
        raise ValueError("'info' must be an object recording where the variances were fitted")
    if not isinstance(info.get("weights_fingerprint"), str):
        raise ValueError("'info' records no weights_fingerprint, so the model they belong to cannot be checked")
    if info.get("T", T) != T:
        raise ValueError(f"'info' records T = {info.get('T')!r} but the curve has T = {T}")
    return {
        "mse": np.array([np.nan, *values], dtype=np.float64),
        "decoder_log_variance": doc["decoder_log_variance"],
        "info": info,
    }
