"""C5, IWAE, C6, C7: the bounds on log p(x); read beside docs/guide.md C5-C7 and docs/iwae.md.

    C5    Jensen: log E_q[w] = log p(x) >= E_q[log w] = the ELBO
    IWAE  ELBO = IWAE_1 <= IWAE_K <= log p(x), rising with K (docs/iwae.md)
    C6    the gap log p(x) - ELBO is exactly KL(q || p(z|x))
    C7    ELBO = E_q log p(x|z) - KL(q || p(z)) = -(distortion + KL), in the linear-Gaussian
          model and for a trained VAE (the beta = 1 model of beta.py's sweep)

Run by scripts/derivation.py (``--only C5,IWAE``); the models, sizes and tolerance rules are in
context.py.  Figures: iwae_vs_k.png (IWAE), elbo_gap.png (C6).
"""
import math

import numpy as np

from minivae.linear_gaussian import Gaussian

from .beta import vae_sweep
from .context import draw_log_weights, proposals, roundoff
from .harness import Z_TOL, Figure, Verdict, claim, fmt, pyplot, save

LOG_2PI = math.log(2 * math.pi)
CLAIMS = []


@claim(CLAIMS, "C5", "Jensen: log E_q[w] >= E_q[log w] = ELBO")
def claim_c5(ctx):
    """log E_q[w] = log p(x) (C2) against E_q[log w] = the ELBO: the exact gap log p(x) - ELBO is
    > 0 beyond round-off for q != posterior and 0 to round-off for the posterior; the Monte Carlo
    mean of log w agrees with the closed-form ELBO within Z_TOL standard errors."""
    out, ok = {}, True
    N = ctx.n.c5_N
    for m, (mname, lg, x) in enumerate((("MILD", ctx.mild, ctx.x_mild),
                                        ("STRONG", ctx.strong, ctx.x_strong))):
        lp = lg.log_marginal(x)
        for k, (qname, q) in enumerate(proposals(ctx, lg, x).items()):
            elbo = lg.elbo(x, q)
            lw = draw_log_weights(lg, x, q, N, ctx.rng("C5", m, k))
            # centred before averaging: a plain sum of N values of size |log p| would carry
            # round-off ~N eps |log p|, above the posterior's round-off bound
            mc = elbo + (lw - elbo).mean(axis=0)
            se = lw.std(axis=0, ddof=1) / math.sqrt(N)
            gap = lp - elbo
            tol = roundoff(np.linalg.cond(lg.M) * np.linalg.cond(q.covariance()).max(),
                           np.abs(lp).max() + np.abs(elbo).max())
            jensen = bool(np.all(np.abs(gap) <= tol)) if qname == "posterior" else bool(
                np.all(gap > tol))
            mc_ok = bool(np.all(np.abs(mc - elbo) <= Z_TOL * se + tol))
            ok &= jensen and mc_ok
            out[f"{mname}/{qname}"] = dict(log_p=lp, elbo=elbo, gap=gap, mc_mean_log_w=mc,
                                           mc_se=se, tol=tol, jensen=jensen, mc_ok=mc_ok)
    g = {k: float(np.min(v["gap"])) for k, v in out.items()}
    zmax = max(float(np.max(np.abs(v["mc_mean_log_w"] - v["elbo"]) / v["mc_se"]))
               for k, v in out.items() if not k.endswith("posterior"))
    post_gap = max(np.abs(out['MILD/posterior']['gap']).max(),
                   np.abs(out['STRONG/posterior']['gap']).max())
    summary = (f"log p(x) - ELBO: prior >= {fmt(min(g['MILD/prior'], g['STRONG/prior']))}, fitted "
               f"{fmt(g['MILD/fitted'])} / {fmt(g['STRONG/fitted'])}, wide >= "
               f"{fmt(min(g['MILD/wide'], g['STRONG/wide']))}, posterior {fmt(post_gap, 2)}; "
               f"MC E_q[log w] = ELBO (|z| <= {fmt(zmax, 2)})")
    return Verdict(ok, summary, dict(N=N, cases=out))


@claim(CLAIMS, "IWAE", "ELBO <= IWAE_K <= log p(x), up with K")
def claim_iwae(ctx):
    """IWAE_K (``iwae_bound``, R * K_max draws for every K) for the fitted diagonal q and the prior:
    IWAE_1 = ELBO, ELBO <= IWAE_K <= log p(x) and IWAE_K non-decreasing in K (all within Z_TOL
    standard errors), and IWAE at the largest K clearly above the ELBO (> Z_TOL SE)."""
    lg, x = ctx.strong, ctx.x_strong
    Ks, R = ctx.n.iwae_Ks, ctx.n.iwae_R
    lp = lg.log_marginal(x)
    out, ok = {}, True
    for k, (name, q) in enumerate((("fitted", ctx.fitted(lg, x)), ("prior", lg.prior(len(x))))):
        elbo = lg.elbo(x, q)
        rng = ctx.rng("IWAE", k)
        # the same number of draws R * K_max for every K: more replicates where K is small
        ests = [lg.iwae_bound(x, q, K, rng, replicates=R * Ks[-1] // K) for K in Ks]
        val = np.array([e.value for e in ests])                      # (len(Ks), B)
        se = np.array([e.stderr for e in ests])
        first = bool(np.all(np.abs(val[0] - elbo) <= Z_TOL * se[0]))
        bounds = bool(np.all(val >= elbo - Z_TOL * se) and np.all(val <= lp + Z_TOL * se))
        mono = bool(np.all(np.diff(val, axis=0) >= -Z_TOL * np.hypot(se[1:], se[:-1])))
        rises = bool(np.all(val[-1] - elbo > Z_TOL * se[-1]))
        good = first and bounds and mono and rises
        ok &= good
        out[name] = dict(K=Ks, replicates=[e.n for e in ests], iwae=val, se=se, elbo=elbo, log_p=lp,
                         gap_closed=(val[-1] - elbo) / (lp - elbo),
                         checks=dict(iwae1_is_elbo=first, between_elbo_and_log_p=bounds,
                                     non_decreasing=mono, rises_above_elbo=rises), ok=good)
    f, p = out["fitted"], out["prior"]
    summary = (f"fitted q: ELBO - log p(x) = {fmt((f['elbo'] - lp)[0])} -> IWAE_{Ks[-1]} - log p(x)"
               f" = {fmt((f['iwae'][-1] - lp).mean())} ({100 * f['gap_closed'].mean():.0f}% of "
               f"the gap closed); prior q: {100 * p['gap_closed'].mean():.0f}%; non-decreasing "
               f"in K, <= log p(x)")
    return Verdict(ok, summary, dict(model="STRONG", replicates=R, proposals=out),
                   figure=Figure("iwae_vs_k", figure_iwae_vs_k, dict(res=out, row=0)))


# ------------------------------------------------------------------------------------------
# C6, C7: the two forms of the ELBO

@claim(CLAIMS, "C6", "ELBO = log p(x) - KL(q || p(z|x))")
def claim_c6(ctx):
    """ELBO(q) + KL(q || p(z|x)) - log p(x), three separate closed forms, is 0 to round-off for
    the prior, the posterior, the fitted encoder, beta-optimal q's and random diagonal and
    full-covariance q's spanning KLs from ~1e-6 to ~1e3 nats; the best diagonal q keeps exactly
    the Hadamard gap -log(1 - rho^2) / 2 (Z = 2)."""
    lg, x = ctx.strong, ctx.x_strong
    B, Z = x.shape[0], lg.Z
    rng = ctx.rng("C6")
    post_mean, S = lg.posterior(x)
    qs = [("prior", lg.prior(B)), ("posterior", lg.posterior_gaussian(x)),
          ("fitted", ctx.fitted(lg, x))]
    qs += [(f"beta={b:g}", lg.optimal_diagonal_q(x, b)) for b in (0.1, 0.3, 3.0, 10.0)]
    for i in range(ctx.n.c6_random):
        spread = 10.0 ** rng.uniform(-2.5, 1.0)
        qs.append(("random diagonal", Gaussian.diagonal(
            post_mean + spread * rng.standard_normal((B, Z)),
            np.log(np.diag(S)) + spread * rng.standard_normal((B, Z)))))
        A = rng.standard_normal((B, Z, Z)) * spread
        qs.append(("random full", Gaussian.full(post_mean + spread * rng.standard_normal((B, Z)),
                                                S + A @ np.swapaxes(A, 1, 2))))
    lp = lg.log_marginal(x)
    rows, ok = [], True
    for name, q in qs:
        elbo, kl = lg.elbo(x, q), lg.kl_to_posterior(x, q)
        distortion, kl_prior = lg.distortion_and_kl(x, q)
        cond = np.linalg.cond(lg.M) * np.linalg.cond(q.covariance()).max()
        tol = roundoff(cond, np.abs(elbo) + np.abs(kl) + np.abs(distortion) + np.abs(kl_prior))
        resid = elbo + kl - lp
        good = bool(np.all(np.abs(resid) <= tol) and np.all(kl >= -tol))
        ok &= good
        rows.append(dict(q=name, gap=lp - elbo, kl=kl, residual=resid, tol=tol, ok=good))
    fit = rows[2]
    hadamard = -0.5 * math.log(1 - ctx.rho(lg) ** 2)
    had_ok = bool(np.allclose(fit["kl"], hadamard, rtol=1e-9))
    ok &= had_ok
    worst = max(float(np.max(np.abs(r["residual"]) / r["tol"])) for r in rows)
    kls = np.concatenate([r["kl"] for r in rows if r["q"] != "posterior"])
    figure = Figure("elbo_gap", figure_elbo_gap, dict(rows=rows))
    resid = max(float(np.abs(r["residual"]).max()) for r in rows)
    summary = (f"{len(rows)} q x {B} x, KL {fmt(kls.min(), 1)}..{fmt(kls.max(), 2)}: "
               f"|ELBO + KL - log p| <= {fmt(resid, 2)} ({fmt(worst, 2)} of round-off bound); "
               f"diagonal q keeps KL {fmt(fit['kl'][0], 4)} = -log(1-rho^2)/2")
    return Verdict(ok, summary, dict(model="STRONG", rho=ctx.rho(lg), hadamard_gap=hadamard,
                                         worst_residual_over_bound=worst, proposals=rows),
                   figure=figure)


def _vae_mc_elbo(model, x, eps, chunk=25):
    """Monte Carlo estimate of E_q[log p(x, z) - log q(z|x)] per image from the noise eps (S, N, Z),
    written out here from the encoder and decoder outputs (not with the library's ELBO code):
    z = mu + exp(logvar / 2) eps, Bernoulli log p(x|z) = sum x l - softplus(l), Gaussian
    log-densities from their formulas."""
    out = np.empty(len(x))
    for i in range(0, len(x), chunk):
        xb = x[i:i + chunk]
        mu, logvar = (np.asarray(a, dtype=np.float64) for a in model.encode(xb))
        z = mu + np.exp(0.5 * logvar) * eps[:, i:i + chunk]
        S = len(z)
        logits = np.asarray(model.decoder_forward(z.reshape(-1, z.shape[-1])), dtype=np.float64)
        logits = logits.reshape(S, len(xb), -1)
        log_px_z = (xb * logits - np.logaddexp(0.0, logits)).sum(axis=-1)
        log_pz = -0.5 * (z * z + LOG_2PI).sum(axis=-1)
        log_q = -0.5 * ((z - mu) ** 2 * np.exp(-logvar) + logvar + LOG_2PI).sum(axis=-1)
        out[i:i + chunk] = (log_px_z + log_pz - log_q).mean(axis=0)
    return out


@claim(CLAIMS, "C7", "ELBO = E_q log p(x|z) - KL(q || p(z))")
def claim_c7(ctx):
    """Linear-Gaussian: the closed forms of the distortion -E_q[log p(x|z)] and KL(q || p(z))
    against Monte Carlo means, within Z_TOL standard errors.  A trained VAE (beta = 1, float64
    copy): model.elbo's -(distortion + KL) (Monte Carlo distortion, closed-form KL) against an
    independent Monte Carlo estimate of E_q[log p(x, z) - log q(z|x)]; per-image differences
    have mean 0 under the claim."""
    lg, x = ctx.strong, ctx.x_strong
    S = ctx.n.c7_S
    lin, ok = {}, True
    for k, (name, q) in enumerate(proposals(ctx, lg, x).items()):
        distortion, kl = lg.distortion_and_kl(x, q)
        z = q.sample(S, ctx.rng("C7", k))
        zs = {}
        for term, exact, draws in (("distortion", distortion, -lg.log_likelihood(x, z)),
                                   ("kl", kl, q.log_prob(z) - lg.log_prior(z))):
            se = draws.std(axis=0, ddof=1) / math.sqrt(S)
            tol = Z_TOL * se + roundoff(1.0, np.abs(exact))
            dev = (draws - exact).mean(axis=0)                  # centred (see claim_c5)
            zs[term] = dev / np.maximum(se, 1e-300)
            ok &= bool(np.all(np.abs(dev) <= tol))
        lin[name] = dict(distortion=distortion, kl=kl, elbo=-(distortion + kl),
                         z_distortion=zs["distortion"], z_kl=zs["kl"])
    lin_z = max(float(np.max(np.abs(np.r_[v["z_distortion"], v["z_kl"]])))
                for k, v in lin.items() if k != "posterior")

    from minivae.model import VAE
    sweep = vae_sweep(ctx)
    trained = sweep["models"][1.0]
    model = VAE(**{**trained.config, "dtype": "float64"})
    model.buffer.data[...] = trained.buffer.data.astype(np.float64)
    xt = sweep["test"][:ctx.n.vae_images].astype(np.float64)
    S2 = ctx.n.vae_S
    shape = (S2, len(xt), model.latent_dim)
    eps = ctx.rng("C7", 10).standard_normal(shape)
    t = model.elbo(xt, eps=eps)
    a = -np.asarray(t.distortion + t.kl)                   # the ELBO per image
    vae = {}
    # independent noise: both sides unbiased for the ELBO, so the per-image differences have
    # mean 0; the same noise: log p(x|z) cancels and what is left, E[log q - log p(z)] - KL, has
    # a far smaller variance (a sharper check of the closed-form KL)
    for name, noise in (("independent", ctx.rng("C7", 11).standard_normal(shape)),
                        ("same noise", eps)):
        b = _vae_mc_elbo(model, xt, noise)
        d = a - b
        se = d.std(ddof=1) / math.sqrt(len(d))
        vae[name] = dict(mc_elbo=b.mean(), diff=d.mean(), diff_se=se, z=float(d.mean() / se))
    vae_ok = (all(abs(v["z"]) <= Z_TOL for v in vae.values())
              and bool(np.allclose(np.asarray(t.elbo), a, rtol=0, atol=1e-9)))
    ok &= vae_ok
    ind, same = vae["independent"], vae["same noise"]
    summary = (f"linear-Gaussian: closed forms = MC (|z| <= {fmt(lin_z, 2)}); VAE beta=1, "
               f"{len(xt)} test shapes: ELBO = -(distortion + KL) = {a.mean():.3f} (distortion "
               f"{np.mean(t.distortion):.2f}, KL {np.mean(t.kl):.2f}), MC E_q[log p(x,z) - log q]"
               f" = {ind['mc_elbo']:.3f}, diff "
               f"{fmt(ind['diff'], 2)} +- {fmt(ind['diff_se'], 2)} (same noise: "
               f"{fmt(same['diff'], 2)} +- {fmt(same['diff_se'], 2)})")
    return Verdict(ok, summary, dict(
        linear_gaussian=dict(model="STRONG", S=S, proposals=lin),
        vae=dict(images=len(xt), samples=S2, elbo=a.mean(), distortion=np.mean(t.distortion),
                 kl=np.mean(t.kl), ok=vae_ok, **vae)))


# ------------------------------------------------------------------------------------------
# figures

def figure_elbo_gap(path, rows):
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.6))
    styles = {"prior": ("C3", "s"), "fitted": ("C0", "D"), "random diagonal": ("C1", "o"),
              "random full": ("C2", "^")}
    seen = set()
    post = None
    for r in rows:
        if r["q"] == "posterior":
            post = r
            continue
        key = r["q"] if r["q"] in styles else ("beta-optimal diagonal" if r["q"].startswith("beta")
                                              else r["q"])
        color, marker = styles.get(key, ("C4", "v"))
        ax.plot(r["kl"], r["gap"], marker, color=color, ms=4 if "random" in key else 7,
                alpha=0.7, ls="none", label=None if key in seen else key)
        ax2.plot(r["kl"], np.maximum(np.abs(r["residual"]), 1e-17), marker, color=color, ms=4,
                 alpha=0.7, ls="none")
        ax2.plot(r["kl"], r["tol"], "_", color="gray", ms=6)
        seen.add(key)
    kls = np.concatenate([r["kl"] for r in rows if r["q"] != "posterior"])
    lo, hi = kls.min() / 2, kls.max() * 2
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="gap = KL")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("KL(q || p(z|x)), nats (kl_to_posterior)")
    ax.set_ylabel("log p(x) - ELBO(q), nats")
    ax.set_title("C6: the ELBO gap is the KL to the posterior", fontsize=10)
    if post is not None:
        ax.text(0.02, 0.97, f"q = posterior: KL = {fmt(np.abs(post['kl']).max(), 2)}, gap = "
                f"{fmt(np.abs(post['gap']).max(), 2)} (off the log scale)",
                transform=ax.transAxes, fontsize=8, va="top")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    ax2.plot([], [], "o", color="k", ms=4,
             label="|ELBO + KL - log p(x)|, colours as left (0 at 1e-17)")
    ax2.plot([], [], "_", color="gray", ms=6, label="its round-off bound")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("KL(q || p(z|x)), nats")
    ax2.set_ylabel("nats")
    ax2.legend(fontsize=8, loc="upper left")
    ax2.set_title("residual of the identity, per q and x, against its round-off bound",
                  fontsize=10)
    ax2.grid(alpha=0.3, which="both")
    save(fig, path)


def figure_iwae_vs_k(path, res, row):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    titles = {"fitted": "best diagonal q (fitted encoder)", "prior": "prior q = p(z)"}
    for ax, (name, e) in zip(axes, res.items()):
        K = np.array(e["K"])
        lp = e["log_p"][row]
        val = np.array(e["iwae"])[:, row] - lp
        se = np.array(e["se"])[:, row]
        ax.errorbar(K, val, yerr=se, fmt="o-", color="C0", ms=4, capsize=3,
                    label="IWAE_K - log p(x) (bars: 1 SE)")
        ax.axhline(e["elbo"][row] - lp, color="C3", ls="--", label="ELBO - log p(x)")
        ax.axhline(0.0, color="k", lw=1, label="log p(x) (exact)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("K, importance samples")
        ax.set_ylabel("nats relative to log p(x)")
        ax.set_title(f"IWAE_K rises towards log p(x): {titles[name]}", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="center right")
    draws = res["fitted"]["replicates"][-1] * res["fitted"]["K"][-1]
    fig.suptitle(f"STRONG model, first x; {draws:,} draws per K", fontsize=10)
    save(fig, path)
