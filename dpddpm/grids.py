"""Image grids of samples: one array (:func:`image_grid`), a PNG file (:func:`save_grid`), and a figure of
titled grids side by side (:func:`save_grid_figure`). Every file is written atomically."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence

import numpy as np
import torch

from .files import atomic_write


def image_grid(x: torch.Tensor, *, cols: int | None = None, pad: int = 1, num_bins: int | None = None) -> np.ndarray:
    """Lay out images on a grid with ``pad`` pixels of background (0) around each.

    Args:
        x: (n, C, H, W) images in [-1, 1] (values outside are clipped), C = 1 or 3.
        cols: images per row (default: about square, ceil(sqrt(n))).
        num_bins: round each value to the nearest of these levels of [-1, 1] first (the model's data grid),
            e.g. 256 for 8-bit images; None keeps the values as they are.
    Returns:
        float64 (rows·(H + pad) + pad, cols·(W + pad) + pad, C) in [0, 1] (0 = -1, 1 = +1).
    """
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"an image grid needs (n, 1 or 3, H, W) images, got {tuple(x.shape)}")
    img = (x.detach().cpu().double().clamp(-1, 1).numpy() + 1) / 2
    if num_bins is not None:
        img = np.round(img * (num_bins - 1)) / (num_bins - 1)
    n, c, h, w = img.shape
    cols = cols or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c))
    for k in range(n):
        r, q = divmod(k, cols)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[top : top + h, left : left + w] = img[k].transpose(1, 2, 0)
    return grid


def save_grid(x: torch.Tensor, path: str | os.PathLike, num_bins: int = 256, cols: int | None = None) -> None:
    """Save (n, C, H, W) images in [-1, 1] as one 8-bit PNG grid (see :func:`image_grid`), atomically."""
    from PIL import Image

    grid = np.round(image_grid(x, cols=cols, num_bins=num_bins) * 255).astype(np.uint8)
    image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    atomic_write(path, lambda fh: image.save(fh, format="PNG"))


def save_grid_figure(
    panels: Sequence[tuple[str, torch.Tensor]], path: str | os.PathLike, *, cols: int = 8, dpi: int = 120
) -> None:
    """A PNG figure of titled image grids side by side, one per ``(title, (n, C, H, W) images)``, atomically.

    One-channel images are drawn dark on light (matplotlib's ``gray_r``), as digits are usually shown.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.3), squeeze=False)
    for ax, (title, x) in zip(axes[0], panels):
        grid = image_grid(x, cols=cols)
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path, dpi=dpi)


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 120) -> None:
    """Write a matplotlib figure as PNG atomically, then close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write(path, lambda fh: fh.write(buffer.getvalue()))
