"""What the Table 1 pipeline found, typed: :class:`ReproduceResults` and its parts.

Every ELBO figure is in bits/dim and every time in seconds. :meth:`ReproduceResults.to_dict` is the one place
where the results become the plain dictionary that ``results.json`` holds and :mod:`dpddpm.report` reads; the
ELBO estimates behind the figures (per-image values, kept for paired differences) are never serialized.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .._version import __version__
from ..analytic import AnalyticVariances
from ..evaluate import ELBOEstimate
from ..stats import sem

#: the schedule families of a budget row, in the order of a row's dictionary
KINDS = ("dp", "even", "quadratic", "dp_analytic")


@dataclass
class PairedDifference:
    """A schedule's ELBO minus the DP's on the same images and noise (bits/dim), with the standard errors of the
    per-image differences (the images' shared spread cancels)."""

    test: float
    test_stderr: float
    selection: float
    selection_stderr: float

    @classmethod
    def between(
        cls, mine: tuple[ELBOEstimate, ELBOEstimate], dp: tuple[ELBOEstimate, ELBOEstimate]
    ) -> PairedDifference:
        """From the (test, in-sample) estimates of a schedule and of the DP's schedule."""
        (test, sel), (dp_test, dp_sel) = mine, dp
        return cls(test.bpd - dp_test.bpd, test.paired_stderr(dp_test), sel.bpd - dp_sel.bpd, sel.paired_stderr(dp_sel))

    def to_dict(self) -> dict[str, float]:
        """The ``*_minus_dp`` entries of a schedule's figures."""
        return {
            "test_minus_dp": self.test,
            "test_minus_dp_stderr": self.test_stderr,
            "selection_minus_dp": self.selection,
            "selection_minus_dp_stderr": self.selection_stderr,
        }


@dataclass
class SamplerFigures:
    """One sampler's scores of one schedule's samples, one value per sample seed (in the order of the seeds).

    Attributes:
        per_seed: score name -> its value for each seed.
        minus_dp: score name -> this schedule's value minus the DP schedule's, seed by seed (the seed is the unit
            of the paired standard error: every schedule samples with the same seeds); empty for the DP itself.
    """

    per_seed: dict[str, list[float]]
    minus_dp: dict[str, list[float]] = field(default_factory=dict)

    def pair_with(self, dp: SamplerFigures) -> None:
        """Record the per-seed differences to the DP's figures for every score both have."""
        self.minus_dp = {
            key: (np.asarray(values) - np.asarray(dp.per_seed[key])).tolist()
            for key, values in self.per_seed.items()
            if key in dp.per_seed
        }

    def to_dict(self) -> dict[str, Any]:
        """Each score's mean over seeds, then their standard errors over seeds, the per-seed values, and each
        paired difference to the DP with its standard error."""
        out: dict[str, Any] = {k: float(np.mean(v)) for k, v in self.per_seed.items()}
        out.update({f"{k}_stderr": sem(v) for k, v in self.per_seed.items()})
        out["per_seed"] = self.per_seed
        for key, diff in self.minus_dp.items():
            out[f"{key}_minus_dp"] = float(np.mean(diff))
            out[f"{key}_minus_dp_stderr"] = sem(diff)
        return out


@dataclass
class ScheduleFigures:
    """One schedule's figures: held-out and in-sample ELBOs with standard errors over images (bits/dim).

    Attributes:
        schedule: the kept times t_K > ... > t_1 = 1 (1-based), K of them.
        test_bpd, test_stderr: the fresh ELBO on the test images (noise seed ``seed + 1``).
        selection_bpd, selection_stderr: the in-sample ELBO, the cost matrix's own value and its error replayed
            image by image.
        minus_dp: the paired difference to the DP schedule of the same budget (None for the DP itself).
        samples: sampler (``"ancestral"``, ``"ddim"``) -> sample-quality figures, when samples were scored.
        estimates: the (test, in-sample) estimates behind the figures, for paired differences; not serialized.
    """

    schedule: tuple[int, ...]
    test_bpd: float
    test_stderr: float
    selection_bpd: float
    selection_stderr: float
    minus_dp: PairedDifference | None = None
    samples: dict[str, SamplerFigures] | None = None
    estimates: tuple[ELBOEstimate, ELBOEstimate] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The schedule, its figures, then the paired differences and sample figures where there are any."""
        out: dict[str, Any] = {
            "schedule": list(self.schedule),
            "test_bpd": self.test_bpd,
            "test_stderr": self.test_stderr,
            "selection_bpd": self.selection_bpd,
            "selection_stderr": self.selection_stderr,
        }
        if self.minus_dp is not None:
            out.update(self.minus_dp.to_dict())
        if self.samples is not None:
            out["samples"] = {name: figures.to_dict() for name, figures in self.samples.items()}
        return out


@dataclass
class BudgetRow:
    """The schedules of one budget K: the DP's, the even and quadratic strides', and optionally the DP's on the
    analytic-variance matrix (``dp_analytic``, evaluated with the frozen variances)."""

    K: int
    dp: ScheduleFigures
    even: ScheduleFigures
    quadratic: ScheduleFigures
    dp_analytic: ScheduleFigures | None = None

    def schedules(self) -> dict[str, ScheduleFigures]:
        """Family name -> figures, for the families this row has, in :data:`KINDS` order."""
        return {kind: getattr(self, kind) for kind in KINDS if getattr(self, kind) is not None}

    def to_dict(self) -> dict[str, Any]:
        """``K``, then each family's figures under its name."""
        return {"K": self.K, **{kind: figures.to_dict() for kind, figures in self.schedules().items()}}


@dataclass
class FullChain:
    """All T steps: the test ELBO (estimated fresh, ``test_source="fresh"``, or given, ``"given"``) and the
    in-sample ELBO, in bits/dim; ``analytic``: the same with the frozen analytic variances."""

    K: int
    test_bpd: float
    test_stderr: float
    test_source: str
    selection_bpd: float
    selection_stderr: float
    analytic: FullChain | None = None

    def to_dict(self) -> dict[str, Any]:
        """The figures, with ``analytic`` only when the analytic chain ran."""
        out = asdict(self)
        out.pop("analytic")
        if self.analytic is not None:
            out["analytic"] = self.analytic.to_dict()
        return out


@dataclass
class WithinGap:
    """The smallest budget whose DP schedule is within ``gap_bpd`` bits/dim of all T steps (None: none is):
    in-sample over every K up to the largest budget, in-sample over the listed budgets, and on the test images
    over the listed budgets."""

    gap_bpd: float
    selection_any_K: int | None
    selection_listed_K: int | None
    test_listed_K: int | None


@dataclass
class Timing:
    """Wall-clock seconds of each phase, and of the network's forward calls alone (its floor).

    ``analytic_s``, ``samples_s`` and ``full_elbo_s`` are None when the phase did not run.
    """

    cost_matrix_s: float = math.nan
    cost_matrix_network_s: float = math.nan
    cost_matrix_network_calls: int = 0
    dp_s: float = math.nan
    elbo_s: float = math.nan
    analytic_s: float | None = None
    samples_s: float | None = None
    full_elbo_s: float | None = None
    total_s: float = math.nan
    total_network_s: float = math.nan

    @property
    def cost_matrix_ratio(self) -> float:
        """The cost matrix's wall time over its network calls' (NaN when the network took no time)."""
        return _ratio(self.cost_matrix_s, self.cost_matrix_network_s)

    @property
    def total_ratio(self) -> float:
        """The whole pipeline's wall time over all its network calls' (NaN when the network took no time)."""
        return _ratio(self.total_s, self.total_network_s)

    def to_dict(self) -> dict[str, float]:
        """The phases that ran, in order, with each ratio after the times it is made of."""
        head = ("cost_matrix_s", "cost_matrix_network_s", "cost_matrix_network_calls")
        phases = ("dp_s", "elbo_s", "analytic_s", "samples_s", "full_elbo_s", "total_s", "total_network_s")
        out = {name: getattr(self, name) for name in head}
        out["cost_matrix_ratio"] = self.cost_matrix_ratio
        out.update({name: getattr(self, name) for name in phases if getattr(self, name) is not None})
        out["total_ratio"] = self.total_ratio
        return out


def _ratio(wall: float, network: float) -> float:
    return wall / network if network > 0 else float("nan")


@dataclass
class SampleSettings:
    """How sample quality was measured: ``n`` samples per seed, for each seed of ``seeds``."""

    n: int
    seeds: tuple[int, ...]


@dataclass
class ReproduceResults:
    """Everything :func:`dpddpm.reproduce` found on one model.

    Attributes:
        model, T, variance: the model's name, number of steps and variance kind.
        device, torch_threads: where it ran.
        n_selection, n_test: images in the selection (cost matrix) and test sets.
        seed, test_seed: the cost matrix's noise seed and the test ELBOs' (``seed + 1``).
        batch_size, test_batch_size: network inputs per call of the matrix and in-sample ELBOs, and of the test
            ELBOs.
        rows: one :class:`BudgetRow` per budget K, ascending.
        full: all T steps (None when skipped); within_gap: the "smallest K within gap" summary (None likewise).
        timing: seconds per phase.
        analytic_variances: the frozen analytic variances fitted on the selection images (None without
            ``analytic``); the results file keeps only a summary of them.
        samples: how sample quality was measured (None when it was not).
        dpddpm_version: the version that made these numbers.
    """

    model: str
    T: int
    variance: str
    device: str
    torch_threads: int
    n_selection: int
    n_test: int
    seed: int
    test_seed: int
    batch_size: int
    test_batch_size: int
    rows: list[BudgetRow]
    full: FullChain | None
    within_gap: WithinGap | None
    timing: Timing
    analytic_variances: AnalyticVariances | None = None
    samples: SampleSettings | None = None
    dpddpm_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        """The plain dictionary of ``results.json`` (and of :mod:`dpddpm.report`): numbers, strings, lists."""
        out: dict[str, Any] = {"dpddpm_version": self.dpddpm_version}
        for name in ("model", "T", "variance", "device", "torch_threads", "n_selection", "n_test", "seed"):
            out[name] = getattr(self, name)
        out.update(test_seed=self.test_seed, batch_size=self.batch_size, test_batch_size=self.test_batch_size)
        out["rows"] = [row.to_dict() for row in self.rows]
        out["full"] = None if self.full is None else self.full.to_dict()
        out["within_gap"] = None if self.within_gap is None else asdict(self.within_gap)
        out["timing"] = self.timing.to_dict()
        if self.analytic_variances is not None:
            out["analytic_variances"] = variances_summary(self.analytic_variances)
        if self.samples is not None:
            out["samples"] = {"n": self.samples.n, "seeds": list(self.samples.seeds)}
        return out

    def __getitem__(self, key: str) -> Any:
        """Dictionary-style reading, ``results["rows"]``: the entry ``key`` of :meth:`to_dict`."""
        return self.to_dict()[key]


def variances_summary(variances: AnalyticVariances) -> dict[str, Any]:
    """Where the frozen variances came from and a few values of m_t (not the whole curve)."""
    T = variances.T
    ts = sorted({1, 2, 10, 100, T // 4, T // 2, T})
    return {
        "fitted_on": variances.info.as_dict(),
        "fingerprint": variances.fingerprint(),
        "decoder_log_variance": variances.decoder_log_variance,
        "mse_at": {str(t): float(variances.mse[t]) for t in ts if 1 <= t <= T},
    }
