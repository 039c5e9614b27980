"""Load improved-diffusion checkpoints (Nichol & Dhariwal, 2021) from local files.

Nothing here downloads anything: every function reads local paths only.

The checkpoints are plain ``state_dict`` files with no configuration inside, so the architecture is rebuilt
from that codebase's command-line flags: the defaults of its ``model_and_diffusion_defaults()``
(:data:`IMPROVED_DIFFUSION_DEFAULTS`), overridden by a preset for a released checkpoint (:data:`PRESETS`),
overridden by explicit keyword flags.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..model import DDPM
from ..schedule import NoiseSchedule
from .improved_diffusion_flags import (
    _CHANNEL_MULT,
    IMPROVED_DIFFUSION_DEFAULTS,
    PRESETS,
    _check_supported,
    improved_diffusion_flags,
)
from .unet import UNetModel

__all__ = [
    "IMPROVED_DIFFUSION_DEFAULTS",
    "PRESETS",
    "CheckpointMismatchError",
    "improved_diffusion_flags",
    "build_improved_diffusion_unet",
    "load_improved_diffusion",
]


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not match the architecture built from the flags."""


def build_improved_diffusion_unet(preset: str | None = None, **flags: Any) -> UNetModel:
    """The UNet that improved-diffusion's ``create_model`` builds for these flags (random weights).

    Flags are named as that codebase's command-line flags; missing ones take its defaults. Diffusion
    flags (``diffusion_steps``, ``noise_schedule``, ...) are accepted and ignored. Build on the meta device
    (``with torch.device("meta"):``) to inspect shapes without allocating memory.

    Returns:
        a :class:`~dpddpm.external.unet.UNetModel` mapping (B, 3, S, S) and times (B,) to (B, 3 or 6, S, S),
        S = ``image_size``.
    """
    f = improved_diffusion_flags(preset, **flags)
    _check_supported(f)
    size = f["image_size"]
    attention_ds = tuple(size // int(res) for res in f["attention_resolutions"].split(","))
    return UNetModel(
        in_channels=3,
        model_channels=f["num_channels"],
        out_channels=6 if f["learn_sigma"] else 3,
        num_res_blocks=f["num_res_blocks"],
        attention_resolutions=attention_ds,
        dropout=f["dropout"],
        channel_mult=_CHANNEL_MULT[size],
        num_heads=f["num_heads"],
        num_heads_upsample=f["num_heads_upsample"],
        use_scale_shift_norm=f["use_scale_shift_norm"],
    )


def _improved_diffusion_schedule(flags: Mapping[str, Any]) -> NoiseSchedule:
    """improved-diffusion's ``get_named_beta_schedule`` in float64."""
    if flags["noise_schedule"] == "cosine":
        return NoiseSchedule.cosine(flags["diffusion_steps"])
    return NoiseSchedule.linear(flags["diffusion_steps"])  # betas 1e-4 .. 0.02 scaled by 1000 / T


def _looks_truncated(path: Path) -> bool:
    """True for an empty file, or a zip (torch.save's format) whose end-of-archive record is missing."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(4)
        fh.seek(max(0, size - 65_557))  # the end record: 22 bytes plus a comment of up to 65535
        tail = fh.read()
    return size == 0 or (head == b"PK\x03\x04" and b"PK\x05\x06" not in tail)


def _unreadable_checkpoint(path: Path, exc: Exception) -> str:
    """Why torch.load failed on ``path``, in dpddpm's words.

    torch's own text is not passed on: for pickled objects it advises ``weights_only=False``, which runs
    arbitrary code from the file.
    """
    head = f"could not read checkpoint {path} ({path.stat().st_size} bytes)"
    if _looks_truncated(path):
        return f"{head}: the file is truncated or corrupt (it ends before its archive does); download or copy it again"
    refused = re.search(r"GLOBAL (\S+)", str(exc))
    if refused:  # torch's safe unpickler met a Python object that is not a tensor
        return (
            f"{head}: besides tensors it holds a pickled Python object ({refused.group(1)}), e.g. a whole "
            "model or a training checkpoint, not a plain state_dict. dpddpm only reads plain state_dicts: save "
            "one with torch.save(model.state_dict(), path) where the model is defined"
        )
    return f"{head}: it is corrupt or not a file written by torch.save ({type(exc).__name__}); check the path"


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a plain state_dict file; a file that cannot be read or parsed raises an error that says which."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"expected a checkpoint file, got a directory: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (PermissionError, IsADirectoryError, NotADirectoryError) as e:  # the path, not the file's contents
        raise type(e)(f"cannot read checkpoint {path}: {e.strerror or e}; check its permissions") from None
    except Exception as e:  # truncated zip, not a torch file, or pickled objects other than tensors
        raise ValueError(_unreadable_checkpoint(path, e)) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"{path} does not hold a plain state_dict (a mapping of parameter names to tensors), "
            f"got {type(state).__name__}"
        )
    return dict(state)


def _first(items: list[str], n: int = 10) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def _mismatch(
    expected: Mapping[str, torch.Size], state: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """Missing keys, unexpected keys and 'key: checkpoint shape vs model shape' lines."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k])}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k])
    ]
    return missing, unexpected, shapes


def _meta_shapes(flags: Mapping[str, Any]) -> dict[str, torch.Size]:
    with torch.device("meta"):
        net = build_improved_diffusion_unet(**flags)
    return {k: v.shape for k, v in net.state_dict().items()}


def _mismatch_message(
    path: Path, flags: Mapping[str, Any], state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size]
) -> str:
    missing, unexpected, shapes = _mismatch(expected, state)
    lines = [f"checkpoint {path} does not match the UNet built from the flags"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {_first(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {_first(unexpected)}")
    if shapes:
        lines.append(f"  shape mismatches ({len(shapes)}): {_first(shapes)}")
    arch = {
        k: flags[k]
        for k in (
            "image_size",
            "num_channels",
            "num_res_blocks",
            "learn_sigma",
            "attention_resolutions",
            "num_heads",
            "num_heads_upsample",
            "use_scale_shift_norm",
        )
    }
    lines.append(f"  flags tried: {arch}")
    inferred = {}
    if "input_blocks.0.0.weight" in state:
        inferred["num_channels"] = int(state["input_blocks.0.0.weight"].shape[0])
    if "out.2.weight" in state:
        inferred["learn_sigma"] = int(state["out.2.weight"].shape[0]) == 6
    if inferred:
        lines.append(f"  the checkpoint's own shapes suggest: {inferred}")
    if "label_emb.weight" in state:
        lines.append("  hint: the checkpoint has label_emb.weight, so it is class-conditional (not supported)")
    if any(k.startswith("module.") for k in state):
        lines.append("  hint: keys start with 'module.' (a DistributedDataParallel wrapper); strip that prefix")
    matching = [name for name in PRESETS if not any(_mismatch(_meta_shapes(improved_diffusion_flags(name)), state))]
    if matching:
        lines.append(f"  hint: the checkpoint's keys and shapes match preset(s) {', '.join(matching)}")
    lines.append(
        "  Pass the model's training flags (image_size, num_channels, num_res_blocks, learn_sigma, ...) "
        f"or a preset: {', '.join(PRESETS)}"
    )
    return "\n".join(lines)


def _check_values(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    """Refuse weights that are not floating point or not finite: the network would compute nothing sensible."""
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            raise CheckpointMismatchError(
                f"checkpoint {path}: weight {name} has dtype {tensor.dtype}, not floating point; the file is "
                "damaged or not an improved-diffusion checkpoint"
            )
        if not torch.isfinite(tensor).all():
            raise ValueError(f"checkpoint {path}: weight {name} holds NaN or Inf values; the file is damaged")


def load_improved_diffusion(
    path: str | os.PathLike,
    preset: str | None = None,
    *,
    device: str | torch.device = "cpu",
    clip_denoised: bool = True,
    **flags: Any,
) -> DDPM:
    """Load an improved-diffusion checkpoint (a plain state_dict file) as a :class:`~dpddpm.model.DDPM`.

    Args:
        path: the ``.pt`` file, e.g. ``cifar10_uncond_50M_500K.pt``.
        preset: a key of :data:`PRESETS` (the released checkpoints' flags), or None.
        device: where to put the network.
        clip_denoised: clip the predicted x_0 to [-1, 1] (``scripts/image_nll.py``'s default).
        **flags: improved-diffusion command-line flags; they override the preset, which overrides the
            defaults of ``model_and_diffusion_defaults()``.

    Returns:
        a DDPM in eval mode, with variance ``learned_range`` if ``learn_sigma`` else ``fixed_small`` if
        ``sigma_small`` else ``fixed_large``; time input ``(t - 1) * 1000 / T`` if ``rescale_timesteps`` else
        ``t - 1``; data shape (3, image_size, image_size).

    Raises:
        ValueError: an unknown flag or preset, or an unreadable file.
        CheckpointMismatchError: the checkpoint's keys or shapes differ from the built UNet's.
        FileNotFoundError: no file at ``path``.
        NotImplementedError: class-conditional or x_0-predicting models.
    """
    f = improved_diffusion_flags(preset, **flags)
    _check_supported(f)
    path = Path(path)
    state = _read_state_dict(path)
    expected = _meta_shapes(f)
    if any(_mismatch(expected, state)):
        raise CheckpointMismatchError(_mismatch_message(path, f, state, expected))
    _check_values(path, state)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    with torch.device("meta"):  # no random initialisation: the weights are assigned from the file
        net = build_improved_diffusion_unet(**f)
    net.load_state_dict(state, strict=True, assign=True)
    if f["learn_sigma"]:
        variance = "learned_range"
    else:
        variance = "fixed_small" if f["sigma_small"] else "fixed_large"
    model = DDPM(
        net,
        _improved_diffusion_schedule(f),
        variance,
        time_input="rescaled" if f["rescale_timesteps"] else "index",
        data_shape=(3, f["image_size"], f["image_size"]),
        num_bins=256,
        clip_denoised=clip_denoised,
    )
    return model.to(device).eval()
