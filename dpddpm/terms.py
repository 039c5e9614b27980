"""The terms of the ELBO, in bits per dimension, for any jump t -> s of a (respaced) chain.

ELBO of a schedule t_K > ... > t_1 = 1:
    prior(t_K) + sum_{i>=3} L(t_i, t_{i-1}) + L(t_2, 1) + decoder(t_2)
where L(t, s) = KL(q(x_s | x_t, x_0) || p(x_s | x_t)) and decoder(u) = -log p(x_0 | x_1) with a variance that
depends on the next kept time u above 1. Everything is float64; values are per sample, averaged over dimensions.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .schedule import NoiseSchedule

LN2 = math.log(2.0)


def _flat_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over all but the first dimension: (B, ...) -> (B,)."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def predict_x0(
    sched: NoiseSchedule, t: int, x_t: torch.Tensor, eps: torch.Tensor, clip: bool
) -> torch.Tensor:
    """x^_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), optionally clipped to [-1, 1]."""
    a = float(sched.alpha_bar[t])
    x0 = (x_t.double() - math.sqrt(1.0 - a) * eps.double()) / math.sqrt(a)
    return x0.clamp(-1.0, 1.0) if clip else x0


def jump_log_variance(
    sched: NoiseSchedule, t: int, s: int, v: torch.Tensor | None, variance: str, t_above: int | None = None
) -> torch.Tensor | float:
    """log sigma^2 of the model's jump t -> s, per dimension for ``learned_range`` (float64).

    For s >= 1: fixed_small -> log beta~_{s|t}, fixed_large -> log beta_{t|s},
    learned_range -> f log beta_{t|s} + (1 - f) log beta~_{s|t} with f = (v + 1) / 2.
    For the decoder (t = 1, s = 0) beta~ is beta~_{1|u} of the jump u -> 1, u = t_above, and the
    learned range's upper end is log(1 - alpha_bar_1).
    """
    if s == 0:
        u = 2 if t_above is None else int(t_above)
        lo = math.log(float(sched.jump(u, 1).beta_post))
        hi = math.log(1.0 - float(sched.alpha_bar[1]))
    else:
        j = sched.jump(t, s)
        lo, hi = math.log(float(j.beta_post)), math.log(float(j.beta))
    if variance == "fixed_small" or (variance == "fixed_large" and s == 0):
        return lo
    if variance == "fixed_large":
        return hi
    if variance == "learned_range":
        if v is None:
            raise ValueError("learned_range needs the network's variance output v")
        f = (v.double() + 1.0) / 2.0
        return f * hi + (1.0 - f) * lo
    raise ValueError(f"unknown variance kind {variance!r}")


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of the standard normal CDF used by Ho et al. and improved-diffusion."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


def discretized_gaussian_nll(
    x0: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor | float, num_bins: int
) -> torch.Tensor:
    """-log P(x_0) per element, in nats, for a Gaussian integrated over the data's bins.

    x_0 lies on ``num_bins`` levels in [-1, 1]; each bin has half-width 1 / (num_bins - 1), and the two edge
    bins take the CDF tails. Shapes broadcast; the result has the broadcast shape.
    """
    half = 1.0 / (num_bins - 1)
    inv_std = torch.exp(-0.5 * torch.as_tensor(log_var, dtype=torch.float64, device=x0.device))
    centered = x0 - mean
    edge = 1.0 - half / 2  # any value between the outermost level and its neighbour
    # The outermost bins extend to -inf and +inf: take the CDF tail there. One log per element.
    upper = torch.where(x0 > edge, 1.0, approx_standard_normal_cdf(inv_std * (centered + half)))
    lower = torch.where(x0 < -edge, 0.0, approx_standard_normal_cdf(inv_std * (centered - half)))
    return -torch.log((upper - lower).clamp(min=1e-12))


def edge_bpd(
    sched: NoiseSchedule,
    t: int,
    s: int,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    eps: torch.Tensor,
    v: torch.Tensor | None = None,
    *,
    variance: str,
    t_above: int | None = None,
    num_bins: int = 256,
    clip_denoised: bool = True,
) -> torch.Tensor:
    """One ELBO edge, per sample, in bits/dim.

    Args:
        t, s: the jump t -> s with 1 <= s < t <= T, or t = 1, s = 0 for the decoder -log p(x_0 | x_1).
        x0: data, shape (B, ...). x_t: the noisy point, same shape. eps, v: the network's outputs at x_t.
        t_above: for the decoder, the next kept time u above 1 (default 2, the full chain).
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
    log_var = jump_log_variance(sched, t, s, v, variance, t_above)
    if s == 0:
        return _flat_mean(discretized_gaussian_nll(x0, x0_hat, log_var, num_bins)) / LN2
    j = sched.jump(t, s)
    log_post = math.log(float(j.beta_post))
    # KL(N(m_q, b~) || N(m_p, sigma^2)) with m_q - m_p = c1 (x0 - x^0).
    diff2 = (float(j.c1) * (x0 - x0_hat)).pow(2)
    log_var = torch.as_tensor(log_var, dtype=torch.float64, device=x0.device)
    kl = 0.5 * (-1.0 + log_var - log_post + torch.exp(log_post - log_var) + diff2 * torch.exp(-log_var))
    return _flat_mean(kl.expand_as(diff2)) / LN2


def prior_bpd(sched: NoiseSchedule, t, x0: torch.Tensor) -> torch.Tensor:
    """KL(q(x_t | x_0) || N(0, I)) per sample, in bits/dim.

    Args:
        t: an int, or a 1-D sequence of times.
        x0: data, shape (B, ...).
    Returns:
        float64 tensor of shape (B,) for an int t, else (B, len(t)).
    """
    scalar = isinstance(t, (int,)) or (hasattr(t, "ndim") and getattr(t, "ndim") == 0)
    t_arr = torch.as_tensor(sched.alpha_bar[np.atleast_1d(np.asarray(t, dtype=np.int64))], device=x0.device)
    # Per dimension: 0.5 (-1 - log(1 - a) + (1 - a) + a x0^2); only mean(x0^2) depends on the sample.
    mean_sq = _flat_mean(x0.double().pow(2))[:, None]
    kl = 0.5 * (-1.0 - torch.log1p(-t_arr) + (1.0 - t_arr) + t_arr * mean_sq) / LN2
    return kl[:, 0] if scalar else kl
