"""Estimate the full cost matrix with T network calls per data point.

For each row t, every data point gets one fresh x_t ~ q(x_t | x_0) and one network call; that single output
fills the whole row L(t, s), s < t (see :mod:`dpddpm.rowcosts`). Row t = 1 fills the decoder vector.
Work items (row, data slice) are packed into batches of ``batch_size`` network inputs, so that small data sets
still use large batches. Noise for row t comes from its own generator seeded by (seed, t), so results do not
depend on batch size, row order or how rows are split between processes, beyond floating-point round-off (the
float32 network's output for an image changes by ~1e-7 with the batch it is in; relative differences of ~1e-8
in the costs are normal, not a bug).
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from .costmatrix import CostMatrix
from .files import claim_output, npz_path, sigterm_raises
from .fingerprint import data_fingerprint, model_fingerprint
from .model import DDPM, resolve_device
from .rowcosts import DecoderRow, KLRow
from .terms import predict_x0, prior_bpd
from .validation import check_data


def row_generator(seed: int, t: int, device: torch.device) -> torch.Generator:
    """The generator that draws the noise of row t; identical wherever the row is computed."""
    gen = torch.Generator(device=device)
    gen.manual_seed((int(seed) * 1_000_003 + int(t)) % (2**63))
    return gen


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
        model: the DDPM.
        data: (N, *model.data_shape) in [-1, 1].
        batch_size: network inputs per call (rows are packed together when N is small).
        device: where to run; default the model's device.
        progress: show a progress bar (tqdm) over network calls.
        seed: noise seed; row t uses ``row_generator(seed, t)``.
        rows: compute only these rows t (1 = decoder row); the result is then a partial matrix with
            ``counts[t] = 0`` elsewhere, to be combined with :meth:`CostMatrix.merge`.
        checkpoint: an ``.npz`` file that completed rows are saved to (atomically) at most every
            ``save_every`` seconds, on an interruption, and at the end.
        resume: continue from an existing ``checkpoint``: its rows are kept and only the missing ones are
            computed. Noise is seeded per row, so the result equals an uninterrupted run up to round-off.
        save_every: seconds between checkpoint writes.
        autocast: ``"bf16"`` (CUDA or CPU) or ``"fp16"`` (CUDA) to run the network under autocast; the
            costs are still computed in float64 from its output.
    Returns:
        a :class:`CostMatrix` of float64 bits/dim with standard errors and per-row sample counts.
    """
    T = model.T
    data = check_data(data, model.data_shape, model.num_bins)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    row_list = list(range(T, 0, -1)) if rows is None else sorted({int(t) for t in rows}, reverse=True)
    if any(t < 1 or t > T for t in row_list):
        raise ValueError(f"rows must lie in 1..T = {T}")
    device = resolve_device(model, device)
    amp = _autocast(autocast, device)
    model = model.to(device)
    sched = model.schedule
    N = data.shape[0]
    x0_all = data.to(device=device, dtype=torch.float64).reshape(N, -1)

    kl = np.full((T + 1, T + 1), np.nan)
    stderr = np.full((T + 1, T + 1), np.nan)
    decoder = np.full(T + 1, np.nan)
    decoder_se = np.full(T + 1, np.nan)
    counts = np.zeros(T + 1, dtype=np.int64)

    prior_samples = prior_bpd(sched, np.arange(1, T + 1), x0_all)  # (N, T), exact given the data
    prior = np.concatenate([[np.nan], prior_samples.mean(0).cpu().numpy()])
    prior_se = np.concatenate([[np.nan], (prior_samples.std(0) / math.sqrt(N)).cpu().numpy()
                               if N > 1 else np.full(T, np.nan)])
    del prior_samples
    meta = {"T": T, "variance": model.variance, "num_bins": model.num_bins,
            "clip_denoised": model.clip_denoised, "seed": int(seed), "N": int(N),
            "data_fingerprint": data_fingerprint(data, model.num_bins), "weights_fingerprint": model_fingerprint(model),
            "autocast": autocast, "noise_device": device.type}

    def result() -> CostMatrix:
        return CostMatrix(kl=kl, decoder=decoder, prior=prior, stderr=stderr, decoder_stderr=decoder_se,
                          prior_stderr=prior_se, counts=counts, meta=meta)

    if checkpoint is None:
        _fill(model, x0_all, row_list, int(batch_size), seed, amp, progress, kl, stderr, decoder, decoder_se, counts)
        return result()

    from .resume import open_checkpoint

    path = npz_path(checkpoint)
    if path.is_dir():
        raise IsADirectoryError(f"the output {path} is a folder; give a file name, e.g. {path / 'costs.npz'}")
    # The claim makes a second run on the same file fail at once instead of both writing it; SIGTERM raises
    # like Ctrl-C so that finished rows are saved either way.
    with claim_output(path), sigterm_raises():
        done = open_checkpoint(path, resume, meta)
        if done is not None:  # copy the finished rows and skip them
            have = done.rows_done
            kl[have], stderr[have], counts[have] = done.kl[have], done.stderr[have], done.counts[have]
            if have[1]:
                decoder[:], decoder_se[:] = done.decoder, done.decoder_stderr
            row_list = [t for t in row_list if not have[t]]
        saver = _Saver(lambda: result().save(path), save_every)
        try:
            _fill(model, x0_all, row_list, int(batch_size), seed, amp, progress, kl, stderr, decoder, decoder_se,
                  counts, on_row=saver.maybe_save)
        except BaseException:  # an interruption (Ctrl-C, SIGTERM, error): keep every finished row, then re-raise
            if counts[1:].any():
                result().save(path)
            raise
        costs = result()
        costs.save(path)
    return costs


class _Saver:
    """Calls ``save()`` when at least ``every`` seconds have passed since the last call (or the start)."""

    def __init__(self, save: Callable[[], object], every: float) -> None:
        self.save, self.every, self.last = save, float(every), time.monotonic()

    def maybe_save(self) -> None:
        if time.monotonic() - self.last >= self.every:
            self.save()
            self.last = time.monotonic()


def _fill(model: DDPM, x0_all: torch.Tensor, row_list: list[int], batch_size: int, seed: int, amp, progress: bool,
          kl: np.ndarray, stderr: np.ndarray, decoder: np.ndarray, decoder_se: np.ndarray, counts: np.ndarray,
          on_row: Callable[[], None] | None = None) -> None:
    """Compute the rows in ``row_list`` into the arrays (in place), calling ``on_row()`` after each row."""
    N = x0_all.shape[0]
    bar = _progress(progress, total=len(row_list) * N)
    try:
        for t, mean, se in _finished_rows(model, x0_all, row_list, batch_size, seed, amp, bar):
            if t == 1:
                decoder[2:], decoder_se[2:] = mean, se
            else:
                kl[t, 1:t], stderr[t, 1:t] = mean, se
            counts[t] = N
            if on_row is not None:
                on_row()
    finally:
        if bar is not None:
            bar.close()


def _finished_rows(
    model: DDPM, x0_all: torch.Tensor, row_list: list[int], batch_size: int, seed: int, amp, bar
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Run the network over (row, data slice) pieces packed into batches; yield (t, mean, stderr) per row.

    x0_all: (N, D) float64 data on the device. Row t = 1 yields the decoder vector over u = 2..T, other rows
    yield L(t, s) for s = 1..t-1. A row's accumulator and noise live only until its last slice is done.
    """
    sched, device = model.schedule, x0_all.device
    N, D = x0_all.shape
    open_rows: dict[int, tuple[DecoderRow | KLRow, torch.Tensor]] = {}
    for batch in _pieces(row_list, N, batch_size):
        x_t_parts, t_parts = [], []
        for t, a, b in batch:
            if t not in open_rows:
                acc = DecoderRow(sched, model.variance, model.num_bins, device) if t == 1 else \
                    KLRow(sched, t, model.variance, D, device)
                noise = torch.randn(N, D, generator=row_generator(seed, t, device), device=device,
                                    dtype=torch.float64)
                open_rows[t] = (acc, noise)
            noise = open_rows[t][1][a:b]
            ab = float(sched.alpha_bar[t])
            x_t_parts.append((math.sqrt(ab) * x0_all[a:b] + math.sqrt(1.0 - ab) * noise).float())
            t_parts.append(torch.full((b - a,), t, dtype=torch.long, device=device))
        x_t = torch.cat(x_t_parts)
        with amp:
            eps, v = model.predict(x_t.reshape(-1, *model.data_shape), torch.cat(t_parts))
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
                yield (t, *acc.stats.result())
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
