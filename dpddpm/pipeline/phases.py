"""The phases of the Table 1 pipeline, in the order :func:`run_pipeline` runs them:

1. the cost matrix on the selection images (:func:`cost_matrix_phase`);
2. the DP once for every K up to the largest budget, then the DP, even and quadratic schedules of each budget
   with their test and in-sample ELBOs (:func:`budget_rows_phase`);
3. optionally the analytic variances and the DP on their matrix (:func:`analytic_phase`);
4. optionally sample quality (:func:`dpddpm.pipeline.samples.samples_phase`);
5. unless skipped, all T steps (:func:`full_chain_phase`) and the "within gap" summary.

Each phase records its wall time in the run's :class:`~dpddpm.pipeline.results.Timing`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..analytic import AnalyticVariances, analytic_costs, fit_analytic_variances, with_analytic_variances
from ..checkpoint import cost_matrix
from ..costmatrix import CostMatrix
from ..dp import OptimalSchedules, optimal_schedules, schedule_bpd
from ..evaluate import elbo, in_sample_elbo
from ..model import DDPM
from ..nettimer import NetTimer
from ..strides import even_schedule, quadratic_schedule
from .options import budgets
from .results import (
    BudgetRow,
    FullChain,
    PairedDifference,
    ReproduceResults,
    ScheduleFigures,
    WithinGap,
)
from .run import Run
from .samples import samples_phase


@dataclass
class AnalyticFit:
    """The frozen analytic variances fitted on the selection images, the model that uses them, and its cost
    matrix on the selection images."""

    variances: AnalyticVariances
    model: DDPM
    costs: CostMatrix


def run_pipeline(run: Run, checkpoint: Path | None) -> ReproduceResults:
    """Every phase on ``run``; ``checkpoint``: the cost matrix's file (resumable), None to keep it in memory."""
    opts, start = run.options, time.perf_counter()
    with NetTimer(run.model.net) as whole:  # every network call of the pipeline: its floor
        costs = cost_matrix_phase(run, checkpoint)
        best, rows = budget_rows_phase(run, costs, budgets(run.model.T, opts.steps))
        fit = analytic_phase(run, costs, rows) if opts.analytic else None
        samples = None
        if opts.sample_score is not None:
            samples = samples_phase(run, rows, None if fit is None else fit.model)
        full = None if opts.skip_full else full_chain_phase(run, costs, fit)
    run.timing.total_s = time.perf_counter() - start
    run.timing.total_network_s = whole.seconds
    return ReproduceResults(
        model=opts.name,
        T=run.model.T,
        variance=run.model.variance,
        device=torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else "cpu",
        torch_threads=torch.get_num_threads(),
        n_selection=int(run.selection.shape[0]),
        n_test=int(run.test.shape[0]),
        seed=int(opts.seed),
        test_seed=int(opts.test_seed),
        batch_size=int(opts.batch_size),
        test_batch_size=int(opts.test_batch),
        rows=rows,
        full=full,
        within_gap=None if full is None else within_gap(best, rows, full, opts.gap),
        timing=run.timing,
        analytic_variances=None if fit is None else fit.variances,
        samples=samples,
    )


def cost_matrix_phase(run: Run, checkpoint: Path | None) -> CostMatrix:
    """The cost matrix of the selection images (noise seed ``seed``), timed with its network calls alone."""
    opts, t0 = run.options, time.perf_counter()
    with NetTimer(run.model.net) as net:
        costs = cost_matrix(
            run.model,
            run.selection,
            batch_size=opts.batch_size,
            device=run.device,
            progress=opts.progress,
            seed=opts.seed,
            checkpoint=checkpoint,
            resume=opts.resume,
        )
    run.timing.cost_matrix_s = time.perf_counter() - t0
    run.timing.cost_matrix_network_s = net.seconds
    run.timing.cost_matrix_network_calls = net.calls
    return costs


def budget_rows_phase(run: Run, costs: CostMatrix, Ks: Sequence[int]) -> tuple[OptimalSchedules, list[BudgetRow]]:
    """The DP up to the largest budget, then each budget's DP, even and quadratic schedules with their figures;
    the strides' excess over the DP is paired (same images, same noise seed)."""
    t0 = time.perf_counter()
    best = optimal_schedules(costs, max(Ks), device=run.dp_device)
    run.timing.dp_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = []
    for K in Ks:
        dp = measure(run, best.schedule(K), costs)
        even = measure(run, even_schedule(run.model.T, K), costs, dp=dp)
        rows.append(BudgetRow(K, dp, even, measure(run, quadratic_schedule(run.model.T, K), costs, dp=dp)))
    run.timing.elbo_s = time.perf_counter() - t0
    return best, rows


def measure(
    run: Run, schedule: np.ndarray, costs: CostMatrix, model: DDPM | None = None, dp: ScheduleFigures | None = None
) -> ScheduleFigures:
    """One schedule's figures: its fresh test ELBO (noise seed ``seed + 1``) and its in-sample ELBO on ``costs``,
    with ``model`` (default the run's), paired with the DP schedule's figures ``dp`` when given."""
    which, opts = run.model if model is None else model, run.options
    test = elbo(which, run.test, schedule, batch_size=opts.test_batch, device=run.device, seed=opts.test_seed)
    sel = in_sample_elbo(which, run.selection, costs, schedule, batch_size=opts.batch_size, device=run.device)
    return ScheduleFigures(
        schedule=tuple(int(t) for t in schedule),
        test_bpd=test.bpd,
        test_stderr=test.stderr,
        selection_bpd=schedule_bpd(costs, sel.schedule),
        selection_stderr=sel.stderr,
        minus_dp=None if dp is None else PairedDifference.between((test, sel), dp.estimates),
        estimates=(test, sel),
    )


def analytic_phase(run: Run, costs: CostMatrix, rows: list[BudgetRow]) -> AnalyticFit:
    """Fit the analytic variances on the selection images (then frozen), run the DP on their cost matrix and
    give every row its ``dp_analytic`` figures, evaluated with the frozen variances and paired with the DP's."""
    t0, batch = time.perf_counter(), run.options.batch_size
    variances = fit_analytic_variances(run.model, run.selection, costs, batch_size=batch, device=run.device)
    fit = AnalyticFit(
        variances,
        with_analytic_variances(run.model, variances),
        analytic_costs(costs, variances, run.model, run.selection, batch_size=batch),
    )
    best = optimal_schedules(fit.costs, max(row.K for row in rows), device=run.dp_device)
    for row in rows:
        row.dp_analytic = measure(run, best.schedule(row.K), fit.costs, fit.model, dp=row.dp)
    run.timing.analytic_s = time.perf_counter() - t0
    return fit


def full_chain_phase(run: Run, costs: CostMatrix, fit: AnalyticFit | None) -> FullChain:
    """All T steps with the model's own variances (test ELBO given or fresh) and, with ``fit``, with the frozen
    analytic ones (always fresh)."""
    t0 = time.perf_counter()
    full = full_chain(run, run.model, costs, run.options.full_test)
    if fit is not None:
        full.analytic = full_chain(run, fit.model, fit.costs, None)
    run.timing.full_elbo_s = time.perf_counter() - t0
    return full


def full_chain(run: Run, model: DDPM, costs: CostMatrix, given: Mapping[str, float] | None) -> FullChain:
    """The figures of all T steps: the test ELBO estimated fresh (or the ``given`` one) and the in-sample ELBO."""
    opts, all_steps = run.options, np.arange(model.T, 0, -1)
    sel = in_sample_elbo(
        model, run.selection, costs, all_steps, batch_size=opts.batch_size, device=run.device, progress=opts.progress
    )
    if given is None:
        test = elbo(
            model,
            run.test,
            all_steps,
            batch_size=opts.test_batch,
            device=run.device,
            seed=opts.test_seed,
            progress=opts.progress,
        )
        test_figures = (test.bpd, test.stderr, "fresh")
    else:
        test_figures = (float(given["bpd"]), float(given["stderr"]), "given")
    return FullChain(model.T, *test_figures, schedule_bpd(costs, all_steps), sel.stderr)


def smallest_k_within(ks: Sequence[int], values: Sequence[float], reference: float, gap: float) -> int | None:
    """The first K of ``ks`` whose value is within ``gap`` bits/dim of ``reference``, or None."""
    return next((int(k) for k, v in zip(ks, values) if v - reference <= gap), None)


def within_gap(best: OptimalSchedules, rows: list[BudgetRow], full: FullChain, gap: float) -> WithinGap:
    """The smallest budget whose DP schedule is within ``gap`` bits/dim of all T steps: in-sample over every K up
    to the largest budget, in-sample over the listed budgets, and on the test images over the listed budgets."""
    ks = [row.K for row in rows]
    return WithinGap(
        gap_bpd=gap,
        selection_any_K=smallest_k_within(range(2, best.max_steps + 1), best.bpd_all(), full.selection_bpd, gap),
        selection_listed_K=smallest_k_within(ks, [r.dp.selection_bpd for r in rows], full.selection_bpd, gap),
        test_listed_K=smallest_k_within(ks, [r.dp.test_bpd for r in rows], full.test_bpd, gap),
    )
