"""Wall time of the whole Table-1 pipeline (`dpddpm reproduce`) against its own network-call floor.

Target (issue 5): on a GPU the pipeline stays within 1.2 x the time of its network calls alone. The floor is
measured in the same run by timing every forward call of the net (synchronizing CUDA around each call).
* CUDA: the released CIFAR-10 architecture with random weights, T = 4000, random images in [-1, 1]
  (--n-selection 256 --n-test 256 by default; the ELBO values are meaningless, the timings are not).
* CPU: the bundled digits-hybrid model on its selection and test splits (the CIFAR net is ~6 img/s here).
Usage: python benchmarks/bench_reproduce.py [--device cuda] [--n-selection N] [--n-test N] [--skip-full]
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from common import pick_device, write

import dpddpm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None)
    ap.add_argument("--n-selection", type=int, default=None)
    ap.add_argument("--n-test", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--skip-full", action="store_true")
    args = ap.parse_args()
    device = pick_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        flags = dpddpm.IMPROVED_DIFFUSION_PRESETS["cifar10_uncond_50M_500K"]
        net = dpddpm.build_improved_diffusion_unet(**flags)
        model = dpddpm.DDPM(
            net, dpddpm.NoiseSchedule.cosine(4000), "learned_range", time_input="rescaled", data_shape=(3, 32, 32)
        )
        g = torch.Generator().manual_seed(0)
        pool = torch.randint(0, 256, (1024, 3, 32, 32), generator=g).float() / 127.5 - 1
        n_sel, n_test = args.n_selection or 256, args.n_test or 256
        selection, test, name, batch = pool[:n_sel], pool[n_sel : n_sel + n_test], "cifar10 arch (random)", 512
    else:
        model = dpddpm.load_pretrained("digits-hybrid")
        n_sel, n_test = args.n_selection or 300, args.n_test or 300
        selection = dpddpm.digits_split("selection")[:n_sel]
        test = dpddpm.digits_split("test")[:n_test]
        name, batch = "digits-hybrid", 4096
    batch = args.batch_size or batch
    with tempfile.TemporaryDirectory() as out:
        res = dpddpm.reproduce(
            model,
            selection,
            test,
            out,
            batch_size=batch,
            device=device,
            skip_full=args.skip_full,
            progress=False,
            name=name,
        )
    t = res.timing.to_dict()
    write(
        "bench_reproduce",
        device,
        {
            "model": name,
            "n_selection": n_sel,
            "n_test": n_test,
            "batch_size": batch,
            "T": res.T,
            "steps": [r.K for r in res.rows],
            "full_chain": not args.skip_full,
            **t,
            "ratio": res.timing.total_ratio,
            "target_ratio_gpu": 1.2,
        },
    )


if __name__ == "__main__":
    main()
