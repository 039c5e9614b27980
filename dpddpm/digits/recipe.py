"""The recipes of the bundled digits models: what defines a training run, the model it trains, its learning rate.

``digits-simple`` learns a fixed variance (L_simple), ``digits-hybrid`` the learned_range variance (L_hybrid); the
training itself is :mod:`dpddpm.digits.train`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..model import DDPM
from ..schedule import NoiseSchedule
from ..variances import VarianceKind
from .data import DATA_SHAPE, NUM_BINS
from .net import DigitsNet

T_DEFAULT = 4000


@dataclass
class Recipe:
    """Everything that defines one bundled model's training run."""

    name: str
    learn_sigma: bool
    steps: int
    batch_size: int = 256
    lr: float = 1e-3
    warmup: int = 200
    ema_decay: float = 0.999
    eval_every: int = 250
    vlb_weight: float = 0.001
    hidden: int = 192
    blocks: int = 2
    rank: int = 8
    dropout: float = 0.0
    T: int = T_DEFAULT


# The defaults reproduce the shipped weights (seed 0, one CPU thread per run). Without dropout the selection
# ELBO was best near step 1000 and then rose steadily (1.94 -> 2.6 bits/dim by step 10000); dropout 0.1 and a
# shorter run gave 0.01-0.02 bits/dim better checkpoints.
RECIPES = {
    "digits-simple": Recipe("digits-simple", learn_sigma=False, steps=4000, warmup=200, eval_every=250, dropout=0.1),
    "digits-hybrid": Recipe("digits-hybrid", learn_sigma=True, steps=4000, warmup=200, eval_every=250, dropout=0.1),
}


def wrap(net: torch.nn.Module, sched: NoiseSchedule, variance: VarianceKind) -> DDPM:
    """The DDPM of a digits net: time input ``index`` (t - 1), (1, 8, 8) data on 17 levels, clipped x^_0."""
    return DDPM(net, sched, variance, time_input="index", data_shape=DATA_SHAPE, num_bins=NUM_BINS, clip_denoised=True)


def make_model(recipe: Recipe, variance: VarianceKind | None = None) -> DDPM:
    """A fresh DDPM wrapper around a new DigitsNet for this recipe."""
    sched = NoiseSchedule.cosine(recipe.T)
    net = DigitsNet(
        sched.alpha_bar,
        num_bins=NUM_BINS,
        hidden=recipe.hidden,
        blocks=recipe.blocks,
        rank=recipe.rank,
        learn_sigma=recipe.learn_sigma,
        dropout=recipe.dropout,
    )
    variance = variance or ("learned_range" if recipe.learn_sigma else "fixed_small")
    return wrap(net, sched, variance)


def lr_at(recipe: Recipe, step: int) -> float:
    """The learning rate of 0-based ``step``: a linear warm-up over ``warmup`` steps, then a cosine decay to 0."""
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    frac = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * 0.5 * (1.0 + math.cos(math.pi * frac))
