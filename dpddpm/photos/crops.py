"""The crops of the tiny photographs: area-filter downsampling, the crop grid, and building a split from them.

A crop is a 32x32 window of the photograph after area-filter downsampling (each output pixel is the exact
average of the input area it covers, fractional pixels weighted by their overlap, in float64 on the 8-bit sRGB
values, then rounded): at scale ``n`` the photograph is shrunk so that its short side is exactly ``32 n`` pixels,
so one crop spans ``1/n`` of the short side, and the crops lie on a grid centred in the image. The scales are
:data:`SCALES` = 1, 2, 3, 4, 6, 8: from the whole photograph (centre square) down to an eighth of its short side
(about 53 source pixels of a 427-pixel photograph), never finer, so that crops look like tiny photographs of a
scene or an object, not like close-ups of a texture. Crops that are mostly black (more than 90 % of their pixels
at most :data:`DARK_LEVEL` in every channel: the corners of the retina photograph's black surround) are dropped.

**Counting honestly.** On a grid of stride 32 the crops of one scale do not overlap; crops of different scales
of one photograph do share content (a scale-2 crop shows a quarter of the area of a scale-1 crop, at twice the
detail, and the two may overlap), so they are distinct images but not independent draws. The selection and test
splits use the non-overlapping grid (stride 32); the train split the half-overlapping grid (stride 16: more
windows for training, no new scene content). :func:`count_non_overlapping` gives the honest count.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict
from typing import Any

import numpy as np

from .photographs import Photograph, check_split, file_sha256, load_photograph, photograph_path, photographs

IMAGE_SIZE = 32
#: a crop at scale n spans 1/n of the photograph's short side
SCALES = (1, 2, 3, 4, 6, 8)
#: crop-grid stride in pixels of the downsampled photograph, per split
STRIDES = {"train": 16, "selection": IMAGE_SIZE, "test": IMAGE_SIZE}
#: a pixel whose three values are at most this level (of 0..255) is black; crops with more than DARK_FRACTION
#: of their pixels black are dropped
DARK_LEVEL = 4  # the retina's surround is 0..2; the deep field's sky is 7..20
DARK_FRACTION = 0.9


# ---------------------------------------------------------------------------------------------------------------
# Area-filter downsampling and the crop grid


def area_weights(n_in: int, n_out: int, factor: float) -> np.ndarray:
    """(n_out, n_in) float64: output pixel i averages the input interval [i f, (i + 1) f), weighted by overlap.

    Each row sums to 1 (the interval lies inside [0, n_in) because n_out <= n_in / f).
    """
    lo = np.arange(n_out)[:, None] * factor  # (n_out, 1)
    j = np.arange(n_in)[None, :]  # (1, n_in)
    overlap = np.minimum(lo + factor, j + 1.0) - np.maximum(lo, j)
    return np.clip(overlap, 0.0, None) / factor


def area_downsample(image: np.ndarray, short_side: int) -> np.ndarray:
    """Shrink uint8 (H, W, 3) by one factor so that its short side is exactly ``short_side``; uint8 (h, w, 3).

    The factor is min(H, W) / short_side (>= 1); the long side becomes floor(long / factor).
    """
    H, W = image.shape[:2]
    factor = min(H, W) / short_side
    if factor < 1.0:
        raise ValueError(f"a {H}x{W} photograph cannot be shrunk to a short side of {short_side}: it would grow")
    h, w = (int(math.floor(s / factor + 1e-9)) for s in (H, W))  # the short side: exactly short_side
    rows, cols = area_weights(H, h, factor), area_weights(W, w, factor)
    out = np.tensordot(rows, image.astype(np.float64), axes=(1, 0))  # (h, W, 3)
    out = np.tensordot(out, cols, axes=(1, 1)).transpose(0, 2, 1)  # (h, 3, w) -> (h, w, 3)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def grid_starts(length: int, stride: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """Start offsets of the crops along one axis: as many as fit at ``stride``, the grid centred."""
    count = (length - size) // stride + 1
    offset = (length - (size + (count - 1) * stride)) // 2
    return offset + stride * np.arange(count)


def photo_crops(photo: Photograph, image: np.ndarray, stride: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Every crop of one photograph at every scale: uint8 (n, 32, 32, 3) and one record per crop.

    A record gives the photograph, the scale, the grid position, and the crop box in the original photograph's
    pixel coordinates ``[left, top, right, bottom]`` (fractional: the area filter's footprint).
    """
    crops, records = [], []
    H, W = image.shape[:2]
    for n in SCALES:
        small = area_downsample(image, IMAGE_SIZE * n)
        factor = min(H, W) / (IMAGE_SIZE * n)
        for i, top in enumerate(grid_starts(small.shape[0], stride)):
            for j, left in enumerate(grid_starts(small.shape[1], stride)):
                crop = small[top : top + IMAGE_SIZE, left : left + IMAGE_SIZE]
                if (crop.max(axis=2) <= DARK_LEVEL).mean() > DARK_FRACTION:
                    continue
                box = [float(left), float(top), float(left + IMAGE_SIZE), float(top + IMAGE_SIZE)]
                records.append(
                    {
                        "photo": photo.name,
                        "scale": n,
                        "grid": [i, j],
                        "box": [round(b * factor, 2) for b in box],
                    }
                )
                crops.append(crop)
    empty = np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    return (np.stack(crops) if crops else empty), records


# ---------------------------------------------------------------------------------------------------------------
# Building the splits and the photographs' records (scripts/make_photo_data.py, and the train split at run time)


def build_split(name: str, stride: int | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Build a split from the photographs (needs the packages that ship them): uint8 (N, 32, 32, 3), records."""
    stride = STRIDES[check_split(name)] if stride is None else stride
    parts = [photo_crops(p, load_photograph(p), stride) for p in photographs(name)]
    return np.concatenate([c for c, _ in parts]), [r for _, rs in parts for r in rs]


def images_sha256(images: np.ndarray) -> str:
    """Checksum of a uint8 (N, 32, 32, 3) array's bytes (C order), to check a rebuilt split."""
    return hashlib.sha256(np.ascontiguousarray(images, dtype=np.uint8).tobytes()).hexdigest()


def count_non_overlapping(photo: Photograph, image: np.ndarray) -> dict[int, int]:
    """Crops per scale on the non-overlapping grid (stride 32), dark crops excluded: the honest count."""
    _, records = photo_crops(photo, image, IMAGE_SIZE)
    return {n: sum(r["scale"] == n for r in records) for n in SCALES}


def photograph_record(photo: Photograph) -> dict[str, Any]:
    """The photograph's entry in ``photos.json`` and in model cards (licence, file, size, checksum)."""
    path = photograph_path(photo)
    image = load_photograph(photo)
    return {
        **asdict(photo),
        "size": [int(image.shape[1]), int(image.shape[0])],  # width, height
        "sha256": file_sha256(path),
        "non_overlapping_crops": {str(k): v for k, v in count_non_overlapping(photo, image).items()},
    }
