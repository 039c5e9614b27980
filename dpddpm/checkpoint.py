"""The public cost matrix, and checkpoints of long runs: the layer that saves, locks and resumes around the
computation of :mod:`dpddpm.costs`.

:func:`cost_matrix` collects the rows of a :class:`~dpddpm.costs.CostRun` in memory, or, given a
``checkpoint`` file, hands the run to :func:`cost_matrix_resumable`.

A checkpoint is an ordinary :class:`~dpddpm.costmatrix.CostMatrix` file whose unfinished rows have
``counts[t] = 0``. :func:`cost_matrix_resumable` takes the rows that :class:`~dpddpm.costs.CostRun` yields and
writes them atomically: every ``save_every`` seconds, on Ctrl-C, SIGTERM or an error, and at the end. Since the
noise of row t is drawn from its own seeded generator, finishing only the missing rows gives the matrix an
uninterrupted run would have given, up to floating-point round-off (batches are packed differently; the
network's float32 output for an image depends slightly on its batch).

Nothing is mixed or lost: the output is claimed exclusively for the run (a second run on it is refused), and a
resume refuses a file made by another run (:func:`open_checkpoint` compares their :class:`RunInfo`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from .costmatrix import CostMatrix
from .costs import CostRun
from .files import claim_output, npz_path, signals_ignored, sigterm_raises
from .model import DDPM
from .runinfo import RUN_FIELDS, RunInfo
from .validation import check_seconds


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
        model, data, batch_size, device, seed, autocast: see :class:`~dpddpm.costs.CostRun`.
        progress: show a progress bar over network calls.
        rows: compute only these rows t (1 = decoder row); the result is then a partial matrix with
            ``counts[t] = 0`` elsewhere, to be combined with :func:`dpddpm.merge_costs`.
        checkpoint: an ``.npz`` file that completed rows are saved to (atomically) at most every
            ``save_every`` seconds, on an interruption, and at the end (:func:`cost_matrix_resumable`).
        resume: continue from an existing ``checkpoint``: its rows are kept and only the missing ones are
            computed. Noise is seeded per row, so the result equals an uninterrupted run up to round-off.
        save_every: seconds between checkpoint writes.
    Returns:
        a :class:`CostMatrix` of float64 bits/dim with standard errors, per-row sample counts and the run's info.
    """
    options = dict(rows=rows, batch_size=batch_size, device=device, seed=seed, autocast=autocast)
    if checkpoint is not None:
        return cost_matrix_resumable(
            model, data, checkpoint, resume=resume, save_every=save_every, progress=progress, **options
        )
    run = CostRun(model, data, **options)
    costs = run.empty()
    for row in run.finished_rows(progress=progress):
        costs.set_row(*row)
    return costs


def cost_matrix_resumable(
    model: DDPM,
    data: torch.Tensor,
    path: str | os.PathLike,
    *,
    resume: bool = False,
    save_every: float = 60.0,
    progress: bool = True,
    **options: Any,
) -> CostMatrix:
    """:func:`dpddpm.cost_matrix` with its finished rows saved to ``path`` as they come.

    Args:
        path: the ``.npz`` checkpoint and final output (``.npz`` is appended when missing).
        resume: continue from an existing file: its rows are kept and only the missing ones are computed.
        save_every: seconds between writes (besides the one on an interruption and the final one).
        progress: show a progress bar over network calls.
        options: ``rows``, ``batch_size``, ``device``, ``seed``, ``autocast``, as for :class:`CostRun`.
    Raises:
        FileExistsError: another run holds ``path``, or it exists and ``resume`` is False.
        ValueError: ``path`` holds another run's rows (other data, weights, seed, settings).
    """
    run = CostRun(model, data, **options)  # checks the inputs before anything touches the file
    save_every = check_seconds(save_every, "save_every")
    path = npz_path(path)
    if path.is_dir():
        raise IsADirectoryError(f"the output {path} is a folder; give a file name, e.g. {path / 'costs.npz'}")
    # The claim makes a second run on the same file fail at once instead of both writing it; SIGTERM raises
    # like Ctrl-C so that finished rows are saved either way.
    with claim_output(path), sigterm_raises():
        costs = run.empty()
        done = open_checkpoint(path, resume, run.info)
        if done is not None:
            costs.copy_rows(done)
        saver = _Saver(path, save_every)
        try:
            for row in run.finished_rows(skip=costs.rows_done, progress=progress):
                costs.set_row(*row)
                saver.maybe_save(costs)
        except BaseException:  # an interruption (Ctrl-C, SIGTERM, error): keep every finished row, then re-raise
            if costs.counts[1:].any():
                with signals_ignored():  # a second Ctrl-C or SIGTERM must not abort this save
                    save_checkpoint(costs, path)
            raise
        save_checkpoint(costs, path)
    return costs


def save_checkpoint(costs: CostMatrix, path: Path) -> None:
    """``costs.save(path)``; an error of the file system (a full disk) names the file and how to go on."""
    try:
        costs.save(path)
    except OSError as exc:
        kept = "its rows up to the last save are kept there" if path.exists() else "no rows were saved yet"
        raise OSError(
            exc.errno,
            f"{exc.strerror or exc} while saving the cost matrix ({kept}); fix that, then continue with --resume",
            str(path),
        ) from None


class _Saver:
    """Saves a matrix when at least ``every`` seconds have passed since the last save (or the start)."""

    def __init__(self, path: Path, every: float) -> None:
        self.path, self.every, self.last = path, float(every), time.monotonic()

    def maybe_save(self, costs: CostMatrix) -> None:
        if time.monotonic() - self.last >= self.every:
            save_checkpoint(costs, self.path)
            self.last = time.monotonic()


def open_checkpoint(path: str | os.PathLike, resume: bool, info: RunInfo) -> CostMatrix | None:
    """The partial matrix to resume from, or None for a fresh run.

    Args:
        path: the checkpoint file.
        resume: whether the caller asked to resume.
        info: the run's info; the file's must agree on every field of ``RUN_FIELDS``.
    Raises:
        FileExistsError: the file exists but ``resume`` is False (nothing is overwritten silently).
        ValueError: the file belongs to another run (its info differs), or records too little to tell.
    """
    path = npz_path(path)
    if not path.exists():
        return None
    if not resume:
        raise FileExistsError(
            f"the checkpoint {path} already exists; pass resume=True (--resume) to continue it, "
            f"or delete it to start again"
        )
    done = CostMatrix.load(path)
    missing = [k for k in done.info.missing(RUN_FIELDS) if getattr(info, k) is not None]
    if missing:
        raise ValueError(
            f"cannot resume from {path}: it records no {', '.join(missing)} (it was written by an "
            f"older dpddpm, so its rows cannot be checked against this run); delete it to start again"
        )
    wrong = done.info.differences(info, RUN_FIELDS)
    if wrong:
        detail = done.info.describe(info, wrong, "the checkpoint", "this run")
        raise ValueError(
            f"cannot resume from {path}: it was made {_what_differs(wrong)} ({detail}); "
            f"resume with the same model, data and options, or write to another --out"
        )
    if (done.counts < 0).any():
        raise ValueError(f"cannot resume from {path}: it carries no per-row sample counts")
    return done


def _what_differs(fields: list[str]) -> str:
    """Plain words for the mismatched run-info fields."""
    words = {
        "data_fingerprint": "on other data",
        "N": "on other data",
        "weights_fingerprint": "by other weights",
        "seed": "with another seed",
        "autocast": "with another autocast setting",
        "noise_device": "on another kind of device (its noise generator differs)",
    }
    parts = list(dict.fromkeys(words.get(k, "with another model configuration") for k in fields))
    return " and ".join(parts)
