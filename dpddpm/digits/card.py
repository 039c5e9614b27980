"""The model card of a digits training run (``<name>.json`` beside the weights), built from the run's record.

:func:`training_card` gives the data, the architecture, the recipe and the selection; :func:`add_test_results`
adds the full-chain test ELBO of each variance kind and the categorical baseline on the same images. The shipped
cards are read back by :func:`dpddpm.digits.model_card`.
"""

from __future__ import annotations

from typing import Any

import torch

from .._version import __version__
from ..variances import VarianceKind
from .data import DATA_SHAPE, NUM_BINS, SPLIT_SEED, SPLIT_SIZES
from .net import DigitsNet, count_parameters
from .recipe import Recipe
from .training import GRAD_CLIP, T_SAMPLING, Selection, loss_name

PAPER = "Watson et al. 2021 (arXiv 2106.03802), models as Nichol & Dhariwal 2021"


def _data_section() -> dict[str, Any]:
    """The card's ``data``: the source, the scaling to [-1, 1], the levels and the fixed split."""
    return {
        "source": "sklearn.datasets.load_digits",
        "scaling": "x / 8 - 1",
        "num_bins": NUM_BINS,
        "shape": list(DATA_SHAPE),
        "split_seed": SPLIT_SEED,
        "split_sizes": SPLIT_SIZES,
        "split": "numpy.random.default_rng(0).permutation(1797): train, selection, test in order",
    }


def _training_section(recipe: Recipe, seed: int, device: torch.device, train_s: float, sel: Selection) -> dict:
    """The card's ``training``: the recipe, the optimiser, seed, device, time (``train_s`` seconds), selection."""
    return {
        "loss": loss_name(recipe.learn_sigma),
        "steps": recipe.steps,
        "batch_size": recipe.batch_size,
        "optimizer": "Adam",
        "lr": recipe.lr,
        "warmup": recipe.warmup,
        "lr_decay": "cosine to 0",
        "grad_clip": GRAD_CLIP,
        "ema_decay": recipe.ema_decay,
        "t_sampling": T_SAMPLING,
        "seed": seed,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "train_time_s": round(train_s, 1),
        "selected_step": sel.best_step,
        "selection": "EMA checkpoint with the lowest quick ELBO (stratified, fixed noise, 32 t's "
        "+ decoder per image) on the selection split, evaluated every "
        f"{recipe.eval_every} steps",
        "history": sel.history,
    }


def training_card(
    recipe: Recipe,
    ema: DigitsNet,
    *,
    seed: int,
    device: torch.device,
    train_s: float,
    selection: Selection,
    quick_best: dict[str, float],
    variance: VarianceKind,
) -> dict[str, Any]:
    """The card of a finished run of ``recipe``: ``ema`` holds the selected weights,
    ``quick_best`` their quick ELBO (bits/dim) per variance kind on the selection split, ``variance`` the kind
    chosen; ``train_s`` the training time in seconds."""
    return {
        "name": recipe.name,
        "dpddpm_version": __version__,
        "paper": PAPER,
        "data": _data_section(),
        "schedule": "cosine",
        "T": recipe.T,
        "variance": variance,
        "time_input": "index",
        "clip_denoised": True,
        "net": {"class": "dpddpm.digits.net.DigitsNet", **ema.config(), "parameters": count_parameters(ema)},
        "training": _training_section(recipe, seed, device, train_s, selection),
        "selection_quick_elbo_bpd": quick_best,
    }


def add_test_results(
    card: dict[str, Any],
    *,
    eval_data: str,
    n_images: int,
    seed: int,
    by_variance: dict[str, dict[str, float]],
    baseline: tuple[float, float],
) -> None:
    """Add the full-chain ELBOs on the ``eval_data`` split (``by_variance``: kind -> bpd and stderr, drawn with
    noise seed ``seed``) and the categorical baseline (bits/dim, stderr) on the same ``n_images`` images."""
    variance, quick_best = card["variance"], card["selection_quick_elbo_bpd"]
    card["test_elbo"] = {
        "split": eval_data,
        "N": n_images,
        "K": card["T"],
        "fresh_noise_seed": seed,
        "bpd": by_variance[variance]["bpd"],
        "stderr": by_variance[variance]["stderr"],
        "by_variance": by_variance,
    }
    card["baseline_categorical_bpd"] = {
        "bpd": baseline[0],
        "stderr": baseline[1],
        "model": "independent per-pixel categorical, add-one smoothing, fit on train",
    }
    if variance != "learned_range":  # a fixed variance, chosen between two: say why this one
        card["variance_choice"] = (
            f"{variance}: lower quick ELBO on the selection split "
            f"({', '.join(f'{k} {v:.4f}' for k, v in quick_best.items())}); full-chain test ELBOs of both "
            "are in test_elbo.by_variance"
        )
