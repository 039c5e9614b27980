"""The baseline schedules: the paper's even and quadratic strides, and DDIM's own strides.

All return int64 arrays t_K > ... > t_1 = 1 (1-based times). :func:`even_schedule` and
:func:`quadratic_schedule` have exactly K distinct steps and t_K = T; :func:`ddim_schedule` reproduces the
times DDIM's code visits, which stop below T and need not number K (DDIM's network calls).
"""

from __future__ import annotations

import numpy as np

from .types import DDIMSkip
from .validation import check_budget


def even_schedule(T: int, K: int) -> np.ndarray:
    """improved-diffusion's single-section even stride over T steps (``space_timesteps(T, [K])``).

    That code walks a float index by (T - 1) / (K - 1) from 0 and rounds each value (Python's round, half to
    even), which always yields K distinct 0-based indices including 0 and T - 1; we shift them to 1-based.
    """
    K = check_budget(K, T)
    stride = (T - 1) / (K - 1)
    index, taken = 0.0, []
    for _ in range(K):  # accumulate exactly as the reference does, so the sets agree bit for bit
        taken.append(round(index))
        index += stride
    return np.asarray(taken[::-1], dtype=np.int64) + 1


def quadratic_schedule(T: int, K: int) -> np.ndarray:
    """Quadratic stride: t_i = 1 + round((T - 1) (i / (K - 1))^2), i = 0 .. K-1, dense near the data.

    DDIM's original quadratic stride (:func:`ddim_schedule` with ``skip_type="quad"``) stops at 0.8 T and
    repeats small indices when K is large. Here the parabola runs from 1 to T, so t_K = T as in
    the even stride, and where rounding repeats a time (the flat start of the parabola) each step is pushed
    up to one above the previous one, which keeps exactly K distinct times for every K <= T.
    """
    K = check_budget(K, T)
    i = np.arange(K, dtype=np.float64)
    times = 1 + np.round((T - 1) * (i / (K - 1)) ** 2).astype(np.int64)
    times = np.maximum(times, np.arange(1, K + 1))  # the push-up: at least i + 1
    for n in range(1, K):  # pushes can only cascade upward; the parabola then outruns them
        times[n] = max(times[n], times[n - 1] + 1)
    assert times[-1] == T, "quadratic stride must end at T"
    return times[::-1].copy()


def ddim_schedule(T: int, K: int, skip_type: DDIMSkip) -> np.ndarray:
    """The times DDIM's own sampler visits with ``--timesteps K --skip_type {quad, uniform}``, for comparisons
    with published DDIM numbers.

    DDIM (Song et al., 2021; the ermongroup/ddim repository, ``runners/diffusion.py``, ``sample_image``) builds an
    ascending list of 0-based indices ``seq`` and makes one network call per entry, from the top down to
    index 0, whose step goes to the data (index -1, alpha_bar = 1):

    - ``"quad"``: ``seq[j] = int(linspace(0, sqrt(0.8 T), K)[j] ** 2)``, j = 0 .. K-1, in float64 and
      truncated. Exactly K network calls. It stops near 0.8 T: our t_K = seq[-1] + 1 is int(0.8 T) + 1 for
      most T, one less where float round-off leaves sqrt(0.8 T)^2 just below an integer (T = 15, 30, 60, ...);
      801 for T = 1000, 3201 for T = 4000. Where the parabola is flatter than one index per step (small times,
      large K) truncation repeats indices, so the schedule has fewer than K distinct times (T = 1000:
      49 for K = 50, 96 for K = 100).
    - ``"uniform"``: ``seq = range(0, T, T // K)``: ``len(seq) = ceil(T / (T // K))`` network calls, which is
      K when K divides T but can be more (T = 1000: 31 for K = 30, all 1000 for K = 600). No repeats; t_K =
      seq[-1] + 1 <= T.

    We return the distinct times, 1-based, in our order t_K > ... > t_1 = 1: index i is t = i + 1, since
    DDIM's ``compute_alpha`` reads alpha_bar at i + 1 of a cumulative product that starts with 1 for the data.
    The chain starts from x_{t_K} ~ N(0, I) as DDIM's does, so the prior term sits at t_K: below T for
    ``"quad"``, and for ``"uniform"`` unless T // K divides T - 1.

    A repeated index is a no-op in DDIM's samplers: the step from index i to i has alpha_bar_next =
    alpha_bar_t, so ``generalized_steps`` (any eta) has noise scale 0 and sets x_next = sqrt(a) x^_0 +
    sqrt(1 - a) eps^ = x_t, and ``ddpm_steps`` has beta = 0, so mean x_t and variance 0 (up to float round-off).
    A repeat therefore costs a network call and changes nothing: DDIM's K-call stride produces the samples,
    and has the ELBO (:func:`~dpddpm.schedule_bpd`), of the distinct set returned here. Compare it with
    the optimizer at K steps for an equal number of network calls, or at ``len(result)`` steps with
    ``start="free"`` for an equal number of distinct times (the optimum there is never worse).

    Args:
        T: the model's number of steps.
        K: DDIM's ``--timesteps``, 2 <= K <= T.
        skip_type: ``"quad"`` or ``"uniform"``, DDIM's ``--skip_type``.
    Returns:
        int64 (n,): distinct times t_n > ... > t_1 = 1, with n <= K for ``"quad"`` (n >= 2).
    """
    K = check_budget(K, T)
    indices = _ddim_indices(T, K, skip_type)
    return np.unique(indices)[::-1] + 1  # unique sorts ascending and drops the repeats


def _ddim_indices(T: int, K: int, skip_type: DDIMSkip) -> np.ndarray:
    """DDIM's ascending 0-based ``seq`` (repeats kept): one entry per network call. int64 (calls,)."""
    if skip_type == "quad":
        # float64 as numpy computes it, truncated toward zero like DDIM's int(); never round here.
        return (np.linspace(0, np.sqrt(T * 0.8), K) ** 2).astype(np.int64)
    if skip_type == "uniform":
        return np.arange(0, T, T // K, dtype=np.int64)
    raise ValueError(f"skip_type must be 'quad' or 'uniform' (DDIM's --skip_type), got {skip_type!r}")
