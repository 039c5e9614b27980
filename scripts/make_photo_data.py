"""Make the shipped photo splits: ``python scripts/make_photo_data.py`` (needs scikit-image installed).

Writes into ``dpddpm/photos/data/``:

- ``selection.npz`` and ``test.npz``: ``images``, uint8 (N, 32, 32, 3), the crops of the held-out photographs;
- ``photos.json``: the photographs (package, file, size, sha256, licence and its statement, split, crops per
  scale), the crop grid, the package versions used, every shipped image's photograph and crop box, and the
  checksum of each split (the train split is not shipped: ``dpddpm.photos.data`` rebuilds it and checks it).

The photographs are defined in :mod:`dpddpm.photos.photographs` and the crops in :mod:`dpddpm.photos.crops`;
this script only builds them and writes the files.
"""

from __future__ import annotations

import argparse
import io
from importlib import metadata
from pathlib import Path

import numpy as np

from dpddpm.files import atomic_write, write_json
from dpddpm.photos import data as D

OUT = Path(__file__).resolve().parent.parent / "dpddpm" / "photos" / D.DATA_FOLDER


def _versions() -> dict[str, str]:
    names = sorted({p.package for p in D.PHOTOGRAPHS} | {"pillow", "numpy"})
    return {name: metadata.version(name) for name in names}


def _write_npz(path: Path, images: np.ndarray) -> None:
    def write(fh) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, images=images)
        fh.write(buf.getvalue())

    atomic_write(path, write)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT})")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    splits = {}
    for name in D.SPLITS:
        images, records = D.build_split(name)
        entry = {
            "photographs": [p.name for p in D.photographs(name)],
            "stride": D.STRIDES[name],
            "N": int(len(images)),
            "sha256": D.images_sha256(images),
        }
        if name in D.SHIPPED_SPLITS:
            _write_npz(args.out / f"{name}.npz", images)
            entry["file"] = f"{name}.npz"
            entry["images"] = records
        splits[name] = entry
        print(f"{name}: {len(images)} images from {', '.join(entry['photographs'])}")
    photos = [D.photograph_record(p) for p in D.PHOTOGRAPHS]
    meta = {
        "format": 1,
        "made_by": "scripts/make_photo_data.py",
        "image_size": D.IMAGE_SIZE,
        "num_bins": D.NUM_BINS,
        "layout": "images: uint8 (N, H, W, 3), RGB; the model scale is x / 127.5 - 1, channels first",
        "scales": list(D.SCALES),
        "scale_meaning": "a crop at scale n spans 1/n of the photograph's short side: the photograph is area-"
        "downsampled so that its short side is 32 n pixels, and 32x32 crops are taken on a centred grid",
        "strides": D.STRIDES,
        "dark_filter": f"crops with more than {D.DARK_FRACTION:.0%} of pixels at most {D.DARK_LEVEL} in every "
        "channel are dropped",
        "box": "[left, top, right, bottom] in the original photograph's pixel coordinates",
        "versions": _versions(),
        "photographs": photos,
        "non_overlapping_total": {
            split: sum(sum(p["non_overlapping_crops"].values()) for p in photos if p["split"] == split)
            for split in D.SPLITS
        },
        "splits": splits,
    }
    write_json(args.out / D.METADATA_FILE, meta)
    print("non-overlapping crops per split:", meta["non_overlapping_total"])


if __name__ == "__main__":
    main()
