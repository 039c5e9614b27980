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

import math
from typing import Any

import numpy as np
import torch

from ._version import __version__
from .costmatrix import CostMatrix
from .costs import CostRun, row_noise
from .fingerprint import data_fingerprint, mismatches, model_fingerprint
from .gaussian import discretized_gaussian_nll
from .model import DDPM, model_on, resolve_device
from .netpass import network_pass
from .schedule import NoiseSchedule
from .terms import LN2
from .validation import check_batch_size, check_data
from .variances import AnalyticVariances, FitInfo

__all__ = [
    "AnalyticVariances",
    "FitInfo",
    "analytic_costs",
    "analytic_edge_bpd",
    "best_decoder_log_variance",
    "decoder_nll_bpd",
    "fit_analytic_variances",
    "with_analytic_variances",
]


# ---------------------------------------------------------------------- the cost matrix
def analytic_edge_bpd(sched: NoiseSchedule, t: int, s: int | np.ndarray, m_fit: float, m: float | None = None):
    """Expected edge cost at the frozen variance sigma*^2 = beta~ + c1^2 m_fit, in bits/dim.

    1/2 [log(1 + d m_fit) + (1 + d m) / (1 + d m_fit) - 1] / ln 2 with d = SNR(s) - SNR(t) and m the error of the
    data it is evaluated on (default m_fit: then 1/2 log2(1 + d m_fit), the optimum).
    """
    d = sched.snr_gap(t, s)
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
        d = sched.snr_gap(t, s)
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
    wrong, _ = mismatches(costs.info, model)
    if "weights_fingerprint" in wrong:
        raise ValueError(
            "the cost matrix was computed by another model (its weights fingerprint differs); pass the model "
            "that computed it"
        )
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
    noise = row_noise(int(costs.info.seed or 0), 1, x0.shape, device)  # the matrix's own row-1 noise
    x0_hat = torch.cat(
        [
            network_pass(model, 1, x0[a : a + batch_size], noise[a : a + batch_size], costs.info.autocast).x0_hat
            for a in range(0, x0.shape[0], batch_size)
        ]
    )
    log_var = best_decoder_log_variance(x0, x0_hat, model.num_bins)
    info = FitInfo(
        T=costs.T,
        N=int(data.shape[0]),
        data_fingerprint=costs.info.data_fingerprint,
        weights_fingerprint=weights,
        seed=costs.info.seed,
        model_variance=model.variance,
        dpddpm_version=__version__,
    )
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
    fitted_for = variances.info.weights_fingerprint
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
