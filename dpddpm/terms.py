"""The terms of the ELBO, in bits per dimension, for any jump t -> s of a (respaced) chain.

ELBO of a schedule t_K > ... > t_1 = 1:
    prior(t_K) + sum_{i>=3} L(t_i, t_{i-1}) + L(t_2, 1) + decoder(t_2)
where L(t, s) = KL(q(x_s | x_t, x_0) || p(x_s | x_t)) and decoder(u) = -log p(x_0 | x_1) with a variance that
depends on the next kept time u above 1. Everything is float64; values are per sample, averaged over dimensions.
The Gaussian formulas themselves live in :mod:`dpddpm.gaussian`; this module picks their arguments for a jump.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from .gaussian import discretized_gaussian_nll, model_log_variance, normal_kl, predict_x0, range_fraction
from .schedule import NoiseSchedule
from .types import VarianceKind

if TYPE_CHECKING:
    from .analytic import AnalyticVariances

LN2 = math.log(2.0)


def _flat_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over all but the first dimension: (B, ...) -> (B,)."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def log_variance_range(sched: NoiseSchedule, t: int, s: int, t_above: int | None = None) -> tuple[float, float]:
    """(log_min, log_max): the ends of the learned range of the model's jump t -> s.

    For s >= 1: (log beta~_{s|t}, log beta_{t|s}). For the decoder (t = 1, s = 0): (log beta~_{1|u},
    log(1 - alpha_bar_1)) with u = t_above, the next kept time above 1 (default 2, the full chain).
    """
    if s == 0:
        u = 2 if t_above is None else int(t_above)
        return math.log(float(sched.jump(u, 1).beta_post)), math.log(1.0 - float(sched.alpha_bar[1]))
    j = sched.jump(t, s)
    return math.log(float(j.beta_post)), math.log(float(j.beta))


def jump_log_variance(
    sched: NoiseSchedule,
    t: int,
    s: int,
    v: torch.Tensor | None,
    variance: VarianceKind,
    t_above: int | None = None,
    analytic: AnalyticVariances | None = None,
) -> torch.Tensor | float:
    """log sigma^2 of the model's jump t -> s, per dimension for ``learned_range`` (float64).

    For s >= 1: fixed_small -> log beta~_{s|t}, fixed_large -> log beta_{t|s},
    learned_range -> f log beta_{t|s} + (1 - f) log beta~_{s|t} with f = (v + 1) / 2.
    For the decoder (t = 1, s = 0) beta~ is beta~_{1|u} of the jump u -> 1, u = t_above, and the
    learned range's upper end is log(1 - alpha_bar_1).
    analytic -> log(beta~_{s|t} + c1^2 m_t) from the frozen ``analytic`` variances (decoder: their fitted one).
    """
    if variance == "analytic":
        if analytic is None:
            raise ValueError("variance='analytic' needs the fitted AnalyticVariances")
        return analytic.log_variance(sched, t, s)
    log_min, log_max = log_variance_range(sched, t, s, t_above)
    f = None if v is None else range_fraction(v)
    return model_log_variance(variance, log_min, log_max, f, decoder=s == 0)


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
    t, s = int(t), int(s)
    if not (0 <= s < t <= sched.T):
        raise ValueError(f"an edge needs 0 <= s < t <= T = {sched.T}, got t = {t}, s = {s}")
    if s == 0 and t != 1:
        raise ValueError(f"the decoder edge runs from t = 1 to s = 0, got t = {t}")
    if s == 0 and t_above is not None and not (1 < int(t_above) <= sched.T):
        raise ValueError(f"t_above must satisfy 1 < t_above <= T = {sched.T}, got {t_above}")
    x0 = x0.double()
    x0_hat = predict_x0(sched, t, x_t, eps, clip_denoised)
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
