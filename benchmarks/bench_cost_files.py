"""Cost files at T = 4000: format 3 (byte planes, deflated, error bars in float32) against format 2 (float64).

For both bundled digits models, a full cost matrix on 32 selection images is written in both formats (format 2 as
dpddpm 0.2 wrote it: the computed rows' float64 entries, uncompressed) and read back; the sizes, the write and
read times (best of 3), and what the round trip changes (costs: nothing; standard errors: float32 rounding).
Target (issue 21): format 3 at most half the size of format 2. Usage: python benchmarks/bench_cost_files.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import write

import dpddpm


def format2_arrays(costs: dpddpm.CostMatrix) -> dict[str, np.ndarray]:
    """The arrays of a format-2 file of ``costs``."""
    rows = np.flatnonzero(costs.rows_done[2:]) + 2
    arrays = {
        "rows": rows,
        "kl_packed": np.concatenate([costs.kl[t, 1:t] for t in rows]),
        "stderr_packed": np.concatenate([costs.stderr[t, 1:t] for t in rows]),
    }
    for name in ("decoder", "prior", "counts", "decoder_stderr", "prior_stderr", "mse", "mse_stderr"):
        arrays[name] = getattr(costs, name)
    arrays["meta"] = np.array(costs.info.to_json(format_version=2))
    return arrays


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    out: dict = {"T": 4000, "N": 32, "torch_threads": torch.get_num_threads(), "models": {}}
    with tempfile.TemporaryDirectory() as folder:
        v2, v3 = Path(folder) / "v2.npz", Path(folder) / "v3.npz"
        for name in ("digits-simple", "digits-hybrid"):
            model = dpddpm.load_pretrained(name)
            costs = dpddpm.cost_matrix(model, dpddpm.digits_split("selection")[:32], progress=False)
            write_v2 = best_of(lambda c=costs: np.savez(v2, **format2_arrays(c)))
            write_v3 = best_of(lambda c=costs: c.save(v3))
            read_v2, read_v3 = best_of(lambda: dpddpm.CostMatrix.load(v2)), best_of(lambda: dpddpm.CostMatrix.load(v3))
            back = dpddpm.CostMatrix.load(v3)
            valid = np.isfinite(costs.stderr)
            rel = np.abs(back.stderr[valid] - costs.stderr[valid]) / costs.stderr[valid]
            out["models"][name] = {
                "format2_bytes": v2.stat().st_size,
                "format3_bytes": v3.stat().st_size,
                "size_ratio": v3.stat().st_size / v2.stat().st_size,
                "write_s": {"format2": write_v2, "format3": write_v3},
                "read_s": {"format2": read_v2, "format3": read_v3},
                "kl_bitwise_equal": bool(np.array_equal(back.kl, costs.kl, equal_nan=True)),
                "mse_bitwise_equal": bool(np.array_equal(back.mse, costs.mse, equal_nan=True)),
                "stderr_max_relative_change": float(rel.max()),
            }
            print(name, out["models"][name])
    write("bench_cost_files", torch.device("cpu"), out)


if __name__ == "__main__":
    main()
