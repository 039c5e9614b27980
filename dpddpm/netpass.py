"""The network pass, written once: noise -> x_t -> the float32 network -> x^_0, as every estimator needs it.

Cost-matrix rows, both ELBO estimators and the analytic-variance fit all do the same thing with a batch of images
x_0 and noise eps at steps t:

    x_t  = sqrt(a_t) x_0 + sqrt(1 - a_t) eps        in float64, then rounded to the network's float32 input
    eps^, v = network(x_t, t)                       under the run's autocast setting
    x^_0 = (x_t - sqrt(1 - a_t) eps^) / sqrt(a_t)   in float64 from the *rounded* x_t (clipped if the model clips)

Forming x^_0 from the rounded x_t makes every cost describe the very input the network saw.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch

from .gaussian import predict_x0, q_sample
from .model import DDPM
from .types import Steps

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(kind: str | None, device: torch.device) -> contextlib.AbstractContextManager:
    """An autocast context for the network call (``"bf16"``/``"fp16"``), or a no-op for None.

    Works on CUDA and, for bf16, on the CPU (useful to test the effect of reduced precision anywhere).
    """
    if kind is None:
        return contextlib.nullcontext()
    if kind not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast must be None, 'bf16' or 'fp16', got {kind!r}")
    if device.type != "cuda" and kind != "bf16":
        raise ValueError(f"autocast={kind!r} needs a CUDA device (on {device.type} use 'bf16'), got {device}")
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[kind])


class PassOutput(NamedTuple):
    """What one network pass gives, per image.

    Attributes:
        x0_hat: float64 (B, D), the model's estimate of x_0 (D = the data's dimensions, flattened).
        v: float32 (B, D), the raw variance output of a net that has one, else None.
    """

    x0_hat: torch.Tensor
    v: torch.Tensor | None


@torch.no_grad()
def network_pass(
    model: DDPM, t: Steps, x0: torch.Tensor, noise: torch.Tensor, autocast: str | None = None
) -> PassOutput:
    """One network call on x_t ~ q(x_t | x_0) drawn with the given noise.

    Args:
        model: the DDPM, on the device of ``x0``.
        t: one 1-based step for the batch (an int), or one per image (a (B,) long tensor).
        x0: float64 (B, D) images in [-1, 1], flattened.
        noise: float64 (B, D) standard normal draws.
        autocast: ``None``, ``"bf16"`` or ``"fp16"`` (:func:`autocast_context`).
    """
    sched = model.schedule
    x_t = q_sample(sched, t, x0, noise).float()  # the network's float32 input
    with autocast_context(autocast, x0.device):
        try:
            eps, v = model.predict(x_t.reshape(-1, *model.data_shape), t)
        except FloatingPointError as err:
            if autocast is None:
                raise
            raise FloatingPointError(
                f"{err} under autocast={autocast!r}: the network overflows in reduced precision; "
                "run without autocast (or with 'bf16', whose range is float32's)"
            ) from err
    x0_hat = predict_x0(sched, t, x_t.double(), eps.reshape(x_t.shape).double(), model.clip_denoised)
    return PassOutput(x0_hat, None if v is None else v.reshape(x_t.shape).float())
