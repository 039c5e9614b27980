"""Sampling on any schedule: ancestral (the model's own reverse process) and deterministic DDIM (eta = 0).

Both start from x_{t_K} ~ N(0, I) and end with the decoder step from x_1, which returns x^_0.
"""

from __future__ import annotations

import torch

from .gaussian import predict_eps, predict_x0, q_sample
from .model import DDPM, model_on, resolve_device
from .types import Schedule
from .validation import check_int, check_schedule
from .variances import jump_log_variance


def _noise(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float64).to(device)


@torch.no_grad()
def sample(
    model: DDPM,
    schedule: Schedule,
    n: int,
    generator: torch.Generator | None = None,
    *,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Ancestral sampling with the model's variance rule for every jump.

    Each jump t -> s draws x_s ~ N(c1 x^_0 + c2 x_t, sigma^2) with sigma^2 re-derived for that jump by the model's
    rule (:func:`dpddpm.variances.jump_log_variance`: fixed small, fixed large, learned, or analytic). Returns
    float32 ``(n, *data_shape)``; the last step gives x^_0 (clipped to [-1, 1] if the model clips).
    """
    return _run(model, schedule, n, generator, device, ddim=False)


@torch.no_grad()
def ddim_sample(
    model: DDPM,
    schedule: Schedule,
    n: int,
    generator: torch.Generator | None = None,
    *,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) on the same schedule: x_s = sqrt(a_s) x^_0 + sqrt(1 - a_s) eps^."""
    return _run(model, schedule, n, generator, device, ddim=True)


def _run(
    model: DDPM,
    schedule: Schedule,
    n: int,
    generator: torch.Generator | None,
    device: str | torch.device | None,
    *,
    ddim: bool,
) -> torch.Tensor:
    device = resolve_device(model, device)
    times = check_schedule(schedule, model.T)
    n = check_int(n, "n", low=1)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    model = model_on(model, device)
    sched = model.schedule
    x = _noise((int(n), *model.data_shape), generator, device)
    for i, t in enumerate(times):
        t = int(t)
        eps, v = model.predict(x.float(), t)
        x0_hat = predict_x0(sched, t, x, eps, model.clip_denoised)
        if t == 1:
            return x0_hat.float()
        s = int(times[i + 1])
        if ddim:  # x_s on the line through x^_0 with the epsilon that x_t implies (consistent with a clipped x^_0)
            x = q_sample(sched, s, x0_hat, predict_eps(sched, t, x, x0_hat))
            continue
        j = sched.jump(t, s)
        mean = float(j.c1) * x0_hat + float(j.c2) * x
        log_var = jump_log_variance(sched, t, s, v, model.variance, analytic=model.analytic)
        log_var = torch.as_tensor(log_var, dtype=torch.float64, device=device)
        x = mean + torch.exp(0.5 * log_var) * _noise(x.shape, generator, device)
    raise AssertionError("unreachable: a checked schedule ends at t = 1")
