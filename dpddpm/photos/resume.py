"""The checkpoint of a photos training run: the run's state, saving it, and resuming from it.

A checkpoint (``DIR/<name>.ckpt.pt``) holds the whole state: weights, EMA, optimizer, both generators (the
run's seeded generator and torch's global one, which dropout draws from), the best EMA weights, the history and
the time spent. A resume refuses a checkpoint of another format, recipe, seed or data (the data are compared by
checksum), so a run is never continued on something else.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..digits.training import Selection
from ..files import atomic_write, signals_ignored
from .recipe import Recipe

CHECKPOINT_FORMAT = 1


def tensor_sha256(x: torch.Tensor) -> str:
    """Checksum of a tensor's values (float32, C order): a fingerprint of training or selection data."""
    return hashlib.sha256(x.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


@dataclass
class State(Selection):
    """The mutable part of a run, all of it saved in a checkpoint: the :class:`Selection` (evaluations, best EMA
    weights), the step reached and the time spent."""

    step: int = 0  # optimisation steps taken
    elapsed_s: float = 0.0  # training time over all runs so far
    step_time_s: float = 0.0  # time in training steps only (not evaluations or saves)


class Resumable(Protocol):
    """What a checkpoint saves and restores of a run (:class:`dpddpm.photos.trainer.Trainer` has all of it)."""

    recipe: Recipe
    seed: int
    fingerprints: dict[str, str]  # the training and selection data's tensor_sha256
    device: torch.device
    net: nn.Module
    ema: nn.Module
    opt: torch.optim.Optimizer
    gen: torch.Generator  # the run's seeded generator (torch's global one is saved too)
    state: State


def checkpoint(trainer: Resumable) -> dict[str, Any]:
    """Everything a resume needs, as a dict of tensors and plain values (loadable with ``weights_only=True``)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "recipe": trainer.recipe.identity(),
        "seed": trainer.seed,
        "fingerprints": trainer.fingerprints,
        "state": dataclasses.asdict(trainer.state) | {"best_state": trainer.state.best_state},
        "net": trainer.net.state_dict(),
        "ema": trainer.ema.state_dict(),
        "opt": trainer.opt.state_dict(),
        "generator": trainer.gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if trainer.device.type == "cuda" else None,
    }


def save(trainer: Resumable, path: Path) -> None:
    """Write the trainer's checkpoint to ``path`` atomically."""
    ckpt = checkpoint(trainer)
    with signals_ignored():  # a second Ctrl-C cannot abort the save that the first one triggered
        atomic_write(path, lambda fh: torch.save(ckpt, fh))


def _problems(ckpt: dict[str, Any], trainer: Resumable) -> list[str]:
    """Why ``ckpt`` cannot be resumed by ``trainer`` (empty when it can)."""
    problems = []
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        problems.append(f"format {ckpt.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    if ckpt.get("recipe") != trainer.recipe.identity():
        theirs, ours = ckpt.get("recipe") or {}, trainer.recipe.identity()
        diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        detail = ", ".join(f"{k}: checkpoint {theirs.get(k)!r}, this run {ours.get(k)!r}" for k in diff)
        problems.append(f"another recipe ({detail})")
    if ckpt.get("seed") != trainer.seed:
        problems.append(f"seed {ckpt.get('seed')}, this run {trainer.seed}")
    if ckpt.get("fingerprints") != trainer.fingerprints:
        problems.append("other training or selection data")
    return problems


def restore(trainer: Resumable, path: Path) -> None:
    """Continue from a checkpoint of the same recipe, seed and data; anything else is refused (ValueError)."""
    try:
        ckpt = torch.load(path, map_location=trainer.device, weights_only=True)
    except Exception as exc:
        raise ValueError(f"the checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from None
    problems = _problems(ckpt, trainer)
    if problems:
        raise ValueError(f"cannot resume from {path}: " + "; ".join(problems))
    trainer.net.load_state_dict(ckpt["net"])
    trainer.ema.load_state_dict(ckpt["ema"])
    trainer.opt.load_state_dict(ckpt["opt"])
    trainer.gen.set_state(ckpt["generator"])
    torch.set_rng_state(ckpt["torch_rng"])
    if ckpt.get("cuda_rng") is not None and trainer.device.type == "cuda":
        torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
    trainer.state = State(**ckpt["state"])
