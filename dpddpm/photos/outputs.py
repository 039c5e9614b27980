"""A finished photos run's outputs: the best EMA weights (``<name>.pt``), the model card (``<name>.json``), and
loading them back as a DDPM.

The card records the data (photographs, licences, splits and their checksums, package versions, the run's data
fingerprints), the architecture, the recipe, the steps, the time, the device and the weights' sha256.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..digits.net import count_parameters
from ..digits.training import GRAD_CLIP, T_SAMPLING, loss_name, select_best, weights_bytes, write_outputs
from ..external.unet import UNetModel
from ..model import DDPM
from ..schedule import NoiseSchedule
from ..variances import VarianceKind
from .data import NUM_BINS, photos_metadata
from .recipe import unet_config
from .trainer import Trainer

PAPER = "Watson et al. 2021 (arXiv 2106.03802); models as Nichol & Dhariwal 2021 (improved-diffusion)"
#: what the card records of each photograph (its entry in photos.json has more)
PHOTOGRAPH_FIELDS = ("name", "package", "file", "licence", "statement", "attribution", "split", "sha256")


def _data_section(trainer: Trainer) -> dict[str, Any]:
    """The card's ``data``: the images' format, the crops, the splits, the photographs and their licences."""
    r, meta = trainer.recipe, photos_metadata()
    return {
        "source": "tiny photographs (dpddpm.photos.data): crops of photographs shipped by scikit-image, "
        "scikit-learn and matplotlib",
        "image_size": r.image_size,
        "scaling": "x / 127.5 - 1",
        "num_bins": NUM_BINS,
        "shape": [3, r.image_size, r.image_size],
        "scales": meta["scales"],
        "strides": meta["strides"],
        "splits": {k: {key: v[key] for key in ("photographs", "N", "sha256")} for k, v in meta["splits"].items()},
        "non_overlapping_crops": meta["non_overlapping_total"],
        "photographs": [{k: p[k] for k in PHOTOGRAPH_FIELDS} for p in meta["photographs"]],
        "package_versions": meta["versions"],
        "fingerprints": trainer.fingerprints,
        "augmentation": "random horizontal flips" if r.flip else "none",
    }


def _device_name(device: torch.device) -> str:
    """The device, with the GPU's name for CUDA (``cuda:0 (NVIDIA H100 ...)``)."""
    return str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")


def _training_section(trainer: Trainer) -> dict[str, Any]:
    """The card's ``training``: the recipe and steps, the optimiser, the time, the selection and its history."""
    r, st = trainer.recipe, trainer.state
    return {
        "recipe": r.identity() | {"steps": st.step},
        "loss": loss_name(r.learn_sigma),
        "optimizer": "Adam",
        "lr_schedule": f"linear warm-up over {r.warmup} steps, then constant",
        "grad_clip": GRAD_CLIP,
        "t_sampling": T_SAMPLING,
        "seed": trainer.seed,
        "device": _device_name(trainer.device),
        "threads": torch.get_num_threads(),
        "train_time_s": round(st.elapsed_s, 1),
        "step_time_s": round(st.step_time_s, 1),
        "seconds_per_step": round(st.step_time_s / max(1, st.step), 4),
        "selected_step": st.best_step,
        "selection": "EMA weights with the lowest quick ELBO (stratified, fixed noise, "
        f"{r.quick_strata} t's + decoder per image) on the selection split, every {r.eval_every} steps",
        "history": st.history,
    }


def model_card(trainer: Trainer, weights: bytes, variance: VarianceKind, quick_best: dict[str, float]) -> dict:
    """The model card of a finished run: ``weights`` the ``.pt`` file's bytes, ``quick_best`` the selection
    split's quick ELBO (bits/dim) of each variance kind, ``variance`` the kind chosen."""
    r = trainer.recipe
    return {
        "name": r.name,
        "dpddpm_version": __version__,
        "paper": PAPER,
        "data": _data_section(trainer),
        "schedule": "cosine",
        "T": r.T,
        "variance": variance,
        "time_input": "rescaled",
        "clip_denoised": True,
        "net": {
            "class": "dpddpm.external.unet.UNetModel",
            **unet_config(r),
            "parameters": count_parameters(trainer.ema),
            "weights_bytes": len(weights),
        },
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "training": _training_section(trainer),
        "selection_quick_elbo_bpd": quick_best,
    }


def finish(trainer: Trainer, out: Path) -> dict:
    """Write the best EMA weights and the model card into ``out``; returns the card.

    For a fixed variance, fixed_small or fixed_large is the one with the lower quick ELBO on the selection split.
    """
    st = trainer.state
    quick_best, variance = select_best(
        st, trainer.ema, trainer.quick, trainer.ema_model(trainer.variances[0]), trainer.variances, batch_size=512
    )
    weights = weights_bytes(st.best_state)
    card = model_card(trainer, weights, variance, quick_best)
    write_outputs(out, trainer.recipe.name, weights, card)
    return card


def load_trained(folder: str | Path, name: str, device: str | torch.device = "cpu") -> DDPM:
    """A finished run's model (``<folder>/<name>.pt`` and ``.json``) as a DDPM in eval mode."""
    folder = Path(folder)
    card = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
    cfg = {k: v for k, v in card["net"].items() if k not in ("class", "parameters", "weights_bytes")}
    net = UNetModel(**cfg)
    state = torch.load(folder / f"{name}.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    size = int(card["data"]["image_size"])
    model = DDPM(
        net,
        NoiseSchedule.cosine(int(card["T"])),
        card["variance"],
        time_input=card["time_input"],
        data_shape=(3, size, size),
        num_bins=int(card["data"]["num_bins"]),
        clip_denoised=bool(card["clip_denoised"]),
        outputs_variance=cfg["out_channels"] == 6,
    )
    return model.eval().to(device)
