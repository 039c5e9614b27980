"""The ADM UNet of improved-diffusion (Nichol & Dhariwal, 2021), written for ``dpddpm``.

The modules are named so that the state-dict keys and shapes equal those of the released
improved-diffusion checkpoints (for example ``cifar10_uncond_50M_500K.pt``). A checkpoint therefore
loads with ``load_state_dict(strict=True)``. Use :func:`dpddpm.external.build_improved_diffusion_unet`
to build the network from that codebase's command-line flags.

Shapes: ``B`` is the batch size, ``C`` a channel count, ``H`` and ``W`` the spatial size,
``E`` the width of the time embedding (``4 * model_channels``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNetModel", "ResBlock", "AttentionBlock", "Downsample", "Upsample", "GroupNorm32", "timestep_embedding"]


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) time inputs.

    Args:
        timesteps: shape (B,), int or float; the value the network receives as its time input.
        dim: width of the embedding.
        max_period: the longest period, 1e4 as in the Transformer.

    Returns:
        float32 tensor of shape (B, dim): ``[cos(t f_i), sin(t f_i)]`` with
        ``f_i = exp(-ln(max_period) i / half)``, ``i = 0 .. half-1``; a zero column is appended if ``dim`` is odd.
    """
    half = dim // 2
    i = torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(-math.log(max_period) * i / half)
    args = timesteps.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups, computed in at least float32 and cast back to the input dtype."""

    def __init__(self, channels: int) -> None:
        super().__init__(32, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, ...) -> (B, C, ...)."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        out = F.group_norm(x.to(dtype), self.num_groups, self.weight.to(dtype), self.bias.to(dtype), self.eps)
        return out.to(x.dtype)


class TimestepBlock(nn.Module):
    """A module whose forward pass also takes the time embedding ``emb`` of shape (B, E)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential):
    """A sequence of modules; those that are :class:`TimestepBlock` also receive the embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Downsample(nn.Module):
    """Halve the spatial size with a strided 3x3 convolution: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double the spatial size (nearest neighbour), then a 3x3 convolution: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class ResBlock(TimestepBlock):
    """Residual block conditioned on the time embedding.

    ``h = conv(SiLU(GN(x)))``; then with scale-shift norm ``h = GN(h) * (1 + scale) + shift`` where
    ``(scale, shift)`` come from ``emb_layers(emb)`` (otherwise ``h + emb_layers(emb)`` before the norm);
    then SiLU, dropout and a 3x3 convolution; finally the skip connection (a 1x1 convolution when the
    channel count changes) is added.

    Shapes: x (B, C_in, H, W), emb (B, E) -> (B, C_out, H, W).
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = True,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        emb_out = 2 * out_channels if use_scale_shift_norm else out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.out_layers[-1].weight)
        nn.init.zeros_(self.out_layers[-1].bias)
        if out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None]  # (B, emb_out, 1, 1)
        norm, rest = self.out_layers[0], self.out_layers[1:]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = rest(norm(h) * (1 + scale) + shift)
        else:
            h = rest(norm(h + emb_out))
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the spatial positions, with improved-diffusion's legacy head layout.

    ``qkv`` is a 1x1 Conv1d to 3C channels. Its output (B, 3C, L) is reshaped to (B*heads, 3C/heads, L)
    and only then split into q | k | v, each (B*heads, C/heads, L): the channels of one head's q, k, v
    are adjacent. Attention weights are ``softmax(q^T k / sqrt(C/heads))`` (the source scales q and k by
    ``(C/heads)^(-1/4)`` each, which is the same).

    Shapes: x (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, num_heads: int = 1) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x_flat = x.reshape(b, c, -1)  # (B, C, L)
        qkv = self.qkv(self.norm(x_flat))  # (B, 3C, L)
        qkv = qkv.reshape(b * self.num_heads, 3 * c // self.num_heads, -1)  # (B*heads, 3*ch, L)
        q, k, v = qkv.transpose(1, 2).chunk(3, dim=-1)  # each (B*heads, L, ch)
        h = F.scaled_dot_product_attention(q, k, v)  # (B*heads, L, ch)
        h = h.transpose(1, 2).reshape(b, c, -1)  # (B, C, L)
        return (x_flat + self.proj_out(h)).reshape(b, c, *spatial)


class UNetModel(nn.Module):
    """improved-diffusion's ``UNetModel`` (unconditional, 2-D images).

    Args:
        in_channels: channels of the input image (3).
        model_channels: base width ``mc``; the time embedding has ``E = 4 * mc`` channels.
        out_channels: 3 for an epsilon model, 6 with learned variance (channels 0-2 epsilon, 3-5 v).
        num_res_blocks: residual blocks per resolution level.
        attention_resolutions: the downsampling rates ``ds`` (1, 2, 4, ...) at which attention is used.
        dropout: dropout probability inside the residual blocks.
        channel_mult: width multiplier of each level.
        num_heads: attention heads in the encoder and middle block.
        num_heads_upsample: attention heads in the decoder; -1 means ``num_heads``.
        use_scale_shift_norm: condition the residual blocks by scale and shift (FiLM) instead of addition.

    ``forward(x, timesteps)``: x (B, in_channels, H, W), timesteps (B,) int or float
    -> (B, out_channels, H, W).
    """

    def __init__(
        self,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0.0,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        num_heads: int = 1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
    ) -> None:
        super().__init__()
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        emb_dim = 4 * model_channels

        def res_block(ch_in: int, ch_out: int) -> ResBlock:
            return ResBlock(ch_in, emb_dim, dropout, ch_out, use_scale_shift_norm=use_scale_shift_norm)

        # Created (and so drawn from the random generator) in the same order as improved-diffusion's modules.
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # (channels, with attention) of each resolution level, finest first; level L downsamples by ds = 2**L
        levels = [(mult * model_channels, 2**level in attention_resolutions) for level, mult in enumerate(channel_mult)]
        self.input_blocks, skips = _encoder(in_channels, model_channels, levels, num_res_blocks, num_heads, res_block)
        ch = skips[-1]
        self.middle_block = TimestepEmbedSequential(res_block(ch, ch), AttentionBlock(ch, num_heads), res_block(ch, ch))
        self.output_blocks = _decoder(levels, num_res_blocks, num_heads_upsample, res_block, skips)
        ch = levels[0][0]
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(model_channels, out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, H, W); timesteps: (B,) the time input (improved-diffusion's possibly
        rescaled index) -> (B, out_channels, H, W)."""
        t_emb = timestep_embedding(timesteps, self.model_channels)  # (B, mc), float32
        emb = self.time_embed(t_emb.to(self.time_embed[0].weight.dtype))  # (B, E)
        hs = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def _encoder(
    in_channels: int,
    model_channels: int,
    levels: Sequence[tuple[int, bool]],
    num_res_blocks: int,
    num_heads: int,
    res_block: Callable[[int, int], ResBlock],
) -> tuple[nn.ModuleList, list[int]]:
    """The UNet's ``input_blocks`` and the channels of the activation each saves for a skip connection: per level
    of ``levels`` (channels, with attention), residual blocks (+ attention), then a downsampling but on the last."""
    blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
    ch, skips = model_channels, [model_channels]
    for level, (width, attention) in enumerate(levels):
        for _ in range(num_res_blocks):
            layers: list[nn.Module] = [res_block(ch, width)]
            ch = width
            if attention:
                layers.append(AttentionBlock(ch, num_heads))
            blocks.append(TimestepEmbedSequential(*layers))
            skips.append(ch)
        if level != len(levels) - 1:
            blocks.append(TimestepEmbedSequential(Downsample(ch)))
            skips.append(ch)
    return blocks, skips


def _decoder(
    levels: Sequence[tuple[int, bool]],
    num_res_blocks: int,
    num_heads: int,
    res_block: Callable[[int, int], ResBlock],
    skips: list[int],
) -> nn.ModuleList:
    """The UNet's ``output_blocks``, coarsest level first: each takes one skip activation, concatenated along
    channels (``skips``: their channels, popped from the end); each level but the finest ends in an upsampling."""
    blocks = nn.ModuleList()
    ch = skips[-1]
    for level, (width, attention) in reversed(list(enumerate(levels))):
        for i in range(num_res_blocks + 1):
            layers = [res_block(ch + skips.pop(), width)]
            ch = width
            if attention:
                layers.append(AttentionBlock(ch, num_heads))
            if level and i == num_res_blocks:
                layers.append(Upsample(ch))
            blocks.append(TimestepEmbedSequential(*layers))
    return blocks
