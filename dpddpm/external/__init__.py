"""Adapters to outside code and data: improved-diffusion checkpoints and its UNet, diffusers folders and timestep
exports, and image data sets from local files. Nothing here downloads anything."""

from .diffusers_export import diffusers_scheduler_config, to_diffusers_timesteps
from .diffusers_loader import diffusers_schedule, load_diffusers
from .images import load_images
from .improved_diffusion import (
    IMPROVED_DIFFUSION_DEFAULTS,
    PRESETS,
    CheckpointMismatchError,
    build_improved_diffusion_unet,
    improved_diffusion_flags,
    load_improved_diffusion,
)
from .unet import UNetModel

__all__ = [
    "IMPROVED_DIFFUSION_DEFAULTS",
    "PRESETS",
    "CheckpointMismatchError",
    "UNetModel",
    "build_improved_diffusion_unet",
    "diffusers_schedule",
    "diffusers_scheduler_config",
    "improved_diffusion_flags",
    "load_diffusers",
    "load_images",
    "load_improved_diffusion",
    "to_diffusers_timesteps",
]
