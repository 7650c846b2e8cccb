"""C9-C12: the gradient of an expectation; read beside docs/guide.md C9-C12 and
docs/estimators.md (its sections C9-C12).

    C9   plain sampling gives no estimate of d/dtheta E_q[f(z)] (Leibniz)
    C10  the score function (REINFORCE) is unbiased but high-variance; the Uniform's moving
         support needs a boundary term
    C11  reparameterisation is unbiased with a far lower variance for smooth f
    C12  continuous families can be reparameterised, a Bernoulli cannot

Every check runs ``minivae.estimators`` against closed-form expectations of f(z) = z^2, sin z,
exp(z/2) under Normal, Uniform, Exponential, Laplace and Logistic.  Run by scripts/derivation.py
(``--only C11,C12``).  Figures: finite_difference.png (C9), estimator_variance.png (C11).
"""
import math

import numpy as np

from minivae.errors import MinivaeError
from minivae.estimators import (Bernoulli, Exponential, Laplace, Logistic, Normal, Uniform,
                                finite_difference, reparameterization, score_function)

from .context import sd_of_sample_variance
from .harness import Z_TOL, Figure, Verdict, claim, fmt, pyplot, save

CLAIMS = []


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
    if "estimators" in ctx.cache:
        return ctx.cache["estimators"]
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
    ctx.cache["estimators"] = rows
    return rows


@claim(CLAIMS, "C9", "plain sampling gives no d/dtheta E[f]")
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
    figure = Figure("finite_difference", figure_finite_difference, dict(rows=rows,
                                                                       pathwise=pathwise))
    r0, r1 = rows[0], rows[-1]
    summary = (f"fixed samples: d avg/dtheta = (0, 0) vs true (2, 1); fresh noise: var ~ "
               f"h^{slope:.2f}, {fmt(r0['fresh_var'][0])} at h={r0['h']:g} -> "
               f"{fmt(r1['fresh_var'][0])} at h={r1['h']:g} (= exact, |z| <= "
               f"{fmt(max(np.abs(r['z_var']).max() for r in rows), 2)}); fixed noise "
               f"(pathwise): var {fmt(r1['fixed_var'][0])} at every h")
    return Verdict(ok, summary, dict(family=repr(fam), f="z^2", n=n, exact_grad=exact,
                                         frozen_samples_derivative=frozen, pathwise_var=pathwise,
                                         log_log_slope_mu=slope,
                                         h_sweep=rows), figure=figure)


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


@claim(CLAIMS, "C10", "score function: unbiased, high var")
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
    return Verdict(ok, summary, dict(samples=n, cases=[_estimator_json(r) for r in rows],
                                          uniform_boundary=uni))


def _estimator_json(r):
    out = dict(family=r["repr"], f=r["f"], params=r["params"], exact=r["exact"])
    for key in ("reparam", "score", "score_baseline"):
        if key in r:
            g, var, se, se_var = r[key]
            out[key] = dict(grad=g, var=var, se=se, var_se=se_var, z=r.get(f"z_{key}"))
    return out


@claim(CLAIMS, "C11", "reparam: unbiased, far lower var")
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
    figure = Figure("estimator_variance", figure_estimator_variance, dict(rows=rows))
    ratios, zr = np.concatenate(ratios), np.concatenate(zr)
    base = np.concatenate([r["ratio_baseline"] for r in rows if "score" in r])
    summary = (f"{len(rows)} (family, f): = exact (|z| <= {fmt(max(zs), 2)}); "
               f"var(score)/var(reparam) min {fmt(ratios.min(), 2)}, median "
               f"{fmt(np.median(ratios), 2)}, max {fmt(ratios.max())} (each > 1 by >= "
               f"{fmt(zr.min(), 2)} SE); vs baseline score: min {fmt(base.min(), 2)}")
    return Verdict(ok, summary, dict(
        samples=ctx.n.est_chunks * ctx.n.est_n,
        cases=[dict(_estimator_json(r), ratio=r.get("ratio"), ratio_z=r.get("ratio_z"),
                    ratio_baseline=r.get("ratio_baseline")) for r in rows]), figure=figure)


@claim(CLAIMS, "C12", "reparam: continuous yes, discrete no")
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
    return Verdict(ok, summary, dict(
        reparam_unbiased_by_family=fams, bernoulli=dict(
            p=0.3, f="(z - 0.45)^2", refused_message=refused, pathwise_grad=path.grad,
            pathwise_var=path.var, h=1e-12, n=n, exact=exact, score_grad=sf.grad,
            score_se=sf.stderr)))


# ------------------------------------------------------------------------------------------
# figures

def figure_estimator_variance(path, rows):
    plt = pyplot()
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
    save(fig, path)


def figure_finite_difference(path, rows, pathwise):
    plt = pyplot()
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
    save(fig, path)
