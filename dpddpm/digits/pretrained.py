"""The bundled digits models, loaded from package data (``dpddpm/digits/weights/<name>.pt`` and ``<name>.json``).

Both are DDPMs on scikit-learn's 8x8 digits (17 levels, cosine schedule, T = 4000) trained by
``python -m dpddpm.digits.train <name>``; the model card (JSON) records the data split, the recipe and the
measured held-out ELBO.
"""

from __future__ import annotations

import json
from importlib import resources

import torch

from ..model import DDPM
from ..schedule import NoiseSchedule
from .data import DATA_SHAPE
from .net import DigitsNet

#: The names of the bundled models, for :func:`load_pretrained` and :func:`model_card`.
PRETRAINED = ("digits-simple", "digits-hybrid")
REINSTALL = "the installation is broken: reinstall dpddpm (in a checkout: pip install -e .)"


def _check_name(name: str) -> str:
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained model {name!r}; known names: {', '.join(PRETRAINED)}")
    return name


def _resource(filename: str):
    res = resources.files("dpddpm.digits").joinpath("weights", filename)
    if not res.is_file():
        raise FileNotFoundError(f"the bundled file dpddpm/digits/weights/{filename} is missing; {REINSTALL}")
    return res


def model_card(name: str) -> dict:
    """The model card of a bundled model as a dict (data split, recipe, parameter count, test ELBO, ...)."""
    res = _resource(f"{_check_name(name)}.json")
    try:
        return json.loads(res.read_text(encoding="utf-8"))
    except ValueError:  # JSONDecodeError or UnicodeDecodeError: a damaged copy of package data
        raise ValueError(
            f"the bundled model card dpddpm/digits/weights/{res.name} is not valid JSON; {REINSTALL}"
        ) from None


def load_pretrained(name: str, device: str | torch.device = "cpu") -> DDPM:
    """Load a bundled model: ``"digits-simple"`` (fixed variance) or ``"digits-hybrid"`` (learned variance).

    Returns a :class:`DDPM` in eval mode on ``device``; data shape (1, 8, 8), 17 levels, T = 4000.
    """
    card = model_card(name)
    if card.get("schedule") != "cosine":
        raise ValueError(f"model card of {name!r} names schedule {card.get('schedule')!r}; expected 'cosine'")
    sched = NoiseSchedule.cosine(int(card["T"]))
    cfg = {
        k: card["net"][k]
        for k in ("num_bins", "hidden", "blocks", "rank", "learn_sigma", "fourier", "dropout")
        if k in card["net"]
    }
    net = DigitsNet(sched.alpha_bar, **cfg)
    with resources.as_file(_resource(f"{name}.pt")) as path:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged copy, e.g. a Git LFS pointer file in place of the weights
            raise ValueError(f"the bundled weights {path} cannot be read ({type(exc).__name__}); {REINSTALL}") from None
    net.load_state_dict(state, strict=True)
    model = DDPM(
        net,
        sched,
        card["variance"],
        time_input=card.get("time_input", "index"),
        data_shape=DATA_SHAPE,
        num_bins=int(card["net"]["num_bins"]),
        clip_denoised=bool(card.get("clip_denoised", True)),
    )
    return model.eval().to(device)
