"""The Gaussian formulas of a DDPM, each written once, on float64 tensors.

With a_t = alpha_bar_t:

    q_sample                   x_t  = sqrt(a_t) x_0 + sqrt(1 - a_t) eps          the forward process q(x_t | x_0)
    predict_x0                 x^_0 = (x_t - sqrt(1 - a_t) eps^) / sqrt(a_t)     the model's estimate of x_0
    predict_eps                eps^ = (x_t - sqrt(a_t) x^_0) / sqrt(1 - a_t)     its inverse
    range_fraction             f = (v + 1) / 2, where a learned log-variance sits in its range (the variance rule
                               itself, for each kind, is :mod:`dpddpm.variances`)
    normal_kl                  KL between two Gaussians, nats per element
    discretized_gaussian_nll   -log P(x_0) of a Gaussian integrated over the data's bins, nats per element
    standard_normal            float64 noise: torch.randn's draw, formed twice as fast on a CPU (``_rows``: many)

A step t is an int (one step for the whole batch) or a (B,) long tensor (each sample its own step, as in training).
Every value is float64; an int t takes its coefficients as Python floats, a tensor t as (B, 1, ..., 1) tensors,
and both give the same numbers.
"""

from __future__ import annotations

import math

import torch

from .schedule import NoiseSchedule
from .types import Steps

Scalar = float | torch.Tensor  # a float, or a float64 tensor that broadcasts against the data


def _sqrt_alpha_bars(sched: NoiseSchedule, t: Steps, like: torch.Tensor) -> tuple[Scalar, Scalar]:
    """(sqrt(a_t), sqrt(1 - a_t)) in float64: floats for an int t, (B, 1, ..., 1) tensors for a (B,) tensor t.

    ``like`` is the (B, ...) data they multiply; it gives the device and the number of dimensions.
    """
    if isinstance(t, torch.Tensor) and t.ndim == 1:
        a = torch.tensor(sched.alpha_bar, device=like.device)[t.to(like.device)]  # a copy: alpha_bar is read-only
        a = a.reshape(-1, *([1] * (like.ndim - 1)))
        return a.sqrt(), (1.0 - a).sqrt()
    a = float(sched.alpha_bar[int(t)])
    return math.sqrt(a), math.sqrt(1.0 - a)


def q_sample(sched: NoiseSchedule, t: Steps, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """A draw of q(x_t | x_0): sqrt(a_t) x_0 + sqrt(1 - a_t) noise, float64 of x0's shape (B, ...).

    The network takes float32: callers round with ``.float()`` and form x^_0 from that rounded x_t, so that the
    costs describe the very input the network saw.
    """
    signal, sigma = _sqrt_alpha_bars(sched, t, x0)
    return torch.mul(x0.double(), signal).add_(noise.double() * sigma)  # 3 passes, one temporary


def predict_x0(sched: NoiseSchedule, t: Steps, x_t: torch.Tensor, eps: torch.Tensor, clip: bool) -> torch.Tensor:
    """x^_0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t), float64 of x_t's shape (B, ...), clipped to [-1, 1] if ``clip``."""
    signal, sigma = _sqrt_alpha_bars(sched, t, x_t)
    # in place on one float64 copy of x_t: the same roundings as (x_t - sigma eps) / signal, fewer passes
    x0 = x_t.to(torch.float64, copy=True).sub_(eps.double() * sigma).div_(signal)
    return x0.clamp_(-1.0, 1.0) if clip else x0


def predict_eps(sched: NoiseSchedule, t: Steps, x_t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """The epsilon that maps x0 to x_t: (x_t - sqrt(a_t) x0) / sqrt(1 - a_t), float64 (B, ...)."""
    signal, sigma = _sqrt_alpha_bars(sched, t, x_t)
    return (x_t.double() - signal * x0.double()) / sigma


def range_fraction(v: torch.Tensor) -> torch.Tensor:
    """f = (v + 1) / 2 in float64: where the learned log-variance sits in its range (never clamped, as in the
    source code; f can leave [0, 1])."""
    return (v.double() + 1.0).mul_(0.5)  # exactly / 2, without a division pass


def normal_kl(mean_diff: torch.Tensor, log_var_q: Scalar, log_var_p: Scalar) -> torch.Tensor:
    """KL(N(m_q, exp(log_var_q)) || N(m_p, exp(log_var_p))) per element, in nats (improved-diffusion's normal_kl).

    mean_diff = m_q - m_p; all arguments broadcast, and log_var_p must be a tensor where log_var_q is a float.
    """
    return 0.5 * (
        -1.0 + log_var_p - log_var_q + torch.exp(log_var_q - log_var_p) + mean_diff.pow(2) * torch.exp(-log_var_p)
    )


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of the standard normal CDF used by Ho et al. and improved-diffusion."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


def discretized_gaussian_nll(x0: torch.Tensor, mean: torch.Tensor, log_var: Scalar, num_bins: int) -> torch.Tensor:
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


TANH_ONE = 40.0
"""A tanh argument at least this large gives exactly 1.0 in float64 (and -1.0 for its negative): the exact value
is within 1e-34 of 1, far below half an ulp, and libraries return 1.0 from about 19 on (a test checks)."""


def certain_bins(x0: torch.Tensor, mean: torch.Tensor, log_var: Scalar, num_bins: int) -> torch.Tensor:
    """Where :func:`discretized_gaussian_nll` is exactly 0 at this variance and at every smaller one (bool).

    That is where both CDFs of the bin are saturated: the upper one at exactly 1 (or the bin is the top tail)
    and the lower one at exactly 0 (or the bottom tail); a smaller variance only pushes their arguments further
    out. A decoder with sigma far below the bin width puts nearly every dimension here. Shapes broadcast.
    """
    half = 1.0 / (num_bins - 1)
    inv_std = torch.exp(-0.5 * torch.as_tensor(log_var, dtype=torch.float64, device=x0.device))
    centered = x0 - mean
    edge = 1.0 - half / 2

    def tanh_argument(z: torch.Tensor) -> torch.Tensor:  # as in approx_standard_normal_cdf
        return math.sqrt(2.0 / math.pi) * (z + 0.044715 * z * z * z)

    upper_is_one = (x0 > edge) | (tanh_argument(inv_std * (centered + half)) >= TANH_ONE)
    lower_is_zero = (x0 < -edge) | (tanh_argument(inv_std * (centered - half)) <= -TANH_ONE)
    return upper_is_one & lower_is_zero


def standard_normal(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``torch.randn(shape, generator=generator, dtype=float64)``, to 2 ulp, in half the time on a CPU.

    For 16 or more values a CPU's randn draws float64 uniforms, then turns each block of 16, (u_1..8, u_9..16),
    into z = sqrt(-2 log(1 - u_1..8)) (cos, sin)(2 pi u_9..16) one value at a time, and, when the size is not a
    multiple of 16, redraws the last 16 values from 16 fresh uniforms. Here the same uniforms go through the same
    formula vectorised (138 against 277 us for 300 x 64 values, one thread, measured): the values agree to 2 ulp
    (the vectorised log, cos and sin round differently), so a cost matrix is unchanged beyond round-off.
    ``tests/test_gaussian.py`` checks this against torch.randn; other devices and small sizes call torch.randn.
    """
    return standard_normal_rows(shape, [generator], device)[0]


def standard_normal_rows(shape: tuple[int, ...], generators: list[torch.Generator], device: torch.device):
    """(R, *shape) float64: :func:`standard_normal` of ``shape`` from each of R generators. Where every row's
    size is a multiple of 16, all rows' uniforms go through one vectorised transform (few calls, and large enough
    to share among threads)."""
    size = math.prod(shape)
    if torch.device(device).type != "cpu" or size < 16:
        rows = [torch.randn(shape, generator=g, device=device, dtype=torch.float64) for g in generators]
        return torch.stack(rows) if rows else torch.empty(0, *shape, dtype=torch.float64, device=device)
    uniform = torch.empty(len(generators), size, dtype=torch.float64)
    for row, generator in zip(uniform, generators):
        torch.rand(size, generator=generator, dtype=torch.float64, out=row)
    out = torch.empty_like(uniform)
    whole = size - size % 16
    if whole == size:  # blocks of 16 never straddle two rows
        _box_muller_blocks(uniform.view(-1), out.view(-1))
        return out.view(len(generators), *shape)
    for generator, u, z in zip(generators, uniform, out):  # each row's whole blocks, then its last 16 values
        _box_muller_blocks(u[:whole], z[:whole])  # again, from fresh uniforms
        _box_muller_blocks(torch.rand(16, generator=generator, dtype=torch.float64), z[size - 16 :])
    return out.view(len(generators), *shape)


def _box_muller_blocks(uniform: torch.Tensor, out: torch.Tensor) -> None:
    """Blocks of 16 uniforms (u, w) -> out = sqrt(-2 log(1 - u)) (cos 2 pi w, sin 2 pi w), in place."""
    u, w = uniform.view(-1, 2, 8).unbind(1)
    radius = torch.log1p(-u).mul_(-2.0).sqrt_()
    angle = w.mul(2.0 * math.pi)
    blocks = out.view(-1, 2, 8)
    torch.mul(radius, torch.cos(angle), out=blocks[:, 0])
    torch.mul(radius, angle.sin_(), out=blocks[:, 1])
