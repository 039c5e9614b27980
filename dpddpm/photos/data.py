"""Tiny photographs: 32x32 8-bit RGB crops of real photographs that Python packages ship, split by photograph.

**The photographs.** Ten colour photographs ship inside packages this project can install (no download): seven in
scikit-image's ``skimage/data/``, two in scikit-learn's ``datasets/images/`` and one in matplotlib's sample data.
:data:`PHOTOGRAPHS` records, for each, the file, the licence and the licence statement as the package's own files
give it. Left out: the Middlebury motorcycle pair (scikit-image states no licence for it, and the benchmark's
terms are not shipped, so they cannot be checked here), greyscale photographs (camera, coins, ...), synthetic
images and logos.

**The crops.** A crop is a 32x32 window of the photograph after area-filter downsampling (each output pixel is the
exact average of the input area it covers, fractional pixels weighted by their overlap, in float64 on the 8-bit
sRGB values, then rounded): at scale ``n`` the photograph is shrunk so that its short side is exactly ``32 n``
pixels, so one crop spans ``1/n`` of the short side, and the crops lie on a grid centred in the image. The scales
are :data:`SCALES` = 1, 2, 3, 4, 6, 8: from the whole photograph (centre square) down to an eighth of its short
side (about 53 source pixels of a 427-pixel photograph), never finer, so that crops look like tiny photographs of
a scene or an object, not like close-ups of a texture. Crops that are mostly black (more than 90 % of their
pixels at most :data:`DARK_LEVEL` in every channel: the corners of the retina photograph's black surround) are
dropped.

**Counting honestly.** On a grid of stride 32 the crops of one scale do not overlap; crops of different scales
of one photograph do share content (a scale-2 crop shows a quarter of the area of a scale-1 crop, at twice the
detail, and the two may overlap), so they are distinct images but not independent draws. The selection and test
splits use the non-overlapping grid (stride 32): 173 and 366 images. The train split uses the half-overlapping
grid (stride 16: 3534 crops where stride 32 gives 1030): more windows for training, no new scene content; the
model card states both counts.

**The splits, by photograph**: train, selection and test crops come from disjoint photographs
(:data:`PHOTOGRAPHS` says which), so the held-out ELBO is held out. Only three photographs are held out, so the
held-out figures describe those photographs; the card and the chapter must say so.

**At run time** only the shipped files are read (``dpddpm/photos/data/``: ``selection.npz``, ``test.npz``, uint8,
and ``photos.json`` with the photographs, their licences and every image's photograph and crop box), made by
``python scripts/make_photo_data.py``. The train split is rebuilt from the photographs and needs scikit-image
installed (its data folder holds most of them); its checksum must equal the one recorded in ``photos.json``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

IMAGE_SIZE = 32
NUM_BINS = 256
DATA_SHAPE = (3, IMAGE_SIZE, IMAGE_SIZE)
#: a crop at scale n spans 1/n of the photograph's short side
SCALES = (1, 2, 3, 4, 6, 8)
SPLITS = ("train", "selection", "test")
#: image sizes photos_split offers: the shipped 32x32 crops, or their 2x2 block averages
SIZES = (32, 16)
#: crop-grid stride in pixels of the downsampled photograph, per split
STRIDES = {"train": 16, "selection": IMAGE_SIZE, "test": IMAGE_SIZE}
#: a pixel whose three values are at most this level (of 0..255) is black; crops with more than DARK_FRACTION
#: of their pixels black are dropped
DARK_LEVEL = 4  # the retina's surround is 0..2; the deep field's sky is 7..20
DARK_FRACTION = 0.9
#: the shipped files, inside the package
DATA_FOLDER = "data"
METADATA_FILE = "photos.json"
SHIPPED_SPLITS = ("selection", "test")
REINSTALL = "the installation is broken: reinstall dpddpm (in a checkout: pip install -e .)"
TRAINING_EXTRA = "pip install scikit-image (or the training extra of dpddpm, when it has one)"


@dataclass(frozen=True)
class Photograph:
    """One source photograph: where it ships, its licence as the shipping package states it, its split."""

    name: str
    package: str  # the distribution on the package index
    module: str  # the importable package whose folder holds the file
    file: str  # path of the file inside that folder
    licence: str
    statement: str  # the licence statement, quoted (abridged) from the package's own files
    stated_in: str  # which of the package's files states it
    attribution: str  # what a user must credit ("" when nothing is required)
    split: str


_SKIMAGE_DOC = "skimage/data/_fetchers.py (docstring of skimage.data.{})"
PHOTOGRAPHS: tuple[Photograph, ...] = (
    Photograph(
        "astronaut",
        "scikit-image",
        "skimage",
        "data/astronaut.png",
        "public domain",
        "No known copyright restrictions, released into the public domain. (NASA Great Images database)",
        _SKIMAGE_DOC.format("astronaut"),
        "",
        "train",
    ),
    Photograph(
        "coffee",
        "scikit-image",
        "skimage",
        "data/coffee.png",
        "CC0",
        "No copyright restrictions. CC0 by the photographer (Rachel Michetti).",
        _SKIMAGE_DOC.format("coffee"),
        "",
        "train",
    ),
    Photograph(
        "rocket",
        "scikit-image",
        "skimage",
        "data/rocket.jpg",
        "public domain",
        "The image was captured by SpaceX and released in the public domain.",
        _SKIMAGE_DOC.format("rocket"),
        "",
        "train",
    ),
    Photograph(
        "hubble_deep_field",
        "scikit-image",
        "skimage",
        "data/hubble_deep_field.jpg",
        "public domain",
        "The image was captured by NASA and may be freely used in the public domain.",
        _SKIMAGE_DOC.format("hubble_deep_field"),
        "",
        "train",
    ),
    Photograph(
        "retina",
        "scikit-image",
        "skimage",
        "data/retina.jpg",
        "CC0 1.0",
        "This file is made available under the Creative Commons CC0 1.0 Universal Public Domain Dedication. "
        "(Mikael Häggström, via Wikimedia Commons)",
        _SKIMAGE_DOC.format("retina"),
        "",
        "train",
    ),
    Photograph(
        "immunohistochemistry",
        "scikit-image",
        "skimage",
        "data/ihc.png",
        "no known copyright restrictions",
        "No known copyright restrictions. (Center for Microscopy And Molecular Imaging)",
        _SKIMAGE_DOC.format("immunohistochemistry"),
        "",
        "train",
    ),
    Photograph(
        "flower",
        "scikit-learn",
        "sklearn",
        "datasets/images/flower.jpg",
        "CC BY 2.0",
        "Released under a creative commons license. https://creativecommons.org/licenses/by/2.0/ "
        "Attribution: Some rights reserved by danielbuechele. Retrieved 21st August, 2011 from "
        "https://www.flickr.com/photos/vultilion/6056698931/ by Robert Layton",
        "sklearn/datasets/images/README.txt",
        "flower.jpg: Flickr photo 6056698931 of https://www.flickr.com/photos/vultilion/ (the README names "
        "danielbuechele but links vultilion's photostream), CC BY 2.0, via scikit-learn; downsampled and cropped",
        "selection",
    ),
    Photograph(
        "chelsea",
        "scikit-image",
        "skimage",
        "data/chelsea.png",
        "CC0",
        "No copyright restrictions. CC0 by the photographer (Stefan van der Walt).",
        _SKIMAGE_DOC.format("chelsea"),
        "",
        "test",
    ),
    Photograph(
        "china",
        "scikit-learn",
        "sklearn",
        "datasets/images/china.jpg",
        "CC BY 2.0",
        "Released under a creative commons license. https://creativecommons.org/licenses/by/2.0/ "
        "Attribution: Some rights reserved by danielbuechele. Retrieved 21st August, 2011 from "
        "https://www.flickr.com/photos/danielbuechele/6061409035/ by Robert Layton",
        "sklearn/datasets/images/README.txt",
        "china.jpg: Flickr photo 6061409035 by danielbuechele, CC BY 2.0, via scikit-learn; downsampled and cropped",
        "test",
    ),
)


def photographs(split: str | None = None) -> tuple[Photograph, ...]:
    """The photographs of one split (all of them when ``split`` is None), in :data:`PHOTOGRAPHS` order."""
    if split is not None:
        _check_split(split)
    return tuple(p for p in PHOTOGRAPHS if split is None or p.split == split)


def _check_split(name: str) -> str:
    if name not in SPLITS:
        raise ValueError(f"unknown photos split {name!r}; known: {', '.join(SPLITS)}")
    return name


# ---------------------------------------------------------------------------------------------------------------
# Reading the photographs (training time and scripts/make_photo_data.py only)


def photograph_path(photo: Photograph) -> Path:
    """The photograph's file inside its installed package; a clear error names the package to install."""
    spec = importlib.util.find_spec(photo.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the photograph {photo.name!r} ships with {photo.package}, which is not installed; "
            f"building the photos train split needs it: {TRAINING_EXTRA}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / photo.file
    if not path.is_file():
        raise FileNotFoundError(
            f"the photograph {photo.name!r} is not in the installed {photo.package} ({path}); "
            f"the splits were made with the versions recorded in dpddpm/photos/data/{METADATA_FILE}"
        )
    return path


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_photograph(photo: Photograph) -> np.ndarray:
    """The photograph as uint8 (H, W, 3), decoded by Pillow."""
    from PIL import Image

    with Image.open(photograph_path(photo)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


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


def build_split(name: str, stride: int | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Build a split from the photographs (needs the packages that ship them): uint8 (N, 32, 32, 3), records."""
    stride = STRIDES[_check_split(name)] if stride is None else stride
    parts = [photo_crops(p, load_photograph(p), stride) for p in photographs(name)]
    return np.concatenate([c for c, _ in parts]), [r for _, rs in parts for r in rs]


def images_sha256(images: np.ndarray) -> str:
    """Checksum of a uint8 (N, 32, 32, 3) array's bytes (C order), to check a rebuilt split."""
    return hashlib.sha256(np.ascontiguousarray(images, dtype=np.uint8).tobytes()).hexdigest()


def count_non_overlapping(photo: Photograph, image: np.ndarray) -> dict[int, int]:
    """Crops per scale on the non-overlapping grid (stride 32), dark crops excluded: the honest count."""
    crops, records = photo_crops(photo, image, IMAGE_SIZE)
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


# ---------------------------------------------------------------------------------------------------------------
# Run time: the shipped files


def _shipped(filename: str):
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
    if _check_split(name) in SHIPPED_SPLITS:
        from ..files import npz_arrays

        with resources.as_file(_shipped(f"{name}.npz")) as path:
            images = npz_arrays(path, ["images"])["images"]
        expected = photos_metadata()["splits"][name]["sha256"]
    else:
        images, _ = build_split(name)
        expected = photos_metadata()["splits"][name]["sha256"]
        if images_sha256(images) != expected:
            raise ValueError(
                "the photos train split rebuilt from the installed packages differs from the one recorded in "
                f"dpddpm/photos/{DATA_FOLDER}/{METADATA_FILE} (other photograph files or another JPEG decoder); "
                "install the package versions recorded there, or re-make the data with scripts/make_photo_data.py"
            )
    if images.dtype != np.uint8 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"the photos {name} split has dtype {images.dtype} and shape {images.shape}; {REINSTALL}")
    if name in SHIPPED_SPLITS and images_sha256(images) != expected:
        raise ValueError(f"the bundled photos {name} split does not match its checksum; {REINSTALL}")
    images.setflags(write=False)
    return images


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
    if _check_split(name) not in SHIPPED_SPLITS:
        raise ValueError(f"per-image records ship for {', '.join(SHIPPED_SPLITS)} only, not {name!r}")
    return photos_metadata()["splits"][name]["images"]
