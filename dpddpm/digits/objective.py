"""The training objective of the bundled digits models, vectorised over a batch of steps t.

- :class:`ScheduleTable`: the one-step jump coefficients t -> t - 1 as tensors indexed by t.
- :func:`vlb_terms`: the full chain's ELBO term at each sample's own t (the L_vlb part of L_hybrid).
- :class:`QuickELBO`: a fixed-noise, stratified ELBO on held-out images, to pick the best checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch

from ..gaussian import discretized_gaussian_nll, normal_kl
from ..model import DDPM
from ..netpass import network_pass
from ..schedule import NoiseSchedule
from ..terms import LN2, prior_bpd
from ..validation import check_batch_size
from ..variances import VarianceKind, jump_log_variance
from .data import NUM_BINS


class ScheduleTable:
    """Float64 tensors of the one-step jumps t -> t - 1, indexed by 1-based t (entry 0 unused)."""

    def __init__(self, sched: NoiseSchedule, device: torch.device) -> None:
        t = np.arange(2, sched.T + 1)
        j = sched.jump(t, t - 1)

        def pad(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.concatenate([[np.nan, np.nan], a]), device=device)

        self.sched = sched
        self.log_post, self.c1 = pad(np.log(j.beta_post)), pad(j.c1)


def vlb_terms(
    tab: ScheduleTable,
    t: torch.Tensor,
    x0: torch.Tensor,
    x0_hat: torch.Tensor,
    v: torch.Tensor | None,
    variance: VarianceKind,
    num_bins: int = NUM_BINS,
) -> torch.Tensor:
    """The full chain's ELBO term at each sample's own t, in bits/dim: L(t, t-1) for t >= 2, decoder at t = 1.

    t: (B,) 1-based long; x0, x0_hat: (B, D) float64 (D = 64 for the digits); v: (B, D) raw variance output or
    None; num_bins: the data's levels (the decoder's bins). Returns (B,).
    Same formulas as :func:`dpddpm.edge_bpd`, vectorised over t for training (a test checks they agree).
    """
    dec = (t == 1)[:, None]
    tt = t.clamp(min=2)  # the decoder's lanes compute a KL that is then discarded
    # each sample's own jump t -> t - 1 (the decoder 1 -> 0 with next kept time 2), by the model's variance rule
    log_var = jump_log_variance(tab.sched, t[:, None], (t - 1)[:, None], v, variance, device=x0.device)
    kl = normal_kl(tab.c1[tt][:, None] * (x0 - x0_hat), tab.log_post[tt][:, None], log_var)
    nll = discretized_gaussian_nll(x0, x0_hat, log_var, num_bins)
    return torch.where(dec, nll, kl).mean(dim=1) / LN2


class QuickELBO:
    """A fixed-noise, stratified ELBO estimate on held-out data, for comparing checkpoints.

    Every image gets one t in each of ``strata`` equal slices of 2..T and the decoder term at t = 1; noise and
    t are drawn once, so differences between checkpoints are not masked by Monte-Carlo noise.
    ELBO ~= prior(T) + decoder + sum_j (slice width) L(t_j, t_j - 1), bits/dim.
    ``data``: (N, *data_shape) of the models it will score (the digits' (N, 1, 8, 8), or any other shape).
    """

    def __init__(
        self,
        sched: NoiseSchedule,
        data: torch.Tensor,
        strata: int = 32,
        seed: int = 1234,
        device: torch.device | str = "cpu",
    ) -> None:
        gen = torch.Generator().manual_seed(seed)
        N, D = data.shape[0], data[0].numel()
        self.data_shape = tuple(data.shape[1:])
        edges = np.linspace(2, sched.T + 1, strata + 1).round().astype(np.int64)
        width = torch.as_tensor(np.diff(edges), dtype=torch.float64)
        lo = torch.as_tensor(edges[:-1])
        t = lo[None, :] + (torch.rand(N, strata, generator=gen) * width[None, :]).long()
        self.t = torch.cat([torch.ones(N, 1, dtype=torch.long), t], dim=1).reshape(-1).to(device)
        self.weight = torch.cat([torch.ones(1, dtype=torch.float64), width]).to(device)  # per column
        self.cols = strata + 1
        self.x0 = data.reshape(N, 1, -1).expand(N, self.cols, D).reshape(-1, D).double().to(device)
        self.noise = torch.randn(self.x0.shape, generator=gen, dtype=torch.float64).to(device)
        self.sched = sched
        self.prior = float(prior_bpd(sched, sched.T, data.double()).mean())
        self.tab = ScheduleTable(sched, torch.device(device))
        self.N = N

    @torch.no_grad()
    def __call__(self, model: DDPM, variances: tuple[VarianceKind, ...], batch_size: int = 4096) -> dict[str, float]:
        """Quick ELBO (bits/dim) for each variance kind read from the same network outputs."""
        batch_size = check_batch_size(batch_size)
        totals = {k: torch.zeros((), dtype=torch.float64) for k in variances}
        for a in range(0, self.t.shape[0], batch_size):
            sl = slice(a, a + batch_size)
            t, x0 = self.t[sl], self.x0[sl]
            x0_hat, v = network_pass(model, t, x0, self.noise[sl])
            w = self.weight[torch.arange(a, a + len(t), device=t.device) % self.cols]
            for k in variances:
                totals[k] += (w * vlb_terms(self.tab, t, x0, x0_hat, v, k, model.num_bins)).sum().cpu()
        return {k: self.prior + float(v) / self.N for k, v in totals.items()}
