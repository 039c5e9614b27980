"""The package's named options and argument types, in one place.

Each option is a ``Literal``, so that a type checker catches a misspelt value; the tuple next to it lists the same
values for run-time checks and error messages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, get_args

import numpy as np
import torch

VarianceKind = Literal["fixed_small", "fixed_large", "learned_range", "analytic"]
"""The model's reverse variance sigma^2 of a jump t -> s: ``"fixed_small"`` beta~_{s|t} (the true posterior's),
``"fixed_large"`` beta_{t|s}, ``"learned_range"``, interpolated in log space between the two by the network's
second output (Nichol & Dhariwal), or ``"analytic"``, beta~_{s|t} + c1^2 m_t with m_t the error of x^_0 frozen
from a selection split (the KL-optimal isotropic variance; :mod:`dpddpm.analytic`)."""
VARIANCE_KINDS: tuple[VarianceKind, ...] = get_args(VarianceKind)

Start = Literal["T", "free"]
"""Where the optimal schedule starts: at ``"T"`` (the paper's setting), or at the t_K <= T that the DP picks."""
STARTS: tuple[Start, ...] = get_args(Start)

AutocastKind = Literal["bf16", "fp16"]
Autocast = AutocastKind | None
"""Reduced precision for the network call (``None``: the network's own dtype). Costs stay float64."""
AUTOCAST_KINDS: tuple[AutocastKind, ...] = get_args(AutocastKind)

DDIMSkip = Literal["quad", "uniform"]
"""DDIM's ``--skip_type``."""

TimeInput = Literal["index", "rescaled"] | Callable[[torch.Tensor], torch.Tensor]
"""How the 1-based step t reaches the network: ``"index"`` (t - 1), ``"rescaled"`` ((t - 1) 1000 / T) or a
callable on the int tensor t."""

Schedule = Sequence[int] | np.ndarray | torch.Tensor
"""Kept times t_K > ... > t_1 = 1 (1-based), checked by :func:`dpddpm.validation.check_schedule`."""

Steps = int | torch.Tensor
"""A 1-based step t for a whole batch (an int), or one per sample (a long tensor of shape (B,))."""
