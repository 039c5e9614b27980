"""Image grids: layout, quantization to the model's levels, the PNG file and the figure of titled grids."""

import numpy as np
import pytest
import torch

from dpddpm.grids import image_grid, save_grid, save_grid_figure


def test_layout_and_values():
    x = torch.full((5, 1, 2, 3), -1.0)
    x[4] = 1.0
    grid = image_grid(x, pad=1)  # 5 images: 3 columns, 2 rows
    assert grid.shape == (2 * 3 + 1, 3 * 4 + 1, 1)
    assert grid.max() == 1 and grid[4:6, 5:8].min() == 1  # the fifth image: row 1, column 1
    assert grid.sum() == 6  # the background and the other images are 0 (= -1)
    assert image_grid(x, cols=5).shape == (4, 21, 1)


def test_quantization_and_clipping():
    x = torch.tensor([-2.0, -0.1, 0.1, 3.0]).reshape(4, 1, 1, 1)
    levels = image_grid(x, cols=4, pad=0, num_bins=3)[0, :, 0]
    np.testing.assert_array_equal(levels, [0, 0.5, 0.5, 1])


def test_png_and_figure(tmp_path):
    from PIL import Image

    x = torch.linspace(-1, 1, 4 * 3 * 4 * 4).reshape(4, 3, 4, 4)
    save_grid(x, tmp_path / "g.png")
    img = np.asarray(Image.open(tmp_path / "g.png"))
    assert img.shape == (11, 11, 3) and img.dtype == np.uint8 and img.max() == 255
    save_grid_figure([("a", x[:, :1]), ("b", x)], tmp_path / "f.png", cols=2)
    assert (tmp_path / "f.png").stat().st_size > 0
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, no temp file left


def test_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="1 or 3"):
        image_grid(torch.zeros(2, 2, 4, 4))
