"""The DDPM interface: a network plus everything needed to read its output as a reverse process."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from .schedule import NoiseSchedule
from .types import Steps, TimeInput
from .validation import check_finite
from .variances import AnalyticVariances, VarianceKind, check_variance_rule, reads_network_variance


class DDPM(nn.Module):
    """A pretrained epsilon-prediction DDPM.

    Args:
        net: the wrapped network, called as its source code calls it: ``net(x_t, time_arg)``. Its output
            (or the output's ``.sample``, for diffusers) has the data's shape, or twice the channels for
            ``learned_range`` (epsilon first, then the raw variance value v).
        schedule: the training noise schedule.
        variance: ``"fixed_small"`` (beta~), ``"fixed_large"`` (beta), ``"learned_range"``, or ``"analytic"``
            (the KL-optimal variance of each jump, frozen from a selection split); the rule itself is
            :mod:`dpddpm.variances`.
        time_input: how the 1-based step t reaches the net: ``"index"`` gives the integer ``t - 1``
            (Ho et al., diffusers); ``"rescaled"`` gives the float ``(t - 1) * 1000 / T``
            (improved-diffusion with ``rescale_timesteps=True``); or any callable on the int tensor t.
        data_shape: the shape of one data point, e.g. (3, 32, 32).
        num_bins: number of discrete data levels in [-1, 1] (256 for 8-bit images).
        clip_denoised: clip the predicted x_0 to [-1, 1] before forming means.
        outputs_variance: whether the net also outputs the raw variance value v (default: for
            ``learned_range``); an ``analytic`` model of a learned-variance net reads and ignores it.
        analytic: the frozen :class:`~dpddpm.variances.AnalyticVariances` of an ``"analytic"`` model (made by
            :func:`dpddpm.with_analytic_variances`).
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: NoiseSchedule,
        variance: VarianceKind,
        *,
        time_input: TimeInput = "index",
        data_shape: Sequence[int],
        num_bins: int = 256,
        clip_denoised: bool = True,
        outputs_variance: bool | None = None,
        analytic: AnalyticVariances | None = None,
    ) -> None:
        super().__init__()
        check_variance_rule(variance, analytic)
        if variance == "learned_range" and outputs_variance is False:
            raise ValueError("a learned_range net outputs its variance value: outputs_variance must be True")
        if isinstance(time_input, str) and time_input not in ("index", "rescaled"):
            raise ValueError(f"time_input must be 'index', 'rescaled' or a callable, got {time_input!r}")
        if int(num_bins) < 2:
            raise ValueError(f"num_bins must be >= 2, got {num_bins}")
        self.net = net
        self.schedule = schedule
        self.variance: VarianceKind = variance
        self.time_input = time_input
        self.data_shape = tuple(int(d) for d in data_shape)
        self.num_bins = int(num_bins)
        self.clip_denoised = bool(clip_denoised)
        self.outputs_variance = variance == "learned_range" if outputs_variance is None else bool(outputs_variance)
        self.analytic = analytic

    @property
    def T(self) -> int:
        return self.schedule.T

    @property
    def learned_variance(self) -> bool:
        return reads_network_variance(self.variance)

    def net_time(self, t: torch.Tensor) -> torch.Tensor:
        """Map 1-based int steps t, shape (B,), to what the net expects."""
        if callable(self.time_input):
            return self.time_input(t)
        if self.time_input == "index":
            return t - 1
        return (t - 1).to(torch.float32) * (1000.0 / self.T)

    @torch.no_grad()
    def predict(self, x_t: torch.Tensor, t: Steps) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the net at 1-based steps t.

        Args:
            x_t: noisy data, shape ``(B, *data_shape)``.
            t: int tensor of shape (B,) or a Python int, 1 <= t <= T.
        Returns:
            (eps, v): eps of shape ``(B, *data_shape)``; v the raw variance output of the same shape
            (f = (v + 1) / 2) for ``learned_range``, else None.
        """
        if not isinstance(t, torch.Tensor):
            t = torch.full((x_t.shape[0],), int(t), dtype=torch.long, device=x_t.device)
        t = t.to(device=x_t.device, dtype=torch.long)
        if t.numel() and (int(t.min()) < 1 or int(t.max()) > self.T):
            raise ValueError(f"t must lie in 1..T = {self.T}, got range [{int(t.min())}, {int(t.max())}]")
        out = self.net(x_t, self.net_time(t))
        out = getattr(out, "sample", out)
        check_finite(out, "the model output")
        if self.outputs_variance:
            channels = out.shape[1]
            if channels != 2 * self.data_shape[0]:
                raise ValueError(
                    f"a net with a variance output must output 2 x {self.data_shape[0]} channels, got {channels}"
                )
            eps, v = out.split(channels // 2, dim=1)
            return eps, v
        if tuple(out.shape[1:]) != self.data_shape:
            raise ValueError(f"the model output has shape {tuple(out.shape)}; expected (B, *{self.data_shape})")
        return out, None

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.predict(x_t, t)

    def extra_repr(self) -> str:
        return (
            f"T={self.T}, variance={self.variance!r}, data_shape={self.data_shape}, "
            f"num_bins={self.num_bins}, clip_denoised={self.clip_denoised}"
        )


def resolve_device(model: DDPM, device: str | torch.device | None) -> torch.device:
    """The device to run on: ``device`` if given, else where the model's parameters are (CPU if it has none).

    Raises:
        TypeError: ``model`` is not a :class:`DDPM`.
        ValueError: an unknown device name, or ``"meta"`` (a device without values, on which nothing can be
            computed).
    """
    if not isinstance(model, DDPM):
        raise TypeError(f"model must be a dpddpm.DDPM, got {type(model).__name__}")
    if device is not None:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"bad device {device!r}: {exc}") from None
    else:
        p = next(iter(model.parameters()), None)
        dev = p.device if p is not None else torch.device("cpu")
    if dev.type == "meta":
        raise ValueError("device 'meta' holds no values, so nothing can be computed on it; use 'cpu' or 'cuda'")
    return dev


def _on(tensor: torch.Tensor, device: torch.device) -> bool:
    return tensor.device.type == device.type and (device.index is None or tensor.device.index == device.index)


def model_on(model: DDPM, device: torch.device) -> DDPM:
    """``model`` itself when all its tensors are on ``device``, else a copy there; the caller's model never moves.

    The copy takes the moved tensors directly (no second copy on the original device): ``nn.Module.to`` would
    move the caller's model in place, and a failed move (e.g. to ``"meta"``) would leave it without weights.
    """
    tensors = list(model.parameters()) + list(model.buffers())
    if all(_on(x, device) for x in tensors):
        return model
    memo: dict[int, torch.Tensor] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(p.detach().to(device), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = b.detach().to(device)
    return copy.deepcopy(model, memo)
