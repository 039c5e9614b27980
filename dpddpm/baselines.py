"""The simplest likelihood baseline of image data: every dimension an independent categorical over its levels.

One function for both bundled data sets: the digits (17 levels, :func:`dpddpm.digits.data.categorical_baseline_bpd`)
and the tiny photographs (256 levels, :func:`dpddpm.photos.baselines.categorical_bpd`). Each dimension's
categorical is fitted by counting the training images with add-one (Laplace) smoothing,
p_d(k) = (count_d(k) + 1) / (N + num_bins), and a test image costs -log2 p(x) averaged over its dimensions.
"""

from __future__ import annotations

import numpy as np


def categorical_bpd(train_levels: np.ndarray, test_levels: np.ndarray, num_bins: int) -> np.ndarray:
    """Per-image bits/dim of independent per-dimension categoricals fitted on ``train_levels``, add-one smoothed.

    Args:
        train_levels, test_levels: integer levels 0 .. num_bins - 1, shape (N, ...) with the same image shape
            (any integer dtype: uint8 pixels, or the levels of data in [-1, 1]).
        num_bins: the number of levels of each dimension.
    Returns:
        float64 (N_test,): -log2 p(x) / D per test image, D the number of dimensions of an image.
    """
    flat_train = train_levels.reshape(len(train_levels), -1).astype(np.int64)  # (N, D)
    D = flat_train.shape[1]
    counts = np.ones((D, num_bins), dtype=np.float64)  # add-one smoothing
    np.add.at(counts, (np.broadcast_to(np.arange(D), flat_train.shape), flat_train), 1.0)
    log2_p = np.log2(counts) - np.log2(counts.sum(axis=1, keepdims=True))  # (D, num_bins)
    flat_test = test_levels.reshape(len(test_levels), -1).astype(np.int64)  # (N_test, D)
    return -log2_p[np.arange(D)[None, :], flat_test].mean(axis=1)
