"""C1-C4: importance sampling in the linear-Gaussian model; read beside docs/guide.md, C1-C4.

    C1  z ~ p(z) gives an unbiased estimate of p(x) whose weights have a huge variance
    C2  E_q[w] = p(x) for any proposal q with the right support
    C3  the variance of the n-sample estimate is var(w)/n
    C4  q = p(z|x) gives weights of zero variance

Run by scripts/derivation.py (``--only C1,C3``); the models, sizes and tolerance rules are in
context.py.  Figure: variance_vs_n.png (C3 and C4).
"""
import numpy as np

from .context import draw_log_weights, proposals, roundoff, sd_of_sample_variance, weight_moments
from .harness import Z_TOL, Figure, Verdict, claim, fmt, pyplot, save

CLAIMS = []


@claim(CLAIMS, "C1", "prior sampling: unbiased, huge variance")
def claim_c1(ctx):
    """Replicate estimates p_hat_K of p(x) with z ~ p(z): their mean is p(x) within the exact
    standard error sqrt(var(w) / (K R)) / p(x); the exact relative variance of the weights under
    the prior is at least 10 times the fitted encoder's (an order of magnitude: "huge"), and the
    posterior's is 0 to round-off."""
    lg, x = ctx.mild, ctx.x_mild
    K, R = ctx.n.c1_K, ctx.n.c1_R
    lp = lg.log_marginal(x)
    prior, post, fit = lg.prior(len(x)), lg.posterior_gaussian(x), ctx.fitted(lg, x)
    lw = draw_log_weights(lg, x, prior, K * R, ctx.rng("C1"))
    est = np.exp(lw - lp).reshape(R, K, -1).mean(axis=1)          # (R, B): p_hat_K / p(x)
    rv_prior = lg.weight_relative_variance(x, prior)
    rv_fit = lg.weight_relative_variance(x, fit)
    rv_post = lg.weight_relative_variance(x, post)
    se = np.sqrt(rv_prior / (K * R))
    z = (est.mean(axis=0) - 1.0) / se
    log_bias = np.log(est).mean(axis=0)                    # E log p_hat - log p(x) < 0 (Jensen)
    ratio = rv_prior / rv_fit
    tol_post = roundoff(np.linalg.cond(lg.M), 1.0)
    unbiased = bool(np.all(np.abs(z) <= Z_TOL))
    huge = bool(np.all(ratio >= 10) and np.all(np.abs(rv_post) <= tol_post))
    i = int(np.argmin(rv_prior))
    summary = (f"mean p^_{K}/p(x), {R:,} estimates: {fmt(est.mean(0)[i], 4)} +- {fmt(se[i], 2)} "
               f"(4 x: |z| <= {fmt(np.abs(z).max(), 2)}); var(w)/p(x)^2 prior {fmt(rv_prior.min())}"
               f"..{fmt(rv_prior.max())}, fitted q {fmt(rv_fit.max())} (x{fmt(ratio.min())} or "
               f"more), posterior {fmt(np.abs(rv_post).max(), 2)}")
    return Verdict(unbiased and huge, summary, dict(
        model="MILD", K=K, replicates=R, log_p=lp, mean_ratio=est.mean(0), exact_se=se, z=z,
        mean_log_estimate_minus_log_p=log_bias,
        relvar_prior=rv_prior, relvar_fitted=rv_fit, relvar_posterior=rv_post,
        ratio_prior_to_fitted=ratio, samples_for_1pct_prior=rv_prior / 1e-4,
        samples_for_1pct_fitted=rv_fit / 1e-4, checks=dict(unbiased=unbiased,
                                                           prior_variance_huge=huge)))


@claim(CLAIMS, "C2", "E_q[w] = p(x) for any q")
def claim_c2(ctx):
    """E_q[w / p(x)] = 1 for the prior, the fitted encoder, a wide shifted q and the posterior,
    within Z_TOL exact standard errors sqrt(var(w/p) / N) (+ round-off for the posterior)."""
    lg, x = ctx.mild, ctx.x_mild
    N = ctx.n.c2_N
    lp = lg.log_marginal(x)
    out, ok = {}, True
    for k, (name, q) in enumerate(proposals(ctx, lg, x).items()):
        r = np.exp(draw_log_weights(lg, x, q, N, ctx.rng("C2", k)) - lp)
        rv = lg.weight_relative_variance(x, q)
        se = np.sqrt(np.maximum(rv, 0) / N)
        tol = Z_TOL * se + roundoff(np.linalg.cond(lg.M), np.abs(lp))
        dev = r.mean(axis=0) - 1.0
        good = bool(np.all(np.abs(dev) <= tol) and np.all(np.isfinite(rv)))
        ok &= good
        out[name] = dict(mean_ratio=r.mean(axis=0), exact_se=se, relvar=rv,
                         z=dev / np.where(se > 0, se, np.inf), ok=good)
    zmax = max(float(np.max(np.abs(o["z"]))) for k, o in out.items() if k != "posterior")
    summary = (f"mean w/p(x), {N:,} draws: " + ", ".join(
        f"{name} {np.mean(o['mean_ratio']):.4f}" for name, o in out.items())
        + f" (4 x: |z| <= {fmt(zmax, 2)}, exact SE)")
    return Verdict(ok, summary, dict(model="MILD", N=N, proposals=out))


@claim(CLAIMS, "C3", "var of the n-sample estimate = var(w)/n")
def claim_c3(ctx):
    """R replicate n-sample estimates p_hat_n / p(x) for each n: their sample variance against the
    exact var(w/p) / n (within Z_TOL sd of a sample variance, exact 4th moments), and the
    log-log slope against -1 (standard error by the delta method)."""
    lg, x = ctx.mild, ctx.x_mild
    ns, R = ctx.n.c3_ns, ctx.n.c3_R
    lp = lg.log_marginal(x)
    qs = {"prior": lg.prior(len(x)), "fitted encoder": ctx.fitted(lg, x),
          "exact posterior": lg.posterior_gaussian(x)}
    res, ok = {}, True
    for k, (name, q) in enumerate(qs.items()):
        var1, mu4_1 = weight_moments(lg, x, q)
        rng = ctx.rng("C3", k)
        emp, expect, sd = [], [], []
        for n in ns:
            p_hat = np.exp(draw_log_weights(lg, x, q, n * R, rng) - lp).reshape(R, n, -1).mean(1)
            emp.append(p_hat.var(axis=0, ddof=1))
            expect.append(var1 / n)
            mu4_n = (mu4_1 + 3 * (n - 1) * var1 ** 2) / n ** 3   # mean of n iid draws
            sd.append(sd_of_sample_variance(var1 / n, mu4_n, R))
        emp, expect, sd = map(np.array, (emp, expect, sd))        # (len(ns), B)
        entry = dict(n=ns, empirical_var=emp, exact_var=expect, sd=sd)
        if name == "exact posterior":
            tol = roundoff(np.linalg.cond(lg.M), np.abs(lp).max()) ** 2
            good = bool(np.all(emp <= tol))
            entry.update(roundoff_tol=tol, ok=good)
        else:
            z = (emp - expect) / sd
            logn = np.log(ns)
            c = (logn - logn.mean()) / ((logn - logn.mean()) ** 2).sum()
            slope = c @ np.log(emp)
            slope_se = np.sqrt((c[:, None] ** 2 * (sd / expect) ** 2).sum(axis=0))
            good = bool(np.all(np.abs(z) <= Z_TOL)
                        and np.all(np.abs(slope + 1) <= Z_TOL * slope_se))
            entry.update(z=z, slope=slope, slope_se=slope_se, ok=good)
        ok &= good
        res[name] = entry
    p, f, e = res["prior"], res["fitted encoder"], res["exact posterior"]
    zmax = max(np.abs(p['z']).max(), np.abs(f['z']).max())
    summary = (f"log-log slope prior {fmt(p['slope'].min())}..{fmt(p['slope'].max())}, fitted "
               f"{fmt(f['slope'].min())}..{fmt(f['slope'].max())} (SE <= "
               f"{fmt(max(p['slope_se'].max(), f['slope_se'].max()), 2)}); var = var(w)/n at "
               f"n = {ns[0]}..{ns[-1]}: |z| <= {fmt(zmax, 2)}; posterior var <= "
               f"{fmt(e['empirical_var'].max(), 2)}")
    return Verdict(ok, summary, dict(model="MILD", replicates=R, proposals=res),
                   figure=Figure("variance_vs_n", figure_variance_vs_n, dict(res=res, row=1, R=R)))


@claim(CLAIMS, "C4", "q = posterior: zero variance")
def claim_c4(ctx):
    """With q = p(z|x) every log-weight equals log p(x): max |log w - log p(x)| within round-off,
    in both models; the exact relative variance of the weights is 0 to round-off."""
    out, ok = {}, True
    for k, (name, lg, x) in enumerate((("MILD", ctx.mild, ctx.x_mild),
                                       ("STRONG", ctx.strong, ctx.x_strong))):
        post = lg.posterior_gaussian(x)
        N = ctx.n.c4_N
        z = post.sample(N, ctx.rng("C4", k))
        lw = lg.log_joint(x, z) - post.log_prob(z)
        lp = lg.log_marginal(x)
        scale = (np.abs(lg.log_likelihood(x, z)) + np.abs(lg.log_prior(z))
                 + np.abs(post.log_prob(z))).max()
        tol = roundoff(np.linalg.cond(lg.M), scale)
        dev = float(np.abs(lw - lp).max())
        rel_var = float(np.exp(lw - lp).var(axis=0, ddof=1).max())
        exact_rv = float(np.abs(lg.weight_relative_variance(x, post)).max())
        good = dev <= tol and rel_var <= tol ** 2 and exact_rv <= tol
        ok &= good
        out[name] = dict(N=N, max_abs_logw_minus_logp=dev, sample_relvar=rel_var,
                         exact_relvar=exact_rv, tol=tol, ok=good)
    m, s = out["MILD"], out["STRONG"]
    dev = max(m['max_abs_logw_minus_logp'], s['max_abs_logw_minus_logp'])
    summary = (f"max |log w - log p(x)| {fmt(dev, 2)}"
               f" over {m['N']:,} draws, 2 models (round-off bound "
               f"{fmt(min(m['tol'], s['tol']), 2)}); var(w)/p(x)^2 <= "
               f"{fmt(max(m['sample_relvar'], s['sample_relvar']), 2)}")
    return Verdict(ok, summary, out)


# ------------------------------------------------------------------------------------------
# figures

def figure_variance_vs_n(path, res, row, R):
    plt = pyplot()
    fig, (ax, low) = plt.subplots(2, 1, figsize=(6.6, 5.6), sharex=True,
                                  gridspec_kw=dict(height_ratios=(3, 1.2)))
    for (name, e), color in zip(res.items(), ("C3", "C0", "C2")):
        n = np.array(e["n"])
        emp = np.array(e["empirical_var"])[:, row]
        if name == "exact posterior":
            low.plot(n, np.maximum(emp, 1e-40), "s", color=color, ms=6,
                     label=f"{name}: exact 0; measured (round-off)")
            low.axhline(e["roundoff_tol"], color=color, ls=":", lw=1,
                        label=f"round-off bound {fmt(e['roundoff_tol'], 2)}")
            continue
        exact = np.array(e["exact_var"])[:, row]
        sd = np.array(e["sd"])[:, row]
        ax.plot(n, exact, "-", color=color, lw=1, alpha=0.8)
        ax.errorbar(n, emp, yerr=(np.minimum(sd, 0.9 * emp), sd), fmt="o", color=color, ms=5,
                    capsize=3, label=f"{name}: var(w)/p(x)^2 = {fmt(exact[0], 3)}, log-log slope "
                                     f"{e['slope'][row]:.3f}")
    ax.plot([], [], "-", color="gray", label="exact var(w) / (n p(x)^2): slope -1")
    for a in (ax, low):
        a.set_yscale("log")
        a.grid(alpha=0.3, which="both")
        a.legend(fontsize=8, loc="upper right")
    low.set_xscale("log", base=2)
    low.set_xlabel("n, samples per estimate")
    ax.set_ylabel("variance of p_hat_n / p(x)")
    low.set_ylabel("variance")
    ax.set_title(f"C3/C4: variance of the n-sample estimate of p(x)\n(MILD, one x; {R} replicates "
                 f"per n; bars: 1 sd of the sample variance)", fontsize=10)
    save(fig, path)
