"""Load a local diffusers folder: a ``UNet2DModel`` and a ``DDPMScheduler`` saved with ``save_pretrained``.

Nothing here downloads anything. diffusers itself is an optional extra (``pip install 'dpddpm[diffusers]'``),
imported only when a folder is loaded.
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..files import read_json
from ..model import DDPM
from ..schedule import NoiseSchedule
from .improved_diffusion import CheckpointMismatchError

__all__ = ["load_diffusers", "diffusers_schedule"]

_DIFFUSERS_VARIANCE = {
    "fixed_small": "fixed_small",
    "fixed_small_log": "fixed_small",
    "fixed_large": "fixed_large",
    "fixed_large_log": "fixed_large",
    "learned_range": "learned_range",
}


def _import_diffusers():
    try:
        import diffusers
    except ImportError as e:
        raise ImportError(
            "loading diffusers models needs the optional dependency diffusers: pip install 'dpddpm[diffusers]'"
        ) from e
    return diffusers


def diffusers_schedule(config: Mapping[str, Any]) -> NoiseSchedule:
    """The float64 :class:`NoiseSchedule` of a ``DDPMScheduler`` configuration.

    Supports ``trained_betas`` and ``beta_schedule`` ``"linear"``, ``"scaled_linear"`` and
    ``"squaredcos_cap_v2"`` (Nichol & Dhariwal's cosine, betas capped at 0.999). diffusers itself stores
    the betas in float32; these are the same formulas in float64.
    """
    T = int(config.get("num_train_timesteps", 1000))
    if config.get("rescale_betas_zero_snr", False):
        raise NotImplementedError("rescale_betas_zero_snr=True gives alpha_bar_T = 0 and an infinite prior term")
    trained = config.get("trained_betas")
    if trained is not None:
        return NoiseSchedule.from_betas(np.asarray(trained, dtype=np.float64))
    kind = config.get("beta_schedule", "linear")
    start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    if kind == "linear":
        return NoiseSchedule.from_betas(np.linspace(start, end, T, dtype=np.float64))
    if kind == "scaled_linear":
        return NoiseSchedule.from_betas(np.linspace(math.sqrt(start), math.sqrt(end), T, dtype=np.float64) ** 2)
    if kind == "squaredcos_cap_v2":
        return NoiseSchedule.cosine(T)
    raise NotImplementedError(
        f"beta_schedule {kind!r} is not supported; use 'linear', 'scaled_linear', 'squaredcos_cap_v2' or trained_betas"
    )


def _scheduler_config(folder: Path) -> dict[str, Any]:
    """The scheduler's configuration with DDPMScheduler's defaults filled in."""
    candidates = [folder / "scheduler" / "scheduler_config.json", folder / "scheduler_config.json"]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise FileNotFoundError(
            f"no scheduler in {folder}: looked for {', '.join(str(p) for p in candidates)}. Save the model's "
            "DDPMScheduler next to the UNet with scheduler.save_pretrained(...)"
        )
    raw = read_json(found, "scheduler configuration")
    if not isinstance(raw, dict):
        raise ValueError(
            f"scheduler configuration {found} is not a JSON object; save the scheduler again with "
            "scheduler.save_pretrained(...)"
        )
    _check_scheduler_fields(raw, found)
    ddpm_scheduler = _import_diffusers().DDPMScheduler
    config = dict(ddpm_scheduler.from_config(raw).config)
    config.update({k: v for k, v in raw.items() if not k.startswith("_")})
    return config


#: the scheduler fields dpddpm reads, with the JSON types each may take (None: null allowed)
_SCHEDULER_FIELDS: dict[str, tuple[type, ...]] = {
    "num_train_timesteps": (int,),
    "beta_start": (int, float),
    "beta_end": (int, float),
    "beta_schedule": (str,),
    "trained_betas": (list, type(None)),
    "prediction_type": (str,),
    "variance_type": (str, type(None)),
    "clip_sample": (bool,),
    "clip_sample_range": (int, float),
    "thresholding": (bool,),
    "rescale_betas_zero_snr": (bool,),
}


def _check_scheduler_fields(raw: Mapping[str, Any], file: Path) -> None:
    """Refuse a scheduler configuration whose fields have the wrong JSON type or range, naming the file."""
    fix = "fix it, or save the scheduler again with scheduler.save_pretrained(...)"
    for key, kinds in _SCHEDULER_FIELDS.items():
        if key not in raw:
            continue
        value = raw[key]
        numeric_bool = isinstance(value, bool) and bool not in kinds
        if numeric_bool or not isinstance(value, kinds):
            raise ValueError(f"scheduler configuration {file}: {key!r} is {value!r}, of the wrong type; {fix}")
    T = raw.get("num_train_timesteps", 1000)
    if not 2 <= T <= 2**20:
        raise ValueError(f"scheduler configuration {file}: num_train_timesteps must lie in 2 .. 2**20, got {T}; {fix}")
    betas = raw.get("trained_betas")
    if betas is not None and not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in betas):
        raise ValueError(f"scheduler configuration {file}: trained_betas must be a list of numbers; {fix}")
    for key in ("beta_start", "beta_end"):
        if key in raw and not 0 < raw[key] < 1:
            raise ValueError(f"scheduler configuration {file}: {key} must lie in (0, 1), got {raw[key]}; {fix}")


def _pickle_refusal(exc: BaseException) -> str | None:
    """Why a ``.bin`` file was refused, when the cause is an unsafe pickle (found in the exception's chain)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc):
            # torch's own message goes on to suggest weights_only=False, which would run the code: keep only
            # the line that names what the pickle asked for
            lines = [x.strip() for x in str(exc).splitlines() if "Unsupported" in x or "WeightsUnpickler" in x]
            return lines[0][:300] if lines else "it is not a plain tensor file"
        exc = exc.__cause__ or exc.__context__
    return None


def _unet_from_pretrained(folder: Path, subfolder: str | None = None):
    """``UNet2DModel.from_pretrained``, with its errors about missing or broken files naming the folder."""
    diffusers = _import_diffusers()
    where = folder / subfolder if subfolder else folder
    kwargs = {"subfolder": subfolder} if subfolder else {}
    try:
        return diffusers.UNet2DModel.from_pretrained(folder, local_files_only=True, **kwargs)
    except OSError as e:  # diffusers reports a missing, unreadable or corrupt config or weights file so
        unsafe = _pickle_refusal(e)
        if unsafe is not None:  # torch.load(weights_only=True) refused the pickle: say so, it is not corrupt
            raise ValueError(
                f"cannot load the UNet2DModel in {where}: its .bin weights are a pickle that asks for more than "
                f"tensors ({unsafe}), and loading it could run code, so it was refused. Save the weights as "
                "safetensors (unet.save_pretrained(..., safe_serialization=True)) from a trusted copy"
            ) from None
        reason = str(e).strip().splitlines()[0].rstrip(". ") if str(e).strip() else type(e).__name__
        raise ValueError(
            f"cannot load the UNet2DModel in {where}: {reason}. It needs config.json and "
            "diffusion_pytorch_model.safetensors (or .bin) as unet.save_pretrained(...) writes them; "
            "copy or save the folder again"
        ) from None
    except RuntimeError as e:
        if "Error(s) in loading state_dict" not in str(e):  # torch's load_state_dict report, or else a bug
            raise
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise CheckpointMismatchError(
            f"the weights in {where} do not match its config.json:\n  "
            + "\n  ".join(lines[1:6] + (["..."] if len(lines) > 6 else []))
        ) from None


def _load_unet(folder: Path):
    if (folder / "unet" / "config.json").is_file():
        return _unet_from_pretrained(folder, "unet")
    config_file = folder / "config.json"
    if config_file.is_file() and _class_name(config_file) == "UNet2DModel":
        return _unet_from_pretrained(folder)
    raise FileNotFoundError(
        f"no UNet2DModel in {folder}: expected unet/config.json or a config.json with _class_name UNet2DModel"
    )


def _class_name(config_file: Path) -> Any:
    config = read_json(config_file, "diffusers configuration")
    return config.get("_class_name") if isinstance(config, dict) else None


def load_diffusers(
    path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    clip_denoised: bool | None = None,
) -> DDPM:
    """Load a local diffusers ``UNet2DModel`` + ``DDPMScheduler`` folder as a :class:`~dpddpm.model.DDPM`.

    The folder is what ``save_pretrained`` writes: a pipeline folder with ``unet/`` and ``scheduler/``
    subfolders, or a UNet folder with ``scheduler_config.json`` next to its ``config.json``.

    Args:
        path: the folder.
        device: where to put the network.
        clip_denoised: clip the predicted x_0 to [-1, 1]; None takes the scheduler's ``clip_sample``.

    Returns:
        a DDPM in eval mode whose net is the ``UNet2DModel`` itself, called with the 0-based integer index
        ``t - 1``; data shape (in_channels, sample_size, sample_size).

    Raises:
        ImportError: diffusers is not installed.
        FileNotFoundError: no folder, no UNet or no scheduler configuration (NotADirectoryError: a file).
        ValueError: a scheduler field of the wrong type or range, unreadable or unsafe UNet files, or a UNet
            whose output channels do not fit the variance type.
        CheckpointMismatchError: the UNet's weights do not match its ``config.json``.
        NotImplementedError: a prediction type other than epsilon, variance type ``learned``, or a beta
            schedule that has no float64 equivalent here.
    """
    folder = Path(path)
    if folder.is_file():
        raise NotADirectoryError(f"{folder} is a file; a diffusers model is the folder that save_pretrained writes")
    if not folder.is_dir():
        raise FileNotFoundError(f"diffusers model folder not found: {folder}")
    _import_diffusers()
    config = _scheduler_config(folder)
    variance_type, clip_denoised = _supported_scheduler(config, clip_denoised)
    schedule = diffusers_schedule(config)

    unet = _load_unet(folder)
    variance = _DIFFUSERS_VARIANCE[variance_type]
    model = DDPM(
        unet,
        schedule,
        variance,
        time_input="index",
        data_shape=_data_shape(unet.config, variance_type),
        num_bins=256,
        clip_denoised=clip_denoised,
    )
    return model.to(device).eval()


def _data_shape(unet_config: Any, variance_type: str) -> tuple[int, ...]:
    """(in_channels, height, width) of a ``UNet2DModel``'s configuration, after checking that its output channels
    fit the variance type (twice the input's for a learned variance)."""
    size = unet_config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    channels = int(unet_config.in_channels)
    expected_out = 2 * channels if _DIFFUSERS_VARIANCE[variance_type] == "learned_range" else channels
    if int(unet_config.out_channels) != expected_out:
        raise ValueError(
            f"variance_type {variance_type!r} needs a UNet with {expected_out} output channels, "
            f"got out_channels={unet_config.out_channels}"
        )
    return (channels, *size)


def _supported_scheduler(config: Mapping[str, Any], clip_denoised: bool | None) -> tuple[str, bool]:
    """(the scheduler's variance type, whether to clip x^_0): refuse what dpddpm cannot reproduce in float64.

    ``clip_denoised``: the caller's choice, or None to take the scheduler's ``clip_sample``.
    """
    if config.get("prediction_type", "epsilon") != "epsilon":
        raise NotImplementedError(
            f"prediction_type {config['prediction_type']!r} is not supported; dpddpm needs epsilon prediction"
        )
    variance_type = config.get("variance_type", "fixed_small")
    if variance_type not in _DIFFUSERS_VARIANCE:
        raise NotImplementedError(
            f"variance_type {variance_type!r} is not supported; use one of {', '.join(_DIFFUSERS_VARIANCE)}"
        )
    if clip_denoised is None:
        clip_denoised = bool(config.get("clip_sample", True))
        if clip_denoised and float(config.get("clip_sample_range", 1.0)) != 1.0:
            raise NotImplementedError("clip_sample_range other than 1.0 is not supported; pass clip_denoised")
        if config.get("thresholding", False):
            raise NotImplementedError("dynamic thresholding is not supported; pass clip_denoised explicitly")
    return variance_type, clip_denoised
