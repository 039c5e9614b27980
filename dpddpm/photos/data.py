"""Tiny photographs: 32x32 8-bit RGB crops of real photographs that Python packages ship, split by photograph.

The data are made in three steps, each in its own module:

- :mod:`dpddpm.photos.photographs`: the photographs (:data:`PHOTOGRAPHS`), where each ships, its licence and the
  statement of it, and its split; reading them from the installed packages.
- :mod:`dpddpm.photos.crops`: the crops, 32x32 windows of the area-downsampled photograph at the scales
  :data:`SCALES`, on a centred grid, mostly black crops dropped; building a split from them.
- this module: the splits at run time, from the files shipped inside the package.

**The splits, by photograph**: train, selection and test crops come from disjoint photographs
(:data:`PHOTOGRAPHS` says which), so the held-out ELBO is held out. Only three photographs are held out, so the
held-out figures describe those photographs; the card and the chapter must say so. The selection and test splits
use the non-overlapping grid (stride 32): 173 and 366 images. The train split uses the half-overlapping grid
(stride 16: 3534 crops where stride 32 gives 1030): more windows for training, no new scene content; the model
card states both counts.

**At run time** only the shipped files are read (``dpddpm/photos/data/``: ``selection.npz``, ``test.npz``, uint8,
and ``photos.json`` with the photographs, their licences and every image's photograph and crop box), made by
``python scripts/make_photo_data.py``. The train split is rebuilt from the photographs and needs scikit-image
installed (its data folder holds most of them); its checksum must equal the one recorded in ``photos.json``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .crops import (
    DARK_FRACTION,
    DARK_LEVEL,
    IMAGE_SIZE,
    SCALES,
    STRIDES,
    area_downsample,
    area_weights,
    build_split,
    count_non_overlapping,
    grid_starts,
    images_sha256,
    photo_crops,
    photograph_record,
)
from .photographs import (
    DATA_FOLDER,
    METADATA_FILE,
    PHOTOGRAPHS,
    SPLITS,
    TRAINING_EXTRA,
    Photograph,
    check_split,
    file_sha256,
    load_photograph,
    photograph_path,
    photographs,
)

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

NUM_BINS = 256
DATA_SHAPE = (3, IMAGE_SIZE, IMAGE_SIZE)
#: image sizes photos_split offers: the shipped 32x32 crops, or their 2x2 block averages
SIZES = (32, 16)
SHIPPED_SPLITS = ("selection", "test")
REINSTALL = "the installation is broken: reinstall dpddpm (in a checkout: pip install -e .)"

__all__ = [  # what this module held before its split stays importable from here
    "DARK_FRACTION",
    "DARK_LEVEL",
    "DATA_FOLDER",
    "DATA_SHAPE",
    "IMAGE_SIZE",
    "METADATA_FILE",
    "NUM_BINS",
    "PHOTOGRAPHS",
    "REINSTALL",
    "SCALES",
    "SHIPPED_SPLITS",
    "SIZES",
    "SPLITS",
    "STRIDES",
    "TRAINING_EXTRA",
    "Photograph",
    "area_downsample",
    "area_weights",
    "build_split",
    "check_split",
    "count_non_overlapping",
    "file_sha256",
    "grid_starts",
    "images_sha256",
    "load_photograph",
    "photo_crops",
    "photograph_path",
    "photograph_record",
    "photographs",
    "photos_metadata",
    "photos_split",
    "shrink",
    "split_records",
    "split_uint8",
    "to_model_scale",
]


def _shipped(filename: str) -> Traversable:
    """A file of ``dpddpm/photos/data/`` inside the installed package; a clear error when it is missing."""
    res = resources.files("dpddpm.photos").joinpath(DATA_FOLDER, filename)
    if not res.is_file():
        raise FileNotFoundError(f"the bundled file dpddpm/photos/{DATA_FOLDER}/{filename} is missing; {REINSTALL}")
    return res


@lru_cache(maxsize=1)
def photos_metadata() -> dict[str, Any]:
    """The parsed ``photos.json``: photographs with licences, the crop grid, every shipped image's record."""
    return json.loads(_shipped(METADATA_FILE).read_text(encoding="utf-8"))


@lru_cache(maxsize=len(SPLITS))
def split_uint8(name: str) -> np.ndarray:
    """One split as uint8 (N, 32, 32, 3): selection and test from the shipped files, train rebuilt.

    The train split needs scikit-image (see the module docstring) and is checked against the checksum recorded
    when the shipped files were made.
    """
    if check_split(name) in SHIPPED_SPLITS:
        from ..npzread import npz_arrays

        with resources.as_file(_shipped(f"{name}.npz")) as path:
            images = npz_arrays(path, ["images"])["images"]
    else:
        images, _ = build_split(name)
    if images.dtype != np.uint8 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"the photos {name} split has dtype {images.dtype} and shape {images.shape}; {REINSTALL}")
    if images_sha256(images) != photos_metadata()["splits"][name]["sha256"]:
        raise ValueError(_checksum_mismatch(name))
    images.setflags(write=False)
    return images


def _checksum_mismatch(name: str) -> str:
    """Why a split does not match its recorded checksum, and what to do."""
    if name in SHIPPED_SPLITS:
        return f"the bundled photos {name} split does not match its checksum; {REINSTALL}"
    return (
        "the photos train split rebuilt from the installed packages differs from the one recorded in "
        f"dpddpm/photos/{DATA_FOLDER}/{METADATA_FILE} (other photograph files or another JPEG decoder); "
        "install the package versions recorded there, or re-make the data with scripts/make_photo_data.py"
    )


def to_model_scale(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) on the 256 levels of [-1, 1]: ``x / 127.5 - 1``."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float()  # a writable copy
    return (x / 127.5 - 1.0).contiguous()


def shrink(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, 32, 32, 3) -> uint8 (N, size, size, 3) by block averaging (the area filter), rounded.

    ``size`` must divide 32 (16 gives the same crop boxes at half the resolution: the 16x16 option of
    :func:`photos_split`, for machines where 32x32 costs too much).
    """
    if size not in SIZES:
        raise ValueError(f"photos image size must be one of {SIZES}, got {size!r}")
    if size == IMAGE_SIZE:
        return images
    f = IMAGE_SIZE // size
    blocks = images.reshape(len(images), size, f, size, f, 3).astype(np.float64).mean(axis=(2, 4))
    return np.clip(np.rint(blocks), 0, 255).astype(np.uint8)


def photos_split(name: str, size: int = IMAGE_SIZE) -> torch.Tensor:
    """One split as float32 (N, 3, size, size) in [-1, 1] on the 256-level grid (``size`` 32, or 16).

    ``"selection"`` and ``"test"`` come from files inside the package; ``"train"`` is rebuilt from the
    photographs and needs scikit-image installed.
    """
    return to_model_scale(shrink(split_uint8(name), size))


def split_records(name: str) -> list[dict[str, Any]]:
    """Per-image records (photograph, scale, grid position, crop box) of a shipped split, in image order."""
    if check_split(name) not in SHIPPED_SPLITS:
        raise ValueError(f"per-image records ship for {', '.join(SHIPPED_SPLITS)} only, not {name!r}")
    return photos_metadata()["splits"][name]["images"]
