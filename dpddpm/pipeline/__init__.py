"""The Table 1 pipeline behind :func:`dpddpm.reproduce`, in parts: what it is asked (:mod:`.options`), what its
phases read (:mod:`.run`), what it runs (:mod:`.phases`, :mod:`.samples`) and what it finds (:mod:`.results`)."""

from .options import DEFAULT_STEPS, GAP_BPD, SAMPLE_SEEDS, ReproduceOptions, SampleScore, budgets
from .phases import smallest_k_within
from .results import (
    BudgetRow,
    FullChain,
    PairedDifference,
    ReproduceResults,
    SamplerFigures,
    SampleSettings,
    ScheduleFigures,
    Timing,
    WithinGap,
)

__all__ = [
    "DEFAULT_STEPS",
    "GAP_BPD",
    "SAMPLE_SEEDS",
    "BudgetRow",
    "FullChain",
    "PairedDifference",
    "ReproduceOptions",
    "ReproduceResults",
    "SampleScore",
    "SampleSettings",
    "SamplerFigures",
    "ScheduleFigures",
    "Timing",
    "WithinGap",
    "budgets",
    "smallest_k_within",
]
