"""How :func:`dpddpm.reproduce` results read: a markdown table in the style of the paper's Table 1, a figure of
bits/dim against K, and the three files of an output folder (``results.json``, ``results.md``, ``results.png``).

A results dictionary (:meth:`dpddpm.pipeline.results.ReproduceResults.to_dict` of what :func:`dpddpm.reproduce`
returns, and what ``results.json`` holds) has, per budget K, the ``dp``, ``even`` and ``quadratic``
schedules' ``test_bpd``/``test_stderr`` and in-sample ``selection_bpd``/``selection_stderr``, the strides'
paired ``test_minus_dp``/``test_minus_dp_stderr``, the ``full`` chain of all T steps and ``timing`` in seconds;
optionally ``dp_analytic`` (the DP with analytic variances) and per-schedule ``samples`` figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from .files import atomic_write, write_json
from .grids import save_figure

KINDS = (("even", "even stride"), ("quadratic", "quadratic stride"), ("dp", "DP (test)"))


def write_results(results: dict, out_dir: str | Path) -> None:
    """``results.json``, ``results.md`` and ``results.png`` in ``out_dir``, each written atomically."""
    out_dir = Path(out_dir)
    write_json(out_dir / "results.json", results)
    write_markdown(out_dir / "results.md", markdown_table(results))
    plot(results, out_dir / "results.png")


def write_markdown(path: str | Path, text: str) -> Path:
    """Write markdown text (with a final newline) atomically."""
    data = (text.rstrip("\n") + "\n").encode()
    return atomic_write(path, lambda fh: fh.write(data))


def _cell(entry: Mapping, key: str, decimals: int) -> str:
    return f"{entry[key + '_bpd']:.{decimals}f} ± {entry[key + '_stderr']:.{decimals}f}"


def _diff(entry: Mapping, decimals: int) -> str:
    return f"{entry['test_minus_dp']:+.{decimals}f} ± {entry['test_minus_dp_stderr']:.{decimals}f}"


def _k(k: int | None) -> str:
    return "none" if k is None else f"K = {k}"


def markdown_table(results: Mapping, *, decimals: int = 4, level: int = 1) -> str:
    """Table 1 style: test bits/dim (± standard error over images) of each schedule, the DP's in-sample figure,
    the strides' paired excess over the DP, the "within gap" summary and the timings. ``level``: heading level.

    ``results``: the dictionary of :meth:`dpddpm.pipeline.results.ReproduceResults.to_dict` (``results.json``).
    """
    lines = [
        f"{'#' * level} {results['model']} ({results['variance']}): bits/dim by number of steps K (T = {results['T']})",
        "",
        f"Test ELBOs on {results['n_test']} held-out images (noise seed {results.get('test_seed', '?')}); the "
        f"DP schedules were chosen on a cost matrix of {results['n_selection']} selection images (seed "
        f"{results['seed']}; in-sample column). Errors are standard errors over images; the last two columns "
        "are paired differences on the same test images.",
        "",
        *_schedule_rows(results, decimals),
    ]
    if "dp_analytic" in results["rows"][0]:
        v = results["analytic_variances"]
        lines += [
            "",
            f"Analytic variances: sigma*^2 = beta~ + c1^2 m_t, with m_t fitted on the {v['fitted_on']['N']} "
            "selection images and frozen for every test figure; the analytic DP ran on their cost matrix.",
        ]
    if "samples" in results:
        lines += ["", *sample_table(results)]
    w = results.get("within_gap")
    if w is not None:
        k_max = max(r["K"] for r in results["rows"])
        lines += [
            "",
            f"Smallest K with the DP within {w['gap_bpd']} bits/dim of the full chain: in-sample "
            f"{_k(w['selection_any_K'])} (any K ≤ {k_max}), test {_k(w['test_listed_K'])} (of the listed K).",
        ]
    t = results["timing"]
    threads = results.get("torch_threads")
    lines += ["", f"| phase ({results['device']}, torch threads: {threads or '?'}) | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in t.items() if k.endswith("_s")]
    lines.append(
        f"\nCost matrix wall time / network-only time: {t['cost_matrix_ratio']:.3f}; "
        f"whole pipeline / all its network calls: {t['total_ratio']:.3f}\n"
    )
    return "\n".join(lines)


def _schedule_rows(results: Mapping, d: int) -> list[str]:
    """The table proper: one line per budget K (with the analytic DP's columns when it ran), then the full
    chain's line, every figure with ``d`` decimals."""
    lines = [
        "| K | even stride | quadratic stride | DP (test) | DP (in-sample) | even − DP | quadratic − DP |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    analytic = "dp_analytic" in results["rows"][0]
    if analytic:
        lines[-2] += " DP, analytic (test) | analytic − DP |"
        lines[-1] += "---:|---:|"
    for r in results["rows"]:
        lines.append(
            f"| {r['K']} | {_cell(r['even'], 'test', d)} | {_cell(r['quadratic'], 'test', d)} | "
            f"{_cell(r['dp'], 'test', d)} | {_cell(r['dp'], 'selection', d)} | {_diff(r['even'], d)} | "
            f"{_diff(r['quadratic'], d)} |"
            + (f" {_cell(r['dp_analytic'], 'test', d)} | {_diff(r['dp_analytic'], d)} |" if analytic else "")
        )
    full = results["full"]
    if full is not None:  # at K = T every schedule is the full chain
        f = _cell(full, "test", d)
        lines.append(
            f"| {full['K']} (full chain) | {f} | {f} | {f} | {_cell(full, 'selection', d)} | | |"
            + (f" {_cell(full['analytic'], 'test', d)} | |" if analytic and "analytic" in full else "")
        )
        if full.get("test_source") == "given":
            lines += ["", "The full chain's test ELBO was given (a model card's), not estimated in this run."]
    return lines


SAMPLE_KINDS = (("even", "even"), ("quadratic", "quadratic"), ("dp", "DP"), ("dp_analytic", "DP, analytic"))


def sample_table(results: dict, *, decimals: int = 2) -> list[str]:
    """Markdown lines: each schedule's sample scores (mean ± standard error over sample seeds) by K."""
    info = results["samples"]
    rows = [r for r in results["rows"] if "samples" in r["dp"]]
    keys = sorted({k for r in rows for k in r["dp"]["samples"]["ancestral"] if k != "per_seed" and "_stderr" not in k})
    lines = [
        f"Sample quality: {info['n']} samples per seed, {len(info['seeds'])} seeds; mean ± standard error over "
        "seeds. Ancestral sampling uses each schedule's own variances; DDIM (eta = 0) none. The − DP columns "
        "are paired over seeds (every schedule samples with the same seeds).",
        "",
        "| K | schedule | "
        + " | ".join([f"ancestral {k}" for k in keys] + [f"ancestral {k} − DP" for k in keys])
        + " | "
        + " | ".join([f"DDIM {k}" for k in keys] + [f"DDIM {k} − DP" for k in keys])
        + " |",
        "|---:|---|" + "---:|" * (4 * len(keys)),
    ]

    def cells(figures: Mapping | None, suffix: str = "") -> list[str]:
        """``key + suffix`` ± its standard error for each key, blank where absent; differences signed."""
        sign = "+" if suffix else ""
        out = []
        for k in keys:
            name = k + suffix
            present = figures is not None and name in figures
            value = f"{figures[name]:{sign}.{decimals}f} ± {figures[name + '_stderr']:.{decimals}f}" if present else ""
            out.append(value)
        return out

    for r in rows:
        for kind, label in SAMPLE_KINDS:
            if kind not in r or "samples" not in r[kind]:
                continue
            s = r[kind]["samples"]
            row_cells = cells(s["ancestral"]) + cells(s["ancestral"], "_minus_dp")
            row_cells += cells(s.get("ddim")) + cells(s.get("ddim"), "_minus_dp")
            lines.append(f"| {r['K']} | {label} | " + " | ".join(row_cells) + " |")
    return lines


def plot_elbo_vs_score(results: Sequence[dict], path: str | Path, *, score: str = "fid") -> None:
    """Test ELBO against a sample score (ancestral sampling), one panel per results dictionary: one marker per
    schedule family, the budget K written next to each point; error bars are the standard errors. PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.4), squeeze=False)
    for ax, res in zip(axes[0], results):
        for (kind, label), marker in zip(SAMPLE_KINDS, "osD^"):
            pts = [(r["K"], r[kind]) for r in res["rows"] if kind in r and "samples" in r[kind]]
            if not pts:
                continue
            x = [e["samples"]["ancestral"][score] for _, e in pts]
            xerr = [e["samples"]["ancestral"][score + "_stderr"] for _, e in pts]
            y = [e["test_bpd"] for _, e in pts]
            ax.errorbar(x, y, xerr=xerr, yerr=[e["test_stderr"] for _, e in pts], fmt=marker, ms=4, label=label)
            for (k, _), xi, yi in zip(pts, x, y):
                ax.annotate(str(k), (xi, yi), fontsize=6, xytext=(3, 2), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"digits {score.upper() if score == 'fid' else score} (ancestral samples)")
        ax.set_title(f"{res['model']}: ELBO against sample quality")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("test ELBO, bits/dim")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot(results: dict | Sequence[dict], path: str | Path, *, baseline: Mapping | None = None) -> None:
    """Test bits/dim against K (log-log) for the three schedule families, one panel per results dictionary;
    the DP's in-sample figure dashed, all T steps and an optional ``baseline`` (``"bpd"``) as lines. PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [results] if isinstance(results, dict) else list(results)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), sharey=True, squeeze=False)
    for ax, res in zip(axes[0], panels):
        ks = [r["K"] for r in res["rows"]]
        for kind, label in KINDS:
            yerr = [0 if math.isnan(r[kind]["test_stderr"]) else r[kind]["test_stderr"] for r in res["rows"]]
            ax.errorbar(
                ks, [r[kind]["test_bpd"] for r in res["rows"]], yerr=yerr, marker="o", ms=3, capsize=2, label=label
            )
        if "dp_analytic" in res["rows"][0]:
            yerr = [r["dp_analytic"]["test_stderr"] for r in res["rows"]]
            ys = [r["dp_analytic"]["test_bpd"] for r in res["rows"]]
            ax.errorbar(ks, ys, yerr=yerr, marker="D", ms=3, capsize=2, label="DP, analytic variances")
        ax.plot(ks, [r["dp"]["selection_bpd"] for r in res["rows"]], "k--", lw=1, label="DP (in-sample)")
        if res["full"] is not None:
            ax.axhline(res["full"]["test_bpd"], color="gray", lw=1, label=f"full chain (T = {res['T']})")
        if baseline is not None:
            ax.axhline(baseline["bpd"], color="gray", ls=":", lw=1, label=baseline.get("label", "baseline"))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("K (network calls)")
        ax.set_title(f"{res['model']} ({res['variance']})")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("test ELBO, bits/dim")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
