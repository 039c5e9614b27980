"""The paper's Table 1 pipeline on one model: even vs quadratic vs DP-optimal schedules for several budgets.

1. the cost matrix on selection images (resumable: ``costs.npz`` in the output folder);
2. the DP over it, once, for every K up to the largest budget asked for;
3. for the even, quadratic and DP schedules of each K (and all T steps): fresh ELBOs on held-out test images, and
   the in-sample ELBO (the matrix's own value, replayed image by image for its standard error);
4. the smallest K whose DP schedule is within ``gap`` bits/dim of all T steps (the paper's headline criterion);
   optionally (``analytic=True``) the same with the KL-optimal variances of :mod:`dpddpm.analytic`, fitted on
   the selection images and frozen: the DP runs on the analytic matrix, and its test ELBOs use the frozen
   variances (``dp_analytic``);
   optionally (``sample_score``) sample quality: for each K up to ``sample_max_steps``, ancestral samples on
   every schedule and DDIM (eta = 0) samples on the even, quadratic and DP schedules, scored once per sample
   seed, with the mean and its standard error over seeds;
5. with an output folder: ``results.json``, ``results.md`` and ``results.png`` (see :mod:`dpddpm.report`).

Every standard error is over images, of each image's total. Every test ELBO (each schedule, each K, the full
chain) uses the same noise seed, ``seed + 1``, on the same images, so differences between schedules carry paired
standard errors (``*_minus_dp``). :func:`selection_and_test` picks the two sets of images.

Every phase is timed, and so are the network's forward calls alone ("network floor"), so the overhead of the
cost-matrix computation over its T * N network calls can be reported as a ratio.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._version import __version__
from .analytic import AnalyticVariances, analytic_costs, fit_analytic_variances, with_analytic_variances
from .costmatrix import CostMatrix
from .costs import cost_matrix
from .dp import OptimalSchedules, optimal_schedules, schedule_bpd
from .evaluate import ELBOEstimate, elbo, in_sample_elbo
from .model import DDPM, model_on, resolve_device
from .nettimer import NetTimer
from .report import markdown_table, plot, write_results
from .sampling import ddim_sample, sample
from .strides import even_schedule, quadratic_schedule

__all__ = [
    "DEFAULT_STEPS",
    "GAP_BPD",
    "budgets",
    "markdown_table",
    "plot",
    "reproduce",
    "selection_and_test",
    "smallest_k_within",
]

DEFAULT_STEPS = (8, 16, 32, 64, 128, 256)
GAP_BPD = 0.1  # bits/dim: "within 0.1 of all T steps", the paper's criterion
SAMPLE_SEEDS = (0, 1, 2, 3, 4)

#: scores a batch of samples (n, *data_shape) in [-1, 1]: named numbers, e.g. {"fid": ..., "confidence": ...}
SampleScore = Callable[[torch.Tensor], Mapping[str, float]]


def budgets(T: int, steps: Sequence[int] | None = None) -> list[int]:
    """The budgets K to compare: ``steps`` (each 2 <= K <= T), or the powers of two 8..256 that fit T."""
    if steps is None:
        return [k for k in DEFAULT_STEPS if k <= T] or [min(T, 2)]
    out = sorted({int(k) for k in steps})
    bad = [k for k in out if k < 2 or k > T]
    if bad:
        raise ValueError(f"steps must satisfy 2 <= K <= T = {T}, got {bad}")
    return out


def selection_and_test(
    data: str | os.PathLike | None = None,
    *,
    selection_split: str | None = None,
    test_split: str | None = None,
    n_selection: int = 256,
    n_test: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The selection images (the cost matrix's) and the held-out test images of :func:`reproduce`.

    Args:
        data: an image file or folder (see :func:`dpddpm.load_images`); None: the bundled digits' selection and
            test splits.
        selection_split, test_split: the split (or ``.npz`` key) of each. A CIFAR-10 folder defaults to train
            and test; when both are the same (or unset) one pool is split: the first ``n_selection`` images
            select, the next ``n_test`` test, so the two never overlap.
        n_selection, n_test: how many images of each (at most).
    Returns:
        (selection, test): (n_selection, C, H, W) and (n_test, C, H, W) in [-1, 1].
    """
    if n_selection < 1 or n_test < 1:
        raise ValueError(f"need at least one selection and one test image, got {n_selection} and {n_test}")
    if data is None:
        from .digits import digits_split

        selection, test = digits_split("selection"), digits_split("test")
    else:
        from .external.images import is_cifar10_folder, load_images

        if selection_split is None and test_split is None and is_cifar10_folder(data):
            selection_split, test_split = "train", "test"
        if selection_split == test_split:
            pool = load_images(data, split=selection_split, limit=n_selection + n_test)
            selection, test = pool[:n_selection], pool[n_selection:]
        else:
            selection = load_images(data, split=selection_split, limit=n_selection)
            test = load_images(data, split=test_split, limit=n_test)
    if len(test) == 0:
        raise ValueError(f"no test images are left after the {len(selection)} selection images of {data}")
    return selection[:n_selection], test[:n_test]


def reproduce(
    model: DDPM,
    selection: torch.Tensor,
    test: torch.Tensor,
    out_dir: str | Path | None = None,
    *,
    steps: Sequence[int] | None = None,
    skip_full: bool = False,
    full_test: Mapping[str, Any] | None = None,
    batch_size: int = 256,
    test_batch_size: int | None = None,
    device: str | torch.device | None = None,
    resume: bool = False,
    seed: int = 0,
    gap: float = GAP_BPD,
    progress: bool = True,
    name: str = "model",
    analytic: bool = False,
    sample_score: SampleScore | None = None,
    sample_max_steps: int = 64,
    sample_n: int | None = None,
    sample_seeds: Sequence[int] = SAMPLE_SEEDS,
) -> dict:
    """Run the pipeline; with ``out_dir``, write ``results.json``, ``results.md`` and ``results.png`` there.

    Args:
        model: the DDPM.
        selection: ``(N_sel, *data_shape)`` in [-1, 1]: the data the cost matrix (and so the DP) sees.
        test: ``(N_test, *data_shape)`` in [-1, 1]: held-out data for the fresh ELBOs.
        out_dir: the output folder, also holding the cost matrix as it is computed (``costs.npz``); None: keep
            the matrix in memory and write nothing.
        steps: the budgets K (default powers of two 8..256 up to T).
        skip_full: skip the ELBOs of all T steps (T network calls per image), and so the ``gap`` summary.
        full_test: the test ELBO of all T steps when it is already known on the same test images (e.g. a bundled
            model card's ``test_elbo``): a mapping with ``"bpd"`` and ``"stderr"``, used instead of estimating it.
        batch_size: network inputs per call of the cost matrix and the in-sample ELBOs.
        test_batch_size: network inputs per call of the test ELBOs (default ``batch_size``). The float32
            network's output moves by round-off with its batch, so equal settings give equal numbers.
        resume: continue the cost matrix from ``out_dir/costs.npz``.
        seed: the cost matrix's noise seed; the test ELBOs use ``seed + 1``.
        gap: bits/dim for the "smallest K within ``gap`` of all T steps" summary.
        analytic: also fit analytic variances on the selection images (frozen for every test figure), run the
            DP on their cost matrix and report its schedules (``dp_analytic``) and, unless ``skip_full``, the
            full chain with them.
        sample_score: scores samples (see :data:`SampleScore`); with it, every K <= ``sample_max_steps`` gets
            sample-quality figures (``samples``) per schedule, ``sample_n`` samples (default: as many as test
            images) per seed of ``sample_seeds``.
    Returns:
        the results dictionary that is also written as JSON (bits/dim, stderr, schedules, timings in seconds).
    """
    out_dir = None if out_dir is None else Path(out_dir)
    device = resolve_device(model, device)
    model = model_on(model, device)  # a copy when it must move: the caller's model stays where it is
    T, Ks = model.T, budgets(model.T, steps)
    test_seed = seed + 1
    timing: dict[str, float] = {}
    start = time.perf_counter()
    with NetTimer(model.net) as whole:  # every network call of the pipeline: its floor
        t0 = time.perf_counter()
        with NetTimer(model.net) as net:
            costs = cost_matrix(
                model,
                selection,
                batch_size=batch_size,
                device=device,
                progress=progress,
                seed=seed,
                checkpoint=None if out_dir is None else out_dir / "costs.npz",
                resume=resume,
            )
        timing["cost_matrix_s"] = time.perf_counter() - t0
        timing["cost_matrix_network_s"] = net.seconds
        timing["cost_matrix_network_calls"] = net.calls
        timing["cost_matrix_ratio"] = timing["cost_matrix_s"] / net.seconds if net.seconds > 0 else float("nan")

        t0 = time.perf_counter()
        # on a GPU the DP takes 0.19 s instead of ~4 s on the host (T = 4000, K <= 1024; H100, measured)
        best = optimal_schedules(costs, max(Ks), device=device if device.type == "cuda" else None)
        timing["dp_s"] = time.perf_counter() - t0

        def measure(sched: np.ndarray, which: DDPM = model, matrix: CostMatrix = costs) -> tuple[ELBOEstimate, ...]:
            """(test, in-sample) ELBO estimates of one schedule."""
            test_est = elbo(which, test, sched, batch_size=test_batch_size or batch_size, device=device, seed=test_seed)
            return test_est, in_sample_elbo(which, selection, matrix, sched, batch_size=batch_size, device=device)

        t0 = time.perf_counter()
        rows = [_budget_row(K, best, T, costs, measure) for K in Ks]
        timing["elbo_s"] = time.perf_counter() - t0

        variances = None
        if analytic:
            t0 = time.perf_counter()
            variances = fit_analytic_variances(model, selection, costs, batch_size=batch_size, device=device)
            analytic_model = with_analytic_variances(model, variances)
            analytic_matrix = analytic_costs(costs, variances, model, selection, batch_size=batch_size)
            best_analytic = optimal_schedules(
                analytic_matrix, max(Ks), device=device if device.type == "cuda" else None
            )
            for row in rows:
                sched = best_analytic.schedule(row["K"])
                found = measure(sched, analytic_model, analytic_matrix)
                row["dp_analytic"] = {"schedule": [int(t) for t in sched], **_entry(*found, analytic_matrix)}
                row["dp_analytic"].update(_paired(*found, *row.pop("_dp_estimates")))
            timing["analytic_s"] = time.perf_counter() - t0
        for row in rows:
            row.pop("_dp_estimates", None)

        if sample_score is not None:
            t0 = time.perf_counter()
            n = int(sample_n or test.shape[0])
            models = {"dp_analytic": analytic_model} if analytic else {}
            for row in rows:
                if row["K"] <= sample_max_steps:
                    _score_samples(row, model, models, sample_score, n, sample_seeds, device)
            timing["samples_s"] = time.perf_counter() - t0

        full = None
        if not skip_full:
            t0 = time.perf_counter()
            full = _full_chain(
                model, selection, test, costs, full_test, batch_size, test_batch_size, device, test_seed, progress
            )
            if analytic:
                full["analytic"] = _full_chain(
                    analytic_model,
                    selection,
                    test,
                    analytic_matrix,
                    None,
                    batch_size,
                    test_batch_size,
                    device,
                    test_seed,
                    progress,
                )
            timing["full_elbo_s"] = time.perf_counter() - t0
    timing["total_s"] = time.perf_counter() - start
    timing["total_network_s"] = whole.seconds
    timing["total_ratio"] = timing["total_s"] / whole.seconds if whole.seconds > 0 else float("nan")

    results = {
        "dpddpm_version": __version__,  # the version that made these numbers
        "model": name,
        "T": T,
        "variance": model.variance,
        "device": _device_name(device),
        "torch_threads": torch.get_num_threads(),
        "n_selection": int(selection.shape[0]),
        "n_test": int(test.shape[0]),
        "seed": int(seed),
        "test_seed": int(test_seed),
        "batch_size": int(batch_size),
        "test_batch_size": int(test_batch_size or batch_size),
        "rows": rows,
        "full": full,
        "within_gap": None if full is None else _within_gap(best, rows, full, gap),
        "timing": timing,
    }
    if variances is not None:
        results["analytic_variances"] = _variances_summary(variances)
    if sample_score is not None:
        results["samples"] = {"n": int(sample_n or test.shape[0]), "seeds": [int(s) for s in sample_seeds]}
    if out_dir is not None:
        write_results(results, out_dir)
    return results


def _budget_row(
    K: int,
    best: OptimalSchedules,
    T: int,
    costs: CostMatrix,
    measure: Callable[[np.ndarray], tuple[ELBOEstimate, ELBOEstimate]],
) -> dict:
    """The DP, even and quadratic schedules of budget K with their figures; the strides' excess over the DP is
    paired (same images, same noise seed)."""
    row: dict = {"K": K}
    dp = None
    for kind, sched in (
        ("dp", best.schedule(K)),
        ("even", even_schedule(T, K)),
        ("quadratic", quadratic_schedule(T, K)),
    ):
        found = measure(sched)
        row[kind] = {"schedule": [int(t) for t in sched], **_entry(*found, costs)}
        if dp is None:
            dp = found
        else:
            row[kind].update(_paired(*found, *dp))
    row["_dp_estimates"] = dp  # for the analytic DP's paired difference; removed before the results are returned
    return row


def _score_samples(
    row: dict,
    model: DDPM,
    other_models: Mapping[str, DDPM],
    score: SampleScore,
    n: int,
    seeds: Sequence[int],
    device: torch.device,
) -> None:
    """Sample-quality figures of one budget's schedules, in place: ``row[kind]["samples"][sampler]`` holds each
    score's mean over seeds, its standard error over seeds and the per-seed values. Ancestral sampling on every
    schedule (with the model the schedule was chosen for); DDIM (eta = 0, variance-free) on the even, quadratic
    and DP schedules. Every schedule draws its samples with the same seeds, so each score's difference to the
    DP's (``<score>_minus_dp``) gets a paired standard error over seeds: the seed is the unit."""
    for kind in ("even", "quadratic", "dp", "dp_analytic"):
        if kind not in row:
            continue
        sched = np.asarray(row[kind]["schedule"])
        samplers = {"ancestral": (sample, other_models.get(kind, model))}
        if kind != "dp_analytic":
            samplers["ddim"] = (ddim_sample, model)
        figures = {}
        for sampler, (fn, which) in samplers.items():
            per_seed: dict[str, list[float]] = {}
            for s in seeds:
                images = fn(which, sched, n, torch.Generator(device=device).manual_seed(int(s)), device=device)
                for key, value in score(images).items():
                    per_seed.setdefault(key, []).append(float(value))
            figures[sampler] = {
                **{k: float(np.mean(v)) for k, v in per_seed.items()},
                **{f"{k}_stderr": _seed_stderr(v) for k, v in per_seed.items()},
                "per_seed": per_seed,
            }
        row[kind]["samples"] = figures
    for kind in ("even", "quadratic", "dp_analytic"):
        if kind not in row:
            continue
        for sampler, figures in row[kind]["samples"].items():
            dp_seeds = row["dp"]["samples"].get(sampler, {}).get("per_seed", {})
            for key, values in list(figures["per_seed"].items()):
                if key in dp_seeds:
                    diff = np.asarray(values) - np.asarray(dp_seeds[key])
                    figures[f"{key}_minus_dp"] = float(diff.mean())
                    figures[f"{key}_minus_dp_stderr"] = _seed_stderr(diff)


def _seed_stderr(values: Sequence[float]) -> float:
    """Standard error of the mean over sample seeds (NaN for one seed)."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def _variances_summary(variances: AnalyticVariances) -> dict:
    """Where the frozen variances came from and a few values of m_t (not the whole curve)."""
    T = variances.T
    ts = sorted({1, 2, 10, 100, T // 4, T // 2, T})
    return {
        "fitted_on": variances.info,
        "fingerprint": variances.fingerprint(),
        "decoder_log_variance": variances.decoder_log_variance,
        "mse_at": {str(t): float(variances.mse[t]) for t in ts if 1 <= t <= T},
    }


def _full_chain(
    model: DDPM,
    selection: torch.Tensor,
    test: torch.Tensor,
    costs: CostMatrix,
    full_test: Mapping | None,
    batch_size: int,
    test_batch_size: int | None,
    device: torch.device,
    test_seed: int,
    progress: bool,
) -> dict:
    """The figures of all T steps: the test ELBO estimated fresh (or the given one) and the in-sample ELBO."""
    all_steps = np.arange(model.T, 0, -1)
    sel_est = in_sample_elbo(
        model, selection, costs, all_steps, batch_size=batch_size, device=device, progress=progress
    )
    if full_test is None:
        test_est = elbo(
            model,
            test,
            all_steps,
            batch_size=test_batch_size or batch_size,
            device=device,
            seed=test_seed,
            progress=progress,
        )
        test_figures = {"test_bpd": test_est.bpd, "test_stderr": test_est.stderr, "test_source": "fresh"}
    else:
        test_figures = {
            "test_bpd": float(full_test["bpd"]),
            "test_stderr": float(full_test["stderr"]),
            "test_source": "given",
        }
    return {
        "K": model.T,
        **test_figures,
        "selection_bpd": schedule_bpd(costs, all_steps),
        "selection_stderr": sel_est.stderr,
    }


def smallest_k_within(ks: Sequence[int], values: Sequence[float], reference: float, gap: float) -> int | None:
    """The first K of ``ks`` whose value is within ``gap`` bits/dim of ``reference``, or None."""
    return next((int(k) for k, v in zip(ks, values) if v - reference <= gap), None)


def _within_gap(best: OptimalSchedules, rows: list[dict], full: dict, gap: float) -> dict:
    """The smallest budget whose DP schedule is within ``gap`` of all T steps: in-sample over every K up to the
    largest budget, in-sample over the listed budgets, and on the test images over the listed budgets."""
    ks = [r["K"] for r in rows]
    return {
        "gap_bpd": gap,
        "selection_any_K": smallest_k_within(range(2, best.max_steps + 1), best.bpd_all(), full["selection_bpd"], gap),
        "selection_listed_K": smallest_k_within(
            ks, [r["dp"]["selection_bpd"] for r in rows], full["selection_bpd"], gap
        ),
        "test_listed_K": smallest_k_within(ks, [r["dp"]["test_bpd"] for r in rows], full["test_bpd"], gap),
    }


def _entry(test_est: ELBOEstimate, sel_est: ELBOEstimate, costs: CostMatrix) -> dict:
    """One schedule's figures: held-out and in-sample bits/dim with per-image standard errors."""
    return {
        "test_bpd": test_est.bpd,
        "test_stderr": test_est.stderr,
        "selection_bpd": schedule_bpd(costs, sel_est.schedule),
        "selection_stderr": sel_est.stderr,
    }


def _paired(test_est: ELBOEstimate, sel_est: ELBOEstimate, dp_test: ELBOEstimate, dp_sel: ELBOEstimate) -> dict:
    """A stride minus the DP on the same images: the difference and its paired standard error."""
    return {
        "test_minus_dp": test_est.bpd - dp_test.bpd,
        "test_minus_dp_stderr": test_est.paired_stderr(dp_test),
        "selection_minus_dp": sel_est.bpd - dp_sel.bpd,
        "selection_minus_dp_stderr": sel_est.paired_stderr(dp_sel),
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"
