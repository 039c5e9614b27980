"""Input checks shared by every entry point, so errors are clear and raised before expensive work."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .types import Schedule


def check_int(value: Any, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int, if it is an integer (Python or numpy, not a bool, not a float) in [low, high].

    A float such as 2.7, or even 3.0, is refused rather than truncated: a count read from a file or passed by
    a caller must be what it says.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else (f"<= {high}" if low is None else f"in {low}..{high}")
        raise ValueError(f"{name} must be {bounds}, got {value}")
    return value


def check_batch_size(batch_size: Any) -> int:
    """The one check of a batch size, for every command and API entry point: an integer >= 1."""
    return check_int(batch_size, "batch_size", low=1)


#: seeds are integers in [0, 2**63): what every torch generator accepts
MAX_SEED = 2**63 - 1


def check_seed(seed: Any) -> int:
    """A noise seed: an integer in 0 .. 2**63 - 1."""
    return check_int(seed, "seed", low=0, high=MAX_SEED)


def check_seconds(value: Any, name: str) -> float:
    """A finite, non-negative number of seconds (e.g. a checkpoint interval)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(float(value)) or value < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value}")
    return float(value)


def check_budget(K: int, T: int) -> int:
    """K network calls (decoder included) must satisfy 2 <= K <= T."""
    if int(K) != K:
        raise ValueError(f"the number of steps K must be an integer, got {K!r}")
    K = int(K)
    if K < 2 or K > T:
        raise ValueError(f"the number of steps K must satisfy 2 <= K <= T = {T}, got K = {K}")
    return K


def check_schedule(schedule: Schedule, T: int) -> np.ndarray:
    """Return ``schedule`` as an int64 array after checking it is t_K > ... > t_1 = 1 with t_K <= T."""
    if isinstance(schedule, torch.Tensor):
        schedule = schedule.detach().cpu().numpy()
    try:
        arr = np.asarray(schedule)
    except (OverflowError, ValueError, TypeError):
        raise ValueError("a schedule must be a 1-D sequence of integer times") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"schedule times must be integers that fit in 64 bits, got {arr.tolist()!r:.200}")
    if arr.ndim != 1:
        raise ValueError(f"a schedule must be a 1-D sequence of times, got shape {arr.shape}")
    if arr.size < 2:
        raise ValueError(f"a schedule needs at least 2 steps (K >= 2), got {arr.tolist()}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)) or np.any(np.abs(arr) > 2.0**62):
            raise ValueError(f"schedule times must be integers, got {arr.tolist()}")
    arr = arr.astype(np.int64)
    if np.any(np.diff(arr) >= 0):
        raise ValueError(f"a schedule must be strictly decreasing (t_K > ... > t_1 = 1), got {arr.tolist()}")
    if arr[-1] != 1:
        raise ValueError(f"a schedule must end at t_1 = 1 (the decoder step), got last time {arr[-1]}")
    if arr[0] > T:
        raise ValueError(f"a schedule cannot start above T = {T}, got t_K = {arr[0]}")
    return arr


GRID_TOLERANCE = 1e-3  # in units of one level: float32 images sit within ~1e-5 of their level


def check_data(data: torch.Tensor, data_shape: Sequence[int], num_bins: int) -> torch.Tensor:
    """Data must be a tensor of shape (N, *data_shape) with values on the ``num_bins`` levels of [-1, 1].

    The levels are -1 + 2 k / (num_bins - 1), k = 0 .. num_bins - 1. Data off that grid (e.g. images scaled to
    [0, 1] or dequantized) give a wrong decoder term without any other sign, so they are refused; data that
    never go below 0 are probably in [0, 1] and draw a warning.
    """
    if not isinstance(data, torch.Tensor):
        data = torch.as_tensor(np.asarray(data))
    if tuple(data.shape[1:]) != tuple(data_shape) or data.ndim != len(data_shape) + 1:
        raise ValueError(f"data must have shape (N, {', '.join(map(str, data_shape))}), got {tuple(data.shape)}")
    if data.shape[0] == 0:
        raise ValueError("data is empty (N = 0)")
    if not torch.isfinite(data).all():
        raise ValueError("data contains NaN or Inf")
    lo, hi = float(data.min()), float(data.max())
    if lo < -1 - 1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"data must be scaled to [-1, 1] ({num_bins} levels), got values in [{lo:.4g}, {hi:.4g}]")
    levels = (data.detach().double() + 1.0) * ((num_bins - 1) / 2.0)
    off = float((levels - levels.round()).abs().max())
    if off > GRID_TOLERANCE:
        raise ValueError(
            f"data are not on the model's grid of {num_bins} levels in [-1, 1] (-1 + 2k/{num_bins - 1}): a value lies "
            f"{off:.3g} of a level away from the nearest one; 8-bit images must be scaled as x / 127.5 - 1"
            + (", and 17-level digits as x / 8 - 1" if num_bins == 17 else "")
        )
    if lo >= 0 and data.numel() > 1:
        warnings.warn(
            f"no data value lies below 0 (range [{lo:.4g}, {hi:.4g}]): are the data scaled to [0, 1] "
            f"instead of [-1, 1]?",
            UserWarning,
            stacklevel=3,
        )
    return data


def check_finite(tensor: torch.Tensor, what: str) -> None:
    """Raise if ``tensor`` holds NaN or Inf, naming what it is."""
    # one pass: a NaN or Inf anywhere makes the sum NaN or Inf; only then (or on an overflowing sum) look closer
    if tensor.is_floating_point() and math.isfinite(float(tensor.sum())):
        return
    if not torch.isfinite(tensor).all():
        bad = (~torch.isfinite(tensor)).sum().item()
        raise FloatingPointError(f"{what} contains {bad} NaN/Inf value(s)")
