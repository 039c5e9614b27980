"""Dynamic-programming time for T = 4000: every K <= 256 (CPU) or every K <= 1024 (CUDA) in one pass.

The cost matrix is the exact expected KL of a fixed_small model on Gaussian data x_0 ~ N(mu, s^2) per
dimension (closed form, cosine schedule T = 4000), the same formula the tests check the estimator against:
L(t, s) = c1^2 v_t / (2 beta~_{s|t} ln 2), v_t = s^2 (1 - a_t) / (a_t s^2 + 1 - a_t) the posterior variance of
x_0. Decoder and prior are closed-form positive stand-ins (see ``gaussian_costs``). Entries differ by orders of
magnitude as in a real matrix, so the DP's arg-mins are realistic, unlike a random matrix's.
Usage: python benchmarks/bench_dp.py [--device cuda] [--max-steps 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
from common import pick_device, timed, write

import dpddpm


def gaussian_costs(T: int = 4000, mu: float = 0.1, s: float = 0.5) -> dpddpm.CostMatrix:
    """The closed-form expected cost matrix (bits/dim) of the exact denoiser of N(mu, s^2) data."""
    ab = dpddpm.NoiseSchedule.cosine(T).alpha_bar  # float64 (T+1,)
    t = np.arange(T + 1)[:, None]
    r = np.arange(T + 1)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        beta = 1 - ab[t] / ab[r]
        beta_post = beta * (1 - ab[r]) / (1 - ab[t])
        c1 = np.sqrt(ab[r]) * beta / (1 - ab[t])
        v = s**2 * (1 - ab[t]) / (ab[t] * s**2 + 1 - ab[t])
        kl = 0.5 * c1**2 * v / beta_post / math.log(2)
    kl = np.where((r >= 1) & (r < t), kl, np.nan)
    # decoder stand-in: 1 bit/dim plus a penalty that grows with the jump's posterior variance beta~_{1|u};
    # prior: the exact KL(q(x_t | x_0) || N(0, I)) averaged over the data distribution
    decoder = np.full(T + 1, np.nan)
    u = np.arange(2, T + 1)
    beta_post_1u = (1 - ab[u] / ab[1]) * (1 - ab[1]) / (1 - ab[u])
    decoder[2:] = 1.0 + 0.5 * np.log2(1 + beta_post_1u / (1 - ab[1]))
    prior = np.concatenate(
        [
            [np.nan],
            0.5 * (ab[1:] * (mu**2 + s**2) + (1 - ab[1:]) - 1 - np.log(np.maximum(1 - ab[1:], 1e-300))) / math.log(2),
        ]
    )
    return dpddpm.CostMatrix(kl=kl, decoder=decoder, prior=prior, meta={"source": "gaussian closed form"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None)
    ap.add_argument("--T", type=int, default=4000)
    ap.add_argument("--max-steps", type=int, default=None, help="default: CPU 256, CUDA 1024")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    device = pick_device(args.device)
    K = args.max_steps or (1024 if device.type == "cuda" else 256)
    costs = gaussian_costs(args.T)
    dpddpm.optimal_schedules(costs, 3, device=device)  # warm-up
    threads = torch.get_num_threads()
    times, one_thread, best = [], [], None
    for _ in range(args.repeats):  # interleaved: the CPU sweep with every torch thread, then with one
        s, best = timed(lambda: dpddpm.optimal_schedules(costs, K, device=device), device)
        times.append(s)
        if device.type == "cpu" and threads > 1:
            torch.set_num_threads(1)
            s1, one = timed(lambda: dpddpm.optimal_schedules(costs, K, device=device), device)
            torch.set_num_threads(threads)
            assert np.array_equal(one.values, best.values), "threads must not change the table"
            one_thread.append(s1)
    bpd = {k: best.bpd(k) for k in (2, 8, 32, 128, K) if k <= K}
    assert all(np.diff([best.bpd(k) for k in range(2, K + 1)]) <= 1e-9), "optimal ELBO must not grow with K"
    write(
        "bench_dp",
        device,
        {
            "T": args.T,
            "max_steps": K,
            "cost_matrix": "closed-form Gaussian expected KL (fixed_small), cosine",
            "threads": threads,
            "seconds": times,
            "best_s": min(times),
            "median_s": float(np.median(times)),
            "seconds_one_thread": one_thread or None,
            "median_s_one_thread": float(np.median(one_thread)) if one_thread else None,
            "in_sample_bpd": bpd,
            "schedule_32": best.schedule(32).tolist() if K >= 32 else None,
        },
    )


if __name__ == "__main__":
    main()
