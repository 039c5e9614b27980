#!/usr/bin/env bash
# The prepared GPU run (about 5 minutes on one H100): every performance target that needs an accelerator.
# Run from the repository root on a machine with CUDA and PyTorch:   bash benchmarks/gpu_check.sh
# Results go to benchmarks/results/<name>_<gpu>.json (and are copied to $OUT when that is set).
set -uo pipefail
cd "$(dirname "$0")"
export PYTHONPATH="$PWD/..:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}
status=0
# DP: T = 4000, every K <= 1024 (target < 0.2 s on an H100)
python3 bench_dp.py --device "$DEVICE" --max-steps 1024 || status=1
# cost matrix vs network-only, CIFAR-10 architecture, N = 256, 400 evenly spread rows of T = 4000 (target <= 1.10)
python3 bench_costs.py --device "$DEVICE" --rows 400 --n 256 --batch-size 512 || status=1
# same with bf16 autocast (its effect on ELBOs is measured next)
python3 bench_costs.py --device "$DEVICE" --rows 400 --n 256 --batch-size 512 --autocast bf16 || status=1
# bf16's effect on schedule ELBOs (rule: use it only if < 0.01 bits/dim)
python3 bench_bf16.py --device "$DEVICE" || status=1
# the whole reproduce pipeline vs its network floor (target <= 1.2), CIFAR-10 architecture
python3 bench_reproduce.py --device "$DEVICE" --n-selection 64 --n-test 64 --skip-full || status=1
if [ -n "${OUT:-}" ]; then cp results/*.json "$OUT"/; fi
exit $status
