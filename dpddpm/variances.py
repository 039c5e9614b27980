"""The variance rule of a reverse step: the one place that says what sigma^2 a model uses for a jump t -> s.

Four kinds (:data:`VarianceKind`):

    fixed_small     sigma^2 = beta~_{s|t}                      the true posterior's variance
    fixed_large     sigma^2 = beta_{t|s}                       (the decoder takes beta~, as improved-diffusion does)
    learned_range   log sigma^2 = f log beta_{t|s} + (1 - f) log beta~_{s|t},  f = (v + 1) / 2 per dimension, v the
                    network's second output (Nichol & Dhariwal)
    analytic        sigma^2 = beta~_{s|t} + c1^2 m_t            m_t the error of x^_0 frozen from a selection split
                    (:class:`AnalyticVariances`; the KL-optimal isotropic variance, :mod:`dpddpm.analytic`)

The decoder p(x_0 | x_1) is the step (t, s) = (1, 0); its range is (log beta~_{1|u}, log(1 - alpha_bar_1)) with u
the next kept time above 1, and an analytic model uses one fitted decoder variance.

:func:`jump_log_variance` gives log sigma^2 for one jump or, vectorised, for arrays of jumps; :func:`row_log_ratio`
gives log(sigma^2 / beta~) of a whole cost-matrix row without cancellation. Adding a kind means adding it here
(and, if it has fitted state like the analytic kind, a frozen type beside :mod:`dpddpm.fitted_variances`).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import numpy as np
import torch

from .fitted_variances import AnalyticVariances, FitInfo
from .gaussian import range_fraction
from .schedule import Jump, NoiseSchedule

__all__ = [
    "VARIANCE_KINDS",
    "AnalyticVariances",
    "FitInfo",
    "VarianceKind",
    "check_variance_rule",
    "reads_network_variance",
    "jump_log_variance",
    "log_variance_range",
    "model_log_variance",
    "row_log_ratio",
]

VarianceKind = Literal["fixed_small", "fixed_large", "learned_range", "analytic"]
"""The model's reverse variance sigma^2 of a jump t -> s: ``"fixed_small"`` beta~_{s|t} (the true posterior's),
``"fixed_large"`` beta_{t|s}, ``"learned_range"``, interpolated in log space between the two by the network's
second output (Nichol & Dhariwal), or ``"analytic"``, beta~_{s|t} + c1^2 m_t with m_t the error of x^_0 frozen
from a selection split (the KL-optimal isotropic variance; :mod:`dpddpm.analytic`)."""
VARIANCE_KINDS: tuple[VarianceKind, ...] = get_args(VarianceKind)


def reads_network_variance(variance: VarianceKind) -> bool:
    """Whether the rule reads the network's variance output v (only ``learned_range``; an analytic model of a
    learned-variance net receives v and ignores it)."""
    return variance == "learned_range"


def check_variance_rule(variance: str, analytic: AnalyticVariances | None) -> VarianceKind:
    """``variance`` after checking it names a kind, and that only (and every) ``"analytic"`` rule has its variances."""
    if variance not in VARIANCE_KINDS:
        raise ValueError(f"variance must be one of {VARIANCE_KINDS}, got {variance!r}")
    if (variance == "analytic") != (analytic is not None):
        raise ValueError(
            "variance='analytic' needs its fitted variances (use dpddpm.with_analytic_variances), "
            "and only an analytic model takes them"
        )
    return variance  # type: ignore[return-value]


# ---------------------------------------------------------------------- the rule
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


def _range_arrays(sched: NoiseSchedule, t: np.ndarray, s: np.ndarray, u: np.ndarray):
    """Vectorised :func:`log_variance_range`, plus the decoder lanes (s == 0) and beta~, c1 of the other lanes."""
    t, s, u = np.broadcast_arrays(t, s, u)
    dec = s == 0
    j = sched.jump(np.where(dec, 2, t), np.where(dec, 1, s))  # decoder lanes: a placeholder jump, replaced below
    post_u = sched.jump(np.where(dec, u, 2), 1).beta_post
    log_min = np.where(dec, np.log(post_u), np.log(j.beta_post))
    log_max = np.where(dec, math.log(1.0 - float(sched.alpha_bar[1])), np.log(j.beta))
    return dec, log_min, log_max, j


def model_log_variance(variance: str, log_min, log_max, f=None, *, decoder=False):
    """log sigma^2 of a fixed or learned rule from the ends of its range.

    Args:
        log_min, log_max: the range's ends (floats, or float64 tensors that broadcast); see :func:`log_variance_range`.
        f: :func:`~dpddpm.gaussian.range_fraction` of the network's variance output (``learned_range`` only).
        decoder: whether the step is the decoder 1 -> 0 (a bool, or a bool tensor for a batch that mixes steps):
            ``fixed_large`` then takes log_min, as improved-diffusion puts beta~ at index 0.
    """
    if variance == "fixed_small":
        return log_min
    if variance == "fixed_large":
        if isinstance(decoder, torch.Tensor):
            return torch.where(decoder, log_min, log_max)
        return log_min if decoder else log_max
    if variance == "learned_range":
        if f is None:
            raise ValueError("learned_range needs the network's variance output v (f = (v + 1) / 2)")
        return f * log_max + (1.0 - f) * log_min
    raise ValueError(f"unknown variance kind {variance!r}; expected one of {VARIANCE_KINDS}")


def jump_log_variance(
    sched: NoiseSchedule,
    t: int | np.ndarray | torch.Tensor,
    s: int | np.ndarray | torch.Tensor,
    v: torch.Tensor | None,
    variance: VarianceKind,
    t_above: int | np.ndarray | torch.Tensor | None = None,
    analytic: AnalyticVariances | None = None,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor | float:
    """log sigma^2 of the model's jump t -> s (float64): the one rule every ELBO term, row and sampler uses.

    For s >= 1: fixed_small -> log beta~_{s|t}, fixed_large -> log beta_{t|s},
    learned_range -> f log beta_{t|s} + (1 - f) log beta~_{s|t} with f = (v + 1) / 2 per dimension,
    analytic -> log(beta~_{s|t} + c1^2 m_t) from the frozen ``analytic`` variances.
    For the decoder (t = 1, s = 0): beta~ is beta~_{1|u} of the jump u -> 1, u = t_above (default 2), the learned
    range's upper end is log(1 - alpha_bar_1), and an analytic model uses its one fitted decoder variance.

    Args:
        t, s, t_above: ints (one jump), or arrays / long tensors that broadcast (many jumps; lanes with s = 0 are
            decoder steps). Arrange their shapes to broadcast against ``v`` (e.g. t of shape (B, 1) for v (B, D)).
        v: the network's raw variance output (``learned_range`` only), float tensor.
        device: where a tensor result goes (default: v's device, else t's or s's, else the CPU).
    Returns:
        a float for one jump of a fixed or analytic rule; else a float64 tensor of the broadcast shape.
    """
    if variance == "analytic" and analytic is None:
        raise ValueError("variance='analytic' needs the fitted AnalyticVariances")
    f = range_fraction(v) if v is not None and reads_network_variance(variance) else None  # only a learned rule reads v
    if not any(isinstance(x, (np.ndarray, torch.Tensor)) for x in (t, s, t_above)):
        t, s = int(t), int(s)
        if variance == "analytic":
            return analytic.log_variance(sched, t, s)
        log_min, log_max = log_variance_range(sched, t, s, t_above)
        return model_log_variance(variance, log_min, log_max, f, decoder=s == 0)
    if device is None:
        tensors = [x for x in (v, t, s) if isinstance(x, torch.Tensor)]
        device = tensors[0].device if tensors else None
    t_np, s_np = _as_numpy(t), _as_numpy(s)
    dec, log_min, log_max, j = _range_arrays(sched, t_np, s_np, _as_numpy(2 if t_above is None else t_above))
    if variance == "analytic":
        mse = analytic.mse[np.where(dec, 2, np.broadcast_to(t_np, dec.shape))]
        fixed = np.where(dec, analytic.decoder_log_variance, np.log(j.beta_post + j.c1**2 * mse))
        return torch.as_tensor(fixed, device=device)
    as_tensor = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
    return model_log_variance(variance, as_tensor(log_min), as_tensor(log_max), f, decoder=as_tensor(dec))


def _as_numpy(x: int | np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def row_log_ratio(
    sched: NoiseSchedule,
    t: int,
    variance: VarianceKind,
    analytic: AnalyticVariances | None = None,
    jump: Jump | None = None,
) -> np.ndarray:
    """Delta_s = log(sigma_s^2 / beta~_{s|t}) of the jumps t -> s, s = 1 .. t - 1, float64 (t - 1,), >= 0.

    Written as the log of a ratio, not a difference of logs: near t = T the ratio is 1 + 1e-9 and a difference
    of two logs keeps only a few digits of it. For ``learned_range`` it is the width of the range,
    log(beta_{t|s} / beta~_{s|t}); the jump's own ratio is f Delta_s. ``jump``: ``sched.jump(t, 1 .. t-1)`` if the
    caller has it already.
    """
    j = sched.jump(t, np.arange(1, t)) if jump is None else jump
    if variance == "fixed_small":
        return np.zeros(t - 1)
    if variance in ("fixed_large", "learned_range"):
        return np.log(j.beta / j.beta_post)
    if variance == "analytic":
        if analytic is None:
            raise ValueError("variance='analytic' needs the fitted AnalyticVariances")
        return np.log1p(j.c1**2 / j.beta_post * float(analytic.mse[t]))
    raise ValueError(f"unknown variance kind {variance!r}; expected one of {VARIANCE_KINDS}")
