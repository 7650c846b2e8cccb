"""Claims E1-E5: the score function against reparameterisation on a real VAE encoder, and a VAE
with Bernoulli latents trained by the score function or the Concrete relaxation (issue 15).

Read beside docs/estimators.md, "The real encoder" (E1-E3) and "Bernoulli latents" (E4-E5); run
by scripts/estimators_vae.py.  Figures: variance_vs_S.png (E2), curves.png (E3), discrete.png (E4).

The model.  A VAE D-H-Z (ReLU, Bernoulli decoder) on the built-in shapes (32x32 grey images,
``minivae.data.make_shapes``), trained with the reparameterised gradient for ``pre_steps`` Adam
steps; at those parameters, on a fixed batch of ``var_B`` held-out images, R independent draws of
the gradient with S samples per example, for S from 1 to 1,000, by three estimators sharing each
draw's noise (common random numbers): reparameterised (``VAE(estimator="reparam")``), the score
function without and with the leave-one-out baseline (``VAE(estimator="score")``,
``minivae.objectives.score_elbo_loss``).

    E1  both unbiased on the real encoder: the mean of (score - reparam) is 0 in every encoder
        block.  Checked along two unit directions per block (the reference gradient's own and a
        random one), pooled over S by inverse-variance weights, |t| < Z_TOL = 4.5.
    E2  the score function's variance is above the reparameterised one: in every encoder block
        and at every S, the ratio of the traces of the gradient covariances (sum of per-element
        variances over R draws) exceeds 1 at its lower bound, ratio * exp(-Z_TOL se), se the
        log-ratio's standard error from the spread of the draws' squared deviations (delta
        method).  The ratios' range and the log-log slopes against S (1/S law: -1) are reported;
        the decoder's gradients are the same function of z in both, so their ratio is 1.
    E3  training gap: from the same initialisation, data order and noise, N Adam steps with each
        estimator (S samples per example); after N steps the reparameterised run's held-out ELBO
        is higher than the score function's (leave-one-out) by more than Z_TOL paired standard
        errors over the test images (the same evaluation noise for both).
    E4  Bernoulli latents (``minivae.discrete.DiscreteVAE``, K latents): trained by the score
        function (leave-one-out) and by the relaxation (tau) for N steps from the same start; the
        relaxation's *exact* held-out ELBO (enumerating all 2^K states) is higher than the score
        function's by more than Z_TOL paired standard errors.
    E5  the relaxed objective is not the discrete ELBO: for the relaxation-trained model the
        mean relaxed objective on the test images (Monte Carlo) differs from its exact ELBO by
        more than Z_TOL standard errors.
"""

import dataclasses
import math
import time

import numpy as np

from minivae.data import make_shapes
from minivae.discrete import DiscreteVAE
from minivae.model import VAE
from minivae.optim import make_optimizer

from .harness import Z_TOL, Figure, Verdict, claim, pyplot, save

CLAIMS = []


@dataclasses.dataclass
class Sizes:
    train_images: int = 10000
    test_images: int = 1000
    hidden: int = 200
    latent: int = 8
    batch: int = 64
    lr: float = 1e-3
    pre_steps: int = 1500
    var_B: int = 8
    var_Ss: tuple = (1, 3, 10, 30, 100, 300, 1000)
    var_R: int = 12
    ref_draws: int = 40              # reparameterised draws at the largest S: the reference
    curve_S: int = 4
    curve_steps: int = 2000
    curve_every: int = 200
    eval_S: int = 4
    disc_K: int = 10
    disc_S: int = 4
    tau: float = 0.5
    disc_steps: int = 2000
    relaxed_mc: int = 20             # noise draws per test image for E5


QUICK = Sizes(train_images=1000, test_images=200, hidden=50, latent=4, batch=32, pre_steps=150,
              var_B=4, var_Ss=(1, 10, 100), var_R=8, ref_draws=10, curve_steps=150,
              curve_every=50, disc_K=6, disc_steps=150, relaxed_mc=10)


class Context:
    def __init__(self, n, seed):
        self.n, self.seed = n, seed
        imgs, _ = make_shapes(n.train_images, seed=seed)
        self.train = imgs.reshape(len(imgs), -1)
        imgs, _ = make_shapes(n.test_images, seed=(seed, 1))
        self.test = imgs.reshape(len(imgs), -1)
        self.D = self.train.shape[1]
        self.cache = {}

    def rng(self, *tag):
        return np.random.default_rng([self.seed, *tag])


# ----------------------------------------------------------------------------- helpers
def train(model, ctx, steps, every, evaluate, seed):
    """Adam on ctx.train for `steps` steps (data order and noise from `seed`); returns the curve
    [(step, per-image held-out values)] evaluated every `every` steps, and whether it diverged."""
    n = ctx.n
    opt = make_optimizer("adam", model.buffer, n.lr)
    data_rng, noise_rng = np.random.default_rng([seed, 1]), np.random.default_rng([seed, 2])
    N = len(ctx.train)
    perm, pos = data_rng.permutation(N), 0
    curve = [(0, evaluate(model))]
    for step in range(1, steps + 1):
        if pos + n.batch > N:
            perm, pos = data_rng.permutation(N), 0
        xb = ctx.train[perm[pos:pos + n.batch]]
        pos += n.batch
        eps = model.draw_noise(noise_rng, (model.samples, n.batch, model.latent_dim))
        terms = model.forward_backward(xb, eps)
        if not (math.isfinite(float(terms.loss)) and np.isfinite(model.buffer.grad).all()):
            return curve, True
        opt.step()
        if step % every == 0 or step == steps:
            curve.append((step, evaluate(model)))
    return curve, False


def gaussian_eval(ctx):
    """Per-image held-out ELBO with fixed noise (the same for every model: paired)."""
    eps = ctx.rng(9).standard_normal((ctx.n.eval_S, len(ctx.test), ctx.n.latent)).astype(np.float32)
    return lambda model: model.elbo(ctx.test, eps=eps).elbo.astype(np.float64)


def paired(a, b):
    """mean(a - b) and its standard error over the images."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))


def vae(ctx, **kw):
    return VAE(ctx.D, (ctx.n.hidden,), ctx.n.latent, "relu", seed=ctx.seed, **kw)


def pretrained(ctx):
    """The VAE the variance study runs on: trained with the reparameterised gradient."""
    if "pre" not in ctx.cache:
        model = vae(ctx)
        train(model, ctx, ctx.n.pre_steps, ctx.n.pre_steps, lambda m: None, ctx.seed + 100)
        ctx.cache["pre"] = model.buffer.data.copy()
    return ctx.cache["pre"]


def enc_blocks(model):
    return {k: (model.buffer.offsets[k], v.size) for k, v in model.params.items()}


# ----------------------------------------------------------------------------- E1, E2
def variance_study(ctx):
    """Per S: per-block trace of the gradient covariance of each estimator, and per-draw
    projections of (score - reparam) onto two unit directions per encoder block."""
    if "var" in ctx.cache:
        return ctx.cache["var"]
    n = ctx.n
    theta = pretrained(ctx)
    x = ctx.test[:n.var_B]
    blocks = enc_blocks(vae(ctx))
    rng = ctx.rng(1)
    # the reference direction: the reparameterised mean at the largest S
    ref = vae(ctx, samples=n.var_Ss[-1])
    ref.buffer.data[...] = theta
    g_ref = np.zeros(ref.buffer.size)
    for _ in range(n.ref_draws):
        ref.forward_backward(x, rng.standard_normal((n.var_Ss[-1], n.var_B, n.latent),
                                                    dtype=np.float32))
        g_ref += ref.buffer.grad / n.ref_draws
    dirs = {}
    for name, (o, size) in blocks.items():
        u = g_ref[o:o + size] / np.linalg.norm(g_ref[o:o + size])
        v = rng.standard_normal(size)
        dirs[name] = (u, v / np.linalg.norm(v))
    kinds = ["reparam", "score", "score+loo"]
    out = {"S": list(n.var_Ss), "trace": {k: {b: [] for b in blocks} for k in kinds},
           "trace_se": {k: {b: [] for b in blocks} for k in kinds},
           "proj": {k: {b: [] for b in blocks} for k in kinds[1:]},
           "g_ref_norm": {b: float(np.linalg.norm(g_ref[o:o + s])) for b, (o, s) in blocks.items()}}
    for S in n.var_Ss:
        models = {"reparam": vae(ctx, samples=S), "score": vae(ctx, samples=S, estimator="score")}
        if S >= 2:
            models["score+loo"] = vae(ctx, samples=S, estimator="score", baseline="mean")
        for m in models.values():
            m.buffer.data[...] = theta
        G = {k: np.empty((n.var_R, len(theta))) for k in models}
        for r in range(n.var_R):
            eps = rng.standard_normal((S, n.var_B, n.latent), dtype=np.float32)
            for k, m in models.items():
                m.forward_backward(x, eps)
                G[k][r] = m.buffer.grad
        for k in kinds:
            for b, (o, size) in blocks.items():
                if k not in G:                  # the leave-one-out baseline needs S >= 2
                    out["trace"][k][b].append(float("nan"))
                    out["trace_se"][k][b].append(float("nan"))
                    out["proj"][k][b].append(None)
                    continue
                dev = G[k][:, o:o + size] - G[k][:, o:o + size].mean(axis=0)
                sq = np.einsum("rj,rj->r", dev, dev)        # squared deviations per draw
                R = len(sq)
                out["trace"][k][b].append(float(sq.sum() / (R - 1)))
                out["trace_se"][k][b].append(float(R / (R - 1) * sq.std(ddof=1) / math.sqrt(R)))
                if k != "reparam":
                    u, v = dirs[b]
                    d = G[k][:, o:o + size] - G["reparam"][:, o:o + size]
                    out["proj"][k][b].append([(d @ u).tolist(), (d @ v).tolist()])
    ctx.cache["var"] = out
    return out


@claim(CLAIMS, "E1", "score and reparam: same mean gradient")
def claim_e1(ctx):
    res = variance_study(ctx)
    rows, worst, power = {}, 0.0, 0.0
    for k in ("score", "score+loo"):
        for b, per_S in res["proj"][k].items():
            if not b.startswith("enc."):
                continue
            for j, direction in enumerate(("gradient", "random")):
                means, ses = [], []
                for p in per_S:
                    if p is None:
                        continue
                    d = np.asarray(p[j])
                    means.append(d.mean())
                    ses.append(d.std(ddof=1) / math.sqrt(len(d)))
                w = 1 / np.square(ses)
                pooled = float(np.sum(w * np.asarray(means)) / w.sum())
                se = float(1 / math.sqrt(w.sum()))
                t = pooled / se
                rows[f"{k} {b} {direction}"] = dict(mean=pooled, se=se, t=t)
                worst = max(worst, abs(t))
                if direction == "gradient":
                    power = max(power, se / res["g_ref_norm"][b])
    ok = worst < Z_TOL
    summary = (f"max |t| = {worst:.2f} over {len(rows)} checks (< {Z_TOL}); the largest se is "
               f"{100 * power:.1f}% of its block's gradient norm")
    return Verdict(ok, summary, dict(checks=rows, max_abs_t=worst, se_over_norm=power))


@claim(CLAIMS, "E2", "score variance > reparam at every S")
def claim_e2(ctx):
    res = variance_study(ctx)
    ratios, ok, table = [], True, {}
    for k in ("score", "score+loo"):
        for b in res["trace"]["reparam"]:
            if not b.startswith("enc."):
                continue
            for i, S in enumerate(res["S"]):
                num, den = res["trace"][k][b][i], res["trace"]["reparam"][b][i]
                if not math.isfinite(num):
                    continue
                r = num / den
                # log-ratio standard error from the traces' (delta method); lower bound at Z_TOL
                se_log = math.hypot(res["trace_se"][k][b][i] / num,
                                    res["trace_se"]["reparam"][b][i] / den)
                lower = r * math.exp(-Z_TOL * se_log)
                table[f"{k} {b} S={S}"] = dict(ratio=r, lower=lower)
                ratios.append((k, r, lower))
                ok &= lower > 1
    dec = [res["trace"]["score"][b][i] / res["trace"]["reparam"][b][i]
           for b in res["trace"]["reparam"] if b.startswith("dec.") for i in range(len(res["S"]))]
    slopes = {}
    for k in ("reparam", "score", "score+loo"):
        for b in res["trace"][k]:
            if b.startswith("enc."):
                S = np.array(res["S"], float)
                v = np.array(res["trace"][k][b])
                keep = np.isfinite(v)
                slopes[f"{k} {b}"] = float(np.polyfit(np.log(S[keep]), np.log(v[keep]), 1)[0])
    lo = {k: min(r for kk, r, _ in ratios if kk == k) for k in ("score", "score+loo")}
    hi = {k: max(r for kk, r, _ in ratios if kk == k) for k in ("score", "score+loo")}
    low = min(lb for _, _, lb in ratios)
    summary = (f"trace ratio score/reparam {lo['score']:.3g}-{hi['score']:.3g} (no baseline), "
               f"{lo['score+loo']:.3g}-{hi['score+loo']:.3g} (leave-one-out), encoder blocks, "
               f"S {res['S'][0]}-{res['S'][-1]}; smallest lower bound (ratio at -{Z_TOL} se) "
               f"{low:.3g}; log-log "
               f"slopes {min(slopes.values()):.2f} to {max(slopes.values()):.2f} (1/S: -1); "
               f"decoder ratio {min(dec):.6f}-{max(dec):.6f}")
    return Verdict(ok, summary, dict(ratios=table, smallest_lower_bound=low, slopes=slopes,
                                     decoder_ratio=[min(dec), max(dec)], traces=res["trace"],
                                     S=res["S"]),
                   figure=Figure("variance_vs_S", figure_variance,
                                 dict(S=res["S"], trace=res["trace"])))


# ----------------------------------------------------------------------------- E3
@claim(CLAIMS, "E3", "reparam trains faster (same steps)")
def claim_e3(ctx):
    n = ctx.n
    evaluate = gaussian_eval(ctx)
    runs = {}
    for name, kw in (("reparam", {}), ("score", dict(estimator="score")),
                     ("score+loo", dict(estimator="score", baseline="mean"))):
        model = vae(ctx, samples=n.curve_S, **kw)
        t0 = time.perf_counter()
        curve, diverged = train(model, ctx, n.curve_steps, n.curve_every, evaluate, ctx.seed + 7)
        runs[name] = dict(curve=curve, diverged=diverged, seconds=time.perf_counter() - t0)
    final = {k: r["curve"][-1][1] for k, r in runs.items()}
    gap, se = paired(final["reparam"], final["score+loo"])
    gap0, se0 = paired(final["reparam"], final["score"])
    ok = gap > Z_TOL * se and not runs["reparam"]["diverged"]
    figure = Figure("curves", figure_curves, dict(
        runs={k: [(s, float(np.mean(v))) for s, v in r["curve"]] for k, r in runs.items()},
        title=f"shapes, VAE {ctx.D}-{n.hidden}-{n.latent}, S={n.curve_S}"))
    summary = (f"after {n.curve_steps} steps (S={n.curve_S}): held-out ELBO reparam "
               f"{final['reparam'].mean():.2f}, score+loo {final['score+loo'].mean():.2f}, score "
               f"{final['score'].mean():.2f} nats; gap reparam - score+loo {gap:.2f} +- {se:.2f}, "
               f"reparam - score {gap0:.2f} +- {se0:.2f}")
    return Verdict(ok, summary, dict(
        gap_loo=gap, gap_loo_se=se, gap_none=gap0, gap_none_se=se0,
        curves={k: [(s, float(np.mean(v))) for s, v in r["curve"]] for k, r in runs.items()},
        diverged={k: r["diverged"] for k, r in runs.items()},
        seconds={k: r["seconds"] for k, r in runs.items()}), figure=figure)


# ----------------------------------------------------------------------------- E4, E5
def discrete_runs(ctx):
    if "disc" in ctx.cache:
        return ctx.cache["disc"]
    n = ctx.n
    runs = {}
    for name, kw in (("score+loo", dict(estimator="score", baseline="mean")),
                     ("relaxed", dict(estimator="relaxed", temperature=n.tau))):
        model = DiscreteVAE(ctx.D, (n.hidden,), n.disc_K, "relu", seed=ctx.seed,
                            samples=n.disc_S, **kw)
        t0 = time.perf_counter()
        curve, diverged = train(model, ctx, n.disc_steps, n.curve_every,
                                lambda m: m.exact(ctx.test).elbo, ctx.seed + 8)
        ex = model.exact(ctx.test)
        runs[name] = dict(model=model, curve=curve, diverged=diverged, exact=ex,
                          seconds=time.perf_counter() - t0)
    ctx.cache["disc"] = runs
    return runs


@claim(CLAIMS, "E4", "Bernoulli: relaxed beats score (exact)")
def claim_e4(ctx):
    n = ctx.n
    runs = discrete_runs(ctx)
    r, s = runs["relaxed"]["exact"], runs["score+loo"]["exact"]
    gap, se = paired(r.elbo, s.elbo)
    gap_lp, se_lp = paired(r.logpx, s.logpx)
    ok = gap > Z_TOL * se
    figure = Figure("discrete", figure_discrete, dict(
        runs={k: [(st, float(np.mean(v))) for st, v in v_["curve"]] for k, v_ in runs.items()},
        title=f"shapes, Bernoulli latents K={n.disc_K}, S={n.disc_S}, tau={n.tau}"))
    summary = (f"after {n.disc_steps} steps, exact held-out ELBO: relaxed (tau {n.tau}) "
               f"{r.elbo.mean():.2f}, score+loo {s.elbo.mean():.2f} nats, gap {gap:.2f} +- "
               f"{se:.2f}; exact log p(x) {r.logpx.mean():.2f} vs {s.logpx.mean():.2f}")
    return Verdict(ok, summary, dict(
        elbo_relaxed=float(r.elbo.mean()), elbo_score=float(s.elbo.mean()), gap=gap, gap_se=se,
        logpx_relaxed=float(r.logpx.mean()), logpx_score=float(s.logpx.mean()),
        logpx_gap=gap_lp, logpx_gap_se=se_lp,
        curves={k: [(st, float(np.mean(v))) for st, v in v_["curve"]] for k, v_ in runs.items()},
        seconds={k: v_["seconds"] for k, v_ in runs.items()}), figure=figure)


@claim(CLAIMS, "E5", "relaxed objective != discrete ELBO")
def claim_e5(ctx):
    n = ctx.n
    run = discrete_runs(ctx)["relaxed"]
    model = run["model"]
    rng = ctx.rng(5)
    per_image = np.zeros(len(ctx.test))
    for _ in range(n.relaxed_mc):           # one sample per call: per-image relaxed objective
        eps = model.draw_noise(rng, (1, len(ctx.test), model.latent_dim))
        per_image += _relaxed_per_image(model, ctx.test, eps) / n.relaxed_mc
    relaxed_elbo = -per_image
    gap, se = paired(relaxed_elbo, run["exact"].elbo)
    ok = abs(gap) > Z_TOL * se
    summary = (f"relaxation-trained model: -(relaxed objective) {relaxed_elbo.mean():.2f} vs "
               f"exact ELBO {run['exact'].elbo.mean():.2f} nats: relaxed - exact = {gap:.3f} +- "
               f"{se:.3f}")
    return Verdict(ok, summary, dict(relaxed=float(relaxed_elbo.mean()),
                                         exact=float(run["exact"].elbo.mean()), gap=gap, se=se))


def _relaxed_per_image(model, x, eps):
    """nll(x | y) + KL per image at relaxed samples y (eps: (1, B, K))."""
    from minivae.discrete import bernoulli_kl, relaxed_sample
    logits = model.encoder.forward(model.check_data(x))
    y, _ = relaxed_sample(logits, eps, model.temperature)
    out = model.decoder.forward(y[0])
    return (model.likelihood.nll(out, model.check_data(x)) + bernoulli_kl(logits)).astype(
        np.float64)


# ----------------------------------------------------------------------------- figures
def figure_variance(path, S, trace):
    plt = pyplot()
    blocks = [b for b in trace["reparam"] if b.startswith("enc.")]
    fig, axes = plt.subplots(1, len(blocks), figsize=(3.6 * len(blocks), 3.4), squeeze=False)
    for ax, b in zip(axes[0], blocks):
        for k, style in (("reparam", "o-"), ("score", "s-"), ("score+loo", "^-")):
            ax.loglog(S, trace[k][b], style, label=k, ms=4)
        ax.set_title(b)
        ax.set_xlabel("S (samples per example)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("trace of the gradient covariance")
    axes[0][0].legend()
    fig.suptitle("encoder gradient variance on a trained VAE (one batch), against S")
    save(fig, path)


def figure_curves(path, runs, title, ylabel="held-out ELBO (nats)"):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for k, curve in runs.items():
        st, v = zip(*curve)
        ax.plot(st, v, "o-", ms=3, label=k)
    later = [v for c in runs.values() for _, v in c[1:]]          # after step 0
    lo = min(later) if later else None
    if lo is not None:
        hi = max(v for c in runs.values() for _, v in c)
        ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.05 * (hi - lo))
        start = min(c[0][1] for c in runs.values())
        if start < lo - 0.1 * (hi - lo):         # the untrained start, off the axis: say so
            ax.annotate(f"step 0: {start:.0f} (below the axis)", xy=(0.02, 0.02),
                        xycoords="axes fraction", fontsize=8, color="0.35")
    ax.set_xlabel("Adam step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend()
    save(fig, path)


def figure_discrete(path, runs, title):
    figure_curves(path, runs, title, ylabel="exact held-out ELBO (nats)")
