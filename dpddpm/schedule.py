"""Noise schedules: the forward process q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I).

Time is 1-based as in the papers: ``t = 0`` is data, ``t = 1 .. T`` are noisy steps.
All arrays are float64, because ratios of float32 ``alpha_bar`` near t = 1 are off by ~0.3 %.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A discrete DDPM noise schedule.

    Attributes:
        alpha_bar: float64 array of shape (T + 1,), ``alpha_bar[0] == 1`` and ``alpha_bar[t]`` the
            cumulative signal fraction at 1-based step t.
    """

    alpha_bar: np.ndarray

    def __post_init__(self) -> None:
        a = np.asarray(self.alpha_bar, dtype=np.float64)
        if a.ndim != 1 or a.shape[0] < 2:
            raise ValueError(f"alpha_bar must be a 1-D array of length T + 1 >= 2, got shape {a.shape}")
        if a[0] != 1.0:
            raise ValueError(f"alpha_bar[0] must be exactly 1 (t = 0 is data), got {a[0]!r}")
        if not np.all(np.isfinite(a)) or np.any(a[1:] <= 0) or np.any(np.diff(a) >= 0):
            raise ValueError("alpha_bar must be finite, positive and strictly decreasing")
        a.setflags(write=False)
        object.__setattr__(self, "alpha_bar", a)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_betas(cls, betas) -> NoiseSchedule:
        """Schedule from per-step betas: ``betas[i]`` is beta at t = i + 1, shape (T,)."""
        b = np.asarray(betas, dtype=np.float64)
        if b.ndim != 1 or b.size < 1:
            raise ValueError(f"betas must be a non-empty 1-D array, got shape {b.shape}")
        if np.any(b <= 0) or np.any(b >= 1) or not np.all(np.isfinite(b)):
            raise ValueError("every beta must lie in (0, 1)")
        return cls(np.concatenate([[1.0], np.cumprod(1.0 - b)]))

    @classmethod
    def linear(cls, T: int, beta_start: float | None = None, beta_end: float | None = None) -> NoiseSchedule:
        """Ho et al.'s linear betas. Defaults scale 1e-4 .. 0.02 by 1000 / T as improved-diffusion does."""
        T = _check_T(T)
        scale = 1000.0 / T
        beta_start = scale * 1e-4 if beta_start is None else beta_start
        beta_end = scale * 0.02 if beta_end is None else beta_end
        return cls.from_betas(np.linspace(beta_start, beta_end, T, dtype=np.float64))

    @classmethod
    def cosine(cls, T: int, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
        """Nichol & Dhariwal's cosine schedule; betas are clipped at ``max_beta`` as their code does."""
        T = _check_T(T)

        def f(u: float) -> float:
            return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

        betas = [min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)]
        return cls.from_betas(betas)

    # ------------------------------------------------------------------ derived quantities
    @property
    def T(self) -> int:
        """Number of noisy steps."""
        return self.alpha_bar.shape[0] - 1

    @property
    def betas(self) -> np.ndarray:
        """Per-step betas, shape (T,); ``betas[i]`` belongs to t = i + 1."""
        return 1.0 - self.alpha_bar[1:] / self.alpha_bar[:-1]

    def snr(self, t: int | np.ndarray) -> np.ndarray:
        """SNR(t) = alpha_bar_t / (1 - alpha_bar_t), float64, for 1-based t (0 <= t <= T; SNR(0) = inf)."""
        ab = self.alpha_bar[np.asarray(t)]
        with np.errstate(divide="ignore"):
            return ab / (1.0 - ab)

    def snr_gap(self, t: int, s: int | np.ndarray) -> np.ndarray:
        """SNR(s) - SNR(t) of the jumps t -> s, computed as c1^2 / beta~_{s|t}, float64 of the shape of s.

        The same number as ``snr(s) - snr(t)``, but without its cancellation near t = T, where both SNRs are
        ~1e-8 and close (the difference then keeps only a few digits; measured: 1e-3 relative).
        """
        return self.jump(t, s).snr_gap

    def jump(self, t: int | np.ndarray, s: int | np.ndarray) -> Jump:
        """Coefficients of the jump t -> s (1 <= s < t, or s = 0 for t >= 1); broadcasts over arrays."""
        return Jump.of(self.alpha_bar, t, s)

    def __repr__(self) -> str:
        return f"NoiseSchedule(T={self.T})"


@dataclass(frozen=True)
class Jump:
    """Float64 coefficients of the posterior q(x_s | x_t, x_0) for a jump t -> s.

    beta      = beta_{t|s}  = 1 - alpha_bar_t / alpha_bar_s
    beta_post = beta~_{s|t} = beta_{t|s} (1 - alpha_bar_s) / (1 - alpha_bar_t)
    mean      = c1 * x_0 + c2 * x_t
    All fields are numpy float64 arrays (or scalars) of the broadcast shape of t and s.
    """

    beta: np.ndarray
    beta_post: np.ndarray
    c1: np.ndarray
    c2: np.ndarray

    @property
    def snr_gap(self) -> np.ndarray:
        """SNR(s) - SNR(t) as c1^2 / beta~_{s|t} (see :meth:`NoiseSchedule.snr_gap`), float64."""
        return np.asarray(self.c1**2 / self.beta_post, dtype=np.float64)

    @classmethod
    def of(cls, alpha_bar: np.ndarray, t: int | np.ndarray, s: int | np.ndarray) -> Jump:
        a_t = alpha_bar[np.asarray(t)]
        a_s = alpha_bar[np.asarray(s)]
        beta = 1.0 - a_t / a_s
        beta_post = beta * (1.0 - a_s) / (1.0 - a_t)
        c1 = np.sqrt(a_s) * beta / (1.0 - a_t)
        c2 = np.sqrt(a_t / a_s) * (1.0 - a_s) / (1.0 - a_t)
        return cls(beta, beta_post, c1, c2)


def _check_T(T: int) -> int:
    if int(T) != T or T < 1:
        raise ValueError(f"T must be a positive integer, got {T!r}")
    return int(T)
