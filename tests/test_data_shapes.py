"""make_shapes: determinism, ranges, geometry (area, centroid, orientation, symmetry)."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minivae.data import make_shapes
from minivae.data.shapes import (KINDS, POSITION_RANGE, ROTATION_RANGE, SCALE_RANGE, UNIT_AREA,
                                 render)
from minivae.errors import MinivaeError


def one(kind, scale=0.2, rotation=0.0, x=0.5, y=0.5, size=32, dtype=np.float64):
    """A single image of one kind with given factors, (size, size)."""
    f = dict(shape=np.array([KINDS.index(kind)]), scale=np.array([scale]),
             rotation=np.array([rotation]), x=np.array([x]), y=np.array([y]))
    return render(f, size, dtype=dtype)[0]


def centroid(img):
    """Ink-weighted centre in image coordinates (pixel j's centre is (j + 0.5) / size)."""
    size = img.shape[-1]
    c = (np.arange(size) + 0.5) / size
    ink = img.sum()
    return (img * c[None, :]).sum() / ink, (img * c[:, None]).sum() / ink


def test_deterministic_from_seed():
    a, fa = make_shapes(50, seed=7)
    b, fb = make_shapes(50, seed=7)
    c, _ = make_shapes(50, seed=8)
    assert np.array_equal(a, b)
    assert all(np.array_equal(fa[k], fb[k]) for k in fa)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shape_dtype_range(dtype):
    images, factors = make_shapes(200, size=24, seed=1, dtype=dtype)
    assert images.shape == (200, 24, 24) and images.dtype == dtype
    assert images.min() >= 0 and images.max() <= 1
    assert images.max() == 1                          # shape interiors are fully covered
    assert set(factors) == {"shape", "scale", "rotation", "x", "y"}
    assert all(v.shape == (200,) for v in factors.values())


def test_factors_in_documented_ranges_and_independent_of_size_and_dtype():
    _, f = make_shapes(4000, seed=3)
    assert set(np.unique(f["shape"])) == set(range(len(KINDS)))
    for key, (lo, hi) in (("scale", SCALE_RANGE), ("rotation", ROTATION_RANGE),
                          ("x", POSITION_RANGE), ("y", POSITION_RANGE)):
        v = f[key]
        assert v.min() >= lo and v.max() < hi
        # uniform: 4000 draws cover the range (gaps at the ends ~ (hi - lo) / 4000)
        assert v.min() < lo + 0.01 * (hi - lo) and v.max() > hi - 0.01 * (hi - lo)
    _, g = make_shapes(4000, size=16, seed=3, dtype=np.float64)
    assert all(np.array_equal(f[k], g[k]) for k in f)


def test_kinds_subset_indexes_the_given_kinds():
    images, f = make_shapes(20, seed=0, kinds=("heart", "square"))
    assert set(np.unique(f["shape"])) <= {0, 1}
    # image i is the heart (index 0) or the square (index 1) drawn from its own factors
    for i in range(3):
        kind = ("heart", "square")[f["shape"][i]]
        ref = one(kind, f["scale"][i], f["rotation"][i], f["x"][i], f["y"][i], dtype=np.float32)
        np.testing.assert_array_equal(images[i], ref)


def test_shapes_stay_inside_the_frame():
    # outline >= 0.04 image widths = 1.28 px from every edge; the anti-aliasing ramp reaches
    # 0.5 px outside the outline and border pixel centres sit 0.5 px from the edge: border is 0
    images, _ = make_shapes(3000, seed=11)
    border = np.concatenate([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]])
    assert border.max() == 0


@pytest.mark.parametrize("kind", KINDS)
@given(scale=st.floats(*SCALE_RANGE), rotation=st.floats(*ROTATION_RANGE),
       x=st.floats(*POSITION_RANGE), y=st.floats(*POSITION_RANGE))
def test_area_and_centroid(kind, scale, rotation, x, y):
    size = 64
    img = one(kind, scale, rotation, x, y, size)
    r_px = scale * size
    # total coverage = the shape's area: the ramp is exact for edges along the grid and its
    # error cancels along any straight edge, leaving well under 0.1 px^2 per px of outline
    # (outline length <= 2 pi r for all four shapes)
    assert abs(img.sum() - UNIT_AREA[kind] * r_px**2) <= 0.1 * 2 * np.pi * r_px
    # the ink centroid is the factor (x, y) (every shape is centred on its area centroid)
    cx, cy = centroid(img)
    assert abs(cx - x) * size < 0.25 and abs(cy - y) * size < 0.25


@pytest.mark.parametrize("kind", KINDS)
def test_area_grows_with_scale(kind):
    scales = np.linspace(*SCALE_RANGE, 6)
    ink = [one(kind, s, rotation=0.7).sum() for s in scales]
    assert np.all(np.diff(ink) > 0)
    # ... as the square of the scale
    np.testing.assert_allclose(ink / scales**2, UNIT_AREA[kind] * 32**2, rtol=0.05)


@pytest.mark.parametrize("kind, period", [("square", np.pi / 2), ("ellipse", np.pi),
                                          ("triangle", 2 * np.pi / 3), ("heart", 2 * np.pi)])
def test_rotation_symmetry(kind, period):
    a = one(kind, 0.25, rotation=0.3)
    np.testing.assert_allclose(one(kind, 0.25, rotation=0.3 + period), a, atol=1e-9)
    if kind != "heart":   # not invariant under a smaller turn
        assert np.abs(one(kind, 0.25, rotation=0.3 + period / 2) - a).max() > 0.5


@pytest.mark.parametrize("kind", KINDS)
def test_rotation_is_counter_clockwise_on_screen(kind):
    # np.rot90 turns an image a quarter counter-clockwise as displayed (row 0 on top)
    a = one(kind, 0.25, rotation=0.4, size=32)
    b = one(kind, 0.25, rotation=0.4 + np.pi / 2, size=32)
    np.testing.assert_allclose(b, np.rot90(a), atol=1e-9)


def test_upright_at_rotation_zero():
    def top_minus_bottom(img):
        h = img.shape[0] // 2
        return img[:h].sum() - img[h:].sum()
    # apex up: the part above the centroid's row is the triangle scaled by 2/3, 4/9 of the area
    tri = one("triangle", 0.25)
    assert abs(top_minus_bottom(tri) - (4 / 9 - 5 / 9) * tri.sum()) < 0.5
    assert top_minus_bottom(one("heart", 0.25)) > 3          # tip down: more ink above
    ellipse = one("ellipse", 0.25)                           # long axis horizontal
    assert (ellipse.sum(axis=0) > 0).sum() > (ellipse.sum(axis=1) > 0).sum()


def test_empty():
    images, f = make_shapes(0)
    assert images.shape == (0, 32, 32) and all(v.shape == (0,) for v in f.values())


@pytest.mark.parametrize("kwargs", [dict(n=-1), dict(n=2.5), dict(n=True), dict(n=4, size=4),
                                    dict(n=4, kinds=("circle",)), dict(n=4, kinds=()),
                                    dict(n=4, kinds=("heart", "heart")), dict(n=4, dtype=np.int32),
                                    dict(n=4, seed=-3), dict(n=4, kinds=3)])
def test_bad_arguments(kwargs):
    with pytest.raises(MinivaeError) as e:
        make_shapes(**kwargs)
    assert "\n" not in str(e.value)
