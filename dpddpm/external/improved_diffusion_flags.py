"""improved-diffusion's command-line flags: its defaults, the released checkpoints' presets, and their checks.

A checkpoint of that codebase is a bare ``state_dict``; its architecture and diffusion follow from these flags
(``model_and_diffusion_defaults()`` in its ``script_util.py``, overridden by a preset, overridden by the user).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

#: improved-diffusion's ``model_and_diffusion_defaults()`` (``script_util.py``): every flag a checkpoint's
#: architecture and diffusion depend on, with that code's default value.
IMPROVED_DIFFUSION_DEFAULTS: dict[str, Any] = {
    "image_size": 64,
    "num_channels": 128,
    "num_res_blocks": 2,
    "num_heads": 4,
    "num_heads_upsample": -1,
    "attention_resolutions": "16,8",
    "dropout": 0.0,
    "learn_sigma": False,
    "sigma_small": False,
    "class_cond": False,
    "diffusion_steps": 1000,
    "noise_schedule": "linear",
    "timestep_respacing": "",
    "use_kl": False,
    "predict_xstart": False,
    "rescale_timesteps": True,
    "rescale_learned_sigmas": True,
    "use_checkpoint": False,
    "use_scale_shift_norm": True,
}

_CIFAR10 = {
    "image_size": 32,
    "num_channels": 128,
    "num_res_blocks": 3,
    "learn_sigma": True,
    "dropout": 0.3,
    "diffusion_steps": 4000,
    "noise_schedule": "cosine",
}
_IMAGENET64 = {
    "image_size": 64,
    "num_channels": 128,
    "num_res_blocks": 3,
    "learn_sigma": True,
    "diffusion_steps": 4000,
    "noise_schedule": "cosine",
}

#: The released unconditional checkpoints' flags (improved-diffusion README, "Models and Hyperparameters").
#: The key is the checkpoint's file name without ``.pt``. ``dropout`` and ``use_kl`` only affect training.
PRESETS: dict[str, dict[str, Any]] = {
    "cifar10_uncond_50M_500K": dict(_CIFAR10),
    "cifar10_uncond_vlb_50M_500K": dict(_CIFAR10, use_kl=True),
    "imagenet64_uncond_100M_1500K": dict(_IMAGENET64),
    "imagenet64_uncond_vlb_100M_1500K": dict(_IMAGENET64, use_kl=True),
}

_CHANNEL_MULT = {32: (1, 2, 2, 2), 64: (1, 2, 3, 4), 256: (1, 1, 2, 2, 4, 4)}


def _to_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("yes", "true", "t", "y", "1", "no", "false", "f", "n", "0"):
        return value.lower() in ("yes", "true", "t", "y", "1")
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    raise ValueError(f"flag {name} must be a boolean, got {value!r}")


def _coerce(name: str, value: Any) -> Any:
    """Convert a flag value (possibly a command-line string) to the type of its default."""
    default = IMPROVED_DIFFUSION_DEFAULTS[name]
    if isinstance(default, bool):
        return _to_bool(name, value)
    if name == "attention_resolutions" and not isinstance(value, str):
        return ",".join(str(int(r)) for r in value)  # a sequence of resolutions
    try:
        return type(default)(value)
    except (TypeError, ValueError):
        raise ValueError(f"flag {name} must be a {type(default).__name__}, got {value!r}") from None


def improved_diffusion_flags(preset: str | None = None, **flags: Any) -> dict[str, Any]:
    """All flags of a model: improved-diffusion's defaults, then ``preset``, then ``flags``.

    Raises:
        ValueError: an unknown preset or flag name (the message lists the valid ones), or a bad value.
    """
    resolved = dict(IMPROVED_DIFFUSION_DEFAULTS)
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
        resolved.update(PRESETS[preset])
    unknown = sorted(set(flags) - set(IMPROVED_DIFFUSION_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown improved-diffusion flag(s) {', '.join(unknown)}; "
            f"valid flags: {', '.join(IMPROVED_DIFFUSION_DEFAULTS)}"
        )
    resolved.update({name: _coerce(name, value) for name, value in flags.items()})
    return resolved


def _check_supported(flags: Mapping[str, Any]) -> None:
    """Raise for flag values that dpddpm cannot represent."""
    if flags["class_cond"]:
        raise NotImplementedError(
            "class-conditional improved-diffusion models (class_cond=True) are not supported; "
            "dpddpm loads unconditional models only"
        )
    if flags["predict_xstart"]:
        raise NotImplementedError("predict_xstart=True models are not supported; dpddpm needs epsilon prediction")
    if flags["timestep_respacing"]:
        raise ValueError(
            "timestep_respacing is a sampling option: load the full T-step model (leave it empty) and give "
            "dpddpm a schedule instead"
        )
    if flags["image_size"] not in _CHANNEL_MULT:
        raise ValueError(
            f"improved-diffusion supports image_size in {sorted(_CHANNEL_MULT)}, got {flags['image_size']}"
        )
    if flags["noise_schedule"] not in ("linear", "cosine"):
        raise ValueError(f"noise_schedule must be 'linear' or 'cosine', got {flags['noise_schedule']!r}")
