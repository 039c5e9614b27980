"""Does every code path give the right answer on a GPU? (Correctness, not speed; seconds on an H100.)

The test suite runs on CPUs only, so this is the one place where the CUDA paths are checked against the CPU
and against each other, on the bundled digits-hybrid model:
1. the network's output for the same inputs on CUDA and on the CPU (TF32 off), to float32 round-off;
2. a CUDA cost matrix: the DP's in-sample value is replayed by ``in_sample_elbo`` on CUDA, to round-off;
3. the same matrix computed as two row shards on CUDA merges to the unsharded one, to round-off;
4. fresh-noise ELBOs of one schedule on CUDA and on the CPU agree within their (unpaired) standard errors
   (the two devices draw different noise, so only statistical agreement is expected);
5. ancestral and DDIM sampling on CUDA give finite images in [-1, 1];
6. fp16 and bf16 autocast cost rows are finite; their distance from fp32 on the same noise is reported
   (bench_bf16.py measures what it does to schedule ELBOs).
Any failed check exits non-zero; every figure goes to results/gpu_smoke_<gpu>.json.
Usage: python benchmarks/gpu_smoke.py [--device cuda] [--n 64]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import pick_device, timed, write

import dpddpm


def entries(costs: dpddpm.CostMatrix) -> np.ndarray:
    """Every KL, decoder and prior entry of a cost matrix, flattened (NaN where not valid or not computed)."""
    return np.concatenate([costs.kl.ravel(), costs.decoder, costs.prior])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None)
    ap.add_argument("--n", type=int, default=64, help="images in the cost matrix")
    args = ap.parse_args()
    device = pick_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = dpddpm.load_pretrained("digits-hybrid")
    data = dpddpm.digits_split("selection")[: args.n]
    test = dpddpm.digits_split("test")
    checks: dict[str, dict] = {}

    def check(name: str, ok: bool, **figures) -> None:
        checks[name] = {"ok": bool(ok), **figures}
        print(("ok   " if ok else "FAIL ") + name, figures, flush=True)

    # 1. the network on both devices
    x = data[:32].float()
    t = torch.randint(1, model.T + 1, (len(x),), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        on_cpu = model.to("cpu").predict(x, t)
        on_dev = model.to(device).predict(x.to(device), t.to(device))
    out_cpu = torch.cat([o.flatten() for o in on_cpu if o is not None])  # (eps, variance output or None)
    out_dev = torch.cat([o.flatten().cpu() for o in on_dev if o is not None])
    diff = (out_cpu - out_dev).abs().max().item()
    check("network_cpu_vs_device", diff < 1e-4, max_abs_diff=diff)

    # 2. a full cost matrix on the device, replayed in-sample
    seconds, costs = timed(lambda: dpddpm.cost_matrix(model, data, device=device, progress=False), device)
    best = dpddpm.optimal_schedules(costs, 64)
    schedule = best.schedule(16)
    replay = dpddpm.in_sample_elbo(model, data, costs, schedule, device=device)
    rel = abs(replay.bpd - best.bpd(16)) / best.bpd(16)
    check("in_sample_replay", rel < 1e-5, dp_bpd_16=best.bpd(16), replayed=replay.bpd, rel_diff=rel, matrix_s=seconds)

    # 3. two row shards merge to the whole
    rows = np.arange(1, model.T + 1)
    parts = [dpddpm.cost_matrix(model, data, device=device, progress=False, rows=rows[rows % 2 == r]) for r in (0, 1)]
    merged = dpddpm.merge_costs(parts)
    whole, parts_merged = entries(costs), entries(merged)
    valid = np.isfinite(whole)
    same_valid = bool(np.array_equal(valid, np.isfinite(parts_merged)))
    rel = float(np.max(np.abs(parts_merged[valid] - whole[valid]) / (np.abs(whole[valid]) + 1e-12)))
    check("shards_merge_to_whole", same_valid and rel < 1e-5, max_rel_diff=rel)

    # 4. fresh-noise ELBOs on both devices
    even = dpddpm.even_schedule(model.T, 64)
    on_dev = dpddpm.elbo(model, test, even, device=device, batch_size=4096)
    on_cpu = dpddpm.elbo(model, test, even, device="cpu", batch_size=4096)
    z = abs(on_dev.bpd - on_cpu.bpd) / float(np.hypot(on_dev.stderr, on_cpu.stderr))
    check("elbo_cpu_vs_device", z < 4, device_bpd=on_dev.bpd, cpu_bpd=on_cpu.bpd, z=z)

    # 5. sampling
    for name, fn in (("sample", dpddpm.sample), ("ddim_sample", dpddpm.ddim_sample)):
        gen = torch.Generator(device=device).manual_seed(0)
        images = fn(model, even, 64, gen, device=device)
        finite = bool(torch.isfinite(images).all())
        lo, hi = float(images.min()), float(images.max())
        check(name, finite and lo >= -1 and hi <= 1, shape=list(images.shape), min=lo, max=hi)

    # 6. autocast rows on the same noise
    some_rows = [1, 2, 10, 100, 1000, 3999, 4000]
    exact = dpddpm.cost_matrix(model, data, device=device, progress=False, rows=some_rows)
    for kind in ("fp16", "bf16") if device.type == "cuda" else ("bf16",):  # fp16 autocast is CUDA-only
        low = dpddpm.cost_matrix(model, data, device=device, progress=False, rows=some_rows, autocast=kind)
        a, b = entries(exact), entries(low)
        ok = np.isfinite(a)  # the computed rows' valid edges
        rel = np.abs(b[ok] - a[ok]) / (np.abs(a[ok]) + 0.01)  # +0.01 bits: entries near zero
        figures = dict(max_rel_diff=float(rel.max()), median_rel_diff=float(np.median(rel)))
        check(f"autocast_{kind}", bool(np.isfinite(b[ok]).all()), **figures)

    write("gpu_smoke", device, {"model": "digits-hybrid", "N": int(data.shape[0]), "checks": checks})
    failed = [k for k, v in checks.items() if not v["ok"]]
    if failed:
        raise SystemExit(f"failed: {failed}")


if __name__ == "__main__":
    main()
