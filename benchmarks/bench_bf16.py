"""Effect of running the network in bf16 (autocast) on the cost matrix and on schedule ELBOs.

Issue 5's rule: use bf16 for cost matrices only if schedule ELBOs move by less than 0.01 bits/dim.
Computes the full cost matrix of the bundled digits-hybrid model twice on the same data and noise (fp32 and
bf16 network), then for K in 8..256 compares (a) the ELBO of the fp32-optimal schedule read from both
matrices, and (b) the fp32-matrix ELBO of the bf16-optimal schedule against the fp32 optimum. With
--checkpoint/--preset/--data it uses a real improved-diffusion model instead (GPU advised).
Usage: python benchmarks/bench_bf16.py [--device cuda] [--n 300]
"""

from __future__ import annotations

import argparse

from common import pick_device, timed, write

import dpddpm

KS = (8, 16, 32, 64, 128, 256)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--preset", default="cifar10_uncond_50M_500K")
    ap.add_argument("--data", default=None)
    args = ap.parse_args()
    device = pick_device(args.device)
    if args.checkpoint:
        model = dpddpm.load_improved_diffusion(args.checkpoint, preset=args.preset, device=device)
        data, name = dpddpm.load_images(args.data, limit=args.n), args.preset
    else:
        model, name = dpddpm.load_pretrained("digits-hybrid"), "digits-hybrid"
        data = dpddpm.digits_split("selection")[: args.n]
    run = lambda amp: dpddpm.cost_matrix(
        model, data, batch_size=args.batch_size, device=device, progress=False, autocast=amp
    )
    fp32_s, fp32 = timed(lambda: run(None), device)
    bf16_s, bf16 = timed(lambda: run("bf16"), device)
    best32, best16 = dpddpm.optimal_schedules(fp32, max(KS)), dpddpm.optimal_schedules(bf16, max(KS))
    rows = []
    for K in KS:
        s32, s16 = best32.schedule(K), best16.schedule(K)
        rows.append(
            {
                "K": K,
                "fp32_optimum": best32.bpd(K),
                "same_schedule_read_from_bf16": dpddpm.schedule_bpd(bf16, s32),
                "bf16_choice_scored_in_fp32": dpddpm.schedule_bpd(fp32, s16),
                "same_schedule_chosen": bool((len(s32) == len(s16)) and (s32 == s16).all()),
            }
        )
    diff_read = max(abs(r["same_schedule_read_from_bf16"] - r["fp32_optimum"]) for r in rows)
    diff_choice = max(r["bf16_choice_scored_in_fp32"] - r["fp32_optimum"] for r in rows)
    write(
        "bench_bf16",
        device,
        {
            "model": name,
            "N": int(data.shape[0]),
            "fp32_cost_matrix_s": fp32_s,
            "bf16_cost_matrix_s": bf16_s,
            "speedup": fp32_s / bf16_s,
            "max_abs_elbo_change_bpd": diff_read,
            "max_choice_loss_bpd": diff_choice,
            "threshold_bpd": 0.01,
            "bf16_acceptable": bool(max(diff_read, diff_choice) < 0.01),
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
