"""Procedural 2-D shapes with known factors: the built-in data that needs no download.

Each image holds one white shape on black, drawn from five independent factors:

    factor     range (uniform)          meaning
    shape      {0, ..., len(kinds)-1}   index into ``kinds``
    scale      [0.13, 0.26]             circumradius (centre to farthest point of the outline),
                                        in image widths
    rotation   [0, 2 pi)                radians, counter-clockwise as seen on screen;
                                        rotation 0 is upright (triangle apex and heart tip
                                        pointing up and down respectively)
    x          [0.30, 0.70]             centre, column coordinate: 0 = left edge, 1 = right edge
    y          [0.30, 0.70]             centre, row coordinate: 0 = top edge, 1 = bottom edge

"Centre" is the shape's area centroid (also the centre of its circumscribed circle except for
the heart, whose circle is centred on the centroid too, with the tip as farthest point).  Since
scale + 0.04 <= x, y <= 1 - scale - 0.04, the whole outline lies inside the frame, at least
0.04 image widths from every edge.

Rendering is one vectorised pass per kind: every pixel centre is mapped into the shape's frame
(translate, rotate, divide by the circumradius), a signed distance d to the outline is evaluated
there (negative inside), and the pixel's value is the cheap anti-aliased coverage

    clip(0.5 - d_pixels, 0, 1),     d_pixels = d * circumradius * size,

exact for an edge parallel to the pixel grid and within a few per cent elsewhere.  The distance
functions (square, triangle, heart exact; ellipse first-order) follow Inigo Quilez's 2-D SDFs.
"""
import numpy as np

from ..backend import resolve_dtype
from ..errors import MinivaeError

KINDS = ("square", "ellipse", "triangle", "heart")
SCALE_RANGE = (0.13, 0.26)
ROTATION_RANGE = (0.0, 2 * np.pi)
POSITION_RANGE = (0.30, 0.70)

ELLIPSE_AXES = (1.0, 0.6)           # semi-axes in units of the circumradius (long axis horizontal)
# The heart of Quilez's sdHeart: a square rotated 45 degrees with corners (0,0), (+-0.5,0.5), (0,1)
# capped by two half-discs of radius sqrt(2)/4 at (+-0.25, 0.75).  Area 1/2 + pi/8, area centroid
# on the axis at height 1/2 (square) and 3/4 + 1/(3 pi) (half-discs) weighted by their areas.
# The farthest point from the centroid is the tip (0, 0), so the circumradius equals that height.
_HEART_CY = (0.5 * 0.5 + np.pi / 8 * (0.75 + 1 / (3 * np.pi))) / (0.5 + np.pi / 8)

# Area of each shape for circumradius 1 (used by tests and by anyone wanting the "ink" of a shape).
UNIT_AREA = {
    "square": 2.0,
    "ellipse": np.pi * ELLIPSE_AXES[0] * ELLIPSE_AXES[1],
    "triangle": 3 * np.sqrt(3) / 4,
    "heart": (0.5 + np.pi / 8) / _HEART_CY**2,
}

_CHUNK = 2048                        # images rendered at once (bounds the temporaries' memory)


def _sd_square(px, py):
    """Square with circumradius 1 (half side 1/sqrt 2), sides along the axes."""
    h = px.dtype.type(np.sqrt(0.5))
    qx, qy = np.abs(px) - h, np.abs(py) - h
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0)


def _sd_ellipse(px, py):
    """Ellipse with semi-axes ELLIPSE_AXES; first-order distance f / |grad f| with f = |p/r| - 1."""
    t = px.dtype.type
    a, b = t(ELLIPSE_AXES[0]), t(ELLIPSE_AXES[1])
    k0 = np.hypot(px / a, py / b)
    k1 = np.hypot(px / (a * a), py / (b * b))
    tiny = t(1e-12)
    return (k0 - 1) * (k0 + tiny) / (k1 + tiny)     # at p = 0: -1 (deep inside), not 0 / 0


def _sd_triangle(px, py):
    """Equilateral triangle with circumradius 1, centred on its centroid, apex up."""
    t = px.dtype.type
    k = t(np.sqrt(3.0))
    r = t(np.sqrt(3.0) / 2)                          # half the side length
    px = np.abs(px) - r
    py = py + r / k
    fold = px + k * py > 0                            # reflect into the region nearest the base
    fx = np.where(fold, (px - k * py) * t(0.5), px)
    fy = np.where(fold, (-k * px - py) * t(0.5), py)
    fx = fx - np.clip(fx, -2 * r, t(0))
    return -np.hypot(fx, fy) * np.sign(fy)


def _sd_heart(px, py):
    """Quilez's heart moved so its area centroid is the origin and scaled to circumradius 1."""
    t = px.dtype.type
    s = t(_HEART_CY)
    hx = np.abs(px) * s
    hy = py * s + s                                   # heart frame: tip at (0, 0), top near y = 1.1
    lobe = np.hypot(hx - t(0.25), hy - t(0.75)) - t(np.sqrt(2) / 4)
    m = t(0.5) * np.maximum(hx + hy, 0)
    body = np.sqrt(np.minimum(hx * hx + (hy - 1) ** 2, (hx - m) ** 2 + (hy - m) ** 2))
    body = body * np.sign(hx - hy)
    return np.where(hx + hy > 1, lobe, body) / s


_SDF = {"square": _sd_square, "ellipse": _sd_ellipse, "triangle": _sd_triangle, "heart": _sd_heart}


def _check_args(n, size, kinds):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise MinivaeError(f"make_shapes: n must be an integer >= 0, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise MinivaeError(f"make_shapes: size must be an integer >= 8 (pixels per side), "
                           f"got {size!r}")
    if isinstance(kinds, str):
        kinds = (kinds,)
    try:
        kinds = tuple(kinds)
    except TypeError:
        raise MinivaeError(f"make_shapes: kinds must be a sequence of names from {KINDS}, "
                           f"got {kinds!r}") from None
    bad = [k for k in kinds if k not in KINDS]
    if not kinds or bad or len(set(kinds)) != len(kinds):
        raise MinivaeError(f"make_shapes: kinds must be distinct names from {', '.join(KINDS)}, "
                           f"got {kinds!r}")
    return int(n), int(size), kinds


FACTORS = ("shape", "scale", "rotation", "x", "y")
RANGES = {"scale": SCALE_RANGE, "rotation": ROTATION_RANGE, "x": POSITION_RANGE,
          "y": POSITION_RANGE}
# dSprites' grid (Matthey et al. 2017): 6 scales, 40 rotations, 32 x 32 positions (3 shapes)
DSPRITES_LEVELS = {"scale": 6, "rotation": 40, "x": 32, "y": 32}


def level_values(name, levels):
    """The values of a continuous factor on a grid of ``levels``: equally spaced from the low
    end of its range to the high end (rotation: 2 pi k / levels, k < levels, since 2 pi is 0)."""
    lo, hi = RANGES[name]
    if name == "rotation":
        return lo + (hi - lo) * np.arange(levels) / levels
    return np.linspace(lo, hi, levels) if levels > 1 else np.array([(lo + hi) / 2])


def draw_factors(n, rng, n_kinds=len(KINDS), levels=None):
    """The five factors of n images, uniform over the ranges in the module docstring (float64).

    levels: None (the default, the training data: continuous uniform draws), or a dict such as
    DSPRITES_LEVELS giving a factor a dSprites-like grid of that many values (``level_values``),
    drawn uniformly; factors it does not name stay continuous.
    """
    out = {
        "shape": rng.integers(0, n_kinds, size=n),
        "scale": rng.uniform(*SCALE_RANGE, size=n),
        "rotation": rng.uniform(*ROTATION_RANGE, size=n),
        "x": rng.uniform(*POSITION_RANGE, size=n),
        "y": rng.uniform(*POSITION_RANGE, size=n),
    }
    for name, count in (levels or {}).items():
        if name not in RANGES or isinstance(count, bool) or not isinstance(
                count, (int, np.integer)) or count < 1:
            raise MinivaeError(f"draw_factors: levels must map factor names from "
                               f"{', '.join(RANGES)} to positive integers, got {levels!r}")
        out[name] = level_values(name, int(count))[rng.integers(0, count, size=n)]
    return out


def draw_with_fixed(name, n, rng, n_kinds=len(KINDS), levels=None):
    """Factors of n images sharing one value of factor ``name`` (itself drawn from the factor's
    distribution), the other factors drawn independently: one vote of the FactorVAE score."""
    if name not in FACTORS:
        raise MinivaeError(f"unknown factor {name!r}: choose one of {', '.join(FACTORS)}")
    out = draw_factors(n, rng, n_kinds, levels)
    out[name] = np.full(n, draw_factors(1, rng, n_kinds, levels)[name][0])
    return out


def render(factors, size=32, kinds=KINDS, dtype=np.float32):
    """Images (N, size, size) in [0, 1] for given factors (a dict as returned by draw_factors)."""
    dtype = resolve_dtype(dtype)
    t = dtype
    shape = np.asarray(factors["shape"])
    n = shape.shape[0]
    images = np.empty((n, size, size), dtype=dtype)
    cols = (np.arange(size, dtype=dtype) + t(0.5)) / t(size)     # pixel centres, image units
    for k, kind in enumerate(kinds):
        idx = np.flatnonzero(shape == k)
        for start in range(0, idx.size, _CHUNK):
            sel = idx[start:start + _CHUNK]
            r = np.asarray(factors["scale"], dtype)[sel][:, None, None]
            th = np.asarray(factors["rotation"], dtype)[sel][:, None, None]
            cx = np.asarray(factors["x"], dtype)[sel][:, None, None]
            cy = np.asarray(factors["y"], dtype)[sel][:, None, None]
            X = (cols[None, None, :] - cx) / r        # (m, 1, S): right is +X
            Y = (cy - cols[None, :, None]) / r        # (m, S, 1): up is +Y (rows grow downwards)
            c, s = np.cos(th), np.sin(th)
            lx = c * X + s * Y                        # rotate the pixel by -rotation: (m, S, S)
            ly = c * Y - s * X
            d = _SDF[kind](lx, ly) * (r * t(size))    # signed distance in pixels
            images[sel] = np.clip(t(0.5) - d, t(0), t(1))
    return images


def make_shapes(n, size=32, seed=0, kinds=KINDS, dtype=np.float32):
    """n random shape images and their factors, deterministic from ``seed``.

    n: number of images; size: pixels per side (>= 8); seed: anything np.random.default_rng
    accepts (an int, a tuple of ints, a SeedSequence); kinds: which shapes, in the order the
    ``shape`` factor indexes them; dtype: float32 or float64.

    Returns (images, factors): images (n, size, size) of ``dtype`` in [0, 1]; factors a dict of
    1-D arrays of length n: ``shape`` (int64 index into kinds), ``scale``, ``rotation``, ``x``,
    ``y`` (float64; ranges and meaning in the module docstring).  The factors depend only on
    (n, seed, len(kinds)), not on size or dtype.
    """
    n, size, kinds = _check_args(n, size, kinds)
    try:
        rng = np.random.default_rng(seed)
    except (TypeError, ValueError) as e:
        raise MinivaeError(f"make_shapes: seed must be an int >= 0 (or a tuple of them), "
                           f"got {seed!r} ({e})") from None
    factors = draw_factors(n, rng, len(kinds))
    return render(factors, size, kinds, dtype), factors
