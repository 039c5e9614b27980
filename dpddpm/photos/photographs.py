"""The source photographs of the tiny-photographs data: where each ships, its licence, its split; reading them.

Nine colour photographs ship inside packages this project can install (no download): seven in scikit-image's
``skimage/data/`` and two in scikit-learn's ``datasets/images/``.
:data:`PHOTOGRAPHS` records, for each, the file, the licence and the licence statement as the package's own files
give it. Left out: the Middlebury motorcycle pair (scikit-image states no licence for it, and the benchmark's
terms are not shipped, so they cannot be checked here), greyscale photographs (camera, coins, ...), synthetic
images and logos.

The splits are by photograph: train, selection and test crops come from disjoint photographs (each
:class:`Photograph` names its split), so the held-out ELBO is held out. Reading the photographs is needed only at
training time (the train split is rebuilt from them) and by ``scripts/make_photo_data.py``.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLITS = ("train", "selection", "test")
#: the shipped files, inside the package: the split files and the record of the photographs and crops
DATA_FOLDER = "data"
METADATA_FILE = "photos.json"
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
        check_split(split)
    return tuple(p for p in PHOTOGRAPHS if split is None or p.split == split)


def check_split(name: str) -> str:
    """``name`` if it is one of :data:`SPLITS`, else a ValueError that lists them."""
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
    """The sha256 of a file's bytes (hex): recorded per photograph, to tell when an installed file changed."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_photograph(photo: Photograph) -> np.ndarray:
    """The photograph as uint8 (H, W, 3), decoded by Pillow."""
    from PIL import Image

    with Image.open(photograph_path(photo)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
