"""The KL rows of a cost-matrix run, accumulated a network batch at a time rather than a row at a time.

A batch of network inputs holds pieces of many rows (rows x data slices, :mod:`dpddpm.costs`). Row by row, each
piece would cost a few dozen small tensor operations: on a GPU thousands of tiny kernels, on a CPU as much time
as the network itself for a small model (measured: 1.5 to 1.8 x the network on the bundled digits models). Here
a whole batch costs a handful:

* fixed variances (and frozen analytic ones): a row is affine in one per-image number, s_n = sum_d e_nd^2
  (:func:`~dpddpm.rowcosts.fixed_row_affine`). The batch's s_n come to the CPU in one copy; each row keeps only
  the count, mean and M2 of its s_n, and becomes L(t, s) = const_s + coef_s mean(s) with standard error
  |coef_s| se(s) when it is complete: no tensor work per row at all.
* learned_range: one :class:`~dpddpm.chebyshev.ChebyshevBasis` serves the batch (each piece expanded on the span
  of its own f, with the batch's largest number of terms), and its moments are computed once for all the batch's
  images. Each group of pieces (one on a CPU, all elsewhere) then gets its mean and M2 from its rows' node values
  and its features' Gram matrix, with the node-to-coefficient matrix folded into that Gram matrix
  (:func:`~dpddpm.stats.segment_affine_stats`), so that no coefficient is formed.

The numbers are those of :class:`~dpddpm.rowcosts.KLRow` up to round-off (a learned row may take a few more
Chebyshev terms than its own span needs, which only makes it more exact). Every row also gives m_t, the mean
over images and dimensions of e^2, with its standard error, for :mod:`dpddpm.analytic`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from .chebyshev import ChebyshevBasis
from .gaussian import range_fraction
from .rowcosts import fixed_row_affine
from .schedule import NoiseSchedule
from .stats import RowStats, pool, segment_affine_stats, standard_error
from .variances import AnalyticVariances, VarianceKind, reads_network_variance, row_log_ratio


@dataclass
class _OpenRow:
    """What row t keeps while its pieces arrive: Delta_s and r_s (t-1,) (on the device for a learned rule, where
    they enter the batch's tensor work; else on the CPU), the largest Delta_s,
    the count, mean and M2 of its images' s_n, and (learned rule) the running statistics of its costs."""

    delta: torch.Tensor
    r: torch.Tensor
    delta_max: float
    n: int = 0
    sum_mean: float = 0.0
    sum_m2: float = 0.0
    stats: RowStats | None = None


class RowResult(NamedTuple):
    """A finished row: L(t, 1..t-1) and its standard error in bits/dim (float64 numpy (t-1,)), the number of
    images, and m_t with its standard error."""

    mean: np.ndarray
    stderr: np.ndarray
    count: int
    mse: float
    mse_stderr: float


class KLRowBlock:
    """Accumulates any number of rows t >= 2 from network batches that hold pieces of them.

    Args:
        sched: the noise schedule; variance, analytic: the model's variance rule.
        dims: D, the dimensions of one image.
        device: where the network's outputs are.
        pieces_per_group: learned rows: how many pieces share one set of batched products (default: one on a CPU,
            where a piece's numbers then stay in cache; every piece of the batch elsewhere, for few kernel launches).
        chunk_values: learned rows: see :func:`~dpddpm.chebyshev.chebyshev_moments` (default by device).
    """

    def __init__(
        self,
        sched: NoiseSchedule,
        variance: VarianceKind,
        dims: int,
        device: torch.device,
        analytic: AnalyticVariances | None = None,
        pieces_per_group: int | None = None,
        chunk_values: int | None = None,
    ) -> None:
        self.sched, self.variance, self.analytic = sched, variance, analytic
        if pieces_per_group is None:
            pieces_per_group = 1 if torch.device(device).type == "cpu" else 1 << 30
        self.pieces_per_group, self.chunk_values = pieces_per_group, chunk_values
        self.dims, self.device = dims, device
        self.learned = reads_network_variance(variance)
        self._open: dict[int, _OpenRow] = {}

    def _row(self, t: int) -> _OpenRow:
        if t not in self._open:
            jump = self.sched.jump(t, np.arange(1, t))
            delta = row_log_ratio(self.sched, t, self.variance, self.analytic, jump=jump)
            device = self.device if self.learned else "cpu"  # a fixed row is finished on the CPU
            self._open[t] = _OpenRow(
                delta=torch.as_tensor(delta, device=device),
                r=torch.as_tensor(jump.snr_gap, device=device),
                delta_max=float(delta.max()),
                stats=RowStats(t - 1, self.device) if self.learned else None,
            )
        return self._open[t]

    def add(self, pieces: list[tuple[int, int]], err2: torch.Tensor, v: torch.Tensor | None) -> None:
        """Add one batch: ``pieces`` lists (t, images) in the batch's order, err2 = (x0 - x^0)^2 (B, D) float64
        and v the raw variance output (B, D) or None; B is the sum of the pieces' images."""
        rows = [self._row(t) for t, _ in pieces]
        bounds = np.cumsum([0] + [count for _, count in pieces]).tolist()
        sums = err2.sum(dim=1).cpu().numpy()  # (B,) s_n: the fixed rows' one feature, and D m_t of every rule
        for row, a, b in zip(rows, bounds[:-1], bounds[1:]):
            part = sums[a:b]
            mean = float(part.mean())
            m2 = float(((part - mean) ** 2).sum())
            row.n, row.sum_mean, row.sum_m2 = pool(row.n, row.sum_mean, row.sum_m2, b - a, mean, m2)
        if self.learned:
            self._add_learned(pieces, bounds, err2, v)

    def _add_learned(self, pieces: list[tuple[int, int]], bounds: list[int], err2: torch.Tensor, v: torch.Tensor):
        """One basis for the batch (each piece on its own span of f), its moments for all images at once; then the
        pieces' coefficients and statistics ``pieces_per_group`` at a time, each group in a few batched products."""
        f = range_fraction(v.reshape(v.shape[0], -1))  # (B, D)
        lo, hi = (x.cpu().numpy() for x in torch.aminmax(f, dim=1))  # (B,) each: one copy for all pieces
        rows = [self._open[t] for t, _ in pieces]
        spans = [(float(lo[a:b].min()), float(hi[a:b].max())) for a, b in zip(bounds[:-1], bounds[1:])]
        basis = ChebyshevBasis(spans, [count for _, count in pieces], [row.delta_max for row in rows])
        features = basis.features(f, err2, self.chunk_values)  # (B, 2n)
        change = basis.to_coefficients(self.dims, f.device)  # node values @ change = coefficients
        for first in range(0, len(pieces), self.pieces_per_group):
            group = list(range(first, min(first + self.pieces_per_group, len(pieces))))
            deltas, rs = [rows[i].delta for i in group], [rows[i].r for i in group]
            values = basis.node_values(deltas, rs, group)  # (G, L, 2n)
            mean, m2 = segment_affine_stats(features, bounds[group[0] : group[-1] + 2], values, change)
            for j, i in enumerate(group):
                jumps = rows[i].delta.shape[0]
                rows[i].stats.add(pieces[i][1], mean[j, :jumps], m2[j, :jumps])

    def pop(self, t: int) -> RowResult:
        """Row t's results; the block forgets the row."""
        row = self._open.pop(t)
        sum_se = float(standard_error(row.n, row.sum_m2))
        if self.learned:
            mean, stderr = row.stats.result()
        else:  # the row is affine in s_n: its mean and standard error follow from those of s_n
            const, coef = (x.numpy() for x in fixed_row_affine(row.delta, row.r, self.dims))
            mean, stderr = const + coef * row.sum_mean, np.abs(coef) * sum_se
        return RowResult(mean, stderr, row.n, row.sum_mean / self.dims, sum_se / self.dims)
