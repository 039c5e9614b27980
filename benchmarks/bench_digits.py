"""The bundled digits-hybrid model's full cost matrix (T = 4000, its 300-image test split) and the DP.

Targets (DESIGN.md): the cost matrix in under 2 minutes and the DP for every K <= 256 in under 3 s, on
2 CPU cores. Both sides of the cost-matrix ratio are measured in this run: the network calls alone (the same
T x N inputs through the net, in the same batches) and the whole cost matrix.
Usage: python benchmarks/bench_digits.py [--device cpu] [--n 300] [--batch-size 4096]
"""

from __future__ import annotations

import argparse
import math

import torch
from common import pick_device, timed, write

import dpddpm


@torch.no_grad()
def network_only(model: dpddpm.DDPM, data: torch.Tensor, batch_size: int, device: torch.device) -> None:
    """The T x N network calls of a cost matrix, batched the same way, with nothing else."""
    T, N = model.T, data.shape[0]
    x0 = data.to(device).float()
    rows_per_call = max(1, batch_size // N)
    for top in range(T, 0, -rows_per_call):
        ts = torch.arange(top, max(top - rows_per_call, 0), -1, device=device)
        ab = torch.tensor(model.schedule.alpha_bar, device=device)[ts].float().repeat_interleave(N)
        x = x0.repeat(len(ts), 1, 1, 1)
        x_t = ab.sqrt().view(-1, 1, 1, 1) * x + (1 - ab).sqrt().view(-1, 1, 1, 1) * torch.randn_like(x)
        model.predict(x_t, ts.repeat_interleave(N))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=4096)
    args = ap.parse_args()
    device = pick_device(args.device)
    model = dpddpm.load_pretrained("digits-hybrid").to(device)
    data = dpddpm.digits_split("test")[: args.n]
    network_only(model, data[:8], 64, device)  # warm-up: CUDA context, kernels (and their autotuning) first
    net_s, _ = timed(lambda: network_only(model, data, args.batch_size, device), device)
    cost_s, costs = timed(lambda: dpddpm.cost_matrix(model, data, batch_size=args.batch_size, progress=False), device)
    dp_s, best = timed(lambda: dpddpm.optimal_schedules(costs, 256, device=device), device)
    write(
        "bench_digits",
        device,
        {
            "model": "digits-hybrid (learned_range, T = 4000)",
            "N": int(data.shape[0]),
            "batch_size": args.batch_size,
            "threads": torch.get_num_threads(),
            "cost_matrix_s": cost_s,
            "network_only_s": net_s,
            "ratio": cost_s / net_s,
            "target_cost_matrix_s": 120.0,
            "dp_all_K_le_256_s": dp_s,
            "target_dp_s": 3.0,
            "dp_bpd_32_in_sample": best.bpd(32),
            "finite": bool(math.isfinite(best.bpd(256))),
        },
    )


if __name__ == "__main__":
    main()
