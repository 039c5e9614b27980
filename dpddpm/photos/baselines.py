"""Anchors for the likelihood of the tiny photographs: what a lossless codec and a trivial model achieve.

All figures are bits per dimension (a dimension is one of the 3 H W 8-bit values of an image), per image, so they
sit beside a DDPM's ELBO on the same images; each comes with its mean and standard error over images.

- :func:`png_bpd`: the whole PNG file that Pillow writes with ``optimize=True`` (zlib at its highest level with
  the best of its filter strategies), 8 bits per byte over 3 H W. The file includes its fixed headers
  (signature, IHDR, IDAT and IEND framing: 57 bytes, 0.15 bits/dim at 32x32), as any stored image would.
- :func:`webp_bpd`: the whole WebP file, lossless mode, ``quality=100, method=6`` (libwebp's greatest effort);
  checked to decode to the same pixels. ``None`` where Pillow has no WebP support.
- :func:`categorical_bpd`: every dimension an independent 256-level categorical fitted on the training images
  with add-one (Laplace) smoothing: p_d(k) = (count_d(k) + 1) / (N + 256); -log2 p of the test images.

``python -m dpddpm.photos.baselines [--size 16]`` computes all three on the test split and writes
``results/photos_baselines.json`` (``results/photos_baselines_16.json``) with every image's value, in the
split's order (the categorical needs the train split, hence scikit-image). A uniform distribution over the 256
levels costs exactly 8 bits/dim.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import numpy as np

from ..baselines import categorical_bpd as shared_categorical_bpd
from ..stats import sem
from .data import IMAGE_SIZE, NUM_BINS, SIZES, shrink, split_uint8


def _per_image(values: list[float] | np.ndarray) -> dict[str, float]:
    """Mean and standard error over images of per-image bits/dim."""
    v = np.asarray(values, dtype=np.float64)
    return {"bpd": float(v.mean()), "stderr": sem(v), "N": int(len(v))}


def _encoded(image: np.ndarray, fmt: str, **options: Any) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format=fmt, **options)
    return buf.getvalue()


def _bits_per_dim(size_bytes: int, image: np.ndarray) -> float:
    return 8.0 * size_bytes / image.size


def png_bpd(images: np.ndarray) -> np.ndarray:
    """Per-image bits/dim of lossless PNG (Pillow, ``optimize=True``) for uint8 (N, H, W, 3) images: (N,)."""
    return np.array([_bits_per_dim(len(_encoded(im, "PNG", optimize=True)), im) for im in images])


def webp_supported() -> bool:
    from PIL import features

    return bool(features.check("webp"))


def webp_bpd(images: np.ndarray) -> np.ndarray | None:
    """Per-image bits/dim of lossless WebP (``quality=100, method=6``) for uint8 (N, H, W, 3): (N,), or None.

    Each file is decoded again and must give back the same pixels (lossless), else a RuntimeError.
    """
    if not webp_supported():
        return None
    from PIL import Image

    out = []
    for im in images:
        data = _encoded(im, "WEBP", lossless=True, quality=100, method=6)
        with Image.open(io.BytesIO(data)) as back:
            if not np.array_equal(np.asarray(back.convert("RGB")), im):
                raise RuntimeError("lossless WebP did not decode to the same pixels")
        out.append(_bits_per_dim(len(data), im))
    return np.array(out)


def categorical_bpd(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Per-image bits/dim of independent per-dimension 256-level categoricals fitted on ``train``, add-one smoothed.

    train, test: uint8 (N, H, W, 3) with the same image shape. Returns (N_test,) float64
    (:func:`dpddpm.baselines.categorical_bpd` on the pixel values).
    """
    return shared_categorical_bpd(train, test, NUM_BINS)


def baselines(split: str = "test", size: int = IMAGE_SIZE, *, with_categorical: bool = True) -> dict[str, Any]:
    """All anchors on one shipped split at ``size`` (32, or 16: the block averages that ``photos_split`` gives):
    PNG, WebP (or None), and the categorical fitted on the train split."""
    from PIL import __version__ as pillow_version
    from PIL import features

    images = shrink(split_uint8(split), size)
    png = png_bpd(images)
    webp = webp_bpd(images)
    out: dict[str, Any] = {
        "split": split,
        "size": size,
        "N": int(len(images)),
        "image_shape": [int(s) for s in images.shape[1:]],
        "png": {**_per_image(png), "settings": "Pillow PNG, optimize=True; whole file bits / (3 H W)"},
        "webp": None
        if webp is None
        else {**_per_image(webp), "settings": "Pillow WebP lossless, quality=100, method=6; whole file bits / (3 H W)"},
        "uniform_bpd": 8.0,
        "encoders": {
            "pillow": pillow_version,
            "zlib": features.version("zlib"),
            "libwebp": features.version("webp"),
        },
        "per_image": {"png": png.tolist(), "webp": None if webp is None else webp.tolist()},
    }
    if with_categorical:
        train = shrink(split_uint8("train"), size)
        cat = categorical_bpd(train, images)
        out["per_image"]["categorical"] = cat.tolist()
        out["categorical"] = {
            **_per_image(cat),
            "settings": "independent 256-level categorical per dimension, add-one smoothing, fitted on the "
            f"train split ({len(train)} images)",
        }
    return out


def main(argv: list[str] | None = None) -> None:
    import json

    from .. import __version__
    from ..files import write_json

    parser = argparse.ArgumentParser(prog="python -m dpddpm.photos.baselines", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="default results/photos_baselines[_16].json")
    parser.add_argument("--split", default="test", choices=("selection", "test"))
    parser.add_argument("--size", type=int, default=IMAGE_SIZE, choices=SIZES)
    args = parser.parse_args(argv)
    if args.out is None:
        suffix = "" if args.size == IMAGE_SIZE else f"_{args.size}"
        args.out = Path(f"results/photos_baselines{suffix}.json")
    result = {"dpddpm_version": __version__, **baselines(args.split, args.size)}
    write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("png", "webp", "categorical")}, indent=1))


if __name__ == "__main__":
    main()
