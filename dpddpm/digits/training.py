"""What every training run of this package's models shares: the digits models and the photos models.

- :func:`hybrid_loss`: L_simple, plus for a learned variance the L_vlb term with the mean detached.
- :func:`optimizer_step`: one step at a given learning rate, gradients clipped to norm :data:`GRAD_CLIP`.
- :func:`ema_update`: the exponential moving average of the weights, with a short warm-up.
- :class:`Selection`: the evaluations of a run and the best EMA weights so far; :func:`select_best` restores them.
- :func:`weights_bytes`, :func:`write_outputs`: a finished run's float32 weights and model card, written atomically.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..files import atomic_write
from ..gaussian import predict_x0
from ..model import DDPM
from ..schedule import NoiseSchedule
from ..variances import VarianceKind
from .objective import QuickELBO, ScheduleTable, vlb_terms

GRAD_CLIP = 1.0
T_SAMPLING = "uniform on 1..T"


def loss_name(learn_sigma: bool) -> str:
    """The training loss as the model cards name it."""
    return "L_hybrid = L_simple + 0.001 L_vlb (mean detached in L_vlb)" if learn_sigma else "L_simple (MSE of epsilon)"


def hybrid_loss(
    tab: ScheduleTable,
    sched: NoiseSchedule,
    t: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    noise: torch.Tensor,
    eps: torch.Tensor,
    v: torch.Tensor | None,
    *,
    vlb_weight: float,
    num_bins: int,
) -> torch.Tensor:
    """The training loss of one batch: L_simple, plus ``vlb_weight`` L_vlb when the net outputs a variance.

    Args:
        t: (B,) 1-based steps; x0: (B, ...) the clean data in [-1, 1]; x_t: (B, ...) float32, the noised data.
        noise, eps: the true and the predicted noise, of one shape ((B, ...), like x_t).
        v: (B, ...) the net's raw variance output (learned_range), or None for L_simple alone.
        vlb_weight: L_vlb's weight (0.001 in improved-diffusion); num_bins: the data's levels.
    Returns:
        a scalar float32 tensor: mean squared error of epsilon, plus the weighted L_vlb in bits/dim.
    """
    loss = (eps - noise).pow(2).mean()
    if v is None:
        return loss
    B = x0.shape[0]
    # L_vlb trains only the variance: the mean is detached
    x0_hat = predict_x0(sched, t, x_t, eps.detach(), clip=True).reshape(B, -1)
    vb = vlb_terms(tab, t, x0.reshape(B, -1).double(), x0_hat, v.reshape(B, -1), "learned_range", num_bins)
    # L_vlb of one uniformly drawn t is T times its term (as improved-diffusion)
    return loss + (vlb_weight * sched.T) * vb.mean().float()


def optimizer_step(opt: torch.optim.Optimizer, params: list[nn.Parameter], loss: torch.Tensor, lr: float) -> None:
    """Back-propagate ``loss`` and take one optimiser step at rate ``lr``, the gradients clipped to norm 1."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
    opt.step()


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, decay: float, step: int) -> None:
    """Move ``ema``'s parameters towards ``net``'s after 0-based ``step``: decay min(decay, (1 + s) / (10 + s))."""
    d = min(decay, (1.0 + step) / (10.0 + step))  # short warm-up: the first weights are not averaged in forever
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in net.parameters()], 1.0 - d)


@dataclass
class Selection:
    """The evaluations of a run (``history``) and the EMA weights with the lowest quick ELBO so far."""

    best_score: float = math.inf  # bits/dim, the lowest quick ELBO over the variance kinds
    best_step: int = -1
    best_state: dict[str, torch.Tensor] | None = None  # float32 on the CPU
    history: list[dict[str, Any]] = field(default_factory=list)

    def record(self, step: int, loss: float, quick: dict[str, float], ema: nn.Module) -> float:
        """Log one evaluation (the quick ELBO of each variance kind) and keep ``ema``'s weights if best; the score."""
        score = min(quick.values())
        self.history.append({"step": step, "loss": loss, **{f"quick_{k}": v for k, v in quick.items()}})
        if score < self.best_score:
            self.best_score, self.best_step = score, step
            self.best_state = {k: v.detach().float().cpu().clone() for k, v in ema.state_dict().items()}
        return score


def select_best(
    selection: Selection,
    ema: nn.Module,
    quick: QuickELBO,
    model: DDPM,
    variances: tuple[VarianceKind, ...],
    batch_size: int,
) -> tuple[dict[str, float], VarianceKind]:
    """Load the best EMA weights into ``ema`` (the net of ``model``) and score them again on the selection split.

    Returns the quick ELBO (bits/dim) of each variance kind and the kind with the lowest.
    """
    if selection.best_state is None:
        raise ValueError("no evaluation has run: nothing to select")
    ema.load_state_dict(selection.best_state)
    ema.eval()
    quick_best = quick(model, variances, batch_size=batch_size)
    return quick_best, min(quick_best, key=quick_best.get)


def weights_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """A state_dict as the bytes of a ``.pt`` file of float32 CPU tensors (what the runs ship)."""
    buf = io.BytesIO()
    torch.save({k: v.detach().float().cpu().contiguous() for k, v in state.items()}, buf)
    return buf.getvalue()


def write_outputs(out: Path, name: str, weights: bytes, card: dict[str, Any]) -> None:
    """Write ``<out>/<name>.pt`` (the weights' bytes) and ``<out>/<name>.json`` (the card), each atomically."""
    atomic_write(out / f"{name}.pt", lambda fh: fh.write(weights))
    atomic_write(out / f"{name}.json", lambda fh: fh.write((json.dumps(card, indent=2) + "\n").encode()))
