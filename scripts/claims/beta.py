"""C8: beta trades distortion for rate; read beside docs/guide.md, C8 (and docs/disentanglement.md
for what beta does beyond it: disentanglement.py, D1-D4).

    C8  VAEs trained at each beta on the built-in shapes: the held-out rate falls and the
        distortion rises with beta; the exact linear-Gaussian curve is strictly monotone

Run by scripts/derivation.py (``--only C8``).  The sweep is trained once per run and shared:
C7 (bounds.py) checks the ELBO of its beta = 1 model.  Figure: rate_distortion.png.
"""
import dataclasses
import math
import sys
import tempfile
import time

import numpy as np

from .context import roundoff
from .harness import Z_TOL, Figure, Verdict, claim, fmt, pyplot, save

HIDDEN, LATENT = (200,), 8              # the VAEs of C7 and C8: 1024-200-8, ReLU, Bernoulli
CLAIMS = []


def vae_sweep(ctx):
    """Train one small VAE per beta on the built-in shapes (cached: C7 reuses the beta = 1 one)
    and evaluate each on the same held-out images with the same noise."""
    if "sweep" in ctx.cache:
        return ctx.cache["sweep"]
    from minivae.data import load_dataset
    from minivae.model import VAE
    from minivae.train import TrainConfig, Trainer
    n = ctx.n
    betas = tuple(sorted(set(n.betas) | {1.0}))
    data = load_dataset("shapes", binarize="dynamic", seed=0)
    test = data.test[:n.test_images]
    train = dataclasses.replace(data, train=data.train[:n.train_images], valid=None, test=None)
    eps = ctx.rng("C8", 99).standard_normal((n.eval_S, len(test), LATENT), dtype=np.float32)
    models, rate, dist, seconds = {}, {}, {}, {}
    for beta in betas:
        t0 = time.perf_counter()
        model = VAE(train.dim, HIDDEN, LATENT, beta=beta, seed=ctx.seed)
        with tempfile.TemporaryDirectory() as run_dir:
            Trainer(model, train, TrainConfig(epochs=n.epochs, batch_size=n.batch, seed=ctx.seed),
                    run_dir, log=lambda m: None).fit()
        kl, distortion = [], []
        for i in range(0, len(test), 500):
            t = model.elbo(test[i:i + 500], eps=eps[:, i:i + 500])
            kl.append(np.asarray(t.kl, dtype=np.float64))
            distortion.append(np.asarray(t.distortion, dtype=np.float64))
        models[beta], rate[beta], dist[beta] = (model, np.concatenate(kl),
                                                np.concatenate(distortion))
        seconds[beta] = time.perf_counter() - t0
        print(f"  beta {beta:g}: rate {rate[beta].mean():.3f}, distortion {dist[beta].mean():.3f} "
              f"nats ({seconds[beta]:.1f} s)", file=sys.stderr)
    ctx.cache["sweep"] = dict(betas=betas, models=models, rate=rate, distortion=dist,
                              test=test, seconds=seconds)
    return ctx.cache["sweep"]


@claim(CLAIMS, "C8", "beta up: rate down, distortion up")
def claim_c8(ctx):
    """VAEs trained at each beta, evaluated on held-out images with fixed noise: sorted by beta,
    the rate (mean KL) must fall and the distortion (mean -log p(x|z)) rise at every step, each
    step larger than Z_TOL standard errors of the paired per-image difference.  The exact
    linear-Gaussian curve (optimal diagonal q per beta) must be strictly monotone as well."""
    sw = vae_sweep(ctx)
    betas = [b for b in sw["betas"] if b in ctx.n.betas]
    R = np.array([sw["rate"][b].mean() for b in betas])
    D = np.array([sw["distortion"][b].mean() for b in betas])
    steps = []
    for b0, b1 in zip(betas, betas[1:]):
        dr = sw["rate"][b0] - sw["rate"][b1]             # > 0: rate falls
        dd = sw["distortion"][b1] - sw["distortion"][b0]  # > 0: distortion rises
        n = len(dr)
        steps.append(dict(betas=(b0, b1), rate_drop=dr.mean(),
                          rate_z=dr.mean() / (dr.std(ddof=1) / math.sqrt(n)),
                          distortion_rise=dd.mean(),
                          distortion_z=dd.mean() / (dd.std(ddof=1) / math.sqrt(n))))
    vae_ok = all(s["rate_z"] > Z_TOL and s["distortion_z"] > Z_TOL for s in steps)

    lg, x = ctx.strong, ctx.x_strong
    grid = np.unique(np.r_[np.geomspace(0.05, 20, 81), betas])
    lin_r, lin_d = [], []
    for b in grid:
        distortion, kl = lg.distortion_and_kl(x, lg.optimal_diagonal_q(x, b))
        lin_r.append(kl.mean())
        lin_d.append(distortion.mean())
    lin_r, lin_d = np.array(lin_r), np.array(lin_d)
    tol = roundoff(np.linalg.cond(lg.M), np.abs(lin_d).max())
    lin_ok = bool(np.all(np.diff(lin_r) < -tol) and np.all(np.diff(lin_d) > tol))
    at = np.isin(grid, betas)
    figure = Figure("rate_distortion", figure_rate_distortion, dict(
        betas=betas, rate=R, distortion=D, grid=grid, lin_rate=lin_r, lin_distortion=lin_d,
        at=at, epochs=ctx.n.epochs, images=ctx.n.train_images))
    zr = min(s["rate_z"] for s in steps)
    zd = min(s["distortion_z"] for s in steps)
    summary = (f"VAE beta {'/'.join(f'{b:g}' for b in betas)}: rate "
               + " > ".join(f"{r:.1f}" for r in R) + ", distortion "
               + " < ".join(f"{d:.1f}" for d in D)
               + f" (steps >= {fmt(min(zr, zd), 2)} SE); exact linear-Gaussian curve "
               + ("monotone" if lin_ok else "NOT monotone") + f" ({len(grid)} betas)")
    return Verdict(vae_ok and lin_ok, summary, dict(
        vae=dict(betas=betas, rate=R, distortion=D, steps=steps, train_images=ctx.n.train_images,
                 epochs=ctx.n.epochs, test_images=len(sw["test"]), eval_samples=ctx.n.eval_S,
                 train_seconds=sw["seconds"], ok=vae_ok),
        linear_gaussian=dict(model="STRONG", betas=grid, rate=lin_r, distortion=lin_d,
                             ok=lin_ok)), figure=figure)


# ------------------------------------------------------------------------------------------
# figures

def figure_rate_distortion(path, **d):
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.4))
    ax.plot(d["rate"], d["distortion"], "o-", color="C0")
    for b, r, dd in zip(d["betas"], d["rate"], d["distortion"]):
        ax.annotate(f"beta={b:g}", (r, dd), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("rate: held-out KL(q(z|x) || p(z)), nats")
    ax.set_ylabel("distortion: held-out -E_q log p(x|z), nats")
    ax.set_title(f"C8: VAEs on shapes ({d['images']} images, {d['epochs']} epochs each)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax2.plot(d["lin_rate"], d["lin_distortion"], "-", color="C2", lw=1.2, label="exact curve")
    ax2.plot(d["lin_rate"][d["at"]], d["lin_distortion"][d["at"]], "o", color="C2")
    for b, r, dd in zip(d["grid"][d["at"]], d["lin_rate"][d["at"]], d["lin_distortion"][d["at"]]):
        ax2.annotate(f"beta={b:g}", (r, dd), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax2.set_xlabel("rate: KL(q || p(z)), nats")
    ax2.set_ylabel("distortion: -E_q log p(x|z), nats")
    ax2.set_title("linear-Gaussian (STRONG): optimal diagonal q per beta, exact", fontsize=10)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    save(fig, path)
