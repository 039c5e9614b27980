"""Short content hashes of data and weights, recorded in cost-matrix files.

A resume or a merge must never mix rows computed on other images or by another network, even when T, the
variance kind and the number of images agree. Both hashes are taken over exact integers or exact bytes, so
they do not depend on the device, the thread count or the CPU.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from .model import DDPM
from .runinfo import RunInfo

DIGEST_CHARS = 16  # 64 bits: collisions are out of reach for the handful of files a user compares


def _levels(data: torch.Tensor, num_bins: int) -> np.ndarray:
    """The integer levels 0 .. num_bins - 1 of data in [-1, 1], int32 with data's shape, on the CPU."""
    return torch.round((data.detach().cpu().double() + 1.0) * ((num_bins - 1) / 2.0)).to(torch.int32).numpy()


def data_fingerprint(data: torch.Tensor, num_bins: int) -> str:
    """Hash of data (N, ...) in [-1, 1] on the ``num_bins`` grid, taken over the integer levels and the shape.

    Float32 and float64 copies of the same images give the same fingerprint.
    """
    h = hashlib.sha256(repr((tuple(data.shape), int(num_bins))).encode())
    h.update(_levels(data, num_bins).tobytes())
    return h.hexdigest()[:DIGEST_CHARS]


def image_hashes(data: torch.Tensor, num_bins: int) -> np.ndarray:
    """One 64-bit hash per data point (uint64 (N,)), over its integer levels and shape.

    Recorded in cost-matrix files so that a merge of data shards can refuse shards that share an image (a
    whole-set fingerprint cannot see overlap). Equal images give equal hashes, wherever they are in the data.
    """
    levels = _levels(data, num_bins)
    prefix = repr((tuple(data.shape[1:]), int(num_bins))).encode()
    out = np.empty(levels.shape[0], dtype=np.uint64)
    for i, image in enumerate(levels.reshape(levels.shape[0], -1)):
        digest = hashlib.blake2b(prefix + image.tobytes(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "little")
    return out


def model_fingerprint(model: DDPM) -> str:
    """Hash of the network's parameters and buffers (names, shapes, dtypes and bytes), of its schedule and of
    its analytic variances, if it has them."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.net.state_dict().items()):
        arr = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(arr.shape)}:{arr.dtype}".encode())
        h.update(arr.view(torch.uint8).numpy().tobytes() if arr.numel() else b"")
    h.update(np.ascontiguousarray(model.schedule.alpha_bar, dtype=np.float64).tobytes())
    if model.analytic is not None:  # frozen analytic variances are part of what defines the model
        h.update(f"analytic:{model.analytic.fingerprint()}".encode())
    return h.hexdigest()[:DIGEST_CHARS]


#: the fields of a matrix's run info that its model decides, and those its data decide
MODEL_IDENTITY = ("variance", "num_bins", "clip_denoised", "weights_fingerprint")
DATA_IDENTITY = ("N", "data_fingerprint")


def mismatches(
    info: RunInfo, model: DDPM, data: torch.Tensor | None = None, fields: tuple[str, ...] = MODEL_IDENTITY
) -> tuple[list[str], RunInfo]:
    """The one check that a model (and data) fit a cost matrix's run info.

    Compares only what ``info`` records (a field it leaves None is not checked), so hand-built and merged
    matrices pass on what they know. The weights are hashed only when ``info`` records their fingerprint (a pass
    over every parameter).

    Args:
        info: the matrix's :class:`~dpddpm.runinfo.RunInfo`.
        model: the model to check; ``data`` (N, *data_shape) the images to check, for :data:`DATA_IDENTITY`.
        fields: the fields to compare, among :data:`MODEL_IDENTITY` and :data:`DATA_IDENTITY`.
    Returns:
        (the names of the fields that differ, the run info the model and data would give) — callers word the
        error for their context with :meth:`RunInfo.describe`.
    """
    ours = {"variance": model.variance, "num_bins": model.num_bins, "clip_denoised": model.clip_denoised}
    recorded = [f for f in fields if getattr(info, f) is not None]
    if "weights_fingerprint" in recorded:
        ours["weights_fingerprint"] = model_fingerprint(model)
    if data is not None:
        ours.update(N=int(data.shape[0]), data_fingerprint=data_fingerprint(data, model.num_bins))
    mine = info.replace(**{k: v for k, v in ours.items() if k in fields})
    return [f for f in recorded if getattr(info, f) != getattr(mine, f)], mine
