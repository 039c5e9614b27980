"""The terms of the ELBO, in bits per dimension, for any jump t -> s of a (respaced) chain.

ELBO of a schedule t_K > ... > t_1 = 1:
    prior(t_K) + sum_{i>=3} L(t_i, t_{i-1}) + L(t_2, 1) + decoder(t_2)
where L(t, s) = KL(q(x_s | x_t, x_0) || p(x_s | x_t)) and decoder(u) = -log p(x_0 | x_1) with a variance that
depends on the next kept time u above 1. Everything is float64; values are per sample, averaged over dimensions.
The Gaussian formulas live in :mod:`dpddpm.gaussian` and the variance rule in :mod:`dpddpm.variances` (re-exported
here: ``jump_log_variance``, ``log_variance_range``); this module picks their arguments for a jump.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .gaussian import discretized_gaussian_nll, normal_kl, predict_x0
from .schedule import NoiseSchedule
from .variances import AnalyticVariances, VarianceKind, jump_log_variance, log_variance_range

__all__ = ["LN2", "edge_bpd", "edge_bpd_from_x0_hat", "jump_log_variance", "log_variance_range", "prior_bpd"]

LN2 = math.log(2.0)


def _flat_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over all but the first dimension: (B, ...) -> (B,)."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def _check_edge(sched: NoiseSchedule, t: int, s: int, t_above: int | None) -> tuple[int, int]:
    """(t, s) as ints after checking that they name an edge of the chain (and t_above a decoder's next time)."""
    t, s = int(t), int(s)
    if not (0 <= s < t <= sched.T):
        raise ValueError(f"an edge needs 0 <= s < t <= T = {sched.T}, got t = {t}, s = {s}")
    if s == 0 and t != 1:
        raise ValueError(f"the decoder edge runs from t = 1 to s = 0, got t = {t}")
    if s == 0 and t_above is not None and not (1 < int(t_above) <= sched.T):
        raise ValueError(f"t_above must satisfy 1 < t_above <= T = {sched.T}, got {t_above}")
    return t, s


def edge_bpd(
    sched: NoiseSchedule,
    t: int,
    s: int,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    eps: torch.Tensor,
    v: torch.Tensor | None = None,
    *,
    variance: VarianceKind,
    t_above: int | None = None,
    num_bins: int = 256,
    clip_denoised: bool = True,
    analytic: AnalyticVariances | None = None,
) -> torch.Tensor:
    """One ELBO edge, per sample, in bits/dim.

    Args:
        t, s: the jump t -> s with 1 <= s < t <= T, or t = 1, s = 0 for the decoder -log p(x_0 | x_1).
        x0: data, shape (B, ...).
        x_t: the noisy point, same shape.
        eps, v: the network's outputs at x_t.
        t_above: for the decoder, the next kept time u above 1 (default 2, the full chain).
        analytic: the frozen variances of an ``"analytic"`` model.
    Returns:
        float64 tensor of shape (B,).
    """
    x0_hat = predict_x0(sched, _check_edge(sched, t, s, t_above)[0], x_t, eps, clip_denoised)
    return edge_bpd_from_x0_hat(
        sched, t, s, x0, x0_hat, v, variance=variance, t_above=t_above, num_bins=num_bins, analytic=analytic
    )


def edge_bpd_from_x0_hat(
    sched: NoiseSchedule,
    t: int,
    s: int,
    x0: torch.Tensor,
    x0_hat: torch.Tensor,
    v: torch.Tensor | None = None,
    *,
    variance: VarianceKind,
    t_above: int | None = None,
    num_bins: int = 256,
    analytic: AnalyticVariances | None = None,
) -> torch.Tensor:
    """:func:`edge_bpd` from the model's x^_0 (as :func:`dpddpm.netpass.network_pass` gives it), per sample, bits/dim.

    x0, x0_hat: (B, ...) of the same shape; v: the raw variance output of that shape, or None. Returns (B,) float64.
    """
    t, s = _check_edge(sched, t, s, t_above)
    x0 = x0.double()
    log_var = jump_log_variance(sched, t, s, v, variance, t_above, analytic)
    if s == 0:
        return _flat_mean(discretized_gaussian_nll(x0, x0_hat, log_var, num_bins)) / LN2
    # KL(N(m_q, b~) || N(m_p, sigma^2)) with m_q - m_p = c1 (x0 - x^0).
    j = sched.jump(t, s)
    log_var = torch.as_tensor(log_var, dtype=torch.float64, device=x0.device)
    kl = normal_kl(float(j.c1) * (x0 - x0_hat), math.log(float(j.beta_post)), log_var)
    return _flat_mean(kl.expand_as(x0)) / LN2


def prior_bpd(sched: NoiseSchedule, t: int | Sequence[int] | np.ndarray, x0: torch.Tensor) -> torch.Tensor:
    """KL(q(x_t | x_0) || N(0, I)) per sample, in bits/dim.

    This is :func:`~dpddpm.gaussian.normal_kl` with p = N(0, I), averaged over dimensions in closed form: only
    mean(x_0^2) depends on the sample, so many t cost one pass over the data.

    Args:
        t: an int, or a 1-D sequence of times.
        x0: data, shape (B, ...).
    Returns:
        float64 tensor of shape (B,) for an int t, else (B, len(t)).
    """
    scalar = isinstance(t, (int,)) or (hasattr(t, "ndim") and t.ndim == 0)
    t_arr = torch.as_tensor(sched.alpha_bar[np.atleast_1d(np.asarray(t, dtype=np.int64))], device=x0.device)
    # Per dimension: 0.5 (-1 - log(1 - a) + (1 - a) + a x0^2); only mean(x0^2) depends on the sample.
    mean_sq = _flat_mean(x0.double().pow(2))[:, None]
    kl = 0.5 * (-1.0 - torch.log1p(-t_arr) + (1.0 - t_arr) + t_arr * mean_sq) / LN2
    return kl[:, 0] if scalar else kl
