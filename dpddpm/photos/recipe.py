"""The recipe of a photos model: what defines a training run, and the model it trains.

The paper's regime in everything but size: improved-diffusion's UNet (:mod:`dpddpm.external.unet`, scaled down),
the cosine schedule with T = 4000, 8-bit RGB data (``num_bins = 256``, :mod:`dpddpm.photos.data`), time input
``(t - 1) * 1000 / T`` as improved-diffusion's ``rescale_timesteps``. ``photos-simple`` learns a fixed variance
(L_simple), ``photos-hybrid`` the learned_range variance (L_hybrid): see :mod:`dpddpm.photos.train`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..external.unet import UNetModel
from ..model import DDPM
from ..schedule import NoiseSchedule
from ..variances import VarianceKind
from .data import NUM_BINS

T_DEFAULT = 4000


@dataclass
class Recipe:
    """Everything that defines one photos model's training run (``steps`` is only where it stops)."""

    name: str
    learn_sigma: bool
    steps: int = 60_000
    image_size: int = 32
    batch_size: int = 32
    lr: float = 2e-4
    warmup: int = 500
    ema_decay: float = 0.9995
    eval_every: int = 2000
    vlb_weight: float = 0.001
    flip: bool = True
    # the UNet (improved-diffusion's flags, scaled down from the CIFAR-10 model's 128 / (1,2,2,2) / 3 / 16,8)
    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_at: tuple[int, ...] = (8,)  # spatial sizes with self-attention, as improved-diffusion's "16,8"
    num_heads: int = 2
    dropout: float = 0.3  # the CIFAR-10 model's value; the train split holds about 1000 independent crops
    use_scale_shift_norm: bool = True
    T: int = T_DEFAULT
    quick_strata: int = 32

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with the checkpoint: every field but the stopping point."""
        out = dataclasses.asdict(self)
        out.pop("steps")
        out["channel_mult"], out["attention_at"] = list(self.channel_mult), list(self.attention_at)
        return out


RECIPES = {
    "photos-simple": Recipe("photos-simple", learn_sigma=False),
    "photos-hybrid": Recipe("photos-hybrid", learn_sigma=True),
}


def unet_config(recipe: Recipe) -> dict[str, Any]:
    """Keyword arguments of :class:`~dpddpm.external.unet.UNetModel` for this recipe."""
    return {
        "in_channels": 3,
        "model_channels": recipe.model_channels,
        "out_channels": 6 if recipe.learn_sigma else 3,
        "num_res_blocks": recipe.num_res_blocks,
        "attention_resolutions": [recipe.image_size // r for r in recipe.attention_at],
        "dropout": recipe.dropout,
        "channel_mult": list(recipe.channel_mult),
        "num_heads": recipe.num_heads,
        "use_scale_shift_norm": recipe.use_scale_shift_norm,
    }


def wrap(net: nn.Module, sched: NoiseSchedule, variance: VarianceKind, recipe: Recipe) -> DDPM:
    """The DDPM of a photos net: time input ``rescaled``, (3, size, size) data on 256 levels, clipped x^_0."""
    return DDPM(
        net,
        sched,
        variance,
        time_input="rescaled",
        data_shape=(3, recipe.image_size, recipe.image_size),
        num_bins=NUM_BINS,
        clip_denoised=True,
        outputs_variance=recipe.learn_sigma,
    )


def make_model(recipe: Recipe, variance: VarianceKind | None = None) -> DDPM:
    """A fresh DDPM around a new UNet for this recipe (time input ``rescaled``, clipped x^_0)."""
    net = UNetModel(**unet_config(recipe))
    variance = variance or ("learned_range" if recipe.learn_sigma else "fixed_small")
    return wrap(net, NoiseSchedule.cosine(recipe.T), variance, recipe)
