"""Two versions of the package on the same workloads, interleaved: did a change slow anything down?

    python benchmarks/bench_before_after.py --before /tmp/before --after . --repeats 3 --out NAME

``--before`` and ``--after`` are checkouts (folders holding ``dpddpm/``). Each repeat runs the workload suite
once per version in a fresh process, alternating A B A B ... (then B A on the next repeat), so drift of a shared
machine falls on both sides alike. Every process uses one torch thread. The suite, on the bundled digits models
(T = 4000): a full cost matrix on 32 selection images, the fresh and in-sample ELBOs of a 64-step DP schedule
(300 and 32 images), the analytic-variance fit and its matrix, and 64 ancestral samples; it also reports each
figure's result, so that the two versions' numbers can be compared (largest relative difference).
Results: ``benchmarks/results/NAME.json`` with every repeat's seconds, the median per version and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

WORKLOAD = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
import dpddpm
out = {"seconds": {}, "values": {}}
def timed(key, fn):
    start = time.perf_counter(); value = fn(); out["seconds"][key] = time.perf_counter() - start; return value
for name in ("digits-simple", "digits-hybrid"):
    m = dpddpm.load_pretrained(name)
    sel, test = dpddpm.digits_split("selection")[:32], dpddpm.digits_split("test")
    c = timed(f"{name}/cost_matrix", lambda: dpddpm.cost_matrix(m, sel, progress=False, seed=3))
    sched = dpddpm.optimal_schedules(c, 64).schedule(64)
    e = timed(f"{name}/elbo", lambda: dpddpm.elbo(m, test, sched, seed=5))
    i = timed(f"{name}/in_sample_elbo", lambda: dpddpm.in_sample_elbo(m, sel, c, sched))
    def fit():
        v = dpddpm.fit_analytic_variances(m, sel, c)
        return v, dpddpm.analytic_costs(c, v, m, sel)
    v, a = timed(f"{name}/analytic", fit)
    x = timed(f"{name}/sample", lambda: dpddpm.sample(m, sched, 64, torch.Generator().manual_seed(0)))
    out["values"].update({
        f"{name}/kl_sum": float(c.kl[c.kl == c.kl].sum()), f"{name}/decoder_sum": float(c.decoder[2:].sum()),
        f"{name}/elbo": e.bpd, f"{name}/in_sample": i.bpd, f"{name}/decoder_log_variance": v.decoder_log_variance,
        f"{name}/analytic_kl_sum": float(a.kl[a.kl == a.kl].sum()), f"{name}/sample_mean": float(x.double().mean()),
    })
json.dump(out, sys.stdout)
"""


def run(tree: Path) -> dict:
    """One pass of the workload with the package found in ``tree``."""
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", WORKLOAD], env=env, cwd=tree, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--after", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench_before_after_cpu")
    args = ap.parse_args()
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for r in range(args.repeats):
        order = ("before", "after") if r % 2 == 0 else ("after", "before")
        for label in order:
            start = time.perf_counter()
            runs[label].append(run(trees[label]))
            print(f"repeat {r} {label}: {time.perf_counter() - start:.1f} s", flush=True)
    keys = runs["before"][0]["seconds"]
    median = {label: {k: statistics.median(x["seconds"][k] for x in runs[label]) for k in keys} for label in runs}
    values = {label: runs[label][0]["values"] for label in runs}
    rel = {
        k: abs(values["after"][k] - values["before"][k]) / max(abs(values["before"][k]), 1e-300)
        for k in values["before"]
    }
    result = {
        "benchmark": "bench_before_after",
        "cpu": _cpu_name(),
        "torch_threads": 1,
        "repeats": args.repeats,
        "order": "interleaved: before, after, then after, before, ...",
        "median_s": median,
        "ratio_after_over_before": {k: median["after"][k] / median["before"][k] for k in keys},
        "total_ratio": sum(median["after"].values()) / sum(median["before"].values()),
        "values": values,
        "largest_relative_difference": max(rel.values()),
        "relative_difference": rel,
        "runs": runs,
    }
    path = Path(__file__).parent / "results" / f"{args.out}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("ratio_after_over_before", "total_ratio")}, indent=2))
    print("largest relative difference of the results:", result["largest_relative_difference"])


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return "cpu"


if __name__ == "__main__":
    main()
