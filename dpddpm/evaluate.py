"""A schedule's ELBO per image, two ways.

- :func:`elbo`: fresh noise for every term (K network calls per image). On held-out data this is the number to
  set against the in-sample figure of the DP, which was chosen on the noise of the cost matrix and is optimistic.
  The images are taken in fixed blocks of :data:`NOISE_BLOCK`, and the noise of image i at kept time t is its
  row of one draw from :func:`fresh_generator` (seed, t, i's block): it depends on the seed, the time and the
  image, never on the batch size; and two schedules that keep the same time give an image the same x_t there
  (common random numbers, which make paired comparisons sharper).
- :func:`in_sample_elbo`: the cost matrix's own value of a schedule, re-evaluated image by image on the matrix's
  images with the matrix's own noise (row t's noise comes from ``row_generator(seed, t)``). Its mean equals
  ``schedule_bpd(costs, schedule)`` up to round-off, and its standard error is the right one: over images, of
  each image's total. (Edges averaged over the same images are correlated, so the matrix's per-entry errors
  cannot be added.)

Both return an :class:`ELBOEstimate` whose ``per_sample`` gives paired comparisons of two schedules evaluated on
the same images: use :meth:`ELBOEstimate.paired_stderr`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .costmatrix import CostMatrix
from .costs import row_noise
from .fingerprint import DATA_IDENTITY, MODEL_IDENTITY, mismatches
from .model import DDPM, model_on, resolve_device
from .netpass import network_pass
from .progress import progress_bar
from .runinfo import REPLAY_FIELDS, RunInfo
from .stats import sem
from .terms import edge_bpd_from_x0_hat, prior_bpd
from .types import Schedule
from .validation import check_batch_size, check_data, check_schedule, check_seed

#: images per block of the fresh ELBO: each block's noise is drawn on its own, so memory stays bounded for any N
NOISE_BLOCK = 1024


def fresh_generator(seed: int, t: int, block: int, device: torch.device) -> torch.Generator:
    """The generator of the fresh ELBO's noise at time t for images ``block * NOISE_BLOCK`` onwards: a stream of
    its own, never a cost-matrix row's (:func:`~dpddpm.costs.row_generator`), so a fresh ELBO on a matrix's own
    images is not its in-sample value."""
    digest = hashlib.sha256(f"dpddpm-fresh-elbo:{int(seed)}:{int(t)}:{int(block)}".encode()).digest()
    gen = torch.Generator(device=device)
    gen.manual_seed(int.from_bytes(digest[:8], "little") % (2**63))
    return gen


@dataclass
class ELBOEstimate:
    """A schedule's ELBO in bits/dim.

    Attributes:
        bpd: mean over data points of the per-point ELBO (prior + edges + decoder).
        stderr: standard error of that mean, over data points.
        per_sample: float64 (N,), each data point's single-sample ELBO.
        terms: float64 (K + 1,), mean of each term: [prior, L(t_K, t_{K-1}), ..., L(t_2, 1), decoder].
        schedule: the schedule evaluated.
    """

    bpd: float
    stderr: float
    per_sample: np.ndarray
    terms: np.ndarray
    schedule: np.ndarray

    def paired_stderr(self, other: ELBOEstimate) -> float:
        """Standard error of ``self.bpd - other.bpd`` when both were estimated on the same images, in the same
        order: the standard error of the per-image differences (their shared image-to-image spread cancels)."""
        if self.per_sample.shape != other.per_sample.shape:
            raise ValueError(
                f"paired errors need estimates on the same images, got {self.per_sample.shape[0]} "
                f"and {other.per_sample.shape[0]} data points"
            )
        return sem(self.per_sample - other.per_sample)

    def __repr__(self) -> str:
        return f"ELBOEstimate({self.bpd:.4f} ± {self.stderr:.4f} bits/dim, K={len(self.schedule)})"


def _estimate(terms: np.ndarray, schedule: np.ndarray) -> ELBOEstimate:
    """terms: (N, K + 1) per-image terms -> the estimate with its per-image standard error."""
    per_sample = terms.sum(axis=1)
    return ELBOEstimate(float(per_sample.mean()), sem(per_sample), per_sample, terms.mean(axis=0), schedule)


def _edge_terms(
    model: DDPM,
    x0: torch.Tensor,
    noise: list[torch.Tensor],
    edges: list[tuple[int, int]],
    t_above: int,
    autocast: str | None,
) -> list[np.ndarray]:
    """Per-image costs of several edges in one network call.

    x0: (B, D) float64, flattened; noise: one float64 (B, D) draw per edge (t, s); s = 0 is the decoder, whose
    variance depends on the next kept time ``t_above``. Returns one float64 (B,) array per edge.
    """
    B = x0.shape[0]
    if len(edges) == 1:  # one step for the whole batch: scalar coefficients
        out = network_pass(model, edges[0][0], x0, noise[0], autocast)
    else:
        steps = torch.tensor([t for t, _ in edges], device=x0.device).repeat_interleave(B)
        out = network_pass(model, steps, x0.repeat(len(edges), 1), torch.cat(noise), autocast)
    costs = []
    for j, (t, s) in enumerate(edges):
        sl = slice(j * B, (j + 1) * B)
        v = None if out.v is None else out.v[sl]
        options = dict(variance=model.variance, num_bins=model.num_bins, analytic=model.analytic)
        cost = edge_bpd_from_x0_hat(
            model.schedule, t, s, x0, out.x0_hat[sl], v, t_above=t_above if s == 0 else None, **options
        )
        costs.append(cost.cpu().numpy())
    return costs


def _edges(sched_t: np.ndarray) -> list[tuple[int, int]]:
    """The edges t_i -> t_{i-1} of a schedule, then the decoder edge 1 -> 0."""
    return [(int(t), int(s)) for t, s in zip(sched_t[:-1], sched_t[1:])] + [(1, 0)]


@torch.no_grad()
def elbo(
    model: DDPM,
    data: torch.Tensor,
    schedule: Schedule,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: bool = False,
) -> ELBOEstimate:
    """Estimate the ELBO of ``schedule`` on ``data`` ``(N, *data_shape)`` in [-1, 1] with fresh noise.

    Images are taken in blocks of :data:`NOISE_BLOCK`; image i's noise at kept time t is its row of the draw
    from ``fresh_generator(seed, t, i // NOISE_BLOCK)``, so the result does not depend on ``batch_size`` beyond
    round-off (the float32 network's output moves by ~1e-7 with its batch). Several edges are packed into one
    network call when a block holds fewer than ``batch_size`` images.
    """
    device = resolve_device(model, device)
    sched_t = check_schedule(schedule, model.T)
    data = check_data(data, model.data_shape, model.num_bins)
    batch_size, seed = check_batch_size(batch_size), check_seed(seed)
    model = model_on(model, device)
    N = data.shape[0]
    terms = np.zeros((N, len(sched_t) + 1))
    bar = progress_bar(progress, N * len(sched_t), "elbo")
    for start in range(0, N, NOISE_BLOCK):
        x0 = data[start : start + NOISE_BLOCK].to(device=device, dtype=torch.float64).reshape(-1, data[0].numel())
        block, shape = start // NOISE_BLOCK, (x0.shape[0], *data.shape[1:])

        def noise(t: int, block: int = block, shape: tuple[int, ...] = shape) -> torch.Tensor:
            gen = fresh_generator(seed, t, block, device)  # drawn in the data's shape, as before the flattening
            return torch.randn(shape, generator=gen, device=device, dtype=torch.float64).reshape(shape[0], -1)

        rows = terms[start : start + len(x0)]  # a view: filled in place
        rows[:, 0] = prior_bpd(model.schedule, int(sched_t[0]), x0).cpu().numpy()
        _run_edges(model, x0, sched_t, noise, rows, batch_size, None, bar)
    if bar is not None:
        bar.close()
    return _estimate(terms, sched_t)


def _run_edges(
    model: DDPM,
    x0_all: torch.Tensor,
    sched_t: np.ndarray,
    noise: Callable[[int], torch.Tensor],
    terms: np.ndarray,
    batch_size: int,
    autocast: str | None,
    bar,
) -> None:
    """Fill ``terms[:, 1:]`` (N, K) with every image's edge costs, x_t drawn with ``noise(t)`` at each kept t.

    x0_all: (N, D) float64; ``noise(t)`` gives the (N, D) float64 noise of time t. Edges are packed several to a
    network call when N < batch_size, and images are taken ``batch_size`` at a time; ``bar`` (or None) counts the
    calls.
    """
    N = x0_all.shape[0]
    edges = _edges(sched_t)
    chunk = min(N, batch_size)
    per_call = max(1, batch_size // chunk)  # small data: several edges share one network call
    for first in range(0, len(edges), per_call):
        group = edges[first : first + per_call]
        draws = [noise(t) for t, _ in group]
        for a in range(0, N, chunk):
            b = min(a + chunk, N)
            values = _edge_terms(model, x0_all[a:b], [d[a:b] for d in draws], group, int(sched_t[-2]), autocast)
            for j, v in enumerate(values):
                terms[a:b, first + j + 1] = v
            if bar is not None:
                bar.update((b - a) * len(group))


@torch.no_grad()
def in_sample_elbo(
    model: DDPM,
    data: torch.Tensor,
    costs: CostMatrix,
    schedule: Schedule,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> ELBOEstimate:
    """The cost matrix's value of ``schedule``, per image, with a standard error over images.

    Re-runs the network once per kept time of the schedule (K calls per image) on the matrix's own images with
    the noise the matrix drew for those rows, so ``.bpd`` equals ``schedule_bpd(costs, schedule)`` up to
    round-off, ``.per_sample`` holds each image's total and ``.stderr`` is its standard error. The round-off is
    the float32 network's: its output for an image depends slightly on the batch it is in (~1e-7), which moves
    a total by ~1e-8 relative (measured; 1e-13 when the batches agree), plus ~1e-12 from the learned-variance
    rows' Chebyshev expansion.

    Args:
        model: the model the matrix was computed with (checked by its weights fingerprint).
        data: ``(N, *data_shape)``, the very images of the matrix, in the same order (checked by fingerprint).
        costs: a matrix made by :func:`dpddpm.cost_matrix` (not merged from data shards: their noise streams
            cannot be replayed on one data set).
        schedule: t_K > ... > t_1 = 1; its rows t_K .. t_2 and the decoder row must be computed.
        device: must be of the kind the matrix was computed on (its noise generator differs between CPU and CUDA).
    """
    device = resolve_device(model, device)
    sched_t = check_schedule(schedule, model.T)
    data = check_data(data, model.data_shape, model.num_bins)
    batch_size = check_batch_size(batch_size)
    if not isinstance(costs, CostMatrix):
        raise TypeError(f"costs must be a dpddpm.CostMatrix, got {type(costs).__name__}")
    info = _replayable_info(model, data, costs, sched_t, device)
    model = model_on(model, device)
    x0_all = data.to(device=device, dtype=torch.float64).reshape(data.shape[0], -1)
    N, D = x0_all.shape
    terms = np.zeros((N, len(sched_t) + 1))
    terms[:, 0] = prior_bpd(model.schedule, int(sched_t[0]), x0_all).cpu().numpy()

    def noise(t: int) -> torch.Tensor:  # exactly cost_matrix's draw for row t
        return row_noise(info.seed, t, (N, D), device)

    bar = progress_bar(progress, N * len(sched_t), "in-sample elbo")
    _run_edges(model, x0_all, sched_t, noise, terms, batch_size, info.autocast, bar)
    if bar is not None:
        bar.close()
    return _estimate(terms, sched_t)


def _replayable_info(
    model: DDPM, data: torch.Tensor, costs: CostMatrix, sched_t: np.ndarray, device: torch.device
) -> RunInfo:
    """The matrix's run info after checking that its rows can be replayed with this model, data and device."""
    info = costs.info
    if costs.T != model.T:
        raise ValueError(f"the cost matrix has T = {costs.T} but the model has T = {model.T}")
    if info.data_shards:
        raise ValueError(
            "this cost matrix was merged from data shards, whose noise cannot be replayed on one data "
            "set; compute in-sample ELBOs on each shard's own matrix"
        )
    missing = info.missing(REPLAY_FIELDS)
    if missing:
        raise ValueError(
            f"the cost matrix records no {', '.join(missing)} (hand-built, or written by an older "
            f"dpddpm), so its noise cannot be replayed; recompute it with dpddpm.cost_matrix"
        )
    wrong, ours = mismatches(info, model, data, MODEL_IDENTITY + DATA_IDENTITY)
    model_wrong = [f for f in wrong if f in MODEL_IDENTITY]
    if model_wrong:
        raise ValueError(
            f"the cost matrix was computed by another model "
            f"({info.describe(ours, model_wrong, 'the cost matrix', 'this model')})"
        )
    if wrong:
        raise ValueError(
            f"these are not the cost matrix's images: it was computed on {info.N} images with "
            f"fingerprint {info.data_fingerprint}, these are {ours.N} images with fingerprint "
            f"{ours.data_fingerprint} (same images, same order are needed)"
        )
    if info.noise_device != device.type:
        raise ValueError(
            f"the cost matrix drew its noise on {info.noise_device!r}; replay it with "
            f"device={info.noise_device!r} (this call runs on {device.type!r})"
        )
    rows = list(sched_t[:-1]) + [1]
    missing_rows = [int(t) for t in rows if not costs.rows_done[t]]
    if missing_rows:
        raise ValueError(f"the schedule needs rows {missing_rows} that this partial cost matrix lacks")
    return info
