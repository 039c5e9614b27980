"""Estimate the full cost matrix with T network calls per data point.

For each row t, every data point gets one fresh x_t ~ q(x_t | x_0) and one network call; that single output
fills the whole row L(t, s), s < t (see :mod:`dpddpm.rowcosts`). Row t = 1 fills the decoder vector.
Work items (row, data slice) are packed into batches of ``batch_size`` network inputs, so that small data sets
still use large batches. Noise for row t comes from its own generator seeded by (seed, t), so results do not
depend on batch size, row order or how rows are split between processes, beyond floating-point round-off (the
float32 network's output for an image changes by ~1e-7 with the batch it is in; relative differences of ~1e-8
in the costs are normal, not a bug).

This module only computes: :class:`CostRun` checks the inputs and yields finished rows. The public
:func:`dpddpm.cost_matrix` (in :mod:`dpddpm.checkpoint`, the layer above) collects them in memory, or saves,
locks and resumes a file around the same row iterator.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np
import torch

from .costmatrix import CostMatrix
from .fingerprint import data_fingerprint, image_hashes, model_fingerprint
from .gaussian import standard_normal, standard_normal_rows
from .model import DDPM, model_on, resolve_device
from .netpass import autocast_context, network_pass
from .progress import progress_bar
from .rowblock import KLRowBlock
from .rowcosts import DecoderRow
from .runinfo import RunInfo
from .stats import sem_columns
from .terms import prior_bpd
from .validation import check_batch_size, check_data, check_int, check_seed


def row_generator(seed: int, t: int, device: torch.device) -> torch.Generator:
    """The generator that draws the noise of row t; identical wherever the row is computed."""
    gen = torch.Generator(device=device)
    gen.manual_seed((int(seed) * 1_000_003 + int(t)) % (2**63))
    return gen


def row_noise(seed: int, t: int, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Row t's noise, float64 (N, D): torch.randn's draw from :func:`row_generator` (formed by
    :func:`~dpddpm.gaussian.standard_normal`). The cost matrix, its in-sample replay and the analytic-variance fit
    all take it from here (or from :func:`rows_noise`), so they see the very same x_t."""
    return standard_normal(shape, row_generator(seed, t, device), device)


def rows_noise(seed: int, rows: list[int], shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(R, N, D) float64: :func:`row_noise` of each of the rows, drawn together."""
    return standard_normal_rows(shape, [row_generator(seed, t, device) for t in rows], device)


class Row(NamedTuple):
    """A finished row: L(t, 1..t-1) for t >= 2, or decoder[2..T] for t = 1, in bits/dim (float64 numpy)."""

    t: int
    mean: np.ndarray
    stderr: np.ndarray
    count: int  # samples behind it: the number of data points
    mse: float = float("nan")  # m_t: mean over images and dimensions of (x0 - x^0)^2 at t
    mse_stderr: float = float("nan")  # its standard error over images


class CostRun:
    """One cost-matrix computation: the checked inputs, what identifies the run, and its finished rows.

    Args:
        model: the DDPM.
        data: ``(N, *model.data_shape)`` in [-1, 1], on the model's ``num_bins`` levels.
        rows: the rows t to compute (1 = decoder row); default all of T .. 1.
        batch_size: network inputs per call (rows are packed together when N is small).
        device: where to run; default the model's device.
        seed: noise seed; row t uses ``row_generator(seed, t)``.
        autocast: ``"bf16"`` (CUDA or CPU) or ``"fp16"`` (CUDA) to run the network under autocast; the
            costs are still computed in float64 from its output.
    Attributes:
        info: the :class:`RunInfo` every matrix of this run carries (fingerprints of the data and weights).
        rows: the rows to compute, descending.
    """

    def __init__(
        self,
        model: DDPM,
        data: torch.Tensor,
        *,
        rows: Iterable[int] | None = None,
        batch_size: int = 256,
        device: str | torch.device | None = None,
        seed: int = 0,
        autocast: str | None = None,
    ) -> None:
        self.device = resolve_device(model, device)  # also checks that model is a DDPM
        T = model.T
        data = check_data(data, model.data_shape, model.num_bins)
        self.batch_size, self.seed = check_batch_size(batch_size), check_seed(seed)
        if rows is None:
            self.rows = list(range(T, 0, -1))
        else:
            self.rows = sorted({check_int(t, "a row t", low=1, high=T) for t in rows}, reverse=True)
        autocast_context(autocast, self.device)  # refuses an unknown kind, or fp16 off CUDA, before any work
        self.model = model_on(model, self.device)  # a copy when it must move: the caller's model stays put
        self.x0 = data.to(device=self.device, dtype=torch.float64).reshape(data.shape[0], -1)  # (N, D)
        self.info = RunInfo(
            T=T,
            variance=model.variance,
            num_bins=model.num_bins,
            clip_denoised=model.clip_denoised,
            seed=self.seed,
            N=int(data.shape[0]),
            data_fingerprint=data_fingerprint(data, model.num_bins),
            weights_fingerprint=model_fingerprint(model),
            autocast=autocast,
            noise_device=self.device.type,
        )
        self.image_hashes = image_hashes(data, model.num_bins)  # (N,): lets a merge refuse shared images

    @torch.no_grad()
    def empty(self) -> CostMatrix:
        """The run's matrix before any row: NaN costs, counts 0, and the prior, which is exact given the data."""
        samples = prior_bpd(self.model.schedule, np.arange(1, self.model.T + 1), self.x0)  # (N, T)
        prior = np.concatenate([[np.nan], samples.mean(0).cpu().numpy()])
        prior_se = np.concatenate([[np.nan], sem_columns(samples)])
        return CostMatrix.empty(prior, prior_se, self.info, image_hashes=self.image_hashes)

    def finished_rows(self, skip: np.ndarray | None = None, progress: bool = True) -> Iterator[Row]:
        """Compute the run's rows, except where ``skip[t]`` is True (rows already done), yielding each as it ends.

        Args:
            skip: boolean (T+1,), e.g. a checkpoint's ``rows_done``.
            progress: show a progress bar (tqdm) over network calls.
        """
        todo = [t for t in self.rows if skip is None or not skip[t]]
        bar = progress_bar(progress, len(todo) * self.x0.shape[0], "cost matrix")
        try:
            yield from _finished_rows(self, todo, bar)
        finally:
            if bar is not None:
                bar.close()


def _pieces(rows: list[int], n: int, batch_size: int) -> Iterator[list[tuple[int, int, int]]]:
    """Pack (t, start, stop) slices of rows x data into batches of at most batch_size inputs."""
    batch, room = [], batch_size
    for t in rows:
        start = 0
        while start < n:
            take = min(room, n - start)
            batch.append((t, start, start + take))
            start += take
            room -= take
            if room == 0:
                yield batch
                batch, room = [], batch_size
    if batch:
        yield batch


@torch.no_grad()
def _finished_rows(run: CostRun, row_list: list[int], bar) -> Iterator[Row]:
    """Run the network over (row, data slice) pieces packed into batches; yield each row when its last slice ends.

    The KL rows of a batch are accumulated together (:class:`KLRowBlock`); the decoder row, t = 1, by its own
    :class:`DecoderRow`. A row's noise lives only until its last slice is done.
    """
    model, x0_all, device = run.model, run.x0, run.device
    N, D = x0_all.shape
    kl_rows = KLRowBlock(model.schedule, model.variance, D, device, analytic=model.analytic)
    decoder = DecoderRow(model.schedule, model.variance, model.num_bins, device, analytic=model.analytic)
    noise_of: dict[int, torch.Tensor] = {}
    for batch in _pieces(row_list, N, run.batch_size):
        new_rows = [t for t, _, _ in batch if t not in noise_of]
        noise_of.update(zip(new_rows, rows_noise(run.seed, new_rows, (N, D), device)))
        x0 = torch.cat([x0_all[a:b] for _, a, b in batch])
        noise = torch.cat([noise_of[t][a:b] for t, a, b in batch])
        counts = torch.tensor([b - a for _, a, b in batch], device=device)
        steps = torch.tensor([t for t, _, _ in batch], device=device).repeat_interleave(counts)  # (B,)
        out = network_pass(model, steps, x0, noise, run.info.autocast)
        # rows run from T down to 1: the decoder's slices, if any, close the batch
        kl = [(t, b - a) for t, a, b in batch if t >= 2]
        n_kl = sum(count for _, count in kl)
        if kl:
            v = None if out.v is None else out.v[:n_kl]
            kl_rows.add(kl, torch.sub(x0[:n_kl], out.x0_hat[:n_kl]).square_(), v)
        if n_kl < x0.shape[0]:
            decoder.add(x0[n_kl:], out.x0_hat[n_kl:], None if out.v is None else out.v[n_kl:])
        for t, _, b in batch:
            if b == N:  # the row is complete
                del noise_of[t]
                yield _finish(t, kl_rows, decoder, N)
        if bar is not None:
            bar.update(x0.shape[0])


def _finish(t: int, kl_rows: KLRowBlock, decoder: DecoderRow, N: int) -> Row:
    if t >= 2:
        mean, stderr, count, mse, mse_se = kl_rows.pop(t)
        return Row(t, mean, stderr, count, mse, mse_se)
    mse, mse_se = decoder.mse_stats.result()
    return Row(1, *decoder.stats.result(), N, float(mse[0]), float(mse_se[0]))
