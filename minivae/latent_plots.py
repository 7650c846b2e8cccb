"""Figures of the latent space: traversals, the 2-D manifold, the latents x factors MI matrix.

    traversals.png   one row per latent, sorted by its KL (held-out mean, nats), labelled with it:
                     the decoder's mean as z_j = mu_j + v sweeps v = -3..3 around the posterior
                     mean mu of one held-out image, the other latents held at their means
    manifold.png     (Z = 2 only) the decoder's mean over a grid of prior quantiles
                     z = (Phi^-1(u_1), Phi^-1(u_2)), u on an even grid of (0, 1)
    mi.png           (shapes only) I(z_j; v_k) / H(v_k) for each latent (rows, sorted by KL) and
                     factor (columns), minivae.metrics.mig's matrix, with each factor's gap

Written by ``minivae train`` into the run directory and by ``minivae traverse RUN`` for any
checkpoint.  matplotlib is imported lazily (minivae.plots._plt).
"""
import os
from statistics import NormalDist

import numpy as np

from . import metrics
from .backend import to_device, to_host
from .errors import MinivaeError
from .plots import _plt, image_grid

TRAVERSAL = np.linspace(-3.0, 3.0, 9)


def traversal_codes(mu, order, values=TRAVERSAL):
    """(len(order) * len(values), Z) codes: row block r sets latent order[r] to mu + v for each v
    in values, the other latents at mu.  mu: (Z,) the posterior mean of one image."""
    mu = np.asarray(mu, dtype=np.float64)
    z = np.tile(mu, (len(order) * len(values), 1))
    for r, j in enumerate(order):
        z[r * len(values):(r + 1) * len(values), j] += values
    return z


def manifold_codes(n=15):
    """(n * n, 2) prior quantiles: row i, column j -> (Phi^-1(u_j), Phi^-1(u_{n-1-i})) with
    u = (k + 1/2) / n, so z_1 grows to the right and z_2 upwards."""
    q = np.array([NormalDist().inv_cdf((k + 0.5) / n) for k in range(n)])
    z1, z2 = np.meshgrid(q, q[::-1])
    return np.stack([z1.ravel(), z2.ravel()], 1)


def _decode(model, z):
    return to_host(model.decode(to_device(np.asarray(z, dtype=model.dtype), model.xp)))


def save_traversals(path, model, x, kl, image_shape, values=TRAVERSAL):
    """Traversals around one image x (D,) or (1, D); kl (Z,): each latent's mean KL, which sorts
    the rows (largest first) and labels them."""
    plt = _plt()
    x = np.asarray(to_host(x)).reshape(1, -1)
    mu, _ = model.encode(to_device(x, model.xp, model.dtype))
    kl = np.asarray(kl, dtype=np.float64)
    order = np.argsort(-kl, kind="stable")
    images = _decode(model, traversal_codes(to_host(mu)[0], order, values))
    ncols = len(values) + 1
    rows = []
    for r in range(len(order)):                      # the input first, then its traversal
        rows += [x[0], *images[r * len(values):(r + 1) * len(values)]]
    grid = image_grid(np.stack(rows), image_shape, ncols)
    h = image_shape[0] + 1
    fig, ax = plt.subplots(figsize=(ncols * 0.75 + 1.6, len(order) * 0.75 + 0.8))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks([1 + r * h + h / 2 for r in range(len(order))])
    ax.set_yticklabels([f"z{j}  KL {kl[j]:.2f}" for j in order], fontsize=8)
    w = image_shape[1] + 1
    ax.set_xticks([1 + c * w + w / 2 for c in range(ncols)])
    ax.set_xticklabels(["input"] + [f"{v:+.1f}" for v in values], fontsize=7)
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    ax.set_title("latent traversals: z_j = mu_j + v (others at the posterior mean), rows sorted "
                 "by held-out KL (nats)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_manifold(path, model, image_shape, n=15):
    """The decoded manifold of a 2-D latent space over prior quantiles."""
    if model.latent_dim != 2:
        raise MinivaeError(f"the manifold figure needs a 2-D latent space, this model has "
                           f"{model.latent_dim}")
    plt = _plt()
    grid = image_grid(_decode(model, manifold_codes(n)), image_shape, n)
    fig, ax = plt.subplots(figsize=(7, 7))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    q = manifold_codes(n)[:n, 0]
    w = image_shape[1] + 1
    ticks = [0, n // 2, n - 1]
    ax.set_xticks([1 + c * w + w / 2 for c in ticks])
    ax.set_xticklabels([f"{q[c]:.2f}" for c in ticks])
    ax.set_yticks([1 + c * (image_shape[0] + 1) + (image_shape[0] + 1) / 2 for c in ticks])
    ax.set_yticklabels([f"{q[::-1][c]:.2f}" for c in ticks])
    ax.set_xlabel("z1 (prior quantiles)")
    ax.set_ylabel("z2")
    ax.set_title(f"decoded manifold: {n} x {n} prior quantiles (u = 1/{2 * n} .. "
                 f"1 - 1/{2 * n})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_mi_heatmap(path, mig_result, kl, factor_names, title=None):
    """I(z_j; v_k) / H(v_k) as a heat map: latents (rows, sorted by KL, labelled with it) x
    factors (columns, labelled with their gap); mig_result as minivae.metrics.mig returns."""
    plt = _plt()
    mi, h = np.asarray(mig_result["mi"]), np.asarray(mig_result["entropies"])
    kl = np.asarray(kl, dtype=np.float64)
    order = np.argsort(-kl, kind="stable")
    norm = mi[order] / h
    fig, ax = plt.subplots(figsize=(1.1 * len(factor_names) + 2.4, 0.42 * len(order) + 1.6))
    im = ax.imshow(norm, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for r in range(norm.shape[0]):
        for c in range(norm.shape[1]):
            ax.text(c, r, f"{norm[r, c]:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if norm[r, c] > 0.6 else "white")
    ax.set_xticks(range(len(factor_names)))
    ax.set_xticklabels([f"{n}\ngap {g:.2f}" for n, g in zip(factor_names, mig_result["gaps"])],
                       fontsize=8)
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels([f"z{j} (KL {kl[j]:.2f})" for j in order], fontsize=8)
    fig.colorbar(im, ax=ax, label="I(z_j; v_k) / H(v_k)")
    ax.set_title(title or f"MIG {mig_result['mig']:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def shapes_mig(model, rng, n=5000, bins=20):
    """MIG of a model trained on the shapes, on n images drawn on the dSprites-like grid."""
    from .data import shapes
    f = shapes.draw_factors(n, rng, levels=shapes.DSPRITES_LEVELS)
    mu, _ = metrics.encode_factors(model, f)
    v, discrete = metrics.factor_matrix(f, shapes.DSPRITES_LEVELS)
    return metrics.mig(mu, v, bins=bins, discrete=discrete)


def write_latent_figures(model, run_dir, x_heldout, image_shape, shapes_factors=False, seed=0):
    """traversals.png (always), manifold.png (Z = 2), mi.png (shapes_factors) in run_dir;
    returns the paths written.  x_heldout (N, D): the first image is traversed and all of them
    give the per-latent KL that orders the rows."""
    if model.config.get("latent", "gaussian") != "gaussian":
        raise MinivaeError("latent traversals need Gaussian latents (a VAE); this model's latents "
                           f"are {model.config.get('latent')}")
    x = np.asarray(to_host(x_heldout))[:2000]
    mus, lvs = [], []
    for i in range(0, len(x), 500):
        mu, lv = model.encode(to_device(x[i:i + 500], model.xp, model.dtype))
        mus.append(to_host(mu))
        lvs.append(to_host(lv))
    kl = metrics.per_latent_kl(np.concatenate(mus), np.concatenate(lvs))
    written = [os.path.join(run_dir, "traversals.png")]
    save_traversals(written[0], model, x[0], kl, image_shape)
    if model.latent_dim == 2:
        written.append(os.path.join(run_dir, "manifold.png"))
        save_manifold(written[-1], model, image_shape)
    if shapes_factors and model.latent_dim >= 2:
        from .data.shapes import FACTORS
        written.append(os.path.join(run_dir, "mi.png"))
        r = shapes_mig(model, np.random.default_rng(seed))
        save_mi_heatmap(written[-1], r, kl, FACTORS,
                        title=f"MIG {r['mig']:.3f} (5,000 shapes on the dSprites-like grid; "
                        "20 bins per latent)")
    return written
