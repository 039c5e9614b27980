"""The paper's baseline schedules: the even stride and the quadratic stride, with exactly K distinct steps.

Both return int64 arrays t_K = T > ... > t_1 = 1 (1-based times).
"""

from __future__ import annotations

import numpy as np

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

    DDIM's original quadratic stride is ``(linspace(0, sqrt(0.8 T), K) ** 2).astype(int)``: it stops at
    0.8 T and repeats small indices when K is large. Here the parabola runs from 1 to T, so t_K = T as in
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
