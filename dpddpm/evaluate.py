"""Fresh Monte-Carlo ELBO of one schedule: K network calls per data point, new noise for every term.

This is the number to set against the in-sample figure of the DP, which was chosen on the noise of the
cost matrix and is therefore optimistic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .model import DDPM, resolve_device
from .terms import edge_bpd, prior_bpd
from .validation import check_data, check_schedule


@dataclass
class ELBOEstimate:
    """A schedule's ELBO in bits/dim.

    Attributes:
        bpd: mean over data points of the per-point ELBO (prior + edges + decoder).
        stderr: standard error of that mean.
        per_sample: float64 (N,), each data point's single-sample ELBO.
        terms: float64 (K + 1,), mean of each term: [prior, L(t_K, t_{K-1}), ..., L(t_2, 1), decoder].
        schedule: the schedule evaluated.
    """

    bpd: float
    stderr: float
    per_sample: np.ndarray
    terms: np.ndarray
    schedule: np.ndarray

    def __iter__(self):  # so that ``mean, stderr = elbo(...)`` works
        return iter((self.bpd, self.stderr))

    def __repr__(self) -> str:
        return f"ELBOEstimate({self.bpd:.4f} ± {self.stderr:.4f} bits/dim, K={len(self.schedule)})"


@torch.no_grad()
def elbo(
    model: DDPM,
    data: torch.Tensor,
    schedule,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: bool = False,
) -> ELBOEstimate:
    """Estimate the ELBO of ``schedule`` on ``data`` (N, *data_shape) in [-1, 1] with fresh noise."""
    sched_t = check_schedule(schedule, model.T)
    data = check_data(data, model.data_shape, model.num_bins)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = resolve_device(model, device)
    model = model.to(device)
    sched = model.schedule
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    K = len(sched_t)
    N = data.shape[0]
    terms = np.zeros((N, K + 1))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=N * K, unit="call", desc="elbo")
    for a in range(0, N, int(batch_size)):
        x0 = data[a:a + batch_size].to(device=device, dtype=torch.float64)
        terms[a:a + len(x0), 0] = prior_bpd(sched, int(sched_t[0]), x0).cpu().numpy()
        # edges t_i -> t_{i-1}; the last one is the decoder 1 -> 0 with t_above = t_2
        edges = [(int(t), int(s)) for t, s in zip(sched_t[:-1], sched_t[1:])] + [(1, 0)]
        per_call = max(1, int(batch_size) // len(x0))  # pack several edges into one network call
        for first in range(0, len(edges), per_call):
            group = edges[first:first + per_call]
            x_t = []
            for t, _ in group:  # noise is drawn edge by edge, so packing does not change the estimate
                noise = torch.randn(x0.shape, generator=gen, device=device, dtype=torch.float64)
                ab = float(sched.alpha_bar[t])
                x_t.append((math.sqrt(ab) * x0 + math.sqrt(1.0 - ab) * noise).float())
            times = torch.tensor([t for t, _ in group], device=device).repeat_interleave(len(x0))
            eps, v = model.predict(torch.cat(x_t), times)
            for j, (t, s) in enumerate(group):
                sl = slice(j * len(x0), (j + 1) * len(x0))
                terms[a:a + len(x0), first + j + 1] = edge_bpd(
                    sched, t, s, x0, x_t[j].double(), eps[sl], None if v is None else v[sl],
                    variance=model.variance, t_above=int(sched_t[-2]) if s == 0 else None,
                    num_bins=model.num_bins, clip_denoised=model.clip_denoised,
                ).cpu().numpy()
            if bar is not None:
                bar.update(len(x0) * len(group))
    if bar is not None:
        bar.close()
    per_sample = terms.sum(axis=1)
    stderr = float(per_sample.std(ddof=1) / math.sqrt(N)) if N > 1 else float("nan")
    return ELBOEstimate(float(per_sample.mean()), stderr, per_sample, terms.mean(axis=0), sched_t)
