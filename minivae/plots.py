"""Figures of a run: loss curves, inputs beside reconstructions, samples from the prior.

matplotlib is imported inside each function (with the Agg backend), so importing minivae never
pays for it and no display is needed.
"""
import numpy as np

from .backend import to_host


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def image_grid(images, image_shape, ncols):
    """(N, H*W) in [0, 1] -> one (rows*H + gaps, ncols*W + gaps) array for imshow."""
    images = np.clip(to_host(images), 0, 1).reshape(-1, *image_shape)
    n, (h, w) = len(images), image_shape
    nrows = -(-n // ncols)
    grid = np.ones((nrows * (h + 1) + 1, ncols * (w + 1) + 1), dtype=np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, ncols)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = img
    return grid


def save_grid(path, images, image_shape, ncols=8, title=None):
    plt = _plt()
    grid = image_grid(images, image_shape, ncols)
    fig, ax = plt.subplots(figsize=(ncols * 0.9, grid.shape[0] / grid.shape[1] * ncols * 0.9 + 0.4))
    ax.imshow(grid, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
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


def save_loss_curves(path, rows, title="training"):
    """Train and held-out loss, reconstruction and KL against the epoch."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, key, label in zip(axes, ("loss", "rec", "kl"),
                              ("loss, nats (train: the objective, -ELBO\nor -IWAE_K; held-out: beta-weighted -ELBO)",
                               "reconstruction -E log p(x|z), nats",
                               "KL(q(z|x) || p(z)), nats")):
        for split, style in (("train", "-o"), ("valid", "-s"), ("test", "-^")):
            pts = [(r["epoch"], r[f"{split}_{key}"]) for r in rows if f"{split}_{key}" in r]
            if pts:
                e, v = zip(*pts)
                ax.plot(e, v, style, ms=3, label=split)
        ax.set_xlabel("epoch (0: before training)")
        if key != "kl":
            ax.set_yscale("log")    # epoch 0 sits an order of magnitude above the rest
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
