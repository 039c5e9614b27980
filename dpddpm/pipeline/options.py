"""What a run of the Table 1 pipeline is asked to do: :class:`ReproduceOptions`, the budgets, the defaults."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

DEFAULT_STEPS = (8, 16, 32, 64, 128, 256)
GAP_BPD = 0.1  # bits/dim: "within 0.1 of all T steps", the paper's criterion
SAMPLE_SEEDS = (0, 1, 2, 3, 4)

#: scores a batch of samples (n, *data_shape) in [-1, 1]: named numbers, e.g. {"fid": ..., "confidence": ...}
SampleScore = Callable[[torch.Tensor], Mapping[str, float]]


def budgets(T: int, steps: Sequence[int] | None = None) -> list[int]:
    """The budgets K to compare: ``steps`` (each 2 <= K <= T), or the powers of two 8..256 that fit T."""
    if steps is None:
        return [k for k in DEFAULT_STEPS if k <= T] or [min(T, 2)]
    out = sorted({int(k) for k in steps})
    bad = [k for k in out if k < 2 or k > T]
    if bad:
        raise ValueError(f"steps must satisfy 2 <= K <= T = {T}, got {bad}")
    return out


@dataclass(frozen=True)
class ReproduceOptions:
    """The options of :func:`dpddpm.reproduce` (its keyword arguments, device aside).

    Attributes:
        steps: the budgets K, network calls per image (default: the powers of two 8..256 up to T).
        skip_full: skip the ELBOs of all T steps (T network calls per image), and so the ``gap`` summary.
        full_test: the test ELBO of all T steps when it is already known on the same test images (e.g. a bundled
            model card's ``test_elbo``): a mapping with ``"bpd"`` and ``"stderr"`` (bits/dim), used instead of
            estimating it.
        batch_size: network inputs per call of the cost matrix and the in-sample ELBOs.
        test_batch_size: network inputs per call of the test ELBOs (default ``batch_size``). The float32
            network's output moves by round-off with its batch, so equal settings give equal numbers.
        resume: continue the cost matrix from ``out_dir/costs.npz``.
        seed: the cost matrix's noise seed; the test ELBOs use ``seed + 1`` (:attr:`test_seed`).
        gap: bits/dim for the "smallest K within ``gap`` of all T steps" summary.
        progress: show progress bars (cost matrix, full chain).
        name: the model's name in the results.
        analytic: also fit analytic variances on the selection images (frozen for every test figure), run the
            DP on their cost matrix and report its schedules (``dp_analytic``) and, unless ``skip_full``, the
            full chain with them.
        sample_score: scores samples (see :data:`SampleScore`); with it, every K <= ``sample_max_steps`` gets
            sample-quality figures per schedule, ``sample_n`` samples (default: as many as test images) per
            seed of ``sample_seeds``.
    """

    steps: Sequence[int] | None = None
    skip_full: bool = False
    full_test: Mapping[str, float] | None = None
    batch_size: int = 256
    test_batch_size: int | None = None
    resume: bool = False
    seed: int = 0
    gap: float = GAP_BPD
    progress: bool = True
    name: str = "model"
    analytic: bool = False
    sample_score: SampleScore | None = None
    sample_max_steps: int = 64
    sample_n: int | None = None
    sample_seeds: Sequence[int] = SAMPLE_SEEDS

    @property
    def test_seed(self) -> int:
        """The noise seed of every test ELBO: ``seed + 1``, so the test noise is never the matrix's."""
        return self.seed + 1

    @property
    def test_batch(self) -> int:
        """Network inputs per call of the test ELBOs: ``test_batch_size``, else ``batch_size``."""
        return self.test_batch_size or self.batch_size
