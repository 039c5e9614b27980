"""The paper's Table 1 pipeline on one model: even vs quadratic vs DP-optimal schedules for several budgets.

1. the cost matrix on a selection split (resumable: ``costs.npz`` in the output folder);
2. the DP over it, once, for every K up to the largest budget asked for;
3. for the even, quadratic and DP schedules of each K (and all T steps): fresh ELBOs on held-out test data, and
   the in-sample ELBO (the matrix's own value, replayed image by image for its standard error);
4. ``results.json``, ``results.md`` (a markdown table) and ``results.png`` (bits/dim against K).

Every standard error is over images, of each image's total. The three schedules of one K share their images
and (on the test split) their noise seed, so their differences carry paired standard errors (``*_vs_dp``).

Every phase is timed, and so are the network's forward calls alone ("network floor"), so the overhead of the
cost-matrix computation over its T * N network calls can be reported as a ratio.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .costs import cost_matrix
from .dp import optimal_schedules, schedule_bpd
from .evaluate import ELBOEstimate, elbo, in_sample_elbo
from .model import DDPM, resolve_device
from .strides import even_schedule, quadratic_schedule

DEFAULT_STEPS = (8, 16, 32, 64, 128, 256)


class NetTimer:
    """Accumulates the wall time of ``module``'s forward calls (synchronizing CUDA around each call).

    Use as a context manager; ``seconds`` is the total and ``calls`` the number of forward calls.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.module, self.seconds, self.calls = module, 0.0, 0
        self._start = 0.0
        self._handles: list = []

    def _sync(self, tensors) -> None:
        for x in tensors:
            if isinstance(x, torch.Tensor) and x.is_cuda:
                torch.cuda.synchronize(x.device)
                return

    def _pre(self, module, args) -> None:
        self._sync(args)
        self._start = time.perf_counter()

    def _post(self, module, args, output) -> None:
        self._sync(args)
        self.seconds += time.perf_counter() - self._start
        self.calls += 1

    def __enter__(self) -> "NetTimer":
        self._handles = [self.module.register_forward_pre_hook(self._pre),
                         self.module.register_forward_hook(self._post)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()


def budgets(T: int, steps: Sequence[int] | None = None) -> list[int]:
    """The budgets K to compare: ``steps`` (each 2 <= K <= T), or the powers of two 8..256 that fit T."""
    if steps is None:
        return [k for k in DEFAULT_STEPS if k <= T] or [min(T, 2)]
    out = sorted({int(k) for k in steps})
    bad = [k for k in out if k < 2 or k > T]
    if bad:
        raise ValueError(f"steps must satisfy 2 <= K <= T = {T}, got {bad}")
    return out


def reproduce(
    model: DDPM,
    selection: torch.Tensor,
    test: torch.Tensor,
    out_dir: str | Path,
    *,
    steps: Sequence[int] | None = None,
    skip_full: bool = False,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    resume: bool = False,
    seed: int = 0,
    progress: bool = True,
    name: str = "model",
) -> dict:
    """Run the pipeline and write ``results.json``, ``results.md`` and ``results.png`` into ``out_dir``.

    Args:
        model: the DDPM.
        selection: (N_sel, *data_shape) in [-1, 1]: the data the cost matrix (and so the DP) sees.
        test: (N_test, *data_shape) in [-1, 1]: held-out data for the fresh ELBOs.
        steps: the budgets K (default powers of two 8..256 up to T).
        skip_full: skip the ELBO of all T steps (T network calls per test point).
        resume: continue the cost matrix from ``out_dir/costs.npz``.
    Returns:
        the results dictionary that is also written as JSON (bits/dim, stderr, schedules, timings in seconds).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(model, device)
    model = model.to(device)
    T = model.T
    Ks = budgets(T, steps)
    timing: dict[str, float] = {}
    start = time.perf_counter()
    with NetTimer(model.net) as whole:  # every network call of the pipeline: its floor
        t0 = time.perf_counter()
        with NetTimer(model.net) as net:
            costs = cost_matrix(model, selection, batch_size=batch_size, device=device, progress=progress,
                                seed=seed, checkpoint=out_dir / "costs.npz", resume=resume)
        timing["cost_matrix_s"] = time.perf_counter() - t0
        timing["cost_matrix_network_s"] = net.seconds
        timing["cost_matrix_network_calls"] = net.calls
        timing["cost_matrix_ratio"] = timing["cost_matrix_s"] / net.seconds if net.seconds > 0 else float("nan")

        t0 = time.perf_counter()
        best = optimal_schedules(costs, max(Ks))
        timing["dp_s"] = time.perf_counter() - t0

        rows = []
        t0 = time.perf_counter()
        for i, K in enumerate(Ks):
            row: dict = {"K": K}
            found: dict[str, tuple[ELBOEstimate, ELBOEstimate]] = {}
            for kind, sched in (("dp", best.schedule(K)), ("even", even_schedule(T, K)),
                                ("quadratic", quadratic_schedule(T, K))):
                test_est = elbo(model, test, sched, batch_size=batch_size, device=device, seed=seed + 1 + i)
                sel_est = in_sample_elbo(model, selection, costs, sched, batch_size=batch_size, device=device)
                found[kind] = (test_est, sel_est)
                row[kind] = {"schedule": [int(t) for t in sched], **_entry(test_est, sel_est, costs)}
                if kind != "dp":
                    row[kind].update(_paired(test_est, sel_est, *found["dp"]))
            rows.append(row)
        timing["elbo_s"] = time.perf_counter() - t0

        full = None
        if not skip_full:
            t0 = time.perf_counter()
            all_steps = np.arange(T, 0, -1)
            test_est = elbo(model, test, all_steps, batch_size=batch_size, device=device, seed=seed + 1000,
                            progress=progress)
            sel_est = in_sample_elbo(model, selection, costs, all_steps, batch_size=batch_size, device=device,
                                     progress=progress)
            full = {"K": T, **_entry(test_est, sel_est, costs)}
            timing["full_elbo_s"] = time.perf_counter() - t0
    timing["total_s"] = time.perf_counter() - start
    timing["total_network_s"] = whole.seconds
    timing["total_ratio"] = timing["total_s"] / whole.seconds if whole.seconds > 0 else float("nan")

    results = {
        "model": name, "T": T, "variance": model.variance, "device": _device_name(device),
        "n_selection": int(selection.shape[0]), "n_test": int(test.shape[0]), "seed": int(seed),
        "rows": rows, "full": full, "timing": timing,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    (out_dir / "results.md").write_text(markdown_table(results))
    plot(results, out_dir / "results.png")
    return results


def _entry(test_est: ELBOEstimate, sel_est: ELBOEstimate, costs) -> dict:
    """One schedule's figures: held-out and in-sample bits/dim with per-image standard errors."""
    return {"test_bpd": test_est.bpd, "test_stderr": test_est.stderr,
            "selection_bpd": schedule_bpd(costs, sel_est.schedule), "selection_stderr": sel_est.stderr}


def _paired(test_est: ELBOEstimate, sel_est: ELBOEstimate, dp_test: ELBOEstimate, dp_sel: ELBOEstimate) -> dict:
    """A stride minus the DP on the same images: the difference and its paired standard error."""
    return {"test_minus_dp": test_est.bpd - dp_test.bpd, "test_minus_dp_stderr": test_est.paired_stderr(dp_test),
            "selection_minus_dp": sel_est.bpd - dp_sel.bpd,
            "selection_minus_dp_stderr": sel_est.paired_stderr(dp_sel)}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def _fmt(entry: dict, key: str = "test") -> str:
    return f"{entry[key + '_bpd']:.4f} ± {entry[key + '_stderr']:.4f}"


def markdown_table(results: dict) -> str:
    """Table 1 style: test-set bits/dim (± standard error) of each schedule, and the DP's in-sample figure."""
    lines = [f"# {results['model']}: bits/dim by number of steps K (T = {results['T']})", "",
             f"Test ELBOs on {results['n_test']} held-out images; the DP schedules were chosen on "
             f"{results['n_selection']} selection images (in-sample column). Errors are standard errors over "
             f"images; the last two columns are paired differences on the same test images.", "",
             "| K | even | quadratic | DP (test) | DP (in-sample) | even − DP | quadratic − DP |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["rows"]:
        diffs = " | ".join(f"{r[k]['test_minus_dp']:+.4f} ± {r[k]['test_minus_dp_stderr']:.4f}"
                           for k in ("even", "quadratic"))
        lines.append(f"| {r['K']} | {_fmt(r['even'])} | {_fmt(r['quadratic'])} | {_fmt(r['dp'])} | "
                     f"{_fmt(r['dp'], 'selection')} | {diffs} |")
    if results["full"] is not None:
        f = results["full"]
        lines.append(f"| {f['K']} (all) | {_fmt(f)} | | | {_fmt(f, 'selection')} | | |")
    t = results["timing"]
    lines += ["", "| phase | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in t.items() if k.endswith("_s")]
    lines.append(f"\nCost matrix wall time / network-only time: {t['cost_matrix_ratio']:.3f}; "
                 f"whole pipeline / all its network calls: {t['total_ratio']:.3f}\n")
    return "\n".join(lines)


def plot(results: dict, path: str | Path) -> None:
    """Test bits/dim against K (log2 axis) for the three schedule families; full-T ELBO as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Ks = [r["K"] for r in results["rows"]]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for kind, label in (("even", "even stride"), ("quadratic", "quadratic stride"), ("dp", "DP (ours)")):
        y = [r[kind]["test_bpd"] for r in results["rows"]]
        e = [r[kind]["test_stderr"] for r in results["rows"]]
        ax.errorbar(Ks, y, yerr=[0 if math.isnan(v) else v for v in e], marker="o", label=label, capsize=2)
    if results["full"] is not None:
        ax.axhline(results["full"]["test_bpd"], color="k", ls="--", lw=1, label=f"all T = {results['T']}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("steps K")
    ax.set_ylabel("test ELBO (bits/dim)")
    ax.set_title(results["model"])
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
