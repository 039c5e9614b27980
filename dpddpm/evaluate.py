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
import math
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
import torch

from .costmatrix import CostMatrix
from .costs import _autocast, row_generator
from .fingerprint import data_fingerprint, model_fingerprint
from .gaussian import q_sample
from .model import DDPM, model_on, resolve_device
from .runinfo import REPLAY_FIELDS
from .terms import edge_bpd, prior_bpd
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

    def __iter__(self):  # so that ``mean, stderr = elbo(...)`` works
        return iter((self.bpd, self.stderr))

    def paired_stderr(self, other: ELBOEstimate) -> float:
        """Standard error of ``self.bpd - other.bpd`` when both were estimated on the same images, in the same
        order: the standard error of the per-image differences (their shared image-to-image spread cancels)."""
        if self.per_sample.shape != other.per_sample.shape:
            raise ValueError(
                f"paired errors need estimates on the same images, got {self.per_sample.shape[0]} "
                f"and {other.per_sample.shape[0]} data points"
            )
        return _stderr(self.per_sample - other.per_sample)

    def __repr__(self) -> str:
        return f"ELBOEstimate({self.bpd:.4f} ± {self.stderr:.4f} bits/dim, K={len(self.schedule)})"


def _stderr(values: np.ndarray) -> float:
    """Standard error of the mean of independent values (NaN for fewer than two)."""
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")


def _estimate(terms: np.ndarray, schedule: np.ndarray) -> ELBOEstimate:
    """terms: (N, K + 1) per-image terms -> the estimate with its per-image standard error."""
    per_sample = terms.sum(axis=1)
    return ELBOEstimate(float(per_sample.mean()), _stderr(per_sample), per_sample, terms.mean(axis=0), schedule)


def _edge_terms(
    model: DDPM,
    x0: torch.Tensor,
    x_t: list[torch.Tensor],
    edges: list[tuple[int, int]],
    t_above: int,
    amp: AbstractContextManager,
) -> list[np.ndarray]:
    """Per-sample costs of several edges in one network call.

    x0: (B, *data_shape) float64; x_t: one float32 (B, *data_shape) input per edge (t, s); s = 0 is the decoder,
    whose variance depends on the next kept time ``t_above``. Returns one float64 (B,) array per edge.
    """
    B = x0.shape[0]
    times = torch.tensor([t for t, _ in edges], device=x0.device).repeat_interleave(B)
    with amp:
        eps, v = model.predict(torch.cat(x_t), times)
    out = []
    for j, (t, s) in enumerate(edges):
        sl = slice(j * B, (j + 1) * B)
        out.append(
            edge_bpd(
                model.schedule,
                t,
                s,
                x0,
                x_t[j].double(),
                eps[sl],
                None if v is None else v[sl],
                variance=model.variance,
                t_above=t_above if s == 0 else None,
                num_bins=model.num_bins,
                clip_denoised=model.clip_denoised,
                analytic=model.analytic,
            )
            .cpu()
            .numpy()
        )
    return out


def _edges(sched_t: np.ndarray) -> list[tuple[int, int]]:
    """The edges t_i -> t_{i-1} of a schedule, then the decoder edge 1 -> 0."""
    return [(int(t), int(s)) for t, s in zip(sched_t[:-1], sched_t[1:])] + [(1, 0)]


def _progress_bar(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="call", desc=desc)


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
    bar = _progress_bar(progress, N * len(sched_t), "elbo")
    for start in range(0, N, NOISE_BLOCK):
        x0 = data[start : start + NOISE_BLOCK].to(device=device, dtype=torch.float64)
        block, shape = start // NOISE_BLOCK, x0.shape

        def noise(t: int, block: int = block, shape: torch.Size = shape) -> torch.Tensor:
            gen = fresh_generator(seed, t, block, device)
            return torch.randn(shape, generator=gen, device=device, dtype=torch.float64)

        rows = terms[start : start + len(x0)]  # a view: filled in place
        rows[:, 0] = prior_bpd(model.schedule, int(sched_t[0]), x0).cpu().numpy()
        _run_edges(model, x0, sched_t, noise, rows, batch_size, _autocast(None, device), bar)
    if bar is not None:
        bar.close()
    return _estimate(terms, sched_t)


def _run_edges(
    model: DDPM,
    x0_all: torch.Tensor,
    sched_t: np.ndarray,
    noise,
    terms: np.ndarray,
    batch_size: int,
    amp: AbstractContextManager,
    bar,
) -> None:
    """Fill ``terms[:, 1:]`` (N, K) with every image's edge costs: x_t = q_sample(x0, noise(t)) for each kept t.

    ``noise(t)`` gives the (N, *data_shape) float64 noise of time t; edges are packed several to a network call
    when N < batch_size, and images are taken ``batch_size`` at a time; ``bar`` (or None) counts the calls.
    """
    N = x0_all.shape[0]
    edges = _edges(sched_t)
    chunk = min(N, batch_size)
    per_call = max(1, batch_size // chunk)  # small data: several edges share one network call
    for first in range(0, len(edges), per_call):
        group = edges[first : first + per_call]
        # noised in float64, rounded to the network's float32 input
        x_t = [q_sample(model.schedule, t, x0_all, noise(t)).float() for t, _ in group]
        for a in range(0, N, chunk):
            b = min(a + chunk, N)
            values = _edge_terms(model, x0_all[a:b], [x[a:b] for x in x_t], group, int(sched_t[-2]), amp)
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
    meta = _replayable_meta(model, data, costs, sched_t, device)
    model = model_on(model, device)
    amp = _autocast(meta.get("autocast"), device)
    x0_all = data.to(device=device, dtype=torch.float64)
    N, D = x0_all.shape[0], x0_all[0].numel()
    terms = np.zeros((N, len(sched_t) + 1))
    terms[:, 0] = prior_bpd(model.schedule, int(sched_t[0]), x0_all).cpu().numpy()

    def noise(t: int) -> torch.Tensor:  # exactly cost_matrix's draw for row t: one (N, D) tensor from its generator
        gen = row_generator(meta["seed"], t, device)
        return torch.randn(N, D, generator=gen, device=device, dtype=torch.float64).reshape(x0_all.shape)

    bar = _progress_bar(progress, N * len(sched_t), "in-sample elbo")
    _run_edges(model, x0_all, sched_t, noise, terms, batch_size, amp, bar)
    if bar is not None:
        bar.close()
    return _estimate(terms, sched_t)


def _replayable_meta(
    model: DDPM, data: torch.Tensor, costs: CostMatrix, sched_t: np.ndarray, device: torch.device
) -> dict:
    """The matrix's run info (as a ``meta`` dict) after checking that its rows can be replayed with this model,
    data and device."""
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
    ours = info.replace(
        variance=model.variance,
        num_bins=model.num_bins,
        clip_denoised=model.clip_denoised,
        weights_fingerprint=model_fingerprint(model),
        N=data.shape[0],
        data_fingerprint=data_fingerprint(data, model.num_bins),
        noise_device=device.type,
    )
    wrong = info.differences(ours, ("variance", "num_bins", "clip_denoised", "weights_fingerprint"))
    if wrong:
        raise ValueError(
            f"the cost matrix was computed by another model "
            f"({info.describe(ours, wrong, 'the cost matrix', 'this model')})"
        )
    if info.differences(ours, ("N", "data_fingerprint")):
        raise ValueError(
            f"these are not the cost matrix's images: it was computed on {info.N} images with "
            f"fingerprint {info.data_fingerprint}, these are {ours.N} images with fingerprint "
            f"{ours.data_fingerprint} (same images, same order are needed)"
        )
    if info.differences(ours, ("noise_device",)):
        raise ValueError(
            f"the cost matrix drew its noise on {info.noise_device!r}; replay it with "
            f"device={info.noise_device!r} (this call runs on {device.type!r})"
        )
    rows = list(sched_t[:-1]) + [1]
    missing_rows = [int(t) for t in rows if not costs.rows_done[t]]
    if missing_rows:
        raise ValueError(f"the schedule needs rows {missing_rows} that this partial cost matrix lacks")
    return dict(costs.meta)
