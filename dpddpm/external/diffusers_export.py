"""Hand a dpddpm schedule to diffusers.

``DDPMScheduler.set_timesteps(timesteps=[...])`` takes a strictly descending list of 0-based training
indices; the step after the last one uses alpha_bar = 1, i.e. it returns x_0. A dpddpm schedule
``t_K > ... > t_1 = 1`` is therefore passed as ``[t_K - 1, ..., 0]``, and diffusers' ancestral sampler then
runs exactly the respaced chain whose ELBO dpddpm optimized (K network calls, the last one giving x^_0).

Conventions that differ: diffusers keeps betas and alpha_bar in float32 (dpddpm uses float64), and
``DDIMScheduler.set_timesteps`` takes no timestep list, so only DDPM-style schedulers can use these schedules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..model import DDPM
from ..schedule import NoiseSchedule
from ..validation import check_schedule

__all__ = ["to_diffusers_timesteps", "diffusers_scheduler_config"]


def to_diffusers_timesteps(schedule: Sequence[int] | np.ndarray | torch.Tensor, T: int | None = None) -> list[int]:
    """Descending 0-based indices ``[t_K - 1, ..., t_1 - 1 = 0]`` for ``DDPMScheduler.set_timesteps(timesteps=...)``.

    Args:
        schedule: 1-based kept times, strictly decreasing and ending at 1, shape (K,).
        T: the model's number of training steps; if given, ``t_K <= T`` is checked too.

    Raises:
        ValueError: the schedule is not a strictly decreasing sequence of integers ending at 1.
    """
    times = check_schedule(schedule, np.iinfo(np.int64).max if T is None else int(T))
    return [int(t) - 1 for t in times]


def diffusers_scheduler_config(
    model_or_schedule: DDPM | NoiseSchedule,
    *,
    variance: str | None = None,
    clip_sample: bool | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``diffusers.DDPMScheduler(**config)`` that reproduce a model's process.

    The betas are passed as ``trained_betas`` (diffusers rounds them to float32). For a :class:`DDPM`,
    ``variance`` and ``clip_sample`` default to the model's own; for a bare schedule, to ``fixed_small`` and True.
    An improved-diffusion UNet still needs its time input rescaled by 1000 / T when driven by diffusers.
    """
    if isinstance(model_or_schedule, DDPM):
        schedule = model_or_schedule.schedule
        variance = model_or_schedule.variance if variance is None else variance
        clip_sample = model_or_schedule.clip_denoised if clip_sample is None else clip_sample
    else:
        schedule = model_or_schedule
    if variance == "analytic":  # diffusers' DDPMScheduler has no per-jump variance table to take them
        raise ValueError(
            "diffusers' DDPMScheduler cannot hold analytic variances; export with variance='fixed_small' or "
            "'fixed_large', or sample with dpddpm.sample"
        )
    return {
        "num_train_timesteps": schedule.T,
        "trained_betas": schedule.betas.tolist(),
        "variance_type": variance or "fixed_small",
        "clip_sample": True if clip_sample is None else bool(clip_sample),
        "prediction_type": "epsilon",
    }
