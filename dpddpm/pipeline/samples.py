"""Sample quality in the Table 1 pipeline: the schedules of every budget K <= ``sample_max_steps``, sampled and
scored once per sample seed.

Ancestral sampling runs on every schedule (with the model the schedule was chosen for: the frozen analytic
variances for ``dp_analytic``); DDIM (eta = 0, variance-free) on the even, quadratic and DP schedules. Every
schedule draws its samples with the same seeds, so each score's difference to the DP's is paired over seeds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from ..model import DDPM
from ..sampling import ddim_sample, sample
from .results import BudgetRow, SamplerFigures, SampleSettings
from .run import Run

#: the order in which a row's schedules are sampled (a stateful score sees them in this order)
SAMPLE_ORDER = ("even", "quadratic", "dp", "dp_analytic")


def samples_phase(run: Run, rows: list[BudgetRow], analytic_model: DDPM | None) -> SampleSettings:
    """Score the samples of every row with K <= ``sample_max_steps``, in place (``figures.samples``).

    ``analytic_model``: the model with the frozen analytic variances, for the ``dp_analytic`` schedules.
    """
    t0, opts = time.perf_counter(), run.options
    settings = SampleSettings(int(opts.sample_n or run.test.shape[0]), tuple(int(s) for s in opts.sample_seeds))
    for row in rows:
        if row.K <= opts.sample_max_steps:
            score_row(run, row, analytic_model, settings)
    run.timing.samples_s = time.perf_counter() - t0
    return settings


def score_row(run: Run, row: BudgetRow, analytic_model: DDPM | None, settings: SampleSettings) -> None:
    """Sample-quality figures of one budget's schedules, in place, each paired with the DP's over seeds."""
    schedules = row.schedules()
    for kind in SAMPLE_ORDER:
        if kind not in schedules:
            continue
        which = analytic_model if kind == "dp_analytic" else run.model  # the variances it was chosen for
        samplers: dict[str, tuple[Callable, DDPM]] = {"ancestral": (sample, which)}
        if kind != "dp_analytic":  # DDIM is variance-free: the frozen variances play no part
            samplers["ddim"] = (ddim_sample, run.model)
        schedule = np.asarray(schedules[kind].schedule)
        schedules[kind].samples = {
            name: SamplerFigures(_scores(run, fn, which, schedule, settings)) for name, (fn, which) in samplers.items()
        }
    for kind, figures in schedules.items():
        if kind == "dp":
            continue
        for name, found in figures.samples.items():
            if name in row.dp.samples:
                found.pair_with(row.dp.samples[name])


def _scores(
    run: Run, draw: Callable, model: DDPM, schedule: np.ndarray, settings: SampleSettings
) -> dict[str, list[float]]:
    """Score name -> its value on the ``settings.n`` samples that ``draw`` makes with each seed, seed by seed."""
    per_seed: dict[str, list[float]] = {}
    for seed in settings.seeds:
        generator = torch.Generator(device=run.device).manual_seed(int(seed))
        images = draw(model, schedule, settings.n, generator, device=run.device)
        for key, value in run.options.sample_score(images).items():
            per_seed.setdefault(key, []).append(float(value))
    return per_seed
