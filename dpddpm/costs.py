"""Estimate the full cost matrix with T network calls per data point.

For each row t, every data point gets one fresh x_t ~ q(x_t | x_0) and one network call; that single output
fills the whole row L(t, s), s < t (see :mod:`dpddpm.rowcosts`). Row t = 1 fills the decoder vector.
Work items (row, data slice) are packed into batches of ``batch_size`` network inputs, so that small data sets
still use large batches. Noise for row t comes from its own generator seeded by (seed, t), so results do not
depend on batch size, row order or how rows are split between processes, beyond floating-point round-off (the
float32 network's output for an image changes by ~1e-7 with the batch it is in; relative differences of ~1e-8
in the costs are normal, not a bug).

This module only computes: :class:`CostRun` checks the inputs and yields finished rows, and
:func:`cost_matrix` collects them. Writing, locking and resuming a file is :mod:`dpddpm.checkpoint`'s job,
which wraps the same row iterator; ``cost_matrix(..., checkpoint=path)`` hands the run to it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .costmatrix import CostMatrix
from .fingerprint import data_fingerprint, image_hashes, model_fingerprint
from .gaussian import predict_x0, q_sample
from .model import DDPM, model_on, resolve_device
from .rowcosts import DecoderRow, KLRow
from .runinfo import RunInfo
from .terms import prior_bpd
from .validation import check_batch_size, check_data, check_int, check_seed


def row_generator(seed: int, t: int, device: torch.device) -> torch.Generator:
    """The generator that draws the noise of row t; identical wherever the row is computed."""
    gen = torch.Generator(device=device)
    gen.manual_seed((int(seed) * 1_000_003 + int(t)) % (2**63))
    return gen


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
        self.amp = _autocast(autocast, self.device)
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
        N, T = self.x0.shape[0], self.model.T
        samples = prior_bpd(self.model.schedule, np.arange(1, T + 1), self.x0)  # (N, T)
        prior = np.concatenate([[np.nan], samples.mean(0).cpu().numpy()])
        prior_se = np.concatenate(
            [[np.nan], (samples.std(0) / math.sqrt(N)).cpu().numpy() if N > 1 else np.full(T, np.nan)]
        )
        return CostMatrix.empty(prior, prior_se, self.info, image_hashes=self.image_hashes)

    def finished_rows(self, skip: np.ndarray | None = None, progress: bool = True) -> Iterator[Row]:
        """Compute the run's rows, except where ``skip[t]`` is True (rows already done), yielding each as it ends.

        Args:
            skip: boolean (T+1,), e.g. a checkpoint's ``rows_done``.
            progress: show a progress bar (tqdm) over network calls.
        """
        todo = [t for t in self.rows if skip is None or not skip[t]]
        bar = _progress(progress, total=len(todo) * self.x0.shape[0])
        try:
            yield from _finished_rows(self, todo, bar)
        finally:
            if bar is not None:
                bar.close()


def cost_matrix(
    model: DDPM,
    data: torch.Tensor,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = True,
    seed: int = 0,
    rows: Iterable[int] | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    save_every: float = 60.0,
    autocast: str | None = None,
) -> CostMatrix:
    """Monte-Carlo estimate of every ELBO edge cost of ``model`` on ``data``.

    Args:
        model, data, batch_size, device, seed, autocast: see :class:`CostRun`.
        progress: show a progress bar (tqdm) over network calls.
        rows: compute only these rows t (1 = decoder row); the result is then a partial matrix with
            ``counts[t] = 0`` elsewhere, to be combined with :meth:`CostMatrix.merge`.
        checkpoint: an ``.npz`` file that completed rows are saved to (atomically) at most every
            ``save_every`` seconds, on an interruption, and at the end; see
            :func:`dpddpm.checkpoint.cost_matrix_resumable`, which runs the computation then.
        resume: continue from an existing ``checkpoint``: its rows are kept and only the missing ones are
            computed. Noise is seeded per row, so the result equals an uninterrupted run up to round-off.
        save_every: seconds between checkpoint writes.
    Returns:
        a :class:`CostMatrix` of float64 bits/dim with standard errors, per-row sample counts and the run's info.
    """
    options = dict(rows=rows, batch_size=batch_size, device=device, seed=seed, autocast=autocast)
    if checkpoint is not None:
        from .checkpoint import cost_matrix_resumable  # the saving layer, which imports this module

        return cost_matrix_resumable(
            model, data, checkpoint, resume=resume, save_every=save_every, progress=progress, **options
        )
    run = CostRun(model, data, **options)
    costs = run.empty()
    for row in run.finished_rows(progress=progress):
        costs.set_row(*row)
    return costs


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

    A row's accumulator and noise live only until its last slice is done.
    """
    model, x0_all, device = run.model, run.x0, run.device
    sched = model.schedule
    N, D = x0_all.shape
    open_rows: dict[int, tuple[DecoderRow | KLRow, torch.Tensor]] = {}
    for batch in _pieces(row_list, N, run.batch_size):
        x_t_parts, t_parts = [], []
        for t, a, b in batch:
            if t not in open_rows:
                acc = (
                    DecoderRow(sched, model.variance, model.num_bins, device, analytic=model.analytic)
                    if t == 1
                    else KLRow(sched, t, model.variance, D, device, analytic=model.analytic)
                )
                noise = torch.randn(
                    N, D, generator=row_generator(run.seed, t, device), device=device, dtype=torch.float64
                )
                open_rows[t] = (acc, noise)
            x_t_parts.append(q_sample(sched, t, x0_all[a:b], open_rows[t][1][a:b]).float())
            t_parts.append(torch.full((b - a,), t, dtype=torch.long, device=device))
        x_t = torch.cat(x_t_parts)
        with run.amp:
            try:
                eps, v = model.predict(x_t.reshape(-1, *model.data_shape), torch.cat(t_parts))
            except FloatingPointError as err:
                if run.info.autocast is None:
                    raise
                raise FloatingPointError(
                    f"{err} under autocast={run.info.autocast!r}: the network overflows in reduced precision; "
                    "run without autocast (or with 'bf16', whose range is float32's)"
                ) from err
        eps = eps.reshape(x_t.shape[0], D).double()
        v = None if v is None else v.reshape(x_t.shape[0], D).float()
        offset = 0
        for (t, a, b), xt in zip(batch, x_t_parts):
            sl = slice(offset, offset + b - a)
            offset += b - a
            acc = open_rows[t][0]
            x0 = x0_all[a:b]
            x0_hat = predict_x0(sched, t, xt.double(), eps[sl], model.clip_denoised)
            v_sl = None if v is None else v[sl]
            if t == 1:
                acc.add(x0, x0_hat, v_sl)
            else:
                acc.add((x0 - x0_hat).pow(2), v_sl)
            if b == N:  # the row is complete
                del open_rows[t]
                mse, mse_se = acc.mse_stats.result()
                yield Row(t, *acc.stats.result(), N, float(mse[0]), float(mse_se[0]))
        if bar is not None:
            bar.update(x_t.shape[0])


def _autocast(kind: str | None, device: torch.device):
    """An autocast context for the network call (``"bf16"``/``"fp16"``), or a no-op for None.

    Works on CUDA and, for bf16, on the CPU (useful to test the effect of reduced precision anywhere).
    """
    if kind is None:
        return contextlib.nullcontext()
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if kind not in dtypes:
        raise ValueError(f"autocast must be None, 'bf16' or 'fp16', got {kind!r}")
    if device.type != "cuda" and kind != "bf16":
        raise ValueError(f"autocast={kind!r} needs a CUDA device (on {device.type} use 'bf16'), got {device}")
    return torch.autocast(device_type=device.type, dtype=dtypes[kind])


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="call", desc="cost matrix", smoothing=0.05)
