"""Figures show the data as it is: grey 1 is white, RGB in colour, loss panels of either sign."""
import matplotlib.image as mpimg
import numpy as np
import pytest

from minivae.errors import MinivaeError
from minivae.plots import drawable_shape, image_grid, loss_scale, save_grid, save_loss_curves


def _centre_pixel(path):
    img = mpimg.imread(path)[..., :3]          # PNG read back as floats in [0, 1]
    return img[img.shape[0] // 2, img.shape[1] // 2]


@pytest.mark.parametrize("value, colour", [(1.0, (1, 1, 1)), (0.0, (0, 0, 0))])
def test_grey_one_is_white_and_zero_black(tmp_path, value, colour):
    path = tmp_path / "g.png"
    save_grid(path, np.full((1, 40 * 40), value, np.float32), (40, 40), ncols=1)
    np.testing.assert_allclose(_centre_pixel(path), colour, atol=1 / 255)


def test_rgb_is_drawn_in_colour(tmp_path):
    path = tmp_path / "rgb.png"
    img = np.zeros((40, 40, 3), np.float32)
    img[..., 0] = 1.0                          # pure red
    save_grid(path, img.reshape(1, -1), (40, 40, 3), ncols=1)
    np.testing.assert_allclose(_centre_pixel(path), (1, 0, 0), atol=1 / 255)


def test_image_grid_layout_and_shapes():
    x = np.arange(2 * 6, dtype=np.float32).reshape(2, 6) / 12
    g = image_grid(x, (2, 3), ncols=2)
    assert g.shape == (2 + 2, 2 * 4 + 1)
    np.testing.assert_array_equal(g[1:3, 1:4], x[0].reshape(2, 3))
    np.testing.assert_array_equal(g[1:3, 5:8], x[1].reshape(2, 3))
    assert image_grid(x, (2, 3, 1), ncols=2).shape == g.shape     # (H, W, 1) is grey
    rgb = image_grid(np.ones((3, 12), np.float32), (2, 2, 3), ncols=2)
    assert rgb.shape == (2 * 3 + 1, 2 * 3 + 1, 3)
    assert image_grid(np.ones((1, 8), np.float32), (2, 2, 2), ncols=1).shape == (4 + 2, 2 + 2)
    with pytest.raises(MinivaeError, match="image_shape"):
        image_grid(np.ones((1, 8), np.float32), (8, 0), ncols=1)


def test_drawable_shapes():
    assert drawable_shape((28, 20)) == (28, 20) and drawable_shape((9, 7, 3)) == (9, 7, 3)
    assert drawable_shape((9, 7, 1)) == (9, 7)
    assert drawable_shape((16,)) == (4, 4) and drawable_shape((10,)) == (1, 10)
    assert drawable_shape((3, 4, 5)) == (12, 5)


def test_loss_scale():
    assert loss_scale([500.0, 120.0, 101.0]) == "log"
    assert loss_scale([600.0, -650.0, -700.0, -3.0]) == "linear"
    assert loss_scale([0.0, 0.0]) == "linear"
    assert loss_scale([]) == "linear"


def test_loss_panel_shows_negative_losses(tmp_path):
    """A Gaussian decoder's -ELBO goes negative: the panel must still hold every point after
    epoch 0 and spread them out (epoch 0, far above, is written in the panel instead)."""
    rows = [{"epoch": 0, "valid_loss": 900.0, "valid_distortion": 890.0, "valid_kl": 1.0}]
    rows += [{"epoch": e, "train_loss": -700.0 - e, "train_distortion": -720.0 - e, "train_kl": 20.0,
              "valid_loss": -690.0 - e, "valid_distortion": -710.0 - e, "valid_kl": 20.0}
             for e in range(1, 6)]
    drawn = save_loss_curves(tmp_path / "loss.png", rows)
    for key, lo, hi in (("loss", -705.0, -691.0), ("distortion", -725.0, -711.0)):
        scale, (ymin, ymax) = drawn[key]
        assert scale == "linear"
        assert ymin <= lo and ymax >= hi, (key, ymin, ymax)
        assert ymax - ymin < 3 * (hi - lo), (key, ymin, ymax)     # not flattened by epoch 0
    assert (tmp_path / "loss.png").stat().st_size > 0
    near = [{"epoch": e, "valid_loss": -10.0 - e, "valid_distortion": -11.0, "valid_kl": 1.0}
            for e in range(3)]                                     # epoch 0 close: kept in view
    scale, (ymin, ymax) = save_loss_curves(tmp_path / "near.png", near)["loss"]
    assert ymin <= -12.0 and ymax >= -10.0
    positive = [{"epoch": e, "train_loss": 100.0 + 50 / (e + 1), "train_distortion": 90.0,
                 "train_kl": 10.0} for e in range(3)]
    assert save_loss_curves(tmp_path / "pos.png", positive)["loss"][0] == "log"
