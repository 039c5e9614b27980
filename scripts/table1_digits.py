"""DP-optimal schedules against fixed strides on the bundled digits models (this book's protocol), by reproduce.

For each model, `dpddpm.reproduce` on the digits selection split (the cost matrix, seed 0) and test split: the
DP's optimal schedules for every K <= 256, and for K in {4, 8, ..., 256} the test ELBO (bits/dim, ± standard
error over images; noise seed 1, one network batch of all 300 images) and the in-sample ELBO of the even stride,
the quadratic stride, the DP schedule and the DP with analytic variances (fitted on the selection split, frozen;
the DP runs on their matrix), with paired errors for each one's difference to the DP; all T = 4000 steps (test
ELBO from the model card unless --fresh-full-chain; with analytic variances always fresh); the smallest K within
0.1 bits/dim of it. For K <= 64, sample quality: digits FID against the 300 test images and mean classifier
confidence of 300 samples per seed, 5 seeds (mean ± standard error over seeds), for ancestral sampling on each
schedule and DDIM (eta = 0) on the even, quadratic and DP schedules. Plus the per-pixel categorical baseline,
the FID's noise floor (two disjoint real sets of 300), samples of the full chain and the 32-step DP schedule,
and grids of every sampler at K = 16.

    python scripts/table1_digits.py [--out results] [--threads 1] [--fresh-full-chain] [--replot]

Writes results/table1_digits.{json,md,png}, results/table1_digits_elbo_vs_fid.png,
results/samples_<model>.png and results/samples_k16_<model>.png. The float64 cost matrices (4001 x 4001,
128 MB each) are not saved; the grids' analytic panel uses the variances that `dpddpm.reproduce` returns (with
--replot, which has only the JSON, they are fitted again on a new cost matrix, the pipeline's way).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import dpddpm
from dpddpm.analytic import AnalyticVariances
from dpddpm.digits import PRETRAINED, categorical_baseline_bpd, digits_split, load_pretrained, model_card
from dpddpm.digits.quality import load_digits_score
from dpddpm.files import read_json, write_json
from dpddpm.grids import save_grid_figure
from dpddpm.pipeline import ReproduceResults
from dpddpm.report import markdown_table, plot, plot_elbo_vs_score, write_markdown

KS = (4, 8, 16, 32, 64, 128, 256)
SEED = 0  # the cost matrices' noise; the test ELBOs use SEED + 1
BATCH = 4096  # network inputs per call of the cost matrices (and the analytic fit): all 300 images at once
SAMPLES_K = 32
GRID_K = 16  # the budget of the side-by-side sample grids
SAMPLE_MAX_K = 64  # sample quality for K <= this
SAMPLE_SEEDS = (0, 1, 2, 3, 4)


def digits_sample_score(images: torch.Tensor) -> dict[str, float]:
    """Digits FID against the test split and mean classifier confidence of one set of samples."""
    score = load_digits_score()
    return {"fid": score.fid(images), "confidence": score.confidence(images).mean}


def run_model(name: str, selection: torch.Tensor, test: torch.Tensor, fresh_full: bool) -> ReproduceResults:
    """`dpddpm.reproduce` on one bundled model with the protocol of this table."""
    return dpddpm.reproduce(
        load_pretrained(name),
        selection,
        test,
        steps=KS,
        batch_size=BATCH,
        test_batch_size=len(test),
        seed=SEED,
        name=name,
        full_test=None if fresh_full else model_card(name)["test_elbo"],
        analytic=True,
        sample_score=digits_sample_score,
        sample_max_steps=SAMPLE_MAX_K,
        sample_seeds=SAMPLE_SEEDS,
    )


def save_samples(name: str, res: dict, out: Path) -> str:
    """64 samples of the full chain and of the DP's SAMPLES_K-step schedule, side by side; returns the file name."""
    model = load_pretrained(name)
    dp = next(np.asarray(r["dp"]["schedule"]) for r in res["rows"] if r["K"] == SAMPLES_K)
    panels = [
        (f"{name}: {title}", dpddpm.sample(model, sched, 64, generator=torch.Generator().manual_seed(SEED)))
        for title, sched in (
            (f"full chain, K = {model.T}", np.arange(model.T, 0, -1)),
            (f"DP schedule, K = {SAMPLES_K}", dp),
        )
    ]
    path = out / f"samples_{name}.png"
    save_grid_figure(panels, path)
    return path.name


def save_sampler_grids(name: str, res: dict, out: Path, variances: AnalyticVariances | None) -> str:
    """32 samples of every schedule at K = GRID_K, ancestral and DDIM, side by side (seed 0); returns the file.

    ``res``: the model's results dictionary; ``variances``: the frozen analytic variances of its ``dp_analytic``
    schedules (needed when the row has them).
    """
    model = load_pretrained(name)
    row = next(r for r in res["rows"] if r["K"] == GRID_K)
    frozen = None if variances is None else dpddpm.with_analytic_variances(model, variances)
    panels = []
    for kind, label in (("even", "even"), ("quadratic", "quadratic"), ("dp", "DP"), ("dp_analytic", "DP, analytic")):
        if kind not in row:
            continue
        sched = np.asarray(row[kind]["schedule"])
        which = frozen if kind == "dp_analytic" else model
        gen = torch.Generator().manual_seed(SEED)
        panels.append((f"{label}, ancestral", dpddpm.sample(which, sched, 32, generator=gen)))
        if kind != "dp_analytic":
            gen = torch.Generator().manual_seed(SEED)
            panels.append((f"{label}, DDIM", dpddpm.ddim_sample(model, sched, 32, generator=gen)))
    path = out / f"samples_k{GRID_K}_{name}.png"
    save_grid_figure(panels, path, cols=4)
    return path.name


def refit_variances(name: str, res: dict) -> AnalyticVariances | None:
    """For --replot, which has only the JSON: the analytic variances fitted again exactly as the pipeline fitted
    them (its seed, data and batch size; a whole T = 4000 cost matrix), checked against the recorded fingerprint.
    None when the results have no analytic schedules."""
    recorded = res.get("analytic_variances")
    if recorded is None:
        return None
    model, selection = load_pretrained(name), digits_split("selection")
    costs = dpddpm.cost_matrix(model, selection, batch_size=BATCH, seed=SEED, progress=False)
    variances = dpddpm.fit_analytic_variances(model, selection, costs, batch_size=BATCH)
    if variances.fingerprint() != recorded["fingerprint"]:
        print(f"note: {name}'s refitted analytic variances differ from the recorded ones (round-off of another setup)")
    return variances


def markdown(table: dict) -> str:
    """The whole table: what it measures, the baseline, then each model's reproduce table."""
    base = table["baseline"]
    lines = [
        "# DP schedules against fixed strides on the bundled digits models (this book's protocol)",
        "",
        "`dpddpm.reproduce` on each bundled model: DP schedules chosen on a cost matrix of the digits selection "
        "split, every schedule's test ELBO with fresh noise on the test split, and its in-sample value with "
        "the standard error over the selection images (`dpddpm.in_sample_elbo`). "
        f"Per-pixel categorical baseline: {base['bpd']:.3f} ± {base['stderr']:.3f} bits/dim.",
        "",
    ]
    floor = table.get("fid_noise_floor")
    if floor is not None:
        lines += [
            f"Digits FID noise floor (two disjoint real sets of {floor['size']}, {len(floor['values'])} random "
            f"re-splits of the selection and test images): {floor['mean']:.1f} (standard deviation "
            f"{floor['std']:.1f}); the selection split against the test split: {floor['selection_vs_test']:.1f}. "
            "FID differences below the floor's spread are not differences.",
            "",
        ]
    for res in table["models"].values():
        lines += [markdown_table(res, decimals=3, level=2), ""]
    return "\n".join(lines)


def write_outputs(table: dict, out: Path) -> None:
    """table1_digits.md and .png from the results (the JSON is written once, after the run)."""
    write_markdown(out / "table1_digits.md", markdown(table))
    plot(
        list(table["models"].values()),
        out / "table1_digits.png",
        baseline={"bpd": table["baseline"]["bpd"], "label": "per-pixel categorical"},
    )
    plot_elbo_vs_score(list(table["models"].values()), out / "table1_digits_elbo_vs_fid.png", score="fid")


def run_table(models: list[str], fresh_full: bool, out: Path) -> dict:
    """The baseline, each model's reproduce results and its samples (written into ``out``), with the wall time."""
    start = time.time()
    selection, test = digits_split("selection"), digits_split("test")
    bpd, stderr = categorical_baseline_bpd(digits_split("train"), test)
    runs = {name: run_model(name, selection, test, fresh_full) for name in models}
    table = {
        "dpddpm_version": dpddpm.__version__,
        "paper": (
            "this book's own protocol: DP-optimal schedules (the method of Watson et al. 2021) against the even "
            "and quadratic strides, by test ELBO, run on the bundled digits models and data, not the paper's "
            "models or data; only the paper's abstract was available, so nothing here is a reproduction of its "
            "tables"
        ),
        "baseline": {"bpd": bpd, "stderr": stderr, "model": "per-pixel categorical, add-one, fit on train"},
        "models": {name: res.to_dict() for name, res in runs.items()},
    }
    score = load_digits_score()
    floor = score.noise_floor(size=len(test), repeats=50)
    table["fid_noise_floor"] = {
        "size": floor.size,
        "mean": floor.mean,
        "std": floor.std,
        "values": [float(v) for v in floor.values],
        "selection_vs_test": score.fid(selection),
    }
    table["samples"] = {name: save_samples(name, res, out) for name, res in table["models"].items()}
    table["sampler_grids"] = {
        name: save_sampler_grids(name, res, out, runs[name].analytic_variances) for name, res in table["models"].items()
    }
    table["total_wall_s"] = round(time.time() - start, 1)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; 1 is fastest when the cores are shared (small ops dominate)",
    )
    parser.add_argument("--models", nargs="+", default=list(PRETRAINED), choices=PRETRAINED)
    parser.add_argument(
        "--fresh-full-chain",
        action="store_true",
        help="re-estimate the full 4000-step test ELBO instead of reading the model card's",
    )
    parser.add_argument(
        "--replot",
        action="store_true",
        help="only redo the markdown, the figures and the samples from table1_digits.json",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.replot:
        table = read_json(args.out / "table1_digits.json", "Table 1 results")
        for name, res in table["models"].items():
            save_samples(name, res, args.out)
            save_sampler_grids(name, res, args.out, refit_variances(name, res))
    else:
        table = run_table(args.models, args.fresh_full_chain, args.out)
        write_json(args.out / "table1_digits.json", table)
    write_outputs(table, args.out)
    print(markdown(table))


if __name__ == "__main__":
    main()
