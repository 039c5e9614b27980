"""The small network of the bundled digits models: a residual MLP that predicts x_0 as a distribution.

With 17 levels, at small t the noise is far below half a level, so x_0 is exactly recoverable from x_t. A plain
epsilon-net is never that exact and the small-t KL terms then dominate the ELBO. So this net predicts logits over
the 17 levels of every pixel, takes x^_0 as the softmax expectation, and returns the epsilon implied by x^_0
and x_t; the DDPM interface (epsilon, then v for learned variance) is unchanged.

The logits are the sum of
  * the exact per-pixel posterior of the level under a uniform prior, from that pixel of x_t alone:
    -(x_t - sqrt(ab_t) c_k)^2 / (2 (1 - ab_t)); this is what makes small t exact, and
  * a learned residual from the MLP, which sees the whole image and the noise level (log-SNR).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def _fourier(x: torch.Tensor, n: int, lo: float, hi: float) -> torch.Tensor:
    """sin/cos features of x (B,) at n geometric frequencies in [lo, hi] -> (B, 2n)."""
    freqs = torch.exp(torch.linspace(math.log(lo), math.log(hi), n, device=x.device, dtype=x.dtype))
    arg = x[:, None] * freqs[None, :]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class ResBlock(nn.Module):
    """h + W2 silu(W1 LN(h) + temb): a pre-norm residual MLP block conditioned additively on time."""

    def __init__(self, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(dropout)
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(self.drop(torch.nn.functional.silu(self.fc1(self.norm(h)) + temb)))


class DigitsNet(nn.Module):
    """Residual MLP over the 64 pixels of an 8x8 digit; called as ``net(x_t, t_index)``.

    Args:
        alpha_bar: float64 (T + 1,) of the training schedule (stored as a buffer).
        num_bins: data levels in [-1, 1].
        hidden: width of the MLP. blocks: residual blocks.
        rank: the learned residual logits of a pixel are ``coef (rank,) @ basis (rank, num_bins)``, with the
            basis shared by all pixels (a low-rank head keeps the net fast on a CPU).
        learn_sigma: also output the raw variance value v (learned_range), as a second channel.
        dropout: inside the residual blocks, in training only (1197 images overfit quickly).
    Forward:
        x_t: (B, 1, 8, 8) float32; t_index: (B,) int, 0-based (``time_input="index"``: t_index = t - 1).
        returns (B, 1, 8, 8) epsilon, or (B, 2, 8, 8) = [epsilon, v] if learn_sigma.
    """

    MAX_RESIDUAL = 30.0  # |residual logit| bound: exp() of the logits then never overflows float32

    def __init__(
        self,
        alpha_bar: np.ndarray,
        num_bins: int = 17,
        hidden: int = 192,
        blocks: int = 2,
        rank: int = 8,
        learn_sigma: bool = False,
        fourier: int = 16,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_bins, self.hidden, self.blocks, self.rank, self.learn_sigma, self.fourier = (
            num_bins,
            hidden,
            blocks,
            rank,
            learn_sigma,
            fourier,
        )
        self.dropout = dropout
        self.dims = 64
        # not persistent: the schedule is rebuilt from its name, so weight files hold only learned float32 tensors
        self.register_buffer("alpha_bar", torch.tensor(np.asarray(alpha_bar), dtype=torch.float64), persistent=False)
        self.register_buffer("levels", torch.linspace(-1.0, 1.0, num_bins), persistent=False)
        self.register_buffer(
            "moment_basis", torch.stack([self.levels, torch.ones_like(self.levels)], dim=1), persistent=False
        )
        self.inp = nn.Linear(2 * self.dims, hidden)  # [x_t, per-pixel posterior mean]
        self.temb = nn.Sequential(nn.Linear(2 * fourier, hidden), nn.SiLU())
        self.res = nn.ModuleList(ResBlock(hidden, dropout) for _ in range(blocks))
        self.norm = nn.LayerNorm(hidden)
        self.coef = nn.Linear(hidden, self.dims * rank)
        nn.init.zeros_(self.coef.weight)  # start from the per-pixel posterior
        nn.init.zeros_(self.coef.bias)
        self.basis = nn.Parameter(torch.randn(rank, num_bins) / math.sqrt(rank))
        if learn_sigma:
            self.var = nn.Linear(hidden, self.dims)
            nn.init.zeros_(self.var.weight)
            nn.init.zeros_(self.var.bias)

    def config(self) -> dict:
        """Constructor arguments other than alpha_bar (for model cards and loading)."""
        return {
            "num_bins": self.num_bins,
            "hidden": self.hidden,
            "blocks": self.blocks,
            "rank": self.rank,
            "learn_sigma": self.learn_sigma,
            "fourier": self.fourier,
            "dropout": self.dropout,
        }

    def base_logits(self, x: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
        """Per-pixel posterior logits of the levels under a uniform prior, minus their maximum.

        x: (B, 64) float32 x_t; ab: (B,) float64. Returns (B, 64, num_bins) float32, all <= 0, 0 at the level
        nearest x_t / sqrt(ab). Written as -(ab / 2(1 - ab)) (c_k - c*)(c_k + c* - 2u) so that float32 stays
        accurate while the precision ab / (1 - ab) reaches 1e5 at t = 1.
        """
        u = x / ab.sqrt().float()[:, None]  # (B, 64)
        half = (self.num_bins - 1) / 2.0
        nearest = (torch.round((u + 1.0) * half).clamp(0, self.num_bins - 1) / half - 1.0)[:, :, None]
        prec = (ab / (2.0 * (1.0 - ab))).float()[:, None, None]
        return -prec * (self.levels - nearest) * (self.levels + nearest - 2.0 * u[:, :, None])

    def x0_logits(self, x_t: torch.Tensor, t_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits over levels, (B, 64, num_bins) float32, and the trunk features (B, hidden)."""
        B = x_t.shape[0]
        ab = self.alpha_bar[t_index.long() + 1]  # (B,) float64
        x = x_t.reshape(B, self.dims).float()
        base = self.base_logits(x, ab)
        post_mean = self._expectation(base).float()
        logsnr = (torch.log(ab) - torch.log1p(-ab)).float()
        h = self.inp(torch.cat([x, post_mean], dim=1))
        temb = self.temb(_fourier(logsnr, self.fourier, 1.0 / 32.0, 4.0))
        for block in self.res:
            h = block(h, temb)
        h = self.norm(h)
        resid = (self.coef(h).reshape(B * self.dims, self.rank) @ self.basis).reshape(B, self.dims, -1)
        resid = resid.clamp(-self.MAX_RESIDUAL, self.MAX_RESIDUAL)
        return base + resid, h

    def _expectation(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax expectation of the levels, (B, 64, bins) -> (B, 64) float64; logits must be bounded above."""
        w = torch.exp(logits.float()).reshape(-1, self.num_bins)
        # in float32 even under autocast: exp() of logits up to MAX_RESIDUAL overflows float16 (max 65504)
        with torch.autocast(device_type=w.device.type, enabled=False):
            moments = (w @ self.moment_basis.float()).double().reshape(*logits.shape[:2], 2)
        return moments[..., 0] / moments[..., 1]

    def forward(self, x_t: torch.Tensor, t_index: torch.Tensor) -> torch.Tensor:
        B = x_t.shape[0]
        logits, h = self.x0_logits(x_t, t_index)
        x0 = self._expectation(logits)  # (B, 64) float64
        ab = self.alpha_bar[t_index.long() + 1][:, None]
        # the epsilon implied by x^_0, in float64 so that predict_x0 recovers x^_0 to ~1e-7 even at t = 1
        eps = ((x_t.reshape(B, self.dims).double() - ab.sqrt() * x0) / (1.0 - ab).sqrt()).to(x_t.dtype)
        out = eps.reshape(B, 1, 8, 8)
        if self.learn_sigma:
            out = torch.cat([out, self.var(h).to(x_t.dtype).reshape(B, 1, 8, 8)], dim=1)
        return out


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
