"""Table 1 of Watson et al. (2021) measured on the bundled digits models.

For each model: the cost matrix on the selection split (seed 0, timed), the DP's optimal schedules for every
K <= 256, and for K in {2, 4, ..., 256} the fresh test-split ELBO (bits/dim, +- standard error) of the even
stride, the quadratic stride and the DP schedule, plus each schedule's in-sample figure and the full T = 4000
chain. Every standard error is over images (of each image's total); differences between two schedules on the
same images carry paired standard errors.

    python scripts/table1_digits.py [--out results] [--threads 1]

Writes results/table1_digits.{json,md,png} and results/samples_<model>.png. The float64 cost matrices
(4001 x 4001, 128 MB each) are not saved.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import dpddpm
from dpddpm.digits import categorical_baseline_bpd, digits_split
from dpddpm.digits import PRETRAINED, load_pretrained, model_card

KS = (2, 4, 8, 16, 32, 64, 128, 256)
SEED = 0
GAP = 0.1  # bits/dim: "within 0.1 of the full chain", the paper's criterion


def smallest_k(ks, values, reference: float) -> int | None:
    """The smallest K whose value is within GAP bits/dim of the reference, or None."""
    for k, v in zip(ks, values):
        if v - reference <= GAP:
            return int(k)
    return None


def run_model(name: str, selection: torch.Tensor, test: torch.Tensor, fresh_full: bool) -> dict:
    model = load_pretrained(name)
    T = model.T
    t0 = time.time()
    costs = dpddpm.cost_matrix(model, selection, batch_size=4096, seed=SEED, progress=True)
    cost_time = time.time() - t0
    t0 = time.time()
    best = dpddpm.optimal_schedules(costs, max(KS))
    dp_time = time.time() - t0
    full = np.arange(T, 0, -1)
    if fresh_full:
        est = dpddpm.elbo(model, test, full, batch_size=len(test), seed=SEED + 1)
        full_test = {"bpd": est.bpd, "stderr": est.stderr, "source": "fresh estimate in this run"}
    else:
        card = model_card(name)["test_elbo"]
        full_test = {"bpd": card["bpd"], "stderr": card["stderr"], "source": "model card (same split and code)"}
    rows = []
    for K in KS:
        row = {"K": K}
        found = {}
        for kind, sched in (("dp", best.schedule(K)), ("even", dpddpm.even_schedule(T, K)),
                            ("quadratic", dpddpm.quadratic_schedule(T, K))):
            est = dpddpm.elbo(model, test, sched, batch_size=len(test), seed=SEED + 1)
            ins = dpddpm.in_sample_elbo(model, selection, costs, sched, batch_size=4096)
            found[kind] = (est, ins)
            row[kind] = {"bpd": est.bpd, "stderr": est.stderr, "in_sample": dpddpm.schedule_bpd(costs, sched),
                         "in_sample_stderr": ins.stderr}
            if kind != "dp":  # same images (and, on the test split, the same noise seed) as the DP: paired
                dp_est, dp_ins = found["dp"]
                row[kind]["minus_dp"] = est.bpd - dp_est.bpd
                row[kind]["minus_dp_stderr"] = est.paired_stderr(dp_est)
                row[kind]["in_sample_minus_dp_stderr"] = ins.paired_stderr(dp_ins)
        row["dp"]["schedule"] = best.schedule(K).tolist() if K <= 32 else None
        rows.append(row)
        print(f"{name} K={K:4d}  even {row['even']['bpd']:.3f}  quad {row['quadratic']['bpd']:.3f}  "
              f"dp {row['dp']['bpd']:.3f} (in-sample {row['dp']['in_sample']:.3f})", flush=True)
    full_in = dpddpm.schedule_bpd(costs, full)
    full_in_se = dpddpm.in_sample_elbo(model, selection, costs, full, batch_size=4096).stderr
    in_sample_all = best.bpd_all()  # K = 2 .. 256
    return {
        "variance": model.variance, "T": T, "N_selection": int(len(selection)), "N_test": int(len(test)),
        "cost_matrix_wall_s": round(cost_time, 1), "dp_wall_s": round(dp_time, 2),
        "cost_matrix_threads": torch.get_num_threads(),
        "full_chain": {"test": full_test, "in_sample": full_in, "in_sample_stderr": full_in_se},
        "rows": rows,
        "dp_within_0.1_of_full": {
            "in_sample_any_K": smallest_k(range(2, max(KS) + 1), in_sample_all, full_in),
            "in_sample_of_listed_K": smallest_k(KS, [r["dp"]["in_sample"] for r in rows], full_in),
            "test": smallest_k(KS, [r["dp"]["bpd"] for r in rows], full_test["bpd"]),
        },
        "samples": save_samples(model, best.schedule(32), name),
    }


def image_grid(x: torch.Tensor, cols: int = 8, pad: int = 1) -> np.ndarray:
    """(n, 1, 8, 8) in [-1, 1] -> one image in [0, 1] with the digits on a grid, separated by ``pad`` pixels."""
    n = x.shape[0]
    rows = math.ceil(n / cols)
    size = 8 + pad
    grid = np.zeros((rows * size + pad, cols * size + pad))
    for i, img in enumerate(((x[:, 0] + 1) / 2).clamp(0, 1).numpy()):
        r, c = divmod(i, cols)
        grid[pad + r * size:pad + r * size + 8, pad + c * size:pad + c * size + 8] = img
    return grid


def save_samples(model, dp32, name: str) -> str:
    """A grid of 64 samples from the full chain and from the DP's 32-step schedule ``dp32``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
    for ax, (title, sched) in zip(axes, (("full chain, K = 4000", np.arange(model.T, 0, -1)),
                                         ("DP schedule, K = 32", dp32))):
        x = dpddpm.sample(model, sched, 64, generator=torch.Generator().manual_seed(SEED))
        ax.imshow(image_grid(x), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(f"{name}: {title}", fontsize=9)
        ax.axis("off")
    path = OUT / f"samples_{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path.name)


def write_markdown(res: dict) -> str:
    lines = ["# Table 1 on the bundled digits models", "",
             "Test-split ELBO in bits/dim (fresh noise, ± standard error over images, N = "
             f"{res['N_test']}); DP schedules chosen on a cost matrix of the selection split "
             f"(N = {res['N_selection']}, seed {SEED}); its in-sample value with the standard error over the "
             "selection images (`dpddpm.in_sample_elbo`). The last two columns are the strides' excess over the DP "
             "on the same test images, with paired standard errors. "
             f"Per-pixel categorical baseline: {res['baseline']['bpd']:.3f} ± {res['baseline']['stderr']:.3f}.", ""]
    for name, m in res["models"].items():
        full = m["full_chain"]
        lines += [f"## {name} ({m['variance']})", "",
                  "| K | even stride | quadratic stride | DP (test) | DP (in-sample) | even − DP | quadratic − DP |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for r in m["rows"]:
            cell = lambda d: f"{d['bpd']:.3f} ± {d['stderr']:.3f}"
            diff = lambda d: f"{d['minus_dp']:+.3f} ± {d['minus_dp_stderr']:.3f}"
            lines.append(f"| {r['K']} | {cell(r['even'])} | {cell(r['quadratic'])} | {cell(r['dp'])} | "
                         f"{r['dp']['in_sample']:.3f} ± {r['dp']['in_sample_stderr']:.3f} | {diff(r['even'])} | "
                         f"{diff(r['quadratic'])} |")
        f = f"{full['test']['bpd']:.3f} ± {full['test']['stderr']:.3f}"  # at K = T every schedule is the full chain
        lines.append(f"| {m['T']} (full chain) | {f} | {f} | {f} | {full['in_sample']:.3f} ± "
                     f"{full['in_sample_stderr']:.3f} | | |")
        w = m["dp_within_0.1_of_full"]
        lines += ["", f"Smallest K with the DP within 0.1 bits/dim of the full chain: in-sample K = "
                  f"{w['in_sample_any_K']} (any K ≤ 256), test split K = {w['test']} (of the listed K). "
                  f"Cost matrix wall time {m['cost_matrix_wall_s']} s ({m['cost_matrix_threads']} torch thread(s), "
                  f"shared 2-core CPU); "
                  f"DP for all K ≤ 256 {m['dp_wall_s']} s.", ""]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["models"])
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.2), sharey=True)
    for ax, name in zip(np.atleast_1d(axes), names):
        m = res["models"][name]
        ks = [r["K"] for r in m["rows"]]
        for kind, label in (("even", "even stride"), ("quadratic", "quadratic stride"), ("dp", "DP (test)")):
            ax.errorbar(ks, [r[kind]["bpd"] for r in m["rows"]], yerr=[r[kind]["stderr"] for r in m["rows"]],
                        marker="o", ms=3, capsize=2, label=label)
        ax.plot(ks, [r["dp"]["in_sample"] for r in m["rows"]], "k--", lw=1, label="DP (in-sample)")
        ax.axhline(m["full_chain"]["test"]["bpd"], color="gray", lw=1, label="full chain (T = 4000)")
        ax.axhline(res["baseline"]["bpd"], color="gray", ls=":", lw=1, label="per-pixel categorical")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("K (network calls)")
        ax.set_title(f"{name} ({m['variance']})")
        ax.grid(alpha=0.3, which="both")
    np.atleast_1d(axes)[0].set_ylabel("test ELBO, bits/dim")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    global OUT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 is fastest when the cores are shared (small ops dominate)")
    parser.add_argument("--models", nargs="+", default=list(PRETRAINED), choices=PRETRAINED)
    parser.add_argument("--fresh-full-chain", action="store_true",
                        help="re-estimate the full 4000-step test ELBO instead of reading the model card's")
    parser.add_argument("--replot", action="store_true",
                        help="only redo the markdown, the figures and the samples from table1_digits.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    OUT = args.out
    OUT.mkdir(parents=True, exist_ok=True)
    if args.replot:
        res = json.loads((OUT / "table1_digits.json").read_text())
        (OUT / "table1_digits.md").write_text(write_markdown(res) + "\n")
        plot(res, OUT / "table1_digits.png")
        for name, m in res["models"].items():
            dp32 = next(r["dp"]["schedule"] for r in m["rows"] if r["K"] == 32)
            save_samples(load_pretrained(name), np.asarray(dp32), name)
        return
    start = time.time()
    selection, test = digits_split("selection"), digits_split("test")
    base, base_se = categorical_baseline_bpd(digits_split("train"), test)
    res = {"paper": "Watson et al. 2021, Table 1 protocol", "seed": SEED, "Ks": list(KS), "gap_bpd": GAP,
           "N_selection": len(selection), "N_test": len(test),
           "baseline": {"bpd": base, "stderr": base_se, "model": "per-pixel categorical, add-one, fit on train"},
           "models": {}}
    for name in args.models:
        res["models"][name] = run_model(name, selection, test, args.fresh_full_chain)
    res["total_wall_s"] = round(time.time() - start, 1)
    (OUT / "table1_digits.json").write_text(json.dumps(res, indent=2) + "\n")
    (OUT / "table1_digits.md").write_text(write_markdown(res) + "\n")
    plot(res, OUT / "table1_digits.png")
    print(write_markdown(res))


OUT = Path("results")

if __name__ == "__main__":
    main()
