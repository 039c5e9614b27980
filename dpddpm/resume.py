"""Checkpoints of long cost-matrix runs: open, check and resume a partial file.

A checkpoint is an ordinary :class:`~dpddpm.costmatrix.CostMatrix` file whose unfinished rows have
``counts[t] = 0``. :func:`dpddpm.cost_matrix` writes it atomically while it runs; since the noise of row t is
drawn from its own seeded generator, finishing only the missing rows gives the matrix an uninterrupted run would
have given, up to floating-point round-off (batches are packed differently; the network's float32 output for
an image depends slightly on its batch).
"""

from __future__ import annotations

import os
from typing import Any

from .costmatrix import CostMatrix
from .files import npz_path

#: metadata that must agree between a checkpoint and the run that resumes it: the model and its settings, the
#: data (fingerprint, not just its size), the noise (seed, and the device type whose generator drew it)
RESUME_KEYS = ("T", "variance", "num_bins", "clip_denoised", "seed", "N", "data_fingerprint",
               "weights_fingerprint", "autocast", "noise_device")


def open_checkpoint(path: str | os.PathLike, resume: bool, meta: dict[str, Any]) -> CostMatrix | None:
    """The partial matrix to resume from, or None for a fresh run.

    Args:
        path: the checkpoint file.
        resume: whether the caller asked to resume.
        meta: the run's metadata (see ``RESUME_KEYS``).
    Raises:
        FileExistsError: the file exists but ``resume`` is False (nothing is overwritten silently).
        ValueError: the file belongs to another run (its metadata differ).
    """
    path = npz_path(path)
    if path.is_dir():
        raise IsADirectoryError(f"the output {path} is a folder; give a file name, e.g. {path / 'costs.npz'}")
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
        raise ValueError(f"cannot resume from {path}: it records no {', '.join(missing)} (it was written by an "
                         f"older dpddpm, so its rows cannot be checked against this run); delete it to start again")
    have = dict(done.meta, T=done.T)
    wrong = [k for k in expect if have[k] != expect[k]]
    if wrong:
        detail = "; ".join(f"{k}: {have[k]!r} in the checkpoint, {expect[k]!r} in this run" for k in wrong)
        raise ValueError(f"cannot resume from {path}: it was made {_what_differs(wrong)} ({detail}); "
                         f"resume with the same model, data and options, or write to another --out")
    if (done.counts < 0).any():
        raise ValueError(f"cannot resume from {path}: it carries no per-row sample counts")
    return done


def _what_differs(keys: list[str]) -> str:
    """Plain words for the mismatched metadata keys."""
    words = {"data_fingerprint": "on other data", "N": "on other data", "weights_fingerprint": "by other weights",
             "seed": "with another seed", "autocast": "with another autocast setting",
             "noise_device": "on another kind of device (its noise generator differs)"}
    parts = list(dict.fromkeys(words.get(k, "with another model configuration") for k in keys))
    return " and ".join(parts)
