"""Checkpoints of long cost-matrix runs: open, check and resume a partial file.

A checkpoint is an ordinary :class:`~dpddpm.costmatrix.CostMatrix` file whose unfinished rows have
``counts[t] = 0``. :func:`dpddpm.cost_matrix` writes it atomically while it runs; since the noise of row t is
drawn from its own seeded generator, finishing only the missing rows gives exactly the matrix an uninterrupted
run would have given.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .costmatrix import CostMatrix
from .files import npz_path

#: metadata that must agree between a checkpoint and the run that resumes it
RESUME_KEYS = ("T", "variance", "num_bins", "clip_denoised", "seed", "N")


def open_checkpoint(path: str | os.PathLike, resume: bool, meta: dict[str, Any]) -> CostMatrix | None:
    """The partial matrix to resume from, or None for a fresh run.

    Args:
        path: the checkpoint file.
        resume: whether the caller asked to resume.
        meta: the run's metadata (T, variance, num_bins, clip_denoised, seed, N).
    Raises:
        FileExistsError: the file exists but ``resume`` is False (nothing is overwritten silently).
        ValueError: the file belongs to another run (its metadata differ).
    """
    path = npz_path(path)
    if not path.exists():
        return None
    if not resume:
        raise FileExistsError(
            f"the checkpoint {path} already exists; pass resume=True (--resume) to continue it, "
            f"or delete it to start again"
        )
    expect = {k: meta[k] for k in RESUME_KEYS if k in meta}
    done = CostMatrix.load(path)
    missing = [k for k in expect if k != "T" and k not in done.meta]
    if missing:
        raise ValueError(f"cannot resume from {path}: it records no {', '.join(missing)}")
    try:
        done.check_meta(expect, source=f"the checkpoint {path}")
    except ValueError as exc:
        raise ValueError(f"cannot resume: {exc} (this run has {expect})") from None
    if (done.counts < 0).any():
        raise ValueError(f"cannot resume from {path}: it carries no per-row sample counts")
    return done
