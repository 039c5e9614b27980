"""The package's named options and argument types, in one place.

Each option is a ``Literal``, so that a type checker catches a misspelt value; the tuple next to it lists the same
values for run-time checks and error messages. The variance kinds live with their rule, in :mod:`dpddpm.variances`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, get_args

import numpy as np
import torch

Start = Literal["T", "free"]
"""Where the optimal schedule starts: at ``"T"`` (the paper's setting), or at the t_K <= T that the DP picks."""
STARTS: tuple[Start, ...] = get_args(Start)

DDIMSkip = Literal["quad", "uniform"]
"""DDIM's ``--skip_type``."""

TimeInput = Literal["index", "rescaled"] | Callable[[torch.Tensor], torch.Tensor]
"""How the 1-based step t reaches the network: ``"index"`` (t - 1), ``"rescaled"`` ((t - 1) 1000 / T) or a
callable on the int tensor t."""

Schedule = Sequence[int] | np.ndarray | torch.Tensor
"""Kept times t_K > ... > t_1 = 1 (1-based), checked by :func:`dpddpm.validation.check_schedule`."""

Steps = int | torch.Tensor
"""A 1-based step t for a whole batch (an int), or one per sample (a long tensor of shape (B,))."""
