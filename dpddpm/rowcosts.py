"""One row of the cost matrix from one network call per sample.

For a fixed t, every edge cost L(t, s), s = 1 .. t-1, is an affine function of a few per-sample
*features* of the network output at x_t:

    bpd_n(s) = const[s] + sum_j feature[n, j] * coef[j, s]

* fixed variances (and frozen analytic ones): one feature, sum_d (x0 - x^0)_d^2.
* learned_range: per dimension the KL is  0.5 (phi_s(f) + r_s e^2 exp(-f Delta_s))  with
  phi_s(f) = f Delta_s - 1 + exp(-f Delta_s),  Delta_s = log(beta_{t|s} / beta~_{s|t}),  r_s = c1^2 / beta~,
  e = x0 - x^0 and f = (v + 1) / 2 per dimension. Expanding phi_s and exp(-f Delta_s) in Chebyshev
  polynomials T_j of f on the interval the samples span turns the sum over dimensions into moments
  sum_d T_j(f_d) and sum_d e_d^2 T_j(f_d) (the features), and each s into a coefficient vector
  (:mod:`dpddpm.chebyshev`). This agrees with the direct sum to ~1e-9 relative or better; a test checks 1e-6
  on the real schedule.

Rows accumulate (count, mean, sum of squared deviations) per s, merged across batches with Chan et al.'s
formula, so standard errors need no second pass and no cancellation. Every row also accumulates each image's
mean squared error of x^0 over dimensions (``mse_stats``): m_t, from which :mod:`dpddpm.analytic` derives the
KL-optimal variances at no extra network call.
"""

from __future__ import annotations

import numpy as np
import torch

from .chebyshev import ChebyshevBasis
from .gaussian import certain_bins, discretized_gaussian_nll, range_fraction
from .schedule import NoiseSchedule
from .stats import RowStats
from .terms import LN2
from .variances import AnalyticVariances, VarianceKind, jump_log_variance, reads_network_variance, row_log_ratio

F64 = torch.float64


def x_minus_1_plus_exp_neg(x: torch.Tensor) -> torch.Tensor:
    """x - 1 + exp(-x) without cancellation: its Taylor series x^2/2 - x^3/6 + x^4/24 - x^5/120 below 3e-3.

    For the tiny log-variance ratios of short jumps near t = T (1e-9 and less) the direct form loses 7 and more
    of its 16 digits; the truncated series errs by x^4/360 relative (< 3e-13), the direct form by 2 eps / x.
    """
    direct = x + torch.expm1(-x)
    series = x * x * (0.5 - x * (1.0 / 6.0 - x * (1.0 / 24.0 - x / 120.0)))
    return torch.where(x.abs() < 3e-3, series, direct)


def fixed_row_affine(delta: torch.Tensor, r: torch.Tensor, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(const, coef), both (t-1,), of a fixed-variance row: bpd_n(s) = const[s] + coef[s] * sum_d e_nd^2.

    With Delta = log(sigma^2 / beta~), KL = 0.5 (Delta - 1 + e^-Delta + r e^-Delta e^2) per dimension
    (fixed_small has Delta = 0: exactly 0.5 r e^2); const and coef are in bits per dimension.
    """
    scale = 0.5 / (dims * LN2)  # nats summed over dims -> bits per dim
    if delta.device.type == "cpu" and not bool(delta.any()):  # fixed_small: the same numbers, 6 fewer passes
        return torch.zeros_like(delta), scale * r
    return scale * dims * x_minus_1_plus_exp_neg(delta), scale * r * torch.exp(-delta)


class KLRow:
    """Edge costs L(t, s) for s = 1 .. t-1 of one row t >= 2, from per-sample network outputs.

    Names as in the book's chapter 3: delta = Delta_s, r = r_s. The cost-matrix run accumulates many rows at once
    with :class:`dpddpm.rowblock.KLRowBlock`, from the same pieces (:func:`fixed_row_affine`,
    :class:`ChebyshevBasis`).
    """

    def __init__(
        self,
        sched: NoiseSchedule,
        t: int,
        variance: VarianceKind,
        dims: int,
        device: torch.device,
        analytic: AnalyticVariances | None = None,
    ) -> None:
        self.t, self.variance, self.dims = t, variance, dims
        # Delta_s = log(sigma^2 / beta~), (t-1,), >= 0 (for learned_range: the width of the range)
        self.delta = torch.as_tensor(row_log_ratio(sched, t, variance, analytic), device=device)
        self.r = torch.as_tensor(sched.snr_gap(t, np.arange(1, t)), device=device)  # r_s = c1^2 / beta~, (t-1,)
        self.stats = RowStats(t - 1, device)
        self.mse_stats = RowStats(1, device)

    def add(self, err2: torch.Tensor, v: torch.Tensor | None) -> None:
        """Add samples: err2 = (x0 - x^0)^2 flattened to (B, D) float64; v the raw variance output or None."""
        self.mse_stats.add_samples(err2.mean(dim=1, keepdim=True))
        if reads_network_variance(self.variance):  # the KL is not affine in e^2: Chebyshev moments of f
            f = range_fraction(v.reshape(v.shape[0], -1))  # (B, D)
            basis = ChebyshevBasis.spanning(f, float(self.delta.max()))
            coef = basis.coefficients([self.delta], [self.r], self.dims)[0]  # (t-1, 2n)
            self.stats.add_affine(basis.features(f, err2), coef, torch.zeros_like(self.delta))
            return
        const, coef = fixed_row_affine(self.delta, self.r, self.dims)
        self.stats.add_affine(err2.sum(dim=1, keepdim=True), coef[:, None], const)


class DecoderRow:
    """decoder[u] = -log p(x_0 | x_1) for every next kept time u = 2 .. T, from outputs at t = 1."""

    def __init__(
        self,
        sched: NoiseSchedule,
        variance: VarianceKind,
        num_bins: int,
        device: torch.device,
        chunk_elements: int | None = None,
        analytic: AnalyticVariances | None = None,
    ) -> None:
        T = sched.T
        self.sched, self.analytic, self.device = sched, analytic, device
        self.u = np.arange(2, T + 1)  # the next kept time above 1, one per entry of the row
        if chunk_elements is None:  # cache-sized chunks on a CPU (5x faster measured), few launches on a GPU
            chunk_elements = 1 << 18 if torch.device(device).type == "cpu" else 1 << 24
        self.variance, self.num_bins, self.chunk_elements = variance, num_bins, chunk_elements
        self.stats = RowStats(T - 1, device)
        self.mse_stats = RowStats(1, device)
        # a rule that does not read the network's v gives the same (1, 1, T-1) log variances for every batch
        self.fixed = None if reads_network_variance(variance) else self._log_variance(self.u, None)
        # one variance whatever u (analytic: its fitted decoder variance): one NLL serves the whole row
        self.one_variance = self.fixed is not None and bool((self.fixed == self.fixed[..., :1]).all())
        # where log beta~_{1|u}, the learned range's lower end, is smallest and largest
        lower_end = np.log(sched.jump(self.u, 1).beta_post)
        self.u_extremes = self.u[[np.argmin(lower_end), np.argmax(lower_end)]] if T > 1 else self.u

    def _log_variance(self, u: np.ndarray, v: torch.Tensor | None) -> torch.Tensor | float:
        """log sigma^2 of the decoder for next kept times u (U,): (1, 1, U), or (B, D, U) for a learned rule."""
        u = u[None, None, :]
        return jump_log_variance(self.sched, 1, 0, v, self.variance, u, self.analytic, device=self.device)

    def _largest_log_variance(self, v: torch.Tensor | None) -> torch.Tensor | float:
        """The largest log sigma^2 over the row: a float for a fixed rule; (B, D, 1) for a learned one, whose
        log sigma^2 is linear in log beta~_{1|u} and so largest at one of that quantity's two extremes."""
        if self.fixed is not None:
            return float(self.fixed.max())
        return self._log_variance(self.u_extremes, v).amax(dim=-1, keepdim=True)

    def add(self, x0: torch.Tensor, x0_hat: torch.Tensor, v: torch.Tensor | None) -> None:
        """x0, x0_hat: (B, D) float64; v: (B, D) raw variance output or None.

        Dimensions whose P(x_0 | x_1) is exactly 1 for every u (:func:`certain_bins` at the row's largest
        variance) add exactly 0, so only the others are evaluated: at t = 1 a trained model's x^_0 is usually
        within a small fraction of a bin, and the whole row costs one screening pass.
        """
        B, D = x0.shape
        self.mse_stats.add_samples((x0 - x0_hat).pow(2).mean(dim=1, keepdim=True))
        U = self.u.shape[0]
        if self.one_variance:
            nll = discretized_gaussian_nll(x0, x0_hat, self.fixed[..., 0], self.num_bins)
            self.stats.add_samples((nll.mean(dim=1, keepdim=True) / LN2).expand(B, U))
            return
        v = None if v is None else v.reshape(B, D, 1)
        live = ~certain_bins(x0[..., None], x0_hat[..., None], self._largest_log_variance(v), self.num_bins)[..., 0]
        image, dim = live.nonzero(as_tuple=True)  # the K dimensions to evaluate, (K,) each
        x0, x0_hat = x0[image, dim][:, None, None], x0_hat[image, dim][:, None, None]  # (K, 1, 1)
        v = None if v is None else v[image, dim][:, None]  # (K, 1, 1)
        nll = torch.zeros(B, U, dtype=F64, device=x0.device)
        step = max(1, self.chunk_elements // max(image.shape[0], 1))
        for a in range(0, U if image.shape[0] else 0, step):
            log_var = (
                self.fixed[..., a : a + step] if self.fixed is not None else self._log_variance(self.u[a : a + step], v)
            )
            per_dim = discretized_gaussian_nll(x0, x0_hat, log_var, self.num_bins)[:, 0, :]  # (K, step)
            nll[:, a : a + step].index_add_(0, image, per_dim)
        self.stats.add_samples(nll / (D * LN2))
