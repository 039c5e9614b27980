"""The analytic-variance cost matrix of a bundled model against the model's own matrix (issue 11).

The analytic matrix needs no network call beyond the model's own matrix, except the decoder row (N calls)
and the decoder-variance fit (N calls): both are timed here against the full matrix, in the same run, on
digits-hybrid (T = 4000) and its 300 selection images. The analytic matrix is also recomputed the slow way,
by running the whole cost matrix of the analytic-variance model, to show what the shortcut saves.
Usage: python benchmarks/bench_analytic.py [--device cpu] [--n 300] [--batch-size 4096]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import pick_device, timed, write

import dpddpm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=4096)
    args = ap.parse_args()
    device = pick_device(args.device)
    model = dpddpm.load_pretrained("digits-hybrid").to(device)
    data = dpddpm.digits_split("selection")[: args.n]
    options = dict(batch_size=args.batch_size, device=device, progress=False)
    own_s, costs = timed(lambda: dpddpm.cost_matrix(model, data, **options), device)
    fit_s, variances = timed(
        lambda: dpddpm.fit_analytic_variances(model, data, costs, batch_size=args.batch_size), device
    )
    derive_s, fast = timed(
        lambda: dpddpm.analytic_costs(costs, variances, model, data, batch_size=args.batch_size), device
    )
    frozen = dpddpm.with_analytic_variances(model, variances)
    slow_s, slow = timed(lambda: dpddpm.cost_matrix(frozen, data, **options), device)
    tri = np.isfinite(slow.kl)
    agree = float(np.max(np.abs(fast.kl[tri] - slow.kl[tri]) / np.abs(slow.kl[tri])))
    agree_abs = float(np.max(np.abs(fast.kl[tri] - slow.kl[tri])))
    write(
        "bench_analytic",
        device,
        {
            "model": "digits-hybrid (learned_range, T = 4000)",
            "N": int(data.shape[0]),
            "threads": torch.get_num_threads(),
            "own_cost_matrix_s": own_s,
            "fit_variances_s": fit_s,
            "analytic_matrix_from_own_s": derive_s,
            "analytic_extra_over_own": (fit_s + derive_s) / own_s,
            "analytic_matrix_by_network_s": slow_s,
            "max_rel_diff_shortcut_vs_network": agree,
            "max_abs_diff_shortcut_vs_network_bpd": agree_abs,
        },
    )


if __name__ == "__main__":
    main()
