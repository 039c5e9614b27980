#!/usr/bin/env bash
# The prepared GPU run (7.5 minutes on one H100, measured 2026-11-27, before bench_cost_overhead's ~1 minute was added): CUDA correctness first, then every performance target
# that needs an accelerator.
# Run from the repository root on a machine with CUDA and PyTorch:   bash benchmarks/gpu_check.sh
# Results go to benchmarks/results/<name>_<gpu>.json; when $OUT is set, each is copied there as soon as its
# step ends, so a run cut short still returns what it finished.
set -uo pipefail
cd "$(dirname "$0")"
export PYTHONPATH="$PWD/..:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}
status=0
step() {
    echo "=== $* ($(date -u +%T))"
    python3 "$@" || status=1
    if [ -n "${OUT:-}" ]; then cp results/*.json "$OUT"/ 2>/dev/null; fi
}
# CUDA against the CPU and against itself: network, cost matrix replay, shards, ELBOs, sampling, autocast
step gpu_smoke.py --device "$DEVICE"
# DP: T = 4000, every K <= 1024 (target < 0.2 s on an H100)
step bench_dp.py --device "$DEVICE" --max-steps 1024
# the bundled digits-hybrid model's full cost matrix (N = 300) and its network calls alone
step bench_digits.py --device "$DEVICE"
# both digits models' full cost matrices against their network, inside the run too (issue 21: target <= 2 on a GPU)
step bench_cost_overhead.py --device "$DEVICE" --repeats 2
# cost matrix vs network-only, CIFAR-10 architecture, N = 256, 400 evenly spread rows of T = 4000 (target <= 1.10)
step bench_costs.py --device "$DEVICE" --rows 400 --n 256 --batch-size 512
# same with bf16 autocast (its effect on ELBOs is measured next)
step bench_costs.py --device "$DEVICE" --rows 400 --n 256 --batch-size 512 --autocast bf16
# bf16's effect on schedule ELBOs (rule: use it only if < 0.01 bits/dim)
step bench_bf16.py --device "$DEVICE"
# the whole reproduce pipeline vs its network floor (target <= 1.2), CIFAR-10 architecture
step bench_reproduce.py --device "$DEVICE" --n-selection 64 --n-test 64 --skip-full
exit $status
