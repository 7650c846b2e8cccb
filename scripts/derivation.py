"""Every claim C1-C12 of the VAE derivation (issue 3), run as a falsifiable numerical check.

    python scripts/derivation.py [--out DIR] [--quick] [--seed S] [--only C3,C9]

prints one row per claim (id, statement, the numbers behind it, verified / NOT verified), writes
DIR/claims.json (every number) and the figures DIR/*.png, and exits with status 1 if any claim is
not verified.  --quick runs the same checks on fewer samples (wider standard errors, same
tolerances) and a shorter beta sweep; --seed changes every Monte Carlo draw and the VAE training.

Ground truth.  C1-C7 use the linear-Gaussian model (``minivae.linear_gaussian``), where log p(x),
p(z|x), every ELBO and KL and every moment of the importance weights are closed forms:
    MILD    LinearGaussian.random(8, 2, 0.5, make_rng(4)): posterior precision correlation
            rho = -0.21, so the best diagonal q has weights with finite 4th moment (|rho| < 1/4)
            and standard errors of variances are trustworthy (C1-C5).
    STRONG  LinearGaussian.random(5, 2, 0.5, make_rng(0)): rho = 0.65, the best diagonal q keeps an
            ELBO gap of 0.28 nats (infinite-variance weights): bounds and gaps (C5-C8, IWAE).
C7 and C8 also train small VAEs on the built-in shapes (``minivae.model.VAE``,
``minivae.train.Trainer``).  C9-C12 use ``minivae.estimators`` against closed-form
expectations of f(z) = z^2, sin z, exp(z/2) under Normal, Uniform, Exponential, Laplace and
Logistic, differentiated by central differences of the closed form (error ~1e-10, far below any
standard error here).

Tolerances.  A Monte Carlo number is checked against its exact value within Z_TOL = 4.5 standard
errors (two-sided false alarm 7e-6 per check under the normal approximation); where possible the
standard error comes from *exact* moments (``log_weight_moment``), otherwise from the sample.  The
standard deviation of a sample variance over R draws is sqrt(mu4/R - var^2 (R-3)/(R(R-1))).
An exact identity is checked to float64 round-off: ROUNDOFF * cond * eps * (1 + scale), with cond
the condition number of the matrices solved and scale the size of the terms summed (the rule of
tests/test_linear_gaussian.py).  Seeds are fixed, so a run is reproducible.
"""
import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import tempfile
import textwrap
import time
import traceback

# One BLAS thread: the matrices here are small (at most 64 x 1024 x 200 per training step), a
# second OpenBLAS thread gains little, and on a shared 2-core machine its spinning threads made
# the --quick beta sweep ~10x slower (measured: 2.4 s against 20-26 s).  The variable only acts
# if set before NumPy loads (a script run); main() also limits the threads with threadpoolctl
# when it is installed (the case of an import, as in the tests).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from minivae.backend import make_rng
from minivae.errors import MinivaeError
from minivae.estimators import (Bernoulli, Exponential, Laplace, Logistic, Normal, Uniform,
                                finite_difference, reparameterization, score_function)
from minivae.linear_gaussian import Gaussian, LinearGaussian

Z_TOL = 4.5
EPS = np.finfo(np.float64).eps
ROUNDOFF = 1e3
LOG_2PI = math.log(2 * math.pi)
HIDDEN, LATENT = (200,), 8              # the VAEs of C7 and C8: 1024-200-8, ReLU, Bernoulli

STATEMENTS = {
    "C1": "prior sampling: unbiased, huge variance",
    "C2": "E_q[w] = p(x) for any q",
    "C3": "var of the n-sample estimate = var(w)/n",
    "C4": "q = posterior: zero variance",
    "C5": "Jensen: log E_q[w] >= E_q[log w] = ELBO",
    "IWAE": "ELBO <= IWAE_K <= log p(x), up with K",
    "C6": "ELBO = log p(x) - KL(q || p(z|x))",
    "C7": "ELBO = E_q log p(x|z) - KL(q || p(z))",
    "C8": "beta up: rate down, distortion up",
    "C9": "plain sampling gives no d/dtheta E[f]",
    "C10": "score function: unbiased, high var",
    "C11": "reparam: unbiased, far lower var",
    "C12": "reparam: continuous yes, discrete no",
}
ORDER = list(STATEMENTS)


@dataclasses.dataclass
class Sizes:
    """Sample sizes; --quick divides the Monte Carlo work by ~10 and shortens the beta sweep."""
    c1_K: int = 100                    # samples per estimate of p(x)
    c1_R: int = 10_000                 # replicate estimates
    c2_N: int = 1_000_000              # weights per proposal
    c3_ns: tuple = (1, 4, 16, 64, 256, 1024)
    c3_R: int = 2000                   # replicate n-sample estimates per n
    c4_N: int = 100_000
    c5_N: int = 200_000
    iwae_Ks: tuple = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
    iwae_R: int = 200                  # replicates at the largest K; iwae_R * K_max draws per K
    c6_random: int = 30                # random proposals of each kind (diagonal, full)
    c7_S: int = 20_000
    vae_images: int = 300              # test images for the VAE's C7 check
    vae_S: int = 200                   # samples per image for each of the two ELBO estimates
    betas: tuple = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    train_images: int = 4000
    epochs: int = 5
    batch: int = 64
    test_images: int = 2000
    eval_S: int = 10                   # held-out samples per image (the same noise for every beta)
    c9_n: int = 100_000
    c9_hs: tuple = (0.3, 0.1, 0.03, 0.01, 0.003, 0.001)
    est_chunks: int = 20               # C10/C11: independent chunks (for the SE of a variance)
    est_n: int = 10_000                # samples per chunk
    c12_n: int = 100_000


QUICK = Sizes(c1_K=100, c1_R=1000, c2_N=100_000, c3_ns=(1, 4, 16, 64, 256), c3_R=500,
              c4_N=10_000, c5_N=20_000, iwae_Ks=(1, 4, 16, 64, 256), iwae_R=64, c6_random=10,
              c7_S=4000, vae_images=200, vae_S=100, betas=(0.25, 1.0, 4.0), train_images=1000,
              epochs=3, batch=32, test_images=500, eval_S=4, c9_n=20_000, c9_hs=(0.1, 0.01, 0.001),
              est_chunks=10, est_n=4000, c12_n=20_000)


@dataclasses.dataclass
class Claim:
    id: str
    verified: bool
    summary: str                       # the numbers behind it, short, for the table
    numbers: dict                      # every number, for claims.json
    seconds: float = 0.0

    @property
    def statement(self):
        return STATEMENTS[self.id]


def roundoff(cond, scale):
    """Float64 round-off bound for an identity whose terms have size `scale`."""
    return ROUNDOFF * cond * EPS * (1.0 + scale)


def sd_of_sample_variance(var, mu4, R):
    """Standard deviation of the unbiased sample variance of R iid draws."""
    return np.sqrt(np.maximum(mu4 / R - var ** 2 * (R - 3) / (R * (R - 1)), 0.0))


def weight_moments(lg, x, q):
    """Exact (var, mu4) of r = w / p(x) under q (mean 1), from E_q[r^n], n = 2, 3, 4."""
    m2, m3, m4 = (np.exp(lg.log_weight_moment(x, q, n)) for n in (2, 3, 4))
    return m2 - 1.0, m4 - 4.0 * m3 + 6.0 * m2 - 3.0


def draw_log_weights(lg, x, q, N, rng, chunk=1 << 17):
    """log w (N, B) drawn in chunks (bounded memory)."""
    return np.concatenate([lg.log_weights(x, q, min(chunk, N - i), rng)
                           for i in range(0, N, chunk)])


def fmt(v, digits=3):
    """A number in a short form for the table."""
    v = float(v)
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e5 or a < 1e-3:
        return f"{v:.{max(digits - 1, 1)}e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{v:.{digits}g}"


def jsonable(obj):
    """numpy -> lists and floats; inf / nan as strings (claims.json stays strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else str(f)
    return obj


# ------------------------------------------------------------------------------------------
# shared state: the two models, the rng per claim, lazily computed results used twice

class Context:
    def __init__(self, sizes, seed):
        self.n, self.seed = sizes, seed
        rng = make_rng(4)
        self.mild = LinearGaussian.random(8, 2, 0.5, rng)
        self.x_mild = self.mild.sample(4, rng)
        rng = make_rng(0)
        self.strong = LinearGaussian.random(5, 2, 0.5, rng)
        self.x_strong = self.strong.sample(4, rng)
        self.figures = {}
        self._sweep = None
        self._estimators = None

    def rng(self, claim, *more):
        """A generator per claim (and sub-check), derived from --seed."""
        return make_rng([self.seed, ORDER.index(claim), *more])

    def fitted(self, lg, x):
        """The fitted diagonal encoder: gradient ascent on the exact ELBO (``fit_diagonal_q``)."""
        return lg.fit_diagonal_q(x, steps=4000, rng=make_rng(1))

    @staticmethod
    def rho(lg):
        return float(lg.M[0, 1] / math.sqrt(lg.M[0, 0] * lg.M[1, 1]))


# ------------------------------------------------------------------------------------------
# C1-C5: importance sampling in the linear-Gaussian model

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
    return Claim("C1", unbiased and huge, summary, dict(
        model="MILD", K=K, replicates=R, log_p=lp, mean_ratio=est.mean(0), exact_se=se, z=z,
        mean_log_estimate_minus_log_p=log_bias,
        relvar_prior=rv_prior, relvar_fitted=rv_fit, relvar_posterior=rv_post,
        ratio_prior_to_fitted=ratio, samples_for_1pct_prior=rv_prior / 1e-4,
        samples_for_1pct_fitted=rv_fit / 1e-4, checks=dict(unbiased=unbiased,
                                                           prior_variance_huge=huge)))


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
    return Claim("C2", ok, summary, dict(model="MILD", N=N, proposals=out))


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
    ctx.figures["variance_vs_n"] = dict(res=res, row=1, R=R)
    p, f, e = res["prior"], res["fitted encoder"], res["exact posterior"]
    zmax = max(np.abs(p['z']).max(), np.abs(f['z']).max())
    summary = (f"log-log slope prior {fmt(p['slope'].min())}..{fmt(p['slope'].max())}, fitted "
               f"{fmt(f['slope'].min())}..{fmt(f['slope'].max())} (SE <= "
               f"{fmt(max(p['slope_se'].max(), f['slope_se'].max()), 2)}); var = var(w)/n at "
               f"n = {ns[0]}..{ns[-1]}: |z| <= {fmt(zmax, 2)}; posterior var <= "
               f"{fmt(e['empirical_var'].max(), 2)}")
    return Claim("C3", ok, summary, dict(model="MILD", replicates=R, proposals=res))


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
    return Claim("C4", ok, summary, out)


def proposals(ctx, lg, x):
    """The proposals of C2, C5, C7: the prior, the fitted encoder, a wide shifted diagonal q
    (posterior mean + 0.5, 3 times the posterior's marginal variances) and the posterior."""
    post_mean, S = lg.posterior(x)
    return {"prior": lg.prior(len(x)), "fitted": ctx.fitted(lg, x),
            "wide": Gaussian.diagonal(post_mean + 0.5, np.log(3 * np.diag(S)) + 0 * post_mean),
            "posterior": lg.posterior_gaussian(x)}


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
    return Claim("C5", ok, summary, dict(N=N, cases=out))


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
    ctx.figures["iwae_vs_k"] = dict(res=out, row=0)
    f, p = out["fitted"], out["prior"]
    summary = (f"fitted q: ELBO - log p(x) = {fmt((f['elbo'] - lp)[0])} -> IWAE_{Ks[-1]} - log p(x)"
               f" = {fmt((f['iwae'][-1] - lp).mean())} ({100 * f['gap_closed'].mean():.0f}% of "
               f"the gap closed); prior q: {100 * p['gap_closed'].mean():.0f}%; non-decreasing "
               f"in K, <= log p(x)")
    return Claim("IWAE", ok, summary, dict(model="STRONG", replicates=R, proposals=out))


# ------------------------------------------------------------------------------------------
# C6, C7: the two forms of the ELBO

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
        rec = -distortion
        cond = np.linalg.cond(lg.M) * np.linalg.cond(q.covariance()).max()
        tol = roundoff(cond, np.abs(elbo) + np.abs(kl) + np.abs(rec) + np.abs(kl_prior))
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
    ctx.figures["elbo_gap"] = dict(rows=rows)
    resid = max(float(np.abs(r["residual"]).max()) for r in rows)
    summary = (f"{len(rows)} q x {B} x, KL {fmt(kls.min(), 1)}..{fmt(kls.max(), 2)}: "
               f"|ELBO + KL - log p| <= {fmt(resid, 2)} ({fmt(worst, 2)} of round-off bound); "
               f"diagonal q keeps KL {fmt(fit['kl'][0], 4)} = -log(1-rho^2)/2")
    return Claim("C6", ok, summary, dict(model="STRONG", rho=ctx.rho(lg), hadamard_gap=hadamard,
                                         worst_residual_over_bound=worst, proposals=rows))


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


def claim_c7(ctx):
    """Linear-Gaussian: the closed forms E_q[log p(x|z)] and KL(q || p(z)) against Monte Carlo
    means, within Z_TOL standard errors.  A trained VAE (beta = 1, float64 copy): model.elbo's
    rec - KL (Monte Carlo rec, closed-form KL) against an independent Monte Carlo estimate of
    E_q[log p(x, z) - log q(z|x)]; per-image differences have mean 0 under the claim."""
    lg, x = ctx.strong, ctx.x_strong
    S = ctx.n.c7_S
    lin, ok = {}, True
    for k, (name, q) in enumerate(proposals(ctx, lg, x).items()):
        distortion, kl = lg.distortion_and_kl(x, q)
        rec = -distortion
        z = q.sample(S, ctx.rng("C7", k))
        zs = {}
        for term, exact, draws in (("rec", rec, lg.log_likelihood(x, z)),
                                   ("kl", kl, q.log_prob(z) - lg.log_prior(z))):
            se = draws.std(axis=0, ddof=1) / math.sqrt(S)
            tol = Z_TOL * se + roundoff(1.0, np.abs(exact))
            dev = (draws - exact).mean(axis=0)                  # centred (see claim_c5)
            zs[term] = dev / np.maximum(se, 1e-300)
            ok &= bool(np.all(np.abs(dev) <= tol))
        lin[name] = dict(rec=rec, kl=kl, elbo=rec - kl, z_rec=zs["rec"], z_kl=zs["kl"])
    lin_z = max(float(np.max(np.abs(np.r_[v["z_rec"], v["z_kl"]]))) for k, v in lin.items()
                if k != "posterior")

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
    rec = -np.asarray(t.distortion)
    a = rec - np.asarray(t.kl)
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
               f"{len(xt)} test shapes: rec - KL = {a.mean():.3f} (rec {np.mean(rec):.2f}, KL "
               f"{np.mean(t.kl):.2f}), MC E_q[log p(x,z) - log q] = {ind['mc_elbo']:.3f}, diff "
               f"{fmt(ind['diff'], 2)} +- {fmt(ind['diff_se'], 2)} (same noise: "
               f"{fmt(same['diff'], 2)} +- {fmt(same['diff_se'], 2)})")
    return Claim("C7", ok, summary, dict(
        linear_gaussian=dict(model="STRONG", S=S, proposals=lin),
        vae=dict(images=len(xt), samples=S2, rec_minus_kl=a.mean(), rec=np.mean(rec),
                 kl=np.mean(t.kl), ok=vae_ok, **vae)))


# ------------------------------------------------------------------------------------------
# C8: beta trades rate for distortion

def vae_sweep(ctx):
    """Train one small VAE per beta on the built-in shapes (cached: C7 reuses the beta = 1 one)
    and evaluate each on the same held-out images with the same noise."""
    if ctx._sweep is not None:
        return ctx._sweep
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
        kl, rec = [], []
        for i in range(0, len(test), 500):
            t = model.elbo(test[i:i + 500], eps=eps[:, i:i + 500])
            kl.append(np.asarray(t.kl, dtype=np.float64))
            rec.append(np.asarray(t.distortion, dtype=np.float64))
        models[beta], rate[beta], dist[beta] = model, np.concatenate(kl), np.concatenate(rec)
        seconds[beta] = time.perf_counter() - t0
        print(f"  beta {beta:g}: rate {rate[beta].mean():.3f}, distortion {dist[beta].mean():.3f} "
              f"nats ({seconds[beta]:.1f} s)", file=sys.stderr)
    ctx._sweep = dict(betas=betas, models=models, rate=rate, distortion=dist, test=test,
                      seconds=seconds)
    return ctx._sweep


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
        d, kl = lg.distortion_and_kl(x, lg.optimal_diagonal_q(x, b))
        lin_r.append(kl.mean())
        lin_d.append(d.mean())
    lin_r, lin_d = np.array(lin_r), np.array(lin_d)
    tol = roundoff(np.linalg.cond(lg.M), np.abs(lin_d).max())
    lin_ok = bool(np.all(np.diff(lin_r) < -tol) and np.all(np.diff(lin_d) > tol))
    at = np.isin(grid, betas)
    ctx.figures["rate_distortion"] = dict(betas=betas, rate=R, distortion=D, grid=grid,
                                          lin_rate=lin_r, lin_distortion=lin_d, at=at,
                                          epochs=ctx.n.epochs, images=ctx.n.train_images)
    zr = min(s["rate_z"] for s in steps)
    zd = min(s["distortion_z"] for s in steps)
    summary = (f"VAE beta {'/'.join(f'{b:g}' for b in betas)}: rate "
               + " > ".join(f"{r:.1f}" for r in R) + ", distortion "
               + " < ".join(f"{d:.1f}" for d in D)
               + f" (steps >= {fmt(min(zr, zd), 2)} SE); exact linear-Gaussian curve "
               + ("monotone" if lin_ok else "NOT monotone") + f" ({len(grid)} betas)")
    return Claim("C8", vae_ok and lin_ok, summary, dict(
        vae=dict(betas=betas, rate=R, distortion=D, steps=steps, train_images=ctx.n.train_images,
                 epochs=ctx.n.epochs, test_images=len(sw["test"]), eval_samples=ctx.n.eval_S,
                 train_seconds=sw["seconds"], ok=vae_ok),
        linear_gaussian=dict(model="STRONG", betas=grid, rate=lin_r, distortion=lin_d,
                             ok=lin_ok)))


# ------------------------------------------------------------------------------------------
# C9-C12: gradients of an expectation

def square(z):
    return z * z


def d_square(z):
    return 2.0 * z


def half_exp(z):
    return np.exp(0.5 * z)


def d_half_exp(z):
    return 0.5 * np.exp(0.5 * z)


FUNCTIONS = {"z^2": (square, d_square), "sin z": (np.sin, np.cos),
             "exp(z/2)": (half_exp, d_half_exp)}


def families():
    """Parameters chosen so that every summand below has a finite 4th moment (exp(z/2) needs
    E exp(2z) < inf: Laplace scale < 1/2, Logistic scale < 1/2, Exponential rate > 2)."""
    return {"Normal": Normal(1.0, 0.5), "Uniform": Uniform(-1.0, 2.0),
            "Exponential": Exponential(3.0), "Laplace": Laplace(0.5, 0.4),
            "Logistic": Logistic(0.5, 0.3)}


def expectation(fam, fname):
    """E_q[f(z)] in closed form (characteristic and moment-generating functions)."""
    if isinstance(fam, Normal):
        m, s = fam.mu, fam.sigma
        return {"z^2": m * m + s * s, "sin z": math.sin(m) * math.exp(-s * s / 2),
                "exp(z/2)": math.exp(m / 2 + s * s / 8)}[fname]
    if isinstance(fam, Uniform):
        a, b = fam.a, fam.b
        return {"z^2": (a * a + a * b + b * b) / 3, "sin z": (math.cos(a) - math.cos(b)) / (b - a),
                "exp(z/2)": 2 * (math.exp(b / 2) - math.exp(a / 2)) / (b - a)}[fname]
    if isinstance(fam, Exponential):
        r = fam.rate
        return {"z^2": 2 / r ** 2, "sin z": r / (r * r + 1), "exp(z/2)": r / (r - 0.5)}[fname]
    if isinstance(fam, Laplace):
        m, b = fam.loc, fam.scale
        return {"z^2": m * m + 2 * b * b, "sin z": math.sin(m) / (1 + b * b),
                "exp(z/2)": math.exp(m / 2) / (1 - b * b / 4)}[fname]
    if isinstance(fam, Logistic):
        m, s = fam.loc, fam.scale
        return {"z^2": m * m + math.pi ** 2 * s * s / 3,
                "sin z": math.sin(m) * math.pi * s / math.sinh(math.pi * s),
                "exp(z/2)": math.exp(m / 2) * (math.pi * s / 2) / math.sin(math.pi * s / 2)}[fname]
    raise TypeError(fam)


def exact_grad(fam, fname, h=1e-5):
    """d/dtheta of the closed-form E[f] by central differences: truncation ~h^2 |E'''| / 6 and
    round-off ~eps |E| / h, both ~1e-10."""
    theta = fam.theta
    g = []
    for j in range(len(theta)):
        e = np.zeros_like(theta)
        e[j] = h
        g.append((expectation(fam.with_theta(theta + e), fname)
                  - expectation(fam.with_theta(theta - e), fname)) / (2 * h))
    return np.array(g)


def _chunked(call, chunks, rng):
    """Pool `chunks` independent estimates of equal size: (grad, var, se of grad, se of var)."""
    ests = [call(rng) for _ in range(chunks)]
    g = np.array([e.grad for e in ests])
    v = np.array([e.var for e in ests])
    n = sum(e.n for e in ests)
    var = v.mean(axis=0)
    return g.mean(axis=0), var, np.sqrt(var / n), v.std(axis=0, ddof=1) / math.sqrt(chunks)


def estimator_table(ctx):
    """Score function (plain and leave-one-out baseline) and reparameterisation for every family
    and f; cached, shared by C10, C11, C12."""
    if ctx._estimators is not None:
        return ctx._estimators
    C, n = ctx.n.est_chunks, ctx.n.est_n
    rows = []
    for i, (fname_fam, fam) in enumerate(families().items()):
        for j, (fname, (f, df)) in enumerate(FUNCTIONS.items()):
            exact = exact_grad(fam, fname)
            if fname == "z^2":
                assert np.allclose(exact, fam.mean_square_grad(), rtol=1e-8, atol=1e-8)
            rng = ctx.rng("C11", i, j)
            row = dict(family=fname_fam, repr=repr(fam), f=fname, params=fam.names, exact=exact)
            row["reparam"] = _chunked(lambda r: reparameterization(f, df, fam, n, r), C, rng)
            if not fam.support_depends_on_theta:
                row["score"] = _chunked(lambda r: score_function(f, fam, n, r), C, rng)
                row["score_baseline"] = _chunked(
                    lambda r: score_function(f, fam, n, r, baseline="mean"), C, rng)
            rows.append(row)
    ctx._estimators = rows
    return rows


def claim_c9(ctx):
    """Normal(1, 0.5), f = z^2, exact gradient (2, 1).  (a) The sample average of f over samples
    held as data has derivative exactly 0 in theta.  (b) Central differences re-sampling at
    theta +- h (fresh noise): the per-sample variance matches the exact
    (var f(theta+h) + var f(theta-h)) / (4 h^2) within Z_TOL sd, so it grows like 1/h^2.
    (c) Fixed noise (z = mu + sigma eps, eps held) gives the pathwise estimate: variance
    independent of h and the exact gradient within Z_TOL SE."""
    mu, s = 1.0, 0.5
    fam = Normal(mu, s)
    n = ctx.n.c9_n
    exact = np.array([2 * mu, 2 * s])
    z = fam.sample(n, ctx.rng("C9", 0))                     # samples drawn once, then data

    def sample_average(theta):
        """(1/n) sum f(z_i) at fixed samples, as a function of theta: the z_i were drawn at the
        current theta, but once drawn they are numbers, and no term of the average reads theta."""
        del theta
        return square(z).mean()

    frozen = []
    for j in range(2):
        e = np.zeros(2)
        e[j] = 1e-3
        frozen.append((sample_average(fam.theta + e) - sample_average(fam.theta - e)) / 2e-3)
    frozen = np.array(frozen)

    x, w = np.polynomial.hermite_e.hermegauss(40)
    w = w / math.sqrt(2 * math.pi)

    def central(m_, s_):                                  # (var, mu4) of z^2, z ~ N(m_, s_^2)
        v = (m_ + s_ * x) ** 2
        c = v - w @ v
        return w @ c ** 2, w @ c ** 4

    rows, ok = [], frozen.tolist() == [0.0, 0.0]
    for k, h in enumerate(ctx.n.c9_hs):
        fresh = finite_difference(square, fam, n, ctx.rng("C9", 1, k), h=h, noise="fresh")
        fixed = finite_difference(square, fam, n, ctx.rng("C9", 2, k), h=h, noise="fixed")
        mom = [(central(mu + h, s), central(mu - h, s)), (central(mu, s + h), central(mu, s - h))]
        var = np.array([(a[0] + b[0]) / (4 * h * h) for a, b in mom])
        mu4 = np.array([(a[1] + 6 * a[0] * b[0] + b[1]) / (2 * h) ** 4 for a, b in mom])
        z_var = (fresh.var - var) / sd_of_sample_variance(var, mu4, n)
        z_fixed = (fixed.grad - exact) / fixed.stderr
        good = bool(np.all(np.abs(z_var) <= Z_TOL) and np.all(np.abs(z_fixed) <= Z_TOL))
        ok &= good
        rows.append(dict(h=h, fresh_var=fresh.var, exact_fresh_var=var, z_var=z_var,
                         fresh_grad=fresh.grad, fresh_se=fresh.stderr, fixed_var=fixed.var,
                         fixed_grad=fixed.grad, z_fixed=z_fixed,
                         samples_for_se_0_01=var / 1e-4, ok=good))
    pathwise = np.array([4 * s * s, 4 * mu * mu + 8 * s * s])
    hs = np.log([r["h"] for r in rows])
    slope = float(np.polyfit(hs, np.log([r["fresh_var"][0] for r in rows]), 1)[0])
    ctx.figures["finite_difference"] = dict(rows=rows, pathwise=pathwise)
    r0, r1 = rows[0], rows[-1]
    summary = (f"fixed samples: d avg/dtheta = (0, 0) vs true (2, 1); fresh noise: var ~ "
               f"h^{slope:.2f}, {fmt(r0['fresh_var'][0])} at h={r0['h']:g} -> "
               f"{fmt(r1['fresh_var'][0])} at h={r1['h']:g} (= exact, |z| <= "
               f"{fmt(max(np.abs(r['z_var']).max() for r in rows), 2)}); fixed noise "
               f"(pathwise): var {fmt(r1['fixed_var'][0])} at every h")
    return Claim("C9", ok, summary, dict(family=repr(fam), f="z^2", n=n, exact_grad=exact,
                                         frozen_samples_derivative=frozen, pathwise_var=pathwise,
                                         log_log_slope_mu=slope,
                                         h_sweep=rows))


def _uniform_boundary(ctx):
    """Uniform(-1, 2), f = z^2: the naive score-function average E[f score] misses the Leibniz
    boundary terms (-f(a), f(b)) / (b - a); naive + boundary = exact within Z_TOL SE, naive alone
    is many SE off.  score_function itself refuses the family."""
    fam = Uniform(-1.0, 2.0)
    try:
        score_function(square, fam, 10, ctx.rng("C10", 1))
        refused = ""
    except MinivaeError as e:
        refused = str(e)
    z = fam.sample(ctx.n.c12_n, ctx.rng("C10", 2))
    s = square(z)[:, None] * fam.score(z)
    naive, se = s.mean(axis=0), s.std(axis=0, ddof=1) / math.sqrt(len(z))
    boundary = np.array([-square(fam.a), square(fam.b)]) / (fam.b - fam.a)
    exact = fam.mean_square_grad()
    ok = bool(refused) and bool(np.all(np.abs(naive + boundary - exact) <= Z_TOL * se)) and bool(
        np.all(np.abs(naive - exact) > Z_TOL * se))
    return dict(refused=refused, naive=naive, se=se, boundary=boundary, exact=exact, ok=ok)


def claim_c10(ctx):
    """Score-function estimates (plain and leave-one-out baseline) of d/dtheta E[f] for 4
    families x 3 f: each within Z_TOL SE of the exact gradient; the per-sample variance is above
    the reparameterisation estimator's in every case (significantly: see C11).  Uniform: refused,
    and the naive E[f score] misses exactly the Leibniz boundary term."""
    rows = [r for r in estimator_table(ctx) if "score" in r]
    ok, zs, rel = True, [], []
    for r in rows:
        for key in ("score", "score_baseline"):
            g, var, se, _ = r[key]
            z = (g - r["exact"]) / se
            r[f"z_{key}"] = z
            zs.append(np.abs(z).max())
            ok &= bool(np.all(np.abs(z) <= Z_TOL))
        rel.append(r["score"][1] / np.maximum(r["exact"] ** 2, 1e-12))
        ok &= bool(np.all(r["score"][1] > r["reparam"][1]))
    uni = _uniform_boundary(ctx)
    ok &= uni["ok"]
    n = ctx.n.est_chunks * ctx.n.est_n
    rel = np.concatenate(rel)
    summary = (f"{len(rows)} (family, f), {n:,} samples: = exact (|z| <= {fmt(max(zs), 2)}, also "
               f"with baseline); var/grad^2 median {fmt(np.median(rel), 2)}; Uniform refused: "
               f"naive E[f score] off by {fmt(np.abs(uni['naive'] - uni['exact']).max())} = "
               f"boundary term")
    return Claim("C10", ok, summary, dict(samples=n, cases=[_estimator_json(r) for r in rows],
                                          uniform_boundary=uni))


def _estimator_json(r):
    out = dict(family=r["repr"], f=r["f"], params=r["params"], exact=r["exact"])
    for key in ("reparam", "score", "score_baseline"):
        if key in r:
            g, var, se, se_var = r[key]
            out[key] = dict(grad=g, var=var, se=se, var_se=se_var, z=r.get(f"z_{key}"))
    return out


def claim_c11(ctx):
    """Reparameterisation estimates for 5 families x 3 f within Z_TOL SE of the exact gradient, and
    var(score) / var(reparam) > 1 by more than Z_TOL standard errors of the log-ratio (delta
    method over independent chunks) for every family, f and parameter."""
    rows = estimator_table(ctx)
    ok, zs, ratios, zr = True, [], [], []
    for r in rows:
        g, var, se, se_var = r["reparam"]
        z = (g - r["exact"]) / se
        r["z_reparam"] = z
        zs.append(np.abs(z).max())
        ok &= bool(np.all(np.abs(z) <= Z_TOL))
        if "score" in r:
            _, v_sf, _, se_sf = r["score"]
            ratio = v_sf / var
            se_log = np.hypot(se_sf / v_sf, se_var / var)
            r["ratio"], r["ratio_z"] = ratio, np.log(ratio) / se_log
            r["ratio_baseline"] = r["score_baseline"][1] / var
            ratios.append(ratio)
            zr.append(r["ratio_z"])
            ok &= bool(np.all(r["ratio_z"] > Z_TOL))
    ctx.figures["estimator_variance"] = dict(rows=rows)
    ratios, zr = np.concatenate(ratios), np.concatenate(zr)
    base = np.concatenate([r["ratio_baseline"] for r in rows if "score" in r])
    summary = (f"{len(rows)} (family, f): = exact (|z| <= {fmt(max(zs), 2)}); "
               f"var(score)/var(reparam) min {fmt(ratios.min(), 2)}, median "
               f"{fmt(np.median(ratios), 2)}, max {fmt(ratios.max())} (each > 1 by >= "
               f"{fmt(zr.min(), 2)} SE); vs baseline score: min {fmt(base.min(), 2)}")
    return Claim("C11", ok, summary, dict(
        samples=ctx.n.est_chunks * ctx.n.est_n,
        cases=[dict(_estimator_json(r), ratio=r.get("ratio"), ratio_z=r.get("ratio_z"),
                    ratio_baseline=r.get("ratio_baseline")) for r in rows]))


def claim_c12(ctx):
    """Reparameterisation is unbiased for Normal, Uniform, Exponential, Laplace, Logistic (C11's
    checks, per family).  Bernoulli(0.3), f = (z - 0.45)^2: ``reparameterization`` raises
    MinivaeError; the pathwise derivative through the threshold z = 1[u < p] (central
    difference at fixed noise, h = 1e-12: a u_i within h of p has probability 2 h n < 1e-6) is
    exactly 0; the true gradient f(1) - f(0) = 0.1
    is matched by the score function within Z_TOL SE, and 0 is excluded by > Z_TOL SE."""
    rows = estimator_table(ctx)
    fams = {}
    for r in rows:
        g, var, se, _ = r["reparam"]
        fams.setdefault(r["family"], True)
        fams[r["family"]] &= bool(np.all(np.abs(g - r["exact"]) <= Z_TOL * se))
    fam = Bernoulli(0.3)

    def f(z):
        return (z - 0.45) ** 2

    try:
        reparameterization(f, lambda z: 2 * (z - 0.45), fam, 10, ctx.rng("C12", 0))
        refused = ""
    except MinivaeError as e:
        refused = str(e)
    n = ctx.n.c12_n
    path = finite_difference(f, fam, n, ctx.rng("C12", 1), h=1e-12, noise="fixed")
    exact = fam.exact_grad(f)
    sf = score_function(f, fam, n, ctx.rng("C12", 2), baseline="mean")
    sf_ok = bool(abs(sf.grad[0] - exact[0]) <= Z_TOL * sf.stderr[0]
                 and abs(sf.grad[0]) > Z_TOL * sf.stderr[0])
    ok = all(fams.values()) and bool(refused) and path.grad[0] == 0.0 and exact[0] != 0 and sf_ok
    summary = (f"reparam = exact for {', '.join(k for k, v in fams.items() if v)}; "
               f"Bernoulli: reparam {'refused (MinivaeError)' if refused else 'NOT refused'}, "
               f"pathwise derivative {fmt(path.grad[0])} vs true f(1)-f(0) = {fmt(exact[0])}, "
               f"score function {sf.grad[0]:.4f} +- {fmt(sf.stderr[0], 1)}")
    return Claim("C12", ok, summary, dict(
        reparam_unbiased_by_family=fams, bernoulli=dict(
            p=0.3, f="(z - 0.45)^2", refused_message=refused, pathwise_grad=path.grad,
            pathwise_var=path.var, h=1e-12, n=n, exact=exact, score_grad=sf.grad,
            score_se=sf.stderr)))


CLAIMS = {"C1": claim_c1, "C2": claim_c2, "C3": claim_c3, "C4": claim_c4, "C5": claim_c5,
          "IWAE": claim_iwae, "C6": claim_c6, "C7": claim_c7, "C8": claim_c8, "C9": claim_c9,
          "C10": claim_c10, "C11": claim_c11, "C12": claim_c12}


# ------------------------------------------------------------------------------------------
# figures

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def figure_variance_vs_n(path, res, row, R):
    plt = _plt()
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_elbo_gap(path, rows):
    plt = _plt()
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_iwae_vs_k(path, res, row):
    plt = _plt()
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_rate_distortion(path, **d):
    plt = _plt()
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_estimator_variance(path, rows):
    plt = _plt()
    groups = []                                          # (label, {f: (ratio, ratio_baseline)})
    for r in rows:
        if "ratio" not in r:
            continue
        for p, name in enumerate(r["params"]):
            label = f"{r['family']}\n{name}"
            if not groups or groups[-1][0] != label:
                idx = [g[0] for g in groups]
                if label in idx:
                    entry = groups[idx.index(label)][1]
                else:
                    entry = {}
                    groups.append((label, entry))
            else:
                entry = groups[-1][1]
            entry[r["f"]] = (r["ratio"][p], r["ratio_baseline"][p])
    fig, ax = plt.subplots(figsize=(11, 4.8))
    fnames = list(FUNCTIONS)
    width = 0.8 / len(fnames)
    for k, fname in enumerate(fnames):
        xs = np.arange(len(groups)) + (k - (len(fnames) - 1) / 2) * width
        plain = [g[1][fname][0] for g in groups]
        base = [g[1][fname][1] for g in groups]
        ax.bar(xs, plain, width * 0.95, color=f"C{k}", label=f"f = {fname}: plain score function")
        ax.plot(xs, base, "_", color="k", ms=12, mew=2,
                label="with leave-one-out baseline" if k == 0 else None)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.text(len(groups) - 0.5, 1.08, "equal variance", ha="right", fontsize=8)
    ax.set_xticks(np.arange(len(groups)))
    ax.set_xticklabels([g[0] for g in groups], fontsize=8)
    ax.set_yscale("log")
    top = max(max(v[0] for v in g[1].values()) for g in groups)
    ax.set_ylim(0.7, top * 12)
    ax.set_ylabel("var(score function) / var(reparameterisation)\nper sample")
    ax.set_title("C10/C11: per-sample variance ratio, by family, parameter and f "
                 "(Uniform: no unbiased score function)", fontsize=10)
    ax.grid(alpha=0.3, axis="y", which="both")
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_finite_difference(path, rows, pathwise):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    h = np.array([r["h"] for r in rows])
    for j, (name, color, m) in enumerate((("mu", "C0", "o"), ("sigma", "C1", "^"))):
        ax.plot(h, [r["exact_fresh_var"][j] for r in rows], "-", color=color, lw=1)
        ax.plot(h, [r["fresh_var"][j] for r in rows], m, color=color, ms=7 - 2 * j,
                label=f"fresh noise, d/d{name} (line: exact)")
        ax.plot(h, [r["fixed_var"][j] for r in rows], "s--", color=color, mfc="none",
                label=f"fixed noise (pathwise), d/d{name}: {pathwise[j]:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("h (central-difference step)")
    ax.set_ylabel("per-sample variance of the difference quotient")
    ax.set_title("C9: re-sampling at theta +- h: variance ~ 1/h^2\n"
                 "(Normal(1, 0.5), f = z^2)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


FIGURES = {"variance_vs_n": figure_variance_vs_n, "elbo_gap": figure_elbo_gap,
           "iwae_vs_k": figure_iwae_vs_k, "rate_distortion": figure_rate_distortion,
           "estimator_variance": figure_estimator_variance,
           "finite_difference": figure_finite_difference}


# ------------------------------------------------------------------------------------------
# the table and the entry point

def table(claims, width=78):
    """One row per claim: id, result, statement, the numbers (wrapped under themselves)."""
    sw = max(len(c.statement) for c in claims)
    head = f"{'claim':<5} {'result':<12} {'statement':<{sw}} numbers"
    lines = [head, "-" * (len(head) - len("numbers") + width)]
    for c in claims:
        wrapped = textwrap.wrap(c.summary, width) or [""]
        result = "verified" if c.verified else "NOT verified"
        lines.append(f"{c.id:<5} {result:<12} {c.statement:<{sw}} {wrapped[0]}")
        lines += [f"{'':<{5 + 1 + 12 + 1 + sw}} {w}" for w in wrapped[1:]]
    return "\n".join(lines)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join("runs", "derivation"),
                   help="folder for claims.json and the figures (default runs/derivation)")
    p.add_argument("--quick", action="store_true", help="fewer samples, a shorter beta sweep")
    p.add_argument("--seed", type=int, default=0, help="seed of every Monte Carlo draw")
    p.add_argument("--only", default=None,
                   help=f"comma-separated claim ids to run (default all: {','.join(ORDER)})")
    args = p.parse_args(argv)
    if args.seed < 0:
        p.error(f"--seed must be >= 0, got {args.seed}")
    if args.only:
        ids = [s.strip() for s in args.only.split(",") if s.strip()]
        bad = [s for s in ids if s not in CLAIMS]
        if bad:
            p.error(f"--only: unknown claim {', '.join(bad)}; choose from {', '.join(ORDER)}")
        args.only = ids
    return args


def one_blas_thread():
    """threadpoolctl's limit to one BLAS thread for the run, when it is installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def main(argv=None):
    args = parse(argv)
    with one_blas_thread():
        return run(args, argv)


def run(args, argv):
    os.makedirs(args.out, exist_ok=True)
    ctx = Context(QUICK if args.quick else Sizes(), args.seed)
    ids = args.only or ORDER
    t_all = time.perf_counter()
    claims = []
    for cid in ORDER:
        if cid not in ids:
            continue
        t0 = time.perf_counter()
        print(f"[{cid}] {STATEMENTS[cid]} ...", file=sys.stderr, flush=True)
        try:
            claim = CLAIMS[cid](ctx)
        except Exception as e:          # a crash is a claim not verified, not a lost table
            traceback.print_exc()
            claim = Claim(cid, False, f"error: {type(e).__name__}: {e}",
                          dict(error=traceback.format_exc()))
        claim.seconds = time.perf_counter() - t0
        print(f"[{cid}] {'verified' if claim.verified else 'NOT verified'} "
              f"({claim.seconds:.1f} s)", file=sys.stderr, flush=True)
        claims.append(claim)
    written = []
    for name, data in ctx.figures.items():
        path = os.path.join(args.out, f"{name}.png")
        FIGURES[name](path, **data)
        written.append(path)
    wall = time.perf_counter() - t_all
    record = dict(
        command=" ".join(["scripts/derivation.py", *(argv if argv is not None else sys.argv[1:])]),
        quick=args.quick, seed=args.seed, z_tol=Z_TOL, roundoff_factor=ROUNDOFF,
        sizes=dataclasses.asdict(ctx.n), wall_seconds=wall,
        models=dict(MILD=dict(call="LinearGaussian.random(8, 2, 0.5, make_rng(4))",
                              rho=ctx.rho(ctx.mild), x=ctx.x_mild),
                    STRONG=dict(call="LinearGaussian.random(5, 2, 0.5, make_rng(0))",
                                rho=ctx.rho(ctx.strong), x=ctx.x_strong)),
        all_verified=all(c.verified for c in claims),
        claims=[dict(id=c.id, statement=c.statement, verified=c.verified, summary=c.summary,
                     seconds=c.seconds, numbers=c.numbers) for c in claims],
        figures=[os.path.basename(p) for p in written])
    with open(os.path.join(args.out, "claims.json"), "w") as f:
        json.dump(jsonable(record), f, indent=1)
    print(table(claims))
    n_ok = sum(c.verified for c in claims)
    print(f"\n{n_ok}/{len(claims)} verified in {wall:.1f} s; wrote "
          + ", ".join(os.path.join(args.out, n) for n in ["claims.json", *record["figures"]]))
    return 0 if n_ok == len(claims) else 1


if __name__ == "__main__":
    sys.exit(main())
