"""Sample-quality scores for the bundled 8x8 digits that run on a CPU with nothing downloaded.

Two scores, both from the bundled digits classifier (:mod:`dpddpm.digits.classifier`, trained on the "train"
split only):

- **FID**, the Fréchet distance between Gaussians fitted to the classifier's 32 penultimate features of the
  samples and of real reference images (by default the 300 images of the "test" split;
  :func:`dpddpm.digits.frechet.frechet_distance`). Squared feature units, lower is better, 0 for identical
  feature statistics. It plays the role of Heusel et al.'s FID, with a digits classifier in place of Inception,
  so its values are not comparable with published FIDs.
- **Confidence**, the classifier's mean maximum softmax probability (in [0.1, 1]): how clearly the samples
  look like *some* digit. It says nothing about diversity (a model that draws one perfect "1" scores 1.0),
  which is what the FID adds.

How to read an FID.

- It is **biased upward at small N**: the means and covariances of both sets are estimates, and their
  estimation noise adds distance on average. Two real sets of the same distribution do not score 0, and the
  expected score falls as the sets grow. So only FIDs computed with **the same number of samples against the
  same reference** can be compared; never compare an FID of 300 samples with one of 1,000.
- Its **noise floor** is the FID between two disjoint real sets of the same sizes (:meth:`DigitsScore.
  noise_floor`: random re-splits of real images, several times, giving a mean and a spread). For 300 vs 300
  digits it is about 11 with a spread (standard deviation) of about 4, mostly from the random class
  proportions of each set (``results/digits_fid_validation.json``; re-splits with equal class counts gave
  about 5 with a spread of 1.5). A difference between two models below that
  floor (its spread), or not clearly larger than the standard errors over sample seeds
  (:meth:`DigitsScore.score_seeds`), must not be read as a difference; and an FID within the floor's range
  means "as close to the reference as other real data", not "better than real data".

Images are (N, 1, 8, 8) tensors scaled to [-1, 1] like the data (``x / 8 - 1``), N >= 2.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from ..validation import check_batch_size
from .classifier import DigitsClassifier, load_classifier
from .data import DATA_SHAPE, digits_split
from .frechet import frechet_distance

RANGE_TOLERANCE = 1e-4  # float32 round-off of values computed in [-1, 1]


@dataclass(frozen=True)
class Estimate:
    """A mean with its standard error."""

    mean: float
    stderr: float


@dataclass(frozen=True)
class SeedScores:
    """Scores of several sample sets of equal size, one per sampling seed, against one reference.

    ``fid`` and ``confidence``: the mean over sets with the standard error over sets (NaN for a single set),
    which is the error to quote when comparing models; ``fids`` and ``confidences``: the values per set.
    """

    fid: Estimate
    confidence: Estimate
    fids: tuple[float, ...]
    confidences: tuple[float, ...]
    n_images: int  # per set
    n_reference: int


@dataclass(frozen=True)
class NoiseFloor:
    """FIDs between disjoint random halves of real images: ``size`` vs ``size``, ``repeats`` times.

    ``mean`` and ``std`` (the spread over re-splits, ddof 1), ``values`` (one per re-split).
    """

    mean: float
    std: float
    values: tuple[float, ...]
    size: int


def check_images(images: torch.Tensor | np.ndarray, name: str = "images") -> torch.Tensor:
    """Images (N, 1, 8, 8), N >= 2, finite and in [-1, 1], returned as a float32 tensor (a clear error if not)."""
    if not isinstance(images, torch.Tensor):
        images = torch.as_tensor(np.asarray(images))
    if images.ndim != 1 + len(DATA_SHAPE) or tuple(images.shape[1:]) != DATA_SHAPE:
        raise ValueError(f"{name} must have shape (N, 1, 8, 8), got {tuple(images.shape)}")
    if images.shape[0] < 2:
        raise ValueError(f"{name}: at least 2 images are needed (a covariance, a standard error), got N = 1 or 0")
    if not images.is_floating_point():
        raise ValueError(f"{name} must be floating point, scaled to [-1, 1], got dtype {images.dtype}")
    images = images.detach().float()
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contain NaN or Inf")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1 - RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise ValueError(
            f"{name} must be scaled to [-1, 1] like the data (digits: x / 8 - 1), got values in [{lo:.4g}, {hi:.4g}]"
            "; samples of a model without clipping can be clamped with images.clamp(-1, 1)"
        )
    if lo >= 0:
        warnings.warn(
            f"no value of {name} lies below 0 (range [{lo:.4g}, {hi:.4g}]): are they scaled to [0, 1] instead of "
            "[-1, 1]? (the digits' background is -1)",
            UserWarning,
            stacklevel=3,
        )
    return images


def add_noise(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    """Images (N, 1, 8, 8) plus Gaussian noise of standard deviation ``sigma`` (data units: [-1, 1] spans 2),
    clipped to [-1, 1]: a graded, known defect for validating the scores. Noise from ``torch.Generator`` seeded
    with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return (images + sigma * torch.randn(images.shape, generator=gen, dtype=images.dtype)).clamp(-1.0, 1.0)


def _mean_stderr(values: np.ndarray) -> Estimate:
    """Mean and standard error of the mean (ddof 1; NaN for one value) of a 1-D array."""
    n = len(values)
    se = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return Estimate(float(values.mean()), se)


class DigitsScore:
    """FID and confidence of 8x8 digit images from the bundled classifier (see the module docstring).

    Build it once (:func:`load_digits_score` caches one) and score many sets: the reference splits' features
    are computed once and kept. ``classifier``: default the bundled one; ``batch_size``: images per forward
    pass (memory only, the results do not depend on it).
    """

    def __init__(
        self,
        classifier: DigitsClassifier | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 4096,
    ) -> None:
        self.device = torch.device(device)
        self.classifier = (classifier or load_classifier()).to(self.device).eval()
        self.batch_size = check_batch_size(batch_size)
        self._reference_cache: dict[str, np.ndarray] = {}

    @torch.no_grad()
    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (N, D), logits (N, 10)) of checked images, float64 on the CPU."""
        feats, logits = [], []
        for chunk in images.split(self.batch_size):
            f = self.classifier.features(chunk.to(self.device))
            feats.append(f.double().cpu())
            logits.append(self.classifier.head(f).double().cpu())
        return torch.cat(feats), torch.cat(logits)

    def features(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The classifier's penultimate features (N, D) of images (N, 1, 8, 8) in [-1, 1], float64."""
        return self._forward(check_images(images))[0]

    def probabilities(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Softmax class probabilities (N, 10) of images (N, 1, 8, 8) in [-1, 1], float64."""
        return torch.softmax(self._forward(check_images(images))[1], dim=1)

    def confidence(self, images: torch.Tensor | np.ndarray) -> Estimate:
        """Mean over images of the largest class probability (in [0.1, 1]; higher is clearer), with its standard
        error over the N images (N, 1, 8, 8)."""
        return _mean_stderr(self.probabilities(images).max(dim=1).values.numpy())

    def _reference(self, reference: str | torch.Tensor | np.ndarray | None) -> np.ndarray:
        """Features of the reference: a digits split name (cached; default "test") or images (N, 1, 8, 8)."""
        if reference is None:
            reference = "test"
        if isinstance(reference, str):
            if reference not in self._reference_cache:
                self._reference_cache[reference] = self.features(digits_split(reference)).numpy()
            return self._reference_cache[reference]
        return self._forward(check_images(reference, "reference"))[0].numpy()

    def fid(self, images: torch.Tensor | np.ndarray, reference: str | torch.Tensor | np.ndarray | None = None) -> float:
        """FID (squared feature units, lower is better) of images (N, 1, 8, 8) in [-1, 1] against ``reference``.

        ``reference``: a digits split name ("test" by default, 300 images; "selection"; "train") or real images
        (M, 1, 8, 8). Biased upward at small N: compare only equal N against the same reference, and mind the
        noise floor (:meth:`noise_floor`).
        """
        return frechet_distance(self.features(images).numpy(), self._reference(reference))

    def score_seeds(
        self,
        sample_sets: list[torch.Tensor] | tuple[torch.Tensor, ...],
        reference: str | torch.Tensor | np.ndarray | None = None,
    ) -> SeedScores:
        """FID and confidence of several sample sets of equal size (one per sampling seed) against one reference.

        Each set is (N, 1, 8, 8) in [-1, 1]. Returns the mean FID and mean confidence over sets, each with its
        standard error over sets (the seed-to-seed variation: quote it with any comparison), and the per-set
        values. Sets of unequal size are refused, since the FID's bias depends on N.
        """
        if len(sample_sets) == 0:
            raise ValueError("score_seeds needs at least one sample set")
        sizes = {int(s.shape[0]) for s in sample_sets}
        if len(sizes) != 1:
            raise ValueError(f"sample sets must have equal sizes (the FID's bias depends on N), got {sorted(sizes)}")
        ref = self._reference(reference)
        fids, confs = [], []
        for i, images in enumerate(sample_sets):
            feats, logits = self._forward(check_images(images, f"sample set {i}"))
            fids.append(frechet_distance(feats.numpy(), ref))
            confs.append(float(torch.softmax(logits, dim=1).max(dim=1).values.mean()))
        return SeedScores(
            fid=_mean_stderr(np.array(fids)),
            confidence=_mean_stderr(np.array(confs)),
            fids=tuple(fids),
            confidences=tuple(confs),
            n_images=sizes.pop(),
            n_reference=int(ref.shape[0]),
        )

    def noise_floor(
        self, images: torch.Tensor | np.ndarray | None = None, size: int = 300, repeats: int = 20, seed: int = 0
    ) -> NoiseFloor:
        """FIDs between disjoint random sets of ``size`` and ``size`` real images, over ``repeats`` re-splits.

        ``images``: the pool of real images (M, 1, 8, 8), M >= 2 size; default the "selection" and "test"
        splits together (600 images, so 300 vs 300: the size of the default reference). Each re-split is a
        permutation drawn from ``numpy.random.default_rng(seed)``. Differences between FIDs of ``size`` samples
        that are not clearly larger than this floor's spread are noise.
        """
        if images is None:
            images = torch.cat([digits_split("selection"), digits_split("test")])
        feats = self._forward(check_images(images))[0].numpy()
        if size < 2 or 2 * size > feats.shape[0]:
            raise ValueError(f"the pool of {feats.shape[0]} images cannot give two disjoint sets of size {size} >= 2")
        if repeats < 2:
            raise ValueError(f"a spread needs repeats >= 2, got {repeats}")
        rng = np.random.default_rng(seed)
        values = []
        for _ in range(repeats):
            perm = rng.permutation(feats.shape[0])
            values.append(frechet_distance(feats[perm[:size]], feats[perm[size : 2 * size]]))
        arr = np.array(values)
        return NoiseFloor(float(arr.mean()), float(arr.std(ddof=1)), tuple(values), size)


@lru_cache(maxsize=4)
def load_digits_score(device: str = "cpu") -> DigitsScore:
    """The :class:`DigitsScore` of the bundled classifier on ``device``, built once per process and device."""
    return DigitsScore(device=device)
