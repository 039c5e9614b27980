"""Small models with known behaviour, for tests: an exact Gaussian denoiser and a tiny random net."""

from __future__ import annotations

import math

import torch
from torch import nn

import dpddpm


class GaussianEps(nn.Module):
    """The exact epsilon-predictor for data x_0 ~ N(mu, s^2 I): E[eps | x_t] in closed form.

    With a = alpha_bar_t: E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a), and the posterior
    variance of x_0 given x_t is s^2 (1 - a) / (a s^2 + 1 - a) per dimension.
    """

    def __init__(self, sched: dpddpm.NoiseSchedule, mu: float, s: float) -> None:
        super().__init__()
        self.register_buffer("alpha_bar", torch.tensor(sched.alpha_bar))
        self.mu, self.s = mu, s

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.alpha_bar[t].view(-1, *([1] * (x_t.dim() - 1)))
        eps = torch.sqrt(1 - a) * (x_t.double() - torch.sqrt(a) * self.mu) / (a * self.s**2 + 1 - a)
        return eps.float()


#: a fine grid for the Gaussian model's data: quantization changes its variance by ~1e-6 relative only
GAUSSIAN_BINS = 4097


def gaussian_model(T: int = 30, mu: float = 0.1, s: float = 0.2, dims: int = 4, variance: str = "fixed_small"):
    sched = dpddpm.NoiseSchedule.cosine(T)
    net = GaussianEps(sched, mu, s)
    model = dpddpm.DDPM(
        net, sched, variance, time_input=lambda t: t, data_shape=(dims,), clip_denoised=False, num_bins=GAUSSIAN_BINS
    )
    return model


def gaussian_data(n: int, mu: float, s: float, dims: int = 4, seed: int = 1) -> torch.Tensor:
    """n draws of N(mu, s^2 I), clamped to [-1, 1] and rounded to the Gaussian model's grid."""
    g = torch.Generator().manual_seed(seed)
    x = (mu + s * torch.randn(n, dims, generator=g, dtype=torch.float64)).clamp(-1, 1)
    half = (GAUSSIAN_BINS - 1) / 2
    return torch.round((x + 1) * half) / half - 1


def gaussian_posterior_var(sched: dpddpm.NoiseSchedule, t: int, s: float) -> float:
    a = float(sched.alpha_bar[t])
    return s**2 * (1 - a) / (a * s**2 + 1 - a)


class TinyNet(nn.Module):
    """A random conv net on (C, H, W) images; with learned variance it outputs 2C channels."""

    def __init__(self, channels: int = 1, learned: bool = True, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        out = 2 * channels if learned else channels
        self.conv1 = nn.Conv2d(channels + 1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, out, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = (t.float() / 10.0).view(-1, 1, 1, 1).expand(x.shape[0], 1, *x.shape[2:])
        h = torch.tanh(self.conv1(torch.cat([x, tt], dim=1)))
        return torch.tanh(self.conv2(h)) * 1.1  # v slightly beyond [-1, 1], as unclamped nets do


def tiny_model(T: int = 12, variance: str = "learned_range", num_bins: int = 17, clip: bool = True):
    sched = dpddpm.NoiseSchedule.cosine(T)
    net = TinyNet(1, learned=variance == "learned_range")
    return dpddpm.DDPM(
        net, sched, variance, time_input="index", data_shape=(1, 4, 4), num_bins=num_bins, clip_denoised=clip
    )


def discrete_data(n: int, num_bins: int = 17, shape=(1, 4, 4), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    levels = torch.randint(0, num_bins, (n, *shape), generator=g)
    return levels.double() * (2.0 / (num_bins - 1)) - 1.0


def assert_costs_close(a: dpddpm.CostMatrix, b: dpddpm.CostMatrix) -> None:
    """Two cost matrices agree to round-off: the same rows, values within 1e-6 relative.

    Runs that pack batches differently are not bitwise equal: a float32 network's output for an image moves by
    ~1e-7 with the batch it is in (and CPUs differ in kernels), which moves costs by ~1e-8 relative.
    """
    import numpy as np

    np.testing.assert_array_equal(a.counts, b.counts)
    for name in ("kl", "decoder", "prior"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-6, atol=1e-12, equal_nan=True)
    for name in ("stderr", "decoder_stderr", "prior_stderr"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-12, equal_nan=True)


def tiny_diffusers_unet(out_channels: int = 3):
    """A small random diffusers UNet2DModel on 3 x 8 x 8 images (seeded), for loader and CLI tests."""
    import pytest

    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=out_channels,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=8,
    )
    return unet.eval()


def golden():
    from pathlib import Path

    return torch.load(Path(__file__).parent / "data" / "improved_diffusion_small_golden.pt", weights_only=True)


LN2 = math.log(2.0)
