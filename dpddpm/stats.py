"""Pooled means and variances: one formula for the rows being computed and for the files being merged.

Every statistic in a cost matrix is a mean over samples with its standard error. It is carried as
(count n, mean, M2), M2 being the sum of squared deviations from the mean, and two such summaries of disjoint
samples are pooled exactly with Chan et al.'s parallel formula (:func:`pool`): no second pass over the
samples and no cancellation between large sums.

- :class:`RowStats` accumulates one row on the device (torch) while the network runs, batch after batch.
- :class:`Pool` pools the (mean, standard error, count) entries of finished matrices (numpy) when files merge.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

A = TypeVar("A", float, np.ndarray, torch.Tensor)  # any array type with elementwise arithmetic

F64 = torch.float64


def pool(n_a: A, mean_a: A, m2_a: A, n_b: A, mean_b: A, m2_b: A) -> tuple[A, A, A]:
    """Chan et al.'s pooling of two summaries (count, mean, M2) of disjoint samples, elementwise.

    Written with operators only, so it works on Python numbers, numpy arrays and torch tensors alike (counts
    may be scalars or arrays that broadcast against the means). An empty side (count 0) leaves the other
    unchanged; where both are empty the pooled mean is ``mean_a``.

    Returns:
        (n_a + n_b, pooled mean, pooled M2).
    """
    n = n_a + n_b
    share = n_b / (n + (n == 0))  # n_b / n, and 0 where both sides are empty (no division by zero)
    delta = mean_b - mean_a
    return n, mean_a + delta * share, m2_a + m2_b + delta * delta * (n_a * share)


def sem(values) -> float:
    """Standard error of the mean of independent values (a 1-D array, list or tensor): std (ddof = 1) / sqrt(n).

    The one helper for every standard error over independent units (images, sample seeds); NaN for fewer than two.
    """
    v = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"sem takes a 1-D set of values, got shape {v.shape}")
    return float(v.std(ddof=1) / np.sqrt(v.shape[0])) if v.shape[0] > 1 else float("nan")


def sem_columns(values: torch.Tensor) -> np.ndarray:
    """:func:`sem` of each column of a (n, S) tensor, float64 numpy (S,); NaN everywhere for n < 2."""
    n = values.shape[0]
    if n < 2:
        return np.full(values.shape[1], np.nan)
    return (values.double().std(dim=0) / np.sqrt(n)).cpu().numpy()


def standard_error(n, m2: np.ndarray) -> np.ndarray:
    """Standard error of the mean, sqrt(M2 / (n (n - 1))); NaN where fewer than two samples. float64 numpy."""
    n = np.asarray(n, dtype=np.float64)  # n (n - 1) is exact in float64 for any count that fits in memory
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 1, np.sqrt(m2 / (n * (n - 1))), np.nan)


def segment_affine_stats(
    features: torch.Tensor, bounds: list[int], coef: torch.Tensor, change: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and M2 of the values ``features[a:b] @ (coef[g] @ change).T`` of each segment g = [bounds[g],
    bounds[g+1]), without forming them: the M2 is the quadratic form of the segment's centred Gram matrix.

    Args:
        features: (B, F) float64; bounds: G + 1 ascending row indices.
        coef: (G, S, F'), one coefficient vector per value s (F' = F without ``change``).
        change: (F', F) or None (identity): coefficients in another basis. It is folded into each segment's
            (F, F) mean and Gram matrix, so the (S, F) coefficients in the features' own basis are never formed.
    Returns:
        (mean, M2), each (G, S). All segments go through batched products (a few kernels for any G); segments of
        unequal length are zero-padded, which adds nothing to a Gram matrix.
    """
    G = len(bounds) - 1
    if G == 1:
        segments = features[bounds[0] : bounds[1]][None]  # (1, c, F), a view
        fmean = segments.mean(dim=1)
        centered = segments - fmean[:, None, :]
    else:
        counts = torch.tensor(np.diff(bounds), dtype=F64, device=features.device)  # (G,)
        longest = int(np.diff(bounds).max())
        offsets = np.arange(longest)
        rows = np.minimum(np.asarray(bounds[:-1])[:, None] + offsets, bounds[-1] - 1)  # (G, longest), clipped
        inside = torch.as_tensor(offsets < np.diff(bounds)[:, None], dtype=F64, device=features.device)[..., None]
        segments = features[torch.as_tensor(rows, device=features.device)] * inside  # (G, longest, F)
        fmean = segments.sum(dim=1) / counts[:, None]
        centered = (segments - fmean[:, None, :]) * inside
    gram = centered.transpose(1, 2) @ centered  # (G, F, F)
    if change is not None:  # values = features @ change^T @ coef^T: fold change into the mean and the Gram
        fmean, gram = fmean @ change.T, change @ gram @ change.T
    mean = (coef @ fmean[:, :, None])[..., 0]
    return mean, ((coef @ gram) * coef).sum(dim=2).clamp(min=0.0)  # the Gram is symmetric


class RowStats:
    """Running count, mean and M2 of per-sample values of shape (S,), kept in float64 on the device."""

    def __init__(self, size: int, device: torch.device) -> None:
        self.n, self.size, self.device = 0, size, device
        self.mean: torch.Tensor | None = None  # until the first samples: nothing allocated, no kernel launched
        self.m2: torch.Tensor | None = None

    def add(self, n: int, mean: torch.Tensor, m2: torch.Tensor) -> None:
        """Merge a batch of n samples with batch mean (S,) and batch M2 (S,)."""
        if self.n == 0:  # nothing to pool with (a row in one piece): take them as they are, no tensor work
            self.n, self.mean, self.m2 = n, mean, m2
            return
        self.n, self.mean, self.m2 = pool(self.n, self.mean, self.m2, n, mean, m2)

    def add_samples(self, values: torch.Tensor) -> None:
        """Merge per-sample values of shape (n, S)."""
        mean = values.mean(dim=0)
        self.add(values.shape[0], mean, (values - mean).pow(2).sum(dim=0))

    def add_affine(self, features: torch.Tensor, coef: torch.Tensor, const: torch.Tensor) -> None:
        """Merge values ``const + features @ coef.T`` without forming them: features (n, F), coef (S, F)."""
        mean, m2 = segment_affine_stats(features, [0, features.shape[0]], coef[None])
        self.add(features.shape[0], const + mean[0], m2[0])

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, standard error of the mean) as float64 numpy arrays of shape (S,); zeros and NaN with no samples."""
        if self.mean is None:
            return np.zeros(self.size), np.full(self.size, np.nan)
        return self.mean.cpu().numpy(), standard_error(self.n, self.m2.cpu().numpy())


class Pool:
    """Pools estimates (mean, standard error, count) of disjoint samples elementwise: float64 numpy arrays.

    A count of 0 marks an entry with no samples (its mean is ignored); a missing standard error counts as 0.
    """

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0.0, 0.0, 0.0

    def add(self, mean: np.ndarray, stderr: np.ndarray | None, n: np.ndarray) -> None:
        """Pool in one estimate; ``n`` broadcasts against ``mean``."""
        n = np.asarray(n, dtype=np.float64)
        mean = np.where(n > 0, mean, 0.0)
        se = np.zeros_like(mean) if stderr is None else np.where(n > 1, np.nan_to_num(stderr), 0.0)
        m2 = se**2 * n * np.maximum(n - 1, 0)  # back from the standard error to the sum of squared deviations
        self.n, self.mean, self.m2 = pool(self.n, self.mean, self.m2, n, mean, m2)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, standard error): NaN where no samples, and the error NaN where fewer than two."""
        return np.where(self.n > 0, self.mean, np.nan), standard_error(self.n, self.m2)
