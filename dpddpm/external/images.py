"""Real image data sets from local files (nothing is downloaded), as float32 (N, C, H, W) in [-1, 1].

Every loader maps 8-bit values x in 0..255 to ``x / 127.5 - 1`` (256 levels, the scaling improved-diffusion
uses). Supported inputs, chosen by :func:`load_images` from what the path is:

- a CIFAR-10 python folder (``cifar-10-batches-py``: ``data_batch_1..5``, ``test_batch``), split "train"/"test";
- a downsampled-ImageNet ``.npz`` (key ``"data"``, uint8 (N, 12288) in CHW order, or (N, 64, 64, 3) HWC);
- any ``.npz`` of uint8 images (the key given as ``split``, or its single array), HWC or CHW detected;
- a folder of PNG files (read with Pillow), all the same size, RGB or grayscale.
"""

from __future__ import annotations

import contextlib
import pickle
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..npzread import npz_arrays

CIFAR_SPLITS = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
IMAGE_SUFFIXES = (".png",)
CIFAR_FIX = "extract cifar-10-python.tar.gz again (https://www.cs.toronto.edu/~kriz/cifar.html)"

#: errors of opening a path at all, as opposed to parsing what it holds
_ACCESS_ERRORS = (PermissionError, IsADirectoryError, NotADirectoryError, FileNotFoundError)
#: what numpy, zipfile, pickle and Pillow raise on truncated or corrupt bytes (Pillow: OSError, SyntaxError;
#: pickle: TypeError, IndexError, KeyError, AttributeError when allowed globals are called with bad arguments)
_CORRUPT_ERRORS = (
    OSError,
    ValueError,
    EOFError,
    SyntaxError,
    TypeError,
    IndexError,
    KeyError,
    AttributeError,
    RecursionError,
    OverflowError,
    zipfile.BadZipFile,
    zlib.error,
    pickle.UnpicklingError,
)
#: the most pixels one PNG may have (8192 x 8192): larger is no DDPM's data, and may be a decompression bomb
MAX_PNG_PIXELS = 8192 * 8192
#: the largest CIFAR-10 batch file (bytes): a real one is 31 MB
MAX_CIFAR_BATCH_BYTES = 256 * 2**20


class _Refused(ValueError):
    """A readable file that dpddpm refuses to load (too large): passed through :func:`_reading` unchanged."""


@contextlib.contextmanager
def _reading(path: Path, what: str, fix: str) -> Iterator[None]:
    """Report a file that cannot be opened, or parsed as ``what``, by its name and with ``fix``.

    Wrap only the library calls that read bytes, so that dpddpm's own ValueErrors pass through unchanged.
    """
    try:
        yield
    except _Refused:
        raise
    except _ACCESS_ERRORS as exc:  # the path itself: never call such a file corrupt
        raise type(exc)(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except _CORRUPT_ERRORS as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path} is not a readable {what} ({reason}): it is truncated or corrupt; {fix}") from None
    except Exception as exc:  # Pillow's DecompressionBombError: an image too large to decode safely
        if type(exc).__name__ != "DecompressionBombError":
            raise
        raise ValueError(f"{path} is too large an image to decode safely ({exc}); {fix}") from None


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a CIFAR batch needs nothing else, and refusing every
    other class means a malicious file cannot run code while it is read."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it asks to load {module}.{name}, which a CIFAR-10 batch never holds")
        return super().find_class(module, name)


def to_unit_range(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, C, H, W) in 0..255 -> float32 (N, C, H, W) in [-1, 1] (``x / 127.5 - 1``)."""
    if images.dtype != np.uint8:
        raise ValueError(f"expected 8-bit images (uint8), got dtype {images.dtype}")
    return torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0)


def _limit(images: np.ndarray, limit: int | None) -> np.ndarray:
    if limit is None:
        return images
    if int(limit) < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    return images[: int(limit)]


def _to_nchw(arr: np.ndarray, source: str) -> np.ndarray:
    """uint8 images in any common layout -> (N, C, H, W).

    Accepts (N, H, W) grayscale, (N, H, W, C) or (N, C, H, W) with C in {1, 3, 4}, and flat (N, 3 S^2) rows in
    CHW order (CIFAR-10 and the official downsampled-ImageNet files).
    """
    if arr.ndim == 2:  # flat rows, CHW order
        d = arr.shape[1]
        side = int(round((d / 3) ** 0.5))
        if 3 * side * side != d:
            raise ValueError(f"{source}: cannot read flat rows of length {d} as 3 x S x S images")
        return arr.reshape(-1, 3, side, side)
    if arr.ndim == 3:
        return arr[:, None]
    if arr.ndim == 4:
        if arr.shape[-1] in (1, 3, 4) and arr.shape[1] not in (1, 3, 4):
            return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))
        if arr.shape[1] in (1, 3, 4):
            return arr
        raise ValueError(f"{source}: cannot tell the channel axis of images of shape {arr.shape}")
    raise ValueError(f"{source}: expected images of 2 to 4 dimensions, got shape {arr.shape}")


def load_cifar10(folder: str | Path, split: str = "train", limit: int | None = None) -> torch.Tensor:
    """CIFAR-10 from its python batches: (50000 or 10000, 3, 32, 32) float32 in [-1, 1], in file order."""
    folder = Path(folder)
    if split not in CIFAR_SPLITS:
        raise ValueError(f"CIFAR-10 split must be one of {list(CIFAR_SPLITS)}, got {split!r}")
    parts, total = [], 0
    for name in CIFAR_SPLITS[split]:
        path = folder / name
        if not path.exists():
            raise FileNotFoundError(f"CIFAR-10 batch {path} is missing; {CIFAR_FIX}")
        if path.is_file() and path.stat().st_size > MAX_CIFAR_BATCH_BYTES:
            raise ValueError(f"{path} is far larger than a CIFAR-10 python batch; {CIFAR_FIX}")
        with _reading(path, "CIFAR-10 python batch", CIFAR_FIX), open(path, "rb") as fh:
            try:
                batch = _ArrayUnpickler(fh, encoding="bytes").load()
            except MemoryError:  # a damaged length field: the batch file itself is bounded in size
                raise pickle.UnpicklingError("a length field asks for more memory than the file holds") from None
        if not isinstance(batch, dict) or b"data" not in batch:
            raise ValueError(f"{path} is not a CIFAR-10 python batch (no b'data' entry); {CIFAR_FIX}")
        data = batch[b"data"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1:] != (3072,):
            what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise ValueError(f"{path}: its b'data' entry is {what}, not uint8 rows of 3072 pixels; {CIFAR_FIX}")
        if len(data) == 0:
            raise ValueError(f"{path} holds no images; {CIFAR_FIX}")
        parts.append(data)
        total += len(parts[-1])
        if limit is not None and total >= limit:
            break
    return to_unit_range(_limit(_to_nchw(np.concatenate(parts), str(folder)), limit))


def load_npz(path: str | Path, key: str | None = None, limit: int | None = None) -> torch.Tensor:
    """uint8 images from an ``.npz`` file: ``key``, else ``"data"`` (downsampled ImageNet), else its only array."""
    path = Path(path)
    fix = "copy it again, or re-create it with np.savez"
    with _reading(path, ".npz file", fix), zipfile.ZipFile(path) as archive:  # names first, arrays unread
        names = [n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy")]
    if key is None:
        if "data" in names:
            key = "data"
        elif len(names) == 1:
            key = names[0]
        else:
            raise ValueError(f"{path} holds several arrays ({', '.join(names)}); say which one (split=KEY)")
    if key not in names:
        raise ValueError(f"{path} has no array {key!r}; it holds {', '.join(names) or 'none'}")
    # npz_arrays checks the header's declared size against the file before allocating anything
    with _reading(path, ".npz file", fix):
        arr = npz_arrays(path, [key])[key]
    if arr.dtype != np.uint8:
        raise ValueError(f"{path}: array {key!r} has dtype {arr.dtype}; expected 8-bit images (uint8)")
    if arr.shape and arr.shape[0] == 0:
        raise ValueError(f"{path}: array {key!r} holds no images")
    return to_unit_range(_limit(_to_nchw(arr, str(path)), limit))


def load_png_folder(folder: str | Path, limit: int | None = None) -> torch.Tensor:
    """Every ``*.png`` in ``folder`` (sorted by name), all the same size; grayscale -> 1 channel, else RGB."""
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("reading PNG folders needs Pillow: pip install pillow") from exc
    folder = Path(folder)
    with _reading(folder, "folder", "check its permissions"):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder} holds no PNG files")
    if limit is not None:
        files = files[: int(limit)]
    images, first = [], None
    for p in files:
        with _reading(p, "PNG image", "replace it, or remove it from the folder"), Image.open(p) as im:
            if im.width * im.height > MAX_PNG_PIXELS:  # the header alone is read so far: refuse before decoding
                raise _Refused(
                    f"{p} is {im.width} x {im.height} pixels, more than {MAX_PNG_PIXELS} (a decompression bomb, or "
                    "not a data set's image); remove it from the folder"
                )
            gray = im.mode in ("1", "L", "I", "I;16", "LA")
            arr = np.asarray(im.convert("L" if gray else "RGB"), dtype=np.uint8)
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        if first is None:
            first = (p, arr.shape)
        elif arr.shape != first[1]:
            raise ValueError(f"inconsistent image sizes: {first[0]} is {first[1]} (C, H, W) but {p} is {arr.shape}")
        images.append(arr)
    return to_unit_range(np.stack(images))


def is_cifar10_folder(path: str | Path) -> bool:
    """True for a ``cifar-10-batches-py`` folder, or a folder that holds one."""
    path = Path(path)
    return path.is_dir() and any(
        (d / n).exists() for d in (path, path / "cifar-10-batches-py") for n in ("data_batch_1", "test_batch")
    )


def load_images(path: str | Path, *, split: str | None = None, limit: int | None = None) -> torch.Tensor:
    """Load images from ``path``, whatever it is, as float32 (N, C, H, W) in [-1, 1].

    Args:
        path: a CIFAR-10 python folder, an ``.npz`` file, or a folder of PNG files.
        split: CIFAR-10: "train" (default) or "test"; ``.npz``: the array's key (default "data" or the only one).
        limit: keep only the first ``limit`` images.
    Raises:
        FileNotFoundError: nothing at ``path``.
        PermissionError, IsADirectoryError: a file that cannot be opened (the message names it).
        ValueError: an unknown format, a truncated or corrupt file (named, with the fix), or images of
            inconsistent sizes.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no data at {path}")
    if path.is_dir():
        if (path / "data_batch_1").exists() or (path / "test_batch").exists():
            return load_cifar10(path, split or "train", limit)
        if (path / "cifar-10-batches-py").is_dir():
            return load_cifar10(path / "cifar-10-batches-py", split or "train", limit)
        with _reading(path, "folder", "check its permissions"):
            pngs = any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir())
        if pngs:
            if split is not None:
                raise ValueError(f"a PNG folder has no splits; got split={split!r}")
            return load_png_folder(path, limit)
        raise ValueError(f"{path} is neither a CIFAR-10 python folder nor a folder of PNG files")
    if path.suffix == ".npz":
        return load_npz(path, split, limit)
    raise ValueError(f"unknown data format {path.name!r}: expected a CIFAR-10 folder, a PNG folder or an .npz file")
