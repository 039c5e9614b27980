"""The Fréchet distance between Gaussians fitted to two sets of features: the distance behind the digits FID
(:mod:`dpddpm.digits.quality`).

Features are (N, D) arrays or tensors, N >= 2, finite; every result is float64, in squared feature units.
"""

from __future__ import annotations

import numpy as np
import torch


def _as_features(feats: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    """Features (N, D) as float64 numpy, after checking that they are finite and that N >= 2."""
    if isinstance(feats, torch.Tensor):
        feats = feats.detach().cpu().numpy()
    arr = np.asarray(feats, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of features (N, D), got shape {arr.shape}")
    if arr.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows to estimate a covariance, got N = {arr.shape[0]}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return arr


def gaussian_stats(feats: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) (ddof 1) of features (N, D), float64."""
    arr = _as_features(feats, "features")
    return arr.mean(axis=0), np.atleast_2d(np.cov(arr, rowvar=False))


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix (eigenvalues below 0 from
    round-off are set to 0)."""
    w, v = np.linalg.eigh(0.5 * (m + m.T))
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_gaussians(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """Fréchet (2-Wasserstein squared) distance between N(mu_a, cov_a) and N(mu_b, cov_b), float64.

    |mu_a - mu_b|^2 + tr(cov_a) + tr(cov_b) - 2 tr((cov_a^1/2 cov_b cov_a^1/2)^1/2). The trace term uses the
    symmetric PSD matrix cov_a^1/2 cov_b cov_a^1/2 (same eigenvalues as cov_a cov_b), so both square roots come
    from symmetric eigendecompositions: no complex parts and no iteration that can fail to converge, as with a
    general ``sqrtm`` of the non-symmetric product. Means (D,), covariances (D, D); units: squared features.
    """
    mu_a, mu_b = np.asarray(mu_a, dtype=np.float64), np.asarray(mu_b, dtype=np.float64)
    cov_a, cov_b = np.asarray(cov_a, dtype=np.float64), np.asarray(cov_b, dtype=np.float64)
    d = mu_a.shape[0]
    if mu_b.shape != (d,) or cov_a.shape != (d, d) or cov_b.shape != (d, d):
        raise ValueError(
            f"shapes do not match: means {mu_a.shape}, {mu_b.shape}; covariances {cov_a.shape}, {cov_b.shape}"
        )
    root_a = _psd_sqrt(cov_a)
    inner = root_a @ cov_b @ root_a
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(0.5 * (inner + inner.T)), 0.0, None)).sum()
    diff = mu_a - mu_b
    fd = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_sqrt)
    return max(fd, 0.0)  # >= 0 exactly; only round-off (~1e-12 of the traces) can take it below


def frechet_distance(feats_a: torch.Tensor | np.ndarray, feats_b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted (mean, unbiased covariance) to features (N_a, D) and (N_b, D).

    float64; squared feature units. Biased upward at small N (see the module docstring): compare only values
    computed from sets of equal sizes.
    """
    a, b = _as_features(feats_a, "feats_a"), _as_features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    return frechet_distance_gaussians(*gaussian_stats(a), *gaussian_stats(b))
