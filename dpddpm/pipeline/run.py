"""What every phase of the Table 1 pipeline reads: :class:`Run`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model import DDPM
from .options import ReproduceOptions
from .results import Timing


@dataclass
class Run:
    """What every phase reads: the model on its device, the two sets of images and the options.

    Attributes:
        model: the DDPM, already on ``device``.
        selection: ``(N_sel, *data_shape)`` in [-1, 1], the cost matrix's images.
        test: ``(N_test, *data_shape)`` in [-1, 1], the held-out images of the fresh ELBOs.
        timing: filled in phase by phase.
    """

    model: DDPM
    selection: torch.Tensor
    test: torch.Tensor
    device: torch.device
    options: ReproduceOptions
    timing: Timing

    @property
    def dp_device(self) -> torch.device | None:
        """Where the DP runs: on a GPU it takes 0.19 s instead of ~4 s on the host (T = 4000, K <= 1024; H100,
        measured)."""
        return self.device if self.device.type == "cuda" else None
