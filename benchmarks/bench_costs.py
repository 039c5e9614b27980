"""Cost-matrix wall time against the time of its network calls alone, for the released CIFAR-10 UNet.

The model is improved-diffusion's ``cifar10_uncond_50M_500K`` architecture (learned variance, cosine schedule,
T = 4000) with random weights. Both sides of the ratio are measured in the same run on the same inputs:

- ``cost_matrix_s``: :func:`dpddpm.cost_matrix` over the chosen rows (network + noise + every KL entry);
- ``network_only_s``: the same number of ``model.predict`` calls on batches of the same size, nothing else;
- ``ratio`` = cost_matrix_s / network_only_s (the target is <= 1.10 on a GPU);
- ``ratio_in_run`` = cost_matrix_s / the summed wall time of the network's forward calls inside that same
  cost-matrix run (hooks around ``model.net``), which is immune to the drift of a shared machine.

Defaults: on CPU 8 evenly spread rows t = round(linspace(T/8, T, 8)) = 500, 1000, ..., 4000 and N = 16
images, so it runs in a few minutes on 2 cores; on CUDA all T = 4000 rows with N = 256 (``--rows n`` picks
round(linspace(T/n, T, n)) instead). A subset leaves out the decoder row t = 1, whose learned-variance cost
(a discretized-Gaussian NLL for every one of the T - 1 partners u, O(N D T) work) is one row of T in a full
run but would weigh T/n times too much in a subset; it is timed on its own as ``decoder_row_s``.
Usage: python benchmarks/bench_costs.py [--device cuda] [--rows 400] [--n 256] [--autocast bf16]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import pick_device, timed, write

import dpddpm
from dpddpm.nettimer import NetTimer

PRESET = "cifar10_uncond_50M_500K"


def cifar_model(device: torch.device) -> dpddpm.DDPM:
    """The released CIFAR-10 architecture with random weights, wrapped as the loader wraps a checkpoint."""
    from dpddpm.external.improved_diffusion import (
        PRESETS,
        _improved_diffusion_schedule,
        build_improved_diffusion_unet,
        improved_diffusion_flags,
    )

    flags = improved_diffusion_flags(PRESET)
    torch.manual_seed(0)
    net = build_improved_diffusion_unet(**PRESETS[PRESET])
    return (
        dpddpm.DDPM(
            net,
            _improved_diffusion_schedule(flags),
            "learned_range",
            time_input="rescaled" if flags["rescale_timesteps"] else "index",
            data_shape=(3, 32, 32),
            num_bins=256,
        )
        .to(device)
        .eval()
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None)
    ap.add_argument("--rows", type=int, default=None, help="evenly spread rows (default: CPU 8, CUDA all T)")
    ap.add_argument("--n", type=int, default=None, help="images (default: CPU 16, CUDA 256)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: CPU 64, CUDA 512")
    ap.add_argument("--autocast", choices=("bf16", "fp16"), default=None)
    args = ap.parse_args()
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    model = cifar_model(device)
    T = model.T
    n_rows = args.rows or (T if cuda else 8)
    N = args.n or (256 if cuda else 16)
    bs = args.batch_size or (512 if cuda else 64)
    rows = (
        list(range(1, T + 1)) if n_rows >= T else sorted({int(r) for r in np.round(np.linspace(T / n_rows, T, n_rows))})
    )
    data = torch.randint(0, 256, (N, 3, 32, 32), generator=torch.Generator().manual_seed(0)).float() / 127.5 - 1

    amp = (
        torch.autocast("cuda", dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[args.autocast])
        if args.autocast
        else torch.autocast("cpu", enabled=False)
    )
    total = len(rows) * N
    x = torch.randn(bs, 3, 32, 32, device=device)
    t = torch.tensor(rows, device=device).repeat_interleave(N)

    def network_only():
        with torch.no_grad(), amp:
            for a in range(0, total, bs):
                b = min(a + bs, total)
                model.predict(x[: b - a], t[a:b])

    # warm-up (cudnn autotuning, allocator) on one batch of each kind
    with torch.no_grad(), amp:
        model.predict(x, t[:bs].clone().resize_(bs).fill_(T))
    dpddpm.cost_matrix(
        model, data[: min(N, 2)], batch_size=bs, device=device, progress=False, rows=rows[-2:], autocast=args.autocast
    )

    net_s, _ = timed(network_only, device)
    with NetTimer(model.net) as in_run:  # the forward calls inside the cost-matrix run, timed one by one
        cost_s, costs = timed(
            lambda: dpddpm.cost_matrix(
                model, data, batch_size=bs, device=device, progress=False, rows=rows, autocast=args.autocast
            ),
            device,
        )
    net2_s, _ = timed(network_only, device)
    dec_s = None
    if 1 not in rows:  # again: the drift of a shared machine
        dec_s, _ = timed(
            lambda: dpddpm.cost_matrix(
                model, data, batch_size=bs, device=device, progress=False, rows=[1], autocast=args.autocast
            ),
            device,
        )
    result = {
        "model": f"{PRESET} architecture, random weights",
        "T": T,
        "rows": len(rows),
        "row_choice": "all" if n_rows >= T else f"round(linspace({T}/{n_rows}, {T}, {n_rows}))",
        "decoder_row_s": dec_s,
        "N": N,
        "batch_size": bs,
        "autocast": args.autocast,
        "network_calls": total,
        "cost_matrix_s": cost_s,
        "network_only_s": net_s,
        "network_only_repeat_s": net2_s,
        "cost_matrix_network_s": in_run.seconds,
        "ratio_in_run": cost_s / in_run.seconds,
        "ratio": cost_s / net_s,
        "ratio_vs_repeat": cost_s / net2_s,
        "images_per_s_network": total / net_s,
        "finite": bool(np.isfinite(costs.kl[rows[-1], 1 : rows[-1]]).all()),
    }
    write("bench_costs" + (f"_{args.autocast}" if args.autocast else ""), device, result)


if __name__ == "__main__":
    main()
