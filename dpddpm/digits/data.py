"""scikit-learn's 8x8 digits as a DDPM data set: scaling, the fixed split, and a simple baseline.

The 1797 images have integer values 0..16 (17 levels). We scale them to [-1, 1] as ``x / 8 - 1`` and shape
them (N, 1, 8, 8). The split is a permutation of the image indices drawn by ``numpy.random.default_rng(0)``:
the first 1197 are "train", the next 300 "selection" (checkpoint and schedule selection), the last 300 "test".
Nothing is downloaded: the data ship with scikit-learn.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from ..baselines import categorical_bpd
from ..stats import sem

NUM_BINS = 17
DATA_SHAPE = (1, 8, 8)
SPLIT_SEED = 0
SPLIT_SIZES = {"train": 1197, "selection": 300, "test": 300}
SPLITS = tuple(SPLIT_SIZES)


@lru_cache(maxsize=1)
def _scaled_images() -> np.ndarray:
    """All 1797 images, float32 (1797, 1, 8, 8) in [-1, 1], in scikit-learn's order."""
    from sklearn.datasets import load_digits

    x = load_digits().images.astype(np.float32)  # (1797, 8, 8), integer values 0..16
    return (x / 8.0 - 1.0)[:, None]


@lru_cache(maxsize=1)
def split_indices() -> dict[str, np.ndarray]:
    """Indices into scikit-learn's order for each split (a seeded permutation; disjoint, covering all)."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(_scaled_images()))
    out, start = {}, 0
    for name, size in SPLIT_SIZES.items():
        out[name] = np.sort(perm[start : start + size])
        start += size
    assert start == len(perm)
    return out


def digits_split(name: str) -> torch.Tensor:
    """One split as a float32 tensor (N, 1, 8, 8) in [-1, 1]: "train" (1197), "selection" (300), "test" (300)."""
    if name not in SPLIT_SIZES:
        raise ValueError(f"unknown digits split {name!r}; known: {', '.join(SPLITS)}")
    return torch.from_numpy(_scaled_images()[split_indices()[name]].copy())


@lru_cache(maxsize=1)
def _labels() -> np.ndarray:
    """The digit (0..9) of each of the 1797 images, int64 (1797,), in scikit-learn's order."""
    from sklearn.datasets import load_digits

    return load_digits().target.astype(np.int64)


def digits_labels(name: str) -> torch.Tensor:
    """The digits (0..9) of one split as an int64 tensor (N,), in the same order as ``digits_split(name)``."""
    if name not in SPLIT_SIZES:
        raise ValueError(f"unknown digits split {name!r}; known: {', '.join(SPLITS)}")
    return torch.from_numpy(_labels()[split_indices()[name]].copy())


def to_levels(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] data -> integer levels 0..16 (long), same shape."""
    return torch.round((x.double() + 1.0) * (NUM_BINS - 1) / 2.0).long()


def categorical_baseline_bpd(train: torch.Tensor, test: torch.Tensor) -> tuple[float, float]:
    """A per-pixel independent categorical model fit on ``train`` with add-one smoothing, scored on ``test``.

    train, test: float (N, 1, 8, 8) in [-1, 1] on the 17 levels. Returns (bits/dim, standard error over test
    images): -log2 p(x) averaged over the 64 dimensions (:func:`dpddpm.baselines.categorical_bpd`).
    """
    per_image = categorical_bpd(to_levels(train).numpy(), to_levels(test).numpy(), NUM_BINS)  # (N_test,)
    return float(per_image.mean()), sem(per_image)
