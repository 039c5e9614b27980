"""The KL-optimal isotropic variance of every jump, and the cost matrix it gives, from one curve m_t.

For a jump t -> s (1 <= s < t) the posterior is q(x_s | x_t, x_0) = N(c1 x_0 + c2 x_t, beta~ I) and the model's
jump is N(c1 x^_0 + c2 x_t, sigma^2 I). Per dimension, with e = x_0 - x^_0,

    KL = 1/2 [ log(sigma^2 / beta~) + (beta~ + c1^2 e^2) / sigma^2 - 1 ]  nats.

Its expectation over data and noise depends on e only through m_t = E[e^2] (per dimension, at time t), and is
smallest at

    sigma*^2 = beta~_{s|t} + c1^2 m_t,      where it equals  1/2 log(1 + (c1^2 / beta~) m_t).

With SNR(t) = alpha_bar_t / (1 - alpha_bar_t), c1^2 / beta~_{s|t} = SNR(s) - SNR(t), so over D dimensions

    L*(t, s) = (D / 2) log(1 + (SNR(s) - SNR(t)) m_t)  nats  =  log2(1 + (SNR(s) - SNR(t)) m_t) / 2  bits/dim.

The whole KL part of the matrix follows from m_t, which every cost-matrix run records (``CostMatrix.mse``) from
the one network call per (t, image) it makes anyway. The decoder -log p(x_0 | x_1) gets one variance, the one
that minimises the mean discretized-Gaussian NLL of the fitting data at x_1 (found by a grid search over log
sigma^2 refined by golden-section search); it does not depend on the next kept time.

The variances are fitted on a selection split and then *frozen*: :func:`with_analytic_variances` gives a model
whose jumps use them, and ELBOs or samples of that model on other data never refit them. On data other than the
fitting data, the expected KL of a jump at the frozen sigma*^2 is 1/2 [log(1 + d m_fit) + (1 + d m) / (1 + d m_fit)
- 1] with d = SNR(s) - SNR(t) and m the new data's error: at least the optimum 1/2 log(1 + d m), equal when
m = m_fit.

Analytic-DPM (Bao et al., 2022) derives the same optimum without data, from the norm of the predicted noise;
here m_t is measured on data, which is what the expected KL over that data asks for.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._version import __version__
from .costmatrix import CostMatrix
from .costs import CostRun, row_generator
from .files import read_json, write_json
from .fingerprint import data_fingerprint, model_fingerprint
from .gaussian import discretized_gaussian_nll, predict_x0, q_sample
from .model import DDPM, model_on, resolve_device
from .schedule import NoiseSchedule
from .terms import LN2
from .validation import check_batch_size, check_data, check_int

#: the decoder's log variance must lie in this range (a standard deviation from 1e-13 to 2.7 data units, the data
#: spanning [-1, 1]); the fit searches [log(1e-3 bin^2), log 4]
DECODER_LOG_VARIANCE_RANGE = (-60.0, 2.0)

FORMAT = "dpddpm-analytic-variances"


def snr(sched: NoiseSchedule, t: int | np.ndarray) -> np.ndarray:
    """SNR(t) = alpha_bar_t / (1 - alpha_bar_t), float64, for 1-based t (0 <= t <= T; SNR(0) = inf)."""
    ab = np.asarray(sched.alpha_bar, dtype=np.float64)[np.asarray(t)]
    with np.errstate(divide="ignore"):
        return ab / (1.0 - ab)


def snr_gap(sched: NoiseSchedule, t: int, s: int | np.ndarray) -> np.ndarray:
    """SNR(s) - SNR(t) of the jumps t -> s, computed as c1^2 / beta~_{s|t}.

    The same number as ``snr(sched, s) - snr(sched, t)``, but without its cancellation near t = T, where both
    SNRs are ~1e-8 and close (the difference then keeps only a few digits; measured: 1e-3 relative).
    """
    j = sched.jump(t, s)
    return np.asarray(j.c1**2 / j.beta_post, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class AnalyticVariances:
    """Frozen per-time errors of x^_0, and the decoder's variance, fitted on one data set.

    Attributes:
        mse: float64 (T + 1,); mse[t] = m_t, the mean over images and dimensions of (x_0 - x^_0(x_t))^2 at time
            t, for 1 <= t <= T (mse[0] is NaN). Data units ([-1, 1] scale), squared.
        decoder_log_variance: log sigma^2 of the decoder p(x_0 | x_1), per dimension.
        info: where they were fitted: ``data_fingerprint``, ``N``, ``weights_fingerprint``, ``seed``, ``T``.
    """

    mse: np.ndarray
    decoder_log_variance: float
    info: dict[str, Any] = field(default_factory=dict)

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
        if not isinstance(self.info, dict):
            raise TypeError(f"info must be a dict, got {type(self.info).__name__}")
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

    def log_variance(self, sched: NoiseSchedule, t: int, s: int) -> float:
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
            "info": self.info,
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


# ---------------------------------------------------------------------- the cost matrix
def analytic_edge_bpd(sched: NoiseSchedule, t: int, s: int | np.ndarray, m_fit: float, m: float | None = None):
    """Expected edge cost at the frozen variance sigma*^2 = beta~ + c1^2 m_fit, in bits/dim.

    1/2 [log(1 + d m_fit) + (1 + d m) / (1 + d m_fit) - 1] / ln 2 with d = SNR(s) - SNR(t) and m the error of the
    data it is evaluated on (default m_fit: then 1/2 log2(1 + d m_fit), the optimum).
    """
    d = snr_gap(sched, t, s)
    m = m_fit if m is None else m
    # (1 + d m) / (1 + d m_fit) - 1 written as d (m - m_fit) / (1 + d m_fit): no 1 + tiny - 1 cancellation
    return 0.5 * (np.log1p(d * m_fit) + d * (m - m_fit) / (1.0 + d * m_fit)) / LN2


def analytic_costs(
    costs: CostMatrix, variances: AnalyticVariances, model: DDPM, data: torch.Tensor, *, batch_size: int = 256
) -> CostMatrix:
    """The cost matrix of the analytic-variance model, from a matrix of the model's own variances.

    The KL rows need no network call: row t's mean is :func:`analytic_edge_bpd` at the matrix's m_t
    (``costs.mse[t]``), and its standard error follows exactly from that of m_t, since each image's cost is
    affine in its own error. The decoder row is recomputed (N network calls) with the matrix's own row-1
    noise; the prior is the matrix's. The result equals ``cost_matrix(with_analytic_variances(model,
    variances), data, seed=costs' seed)`` up to round-off (tested).

    Args:
        costs: a complete matrix computed by ``model`` on ``data`` (it must record ``mse``).
        variances: the frozen variances (fitted on the same data, or on another split).
        model: the model with its own variances (the one that made ``costs``).
        data: ``(N, *data_shape)``, the images ``costs`` was computed on.
    Returns:
        a :class:`~dpddpm.costmatrix.CostMatrix` whose run info says ``variance="analytic"``.
    """
    _check_types(costs, variances, model)
    _require_mse(costs)
    if variances.T != costs.T:
        raise ValueError(f"the variances are for T = {variances.T}, the cost matrix has T = {costs.T}")
    _check_same_model(costs, model)
    analytic = with_analytic_variances(model, variances)
    run = CostRun(analytic, data, rows=[1], batch_size=batch_size, seed=int(costs.info.seed or 0))
    if costs.info.data_fingerprint and run.info.data_fingerprint != costs.info.data_fingerprint:
        raise ValueError("the data are not the images this cost matrix was computed on")
    out = CostMatrix.empty(costs.prior, costs.prior_stderr, run.info, image_hashes=run.image_hashes)
    sched = model.schedule
    for t in range(2, costs.T + 1):
        s = np.arange(1, t)
        d = snr_gap(sched, t, s)
        m_fit = variances.mse[t]
        mean = analytic_edge_bpd(sched, t, s, m_fit, costs.mse[t])
        stderr = 0.5 * d / (1.0 + d * m_fit) / LN2 * costs.mse_stderr[t]
        out.set_row(t, mean, stderr, int(costs.counts[t]), costs.mse[t], costs.mse_stderr[t])
    for row in run.finished_rows(progress=False):
        out.set_row(*row)
    return out


def _check_types(costs: Any, variances: Any, model: Any) -> None:
    """TypeErrors for arguments of the wrong kind, before anything else is checked."""
    for value, kind, name in ((costs, CostMatrix, "costs"), (variances, AnalyticVariances, "variances")):
        if not isinstance(value, kind):
            raise TypeError(f"{name} must be a dpddpm.{kind.__name__}, got {type(value).__name__}")
    if not isinstance(model, DDPM):
        raise TypeError(f"model must be a dpddpm.DDPM, got {type(model).__name__}")


def _check_same_model(costs: CostMatrix, model: DDPM) -> None:
    """Refuse a matrix that records another model's weights or settings."""
    if model.variance == "analytic":
        raise ValueError("pass the model with its own variances (the one that computed the cost matrix)")
    if costs.info.weights_fingerprint and model_fingerprint(model) != costs.info.weights_fingerprint:
        raise ValueError(
            "the cost matrix was computed by another model (its weights fingerprint differs); pass the model "
            "that computed it"
        )
    ours = {"variance": model.variance, "num_bins": model.num_bins, "clip_denoised": model.clip_denoised}
    wrong = [k for k, v in ours.items() if getattr(costs.info, k) is not None and getattr(costs.info, k) != v]
    if wrong:
        raise ValueError(f"the cost matrix was computed with other settings ({', '.join(wrong)} differ)")


def _require_mse(costs: CostMatrix) -> None:
    """Refuse a partial matrix, or one that does not record m_t (hand-built, or from an older version)."""
    costs.require_complete()
    if costs.mse is None or not np.all(np.isfinite(costs.mse[1:])):
        raise ValueError("this cost matrix records no errors of x^_0 (mse): recompute it with this version of dpddpm")


# ---------------------------------------------------------------------- fitting
def fit_analytic_variances(
    model: DDPM,
    data: torch.Tensor,
    costs: CostMatrix,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> AnalyticVariances:
    """Fit the variances on ``data`` (the selection split) from its cost matrix.

    m_t is read from the matrix (no network call); the decoder variance minimises the mean NLL of ``data``
    at x_1 drawn with the matrix's row-1 noise (N network calls).

    Args:
        model: the model with its own variances, which computed ``costs`` on ``data``.
        data: ``(N, *data_shape)`` in [-1, 1].
        costs: a complete matrix of ``model`` on ``data`` that records ``mse``.
    """
    if not isinstance(costs, CostMatrix):
        raise TypeError(f"costs must be a dpddpm.CostMatrix, got {type(costs).__name__}")
    device = resolve_device(model, device)  # also checks that model is a DDPM
    batch_size = check_batch_size(batch_size)
    _require_mse(costs)
    data = check_data(data, model.data_shape, model.num_bins)
    if costs.info.data_fingerprint and data_fingerprint(data, model.num_bins) != costs.info.data_fingerprint:
        raise ValueError("the data are not the images this cost matrix was computed on")
    _check_same_model(costs, model)
    weights = model_fingerprint(model)  # recorded, so the variances are never applied to another model
    model = model_on(model, device)
    x0 = data.to(device=device, dtype=torch.float64).reshape(data.shape[0], -1)
    noise = torch.randn(
        x0.shape, generator=row_generator(int(costs.info.seed or 0), 1, device), device=device, dtype=torch.float64
    )
    x0_hat = torch.empty_like(x0)
    with torch.no_grad():
        for a in range(0, x0.shape[0], batch_size):
            x1 = q_sample(model.schedule, 1, x0[a : a + batch_size], noise[a : a + batch_size])
            eps, _ = model.predict(x1.float().reshape(-1, *model.data_shape), 1)
            x0_hat[a : a + batch_size] = predict_x0(
                model.schedule, 1, x1, eps.reshape(x1.shape).double(), model.clip_denoised
            )
    log_var = best_decoder_log_variance(x0, x0_hat, model.num_bins)
    info = {
        "T": costs.T,
        "N": int(data.shape[0]),
        "data_fingerprint": costs.info.data_fingerprint,
        "weights_fingerprint": weights,
        "seed": costs.info.seed,
        "model_variance": model.variance,
        "dpddpm_version": __version__,
    }
    return AnalyticVariances(mse=costs.mse, decoder_log_variance=log_var, info=info)


def decoder_nll_bpd(x0: torch.Tensor, x0_hat: torch.Tensor, log_var: float, num_bins: int) -> float:
    """Mean discretized-Gaussian NLL (bits/dim) of x0 under N(x0_hat, exp(log_var)) per dimension."""
    return float(discretized_gaussian_nll(x0, x0_hat, log_var, num_bins).mean()) / LN2


def best_decoder_log_variance(x0: torch.Tensor, x0_hat: torch.Tensor, num_bins: int) -> float:
    """argmin over log sigma^2 of the mean decoder NLL: a grid over [log(1e-3 bin^2), log 4], then golden section.

    The NLL is smooth in log sigma^2; the grid (0.1 apart) brackets its minimum and the golden-section search
    narrows the bracket to 1e-6. Below a fraction of the bin width the bin holds all the mass and the NLL is flat,
    so the lower end of the grid loses nothing.
    """
    bin_width = 2.0 / (num_bins - 1)
    grid = np.arange(math.log(1e-3 * bin_width**2), math.log(4.0), 0.1)
    values = [decoder_nll_bpd(x0, x0_hat, float(g), num_bins) for g in grid]
    i = int(np.argmin(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo + (1 - ratio) * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = decoder_nll_bpd(x0, x0_hat, a, num_bins), decoder_nll_bpd(x0, x0_hat, b, num_bins)
    while hi - lo > 1e-6:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - ratio) * (hi - lo)
            fa = decoder_nll_bpd(x0, x0_hat, a, num_bins)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = decoder_nll_bpd(x0, x0_hat, b, num_bins)
    best = (lo + hi) / 2
    return float(best if decoder_nll_bpd(x0, x0_hat, best, num_bins) <= values[i] else grid[i])


def with_analytic_variances(model: DDPM, variances: AnalyticVariances) -> DDPM:
    """The same network and schedule with every jump's variance set to the frozen analytic one.

    The network is shared, not copied. ``elbo``, ``sample``, ``cost_matrix``, ``in_sample_elbo`` and the CLI
    accept the result like any model; its weights fingerprint includes the variances' fingerprint.
    """
    if not isinstance(model, DDPM) or not isinstance(variances, AnalyticVariances):
        raise TypeError("with_analytic_variances takes a dpddpm.DDPM and dpddpm.AnalyticVariances")
    if variances.T != model.T:
        raise ValueError(f"the variances are for T = {variances.T}, the model has T = {model.T}")
    if model.variance == "analytic":
        raise ValueError("the model already has analytic variances; pass the model with its own variances")
    fitted_for = variances.info.get("weights_fingerprint")
    if fitted_for is not None and fitted_for != model_fingerprint(model):
        raise ValueError(
            "the variances were fitted for another model (their weights fingerprint differs from this model's)"
        )
    return DDPM(
        model.net,
        model.schedule,
        "analytic",
        time_input=model.time_input,
        data_shape=model.data_shape,
        num_bins=model.num_bins,
        clip_denoised=model.clip_denoised,
        outputs_variance=model.outputs_variance,
        analytic=variances,
    )
