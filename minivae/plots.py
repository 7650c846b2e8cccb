"""Figures of a run: loss curves, inputs beside reconstructions, samples from the prior.

Images are drawn as they are: a grey value of 1 is white and 0 black (the convention of MNIST,
Fashion-MNIST, photographs and every image file); an image_shape of (H, W, 3) is RGB, drawn in
colour.  Loss panels are in nats per example, on a log axis while every value is positive and on a
linear one otherwise (a continuous decoder's density can exceed 1, so its -ELBO can be negative),
fitted to the epochs after 0 when epoch 0 lies far above them (its values then written in the
panel).

matplotlib is imported inside each function (with the Agg backend), so importing minivae never
pays for it and no display is needed.
"""
import math

import numpy as np

from .backend import to_host
from .errors import MinivaeError


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def drawable_shape(image_shape):
    """The shape an example is drawn in: (H, W) grey or (H, W, 3) RGB as they are, (H, W, 1) as
    (H, W); a flat (D,) as a square when D is one, else one row; any other shape as
    (prod(shape[:-1]), shape[-1])."""
    shape = tuple(int(s) for s in image_shape)
    if not shape or min(shape) < 1:
        raise MinivaeError(f"image_shape must be positive sizes, got {image_shape!r}")
    if len(shape) == 3 and shape[2] == 1:
        return shape[:2]
    if len(shape) == 2 or (len(shape) == 3 and shape[2] == 3):
        return shape
    if len(shape) == 1:
        r = math.isqrt(shape[0])
        return (r, r) if r * r == shape[0] else (1, shape[0])
    return (math.prod(shape[:-1]), shape[-1])


def image_grid(images, image_shape, ncols):
    """(N, D) in [0, 1] -> one (rows*(H+1) + 1, ncols*(W+1) + 1[, C]) array for imshow.

    image_shape: (H, W) grey or (H, W, C) with C = 1 (grey) or 3 (RGB), row-major in each row of
    images (other shapes: see drawable_shape).  The gaps between images are mid grey, so that white and black images both show
    their edges."""
    image_shape = drawable_shape(image_shape)
    images = np.clip(to_host(images), 0, 1).reshape(-1, *image_shape)
    n, (h, w), rest = len(images), image_shape[:2], image_shape[2:]
    nrows = -(-n // ncols)
    grid = np.full((nrows * (h + 1) + 1, ncols * (w + 1) + 1, *rest), 0.5, dtype=np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, ncols)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = img
    return grid


def save_grid(path, images, image_shape, ncols=8, title=None):
    plt = _plt()
    grid = image_grid(images, image_shape, ncols)
    fig, ax = plt.subplots(figsize=(ncols * 0.9, grid.shape[0] / grid.shape[1] * ncols * 0.9 + 0.4))
    if grid.ndim == 3:                          # RGB: drawn as it is
        ax.imshow(grid, interpolation="nearest")
    else:                                       # grey: 0 black, 1 white
        ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_reconstructions(path, x, recon, image_shape, n=8):
    """Rows of n inputs, each followed by a row of their reconstructions."""
    x, recon = to_host(x)[:2 * n], to_host(recon)[:2 * n]
    rows = []
    for i in range(0, len(x), n):
        rows += [x[i:i + n], recon[i:i + n]]
    save_grid(path, np.concatenate(rows), image_shape, ncols=n,
              title="inputs (odd rows) and their reconstructions (even rows)")


def loss_scale(values):
    """The y-axis of a loss panel: 'log' when every value is positive (epoch 0 sits an order of
    magnitude above the rest), else 'linear' (a continuous decoder's -ELBO can be negative,
    where a log axis shows nothing)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return "log" if v.size and (v > 0).all() else "linear"


def _linear_limits(ax, points):
    """On a linear axis, fit the limits to the epochs after 0 when epoch 0 lies far outside
    them (it would flatten every later difference), and write the off-axis values in the panel.
    points: [(epoch, value)]."""
    later = [v for e, v in points if e > 0 and np.isfinite(v)]
    first = [v for e, v in points if e == 0 and np.isfinite(v)]
    if not later or not first:
        return
    lo, hi = min(later), max(later)
    pad = 0.08 * max(hi - lo, 1e-3 * max(abs(lo), abs(hi), 1.0))
    off = [v for v in first if v < lo - 3 * (hi - lo + pad) or v > hi + 3 * (hi - lo + pad)]
    if not off:
        return
    ax.set_ylim(lo - pad, hi + pad)
    ax.text(0.02, 0.03 if off[0] < lo else 0.97, "epoch 0 off the axis: "
            + ", ".join(f"{v:.4g}" for v in off), transform=ax.transAxes, fontsize=7,
            va="bottom" if off[0] < lo else "top", color="0.35")


def save_loss_curves(path, rows, title="training"):
    """Train and held-out loss, distortion and KL against the epoch, in nats per example.
    Returns {panel key: (y scale, y limits)} (what a test checks)."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    drawn = {}
    for ax, key, label in zip(axes, ("loss", "distortion", "kl"),
                              ("loss, nats per example (train: the objective,\n-ELBO or "
                               "-IWAE_K; held-out: beta-weighted -ELBO)",
                               "distortion -E log p(x|z),\nnats per example",
                               "KL(q(z|x) || p(z)), nats per example")):
        points = []
        for split, style in (("train", "-o"), ("valid", "-s"), ("test", "-^")):
            pts = [(r["epoch"], r[f"{split}_{key}"]) for r in rows if f"{split}_{key}" in r]
            if pts:
                e, v = zip(*pts)
                points += pts
                ax.plot(e, v, style, ms=3, label=split)
        ax.set_xlabel("epoch (0: before training)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if key != "kl" and points:
            scale = loss_scale([v for _, v in points])
            ax.set_yscale(scale)
            if scale == "linear":
                _linear_limits(ax, points)
                if ax.get_ylim()[0] < 0 < ax.get_ylim()[1]:
                    ax.axhline(0, color="0.6", lw=0.8)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        if points:
            ax.legend(fontsize=8)
        drawn[key] = (ax.get_yscale(), ax.get_ylim())
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn
