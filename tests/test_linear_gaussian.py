"""The linear-Gaussian model: closed forms against brute force, Monte Carlo against closed forms.

Claims C1-C8 of issue 3.  Identities (ELBO = log p(x) - KL, constant weights under the posterior,
the dense-matrix marginal) are checked to float64 round-off: tolerance 1e3 * cond * eps * scale,
with cond the condition number of the matrix solved and scale the size of the terms summed
(backward-stable solves and sums of a few dozen terms lose at most a small multiple of
cond * eps relative to that scale).  Monte Carlo estimates are checked against exact values
within Z_TOL = 4.5 standard errors computed from *exact* moments of the importance weights
(``log_weight_moment``): false-alarm rate ~7e-6 per check, seeds fixed.

Two models are used for the statistical tests:
  STRONG  LinearGaussian.random(5, 2, 0.5, rng 0): posterior precision correlation rho = 0.65,
          so the best diagonal q keeps an ELBO gap of 0.28 nats, and its importance weights have
          infinite variance (|rho| > 1/2; see ``weight_relative_variance``).
  MILD    LinearGaussian.random(8, 2, 0.5, rng 4): rho = -0.21 < 1/4, so the fitted q's weights
          have finite moments up to the 4th and standard errors are trustworthy.
"""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from minivae.errors import MinivaeError
from minivae.linear_gaussian import Estimate, Gaussian, LinearGaussian, as_gaussian

Z_TOL = 4.5
EPS = np.finfo(np.float64).eps


def model(name, B=4):
    seed, D = {"strong": (0, 5), "mild": (4, 8)}[name]
    rng = np.random.default_rng(seed)
    lg = LinearGaussian.random(D, 2, 0.5, rng)
    return lg, lg.sample(B, rng)


def rho(lg):
    return lg.M[0, 1] / math.sqrt(lg.M[0, 0] * lg.M[1, 1])


def roundoff(cond, scale):
    return 1e3 * cond * EPS * (1.0 + scale)


def dense_log_marginal(lg, x):
    """log N(x; b, W W^T + sigma^2 I) with a D x D dense covariance."""
    C = lg.W @ lg.W.T + lg.sigma ** 2 * np.eye(lg.D)
    r = x - lg.b
    quad = np.einsum("bi,bi->b", r, np.linalg.solve(C, r.T).T)
    return -0.5 * (lg.D * math.log(2 * math.pi) + np.linalg.slogdet(C)[1] + quad), C, quad


shapes = dict(D=st.integers(1, 6), Z=st.integers(1, 4), sigma=st.floats(0.3, 3.0),
              seed=st.integers(0, 2 ** 32 - 1))


def random_case(D, Z, sigma, seed, B=3):
    rng = np.random.default_rng(seed)
    lg = LinearGaussian.random(D, Z, sigma, rng)
    return lg, lg.sample(B, rng), rng


# ---------------------------------------------------------------------------------------------
# exact identities (hypothesis over shapes; deterministic, so no false alarms)

@given(**shapes)
def test_log_marginal_matches_dense_gaussian(D, Z, sigma, seed):
    lg, x, _ = random_case(D, Z, sigma, seed)
    expect, C, quad = dense_log_marginal(lg, x)
    got = lg.log_marginal(x)
    tol = roundoff(np.linalg.cond(C), np.abs(expect) + quad)
    assert np.all(np.abs(got - expect) <= tol), (got - expect, tol)


def _random_qs(lg, x, rng):
    B, Z = len(x), lg.Z
    diag = Gaussian.diagonal(rng.standard_normal((B, Z)), rng.uniform(-2, 2, (B, Z)))
    A = rng.standard_normal((B, Z, Z))
    full = Gaussian.full(rng.standard_normal((B, Z)), A @ np.swapaxes(A, 1, 2) + 0.1 * np.eye(Z))
    return diag, full


@given(**shapes)
def test_elbo_gap_is_kl_to_posterior(D, Z, sigma, seed):
    """C6: ELBO(q) + KL(q || p(z|x)) = log p(x) for diagonal and full-covariance q; the three are
    computed by separate formulas.  C7: elbo = -(distortion + KL(q || p(z)))."""
    lg, x, rng = random_case(D, Z, sigma, seed)
    lp = lg.log_marginal(x)
    for q in _random_qs(lg, x, rng):
        elbo, kl = lg.elbo(x, q), lg.kl_to_posterior(x, q)
        distortion, kl_prior = lg.distortion_and_kl(x, q)
        np.testing.assert_array_equal(elbo, -(distortion + kl_prior))
        scale = np.abs(elbo) + np.abs(kl) + np.abs(distortion) + np.abs(kl_prior)
        cond = np.linalg.cond(lg.M) * np.linalg.cond(q.covariance()).max()
        assert np.all(np.abs(elbo + kl - lp) <= roundoff(cond, scale))
        assert np.all(kl >= -roundoff(cond, scale)) and np.all(elbo <= lp + roundoff(cond, scale))


@given(**shapes)
def test_posterior_proposal_gives_constant_weights(D, Z, sigma, seed):
    """C4, C5: with q = p(z|x) every log w_k equals log p(x) (to round-off), so the ELBO equals
    log p(x), the KL is 0, every weight moment E[(w/p)^n] is 1 and the IWAE bound is exact."""
    lg, x, rng = random_case(D, Z, sigma, seed)
    lp = lg.log_marginal(x)
    post = lg.posterior_gaussian(x)
    lw = lg.log_weights(x, post, 64, rng)
    z = post.sample(64, np.random.default_rng(seed))
    scale = (np.abs(lg.log_likelihood(x, z)) + np.abs(lg.log_prior(z))
             + np.abs(post.log_prob(z))).max(axis=0)
    tol = roundoff(np.linalg.cond(lg.M), scale)
    assert np.all(np.abs(lw - lp) <= tol)
    assert np.all(lw.std(axis=0) <= tol)
    assert np.all(np.abs(lg.elbo(x, post) - lp) <= tol)
    assert np.all(np.abs(lg.kl_to_posterior(x, post)) <= tol)
    for n in (2, 3, 4):
        assert np.all(np.abs(lg.log_weight_moment(x, post, n)) <= tol)
    assert np.all(np.abs(lg.weight_relative_variance(x, post)) <= tol)
    est = lg.importance_log_likelihood(x, post, 16, rng)
    assert np.all(np.abs(est.value - lp) <= tol) and np.all(est.stderr <= tol)
    assert np.all(np.abs(lg.iwae_bound(x, post, 4, rng, replicates=3).value - lp) <= tol)


@given(B=st.integers(1, 4), Z=st.integers(1, 4), seed=st.integers(0, 2 ** 32 - 1))
def test_gaussian_log_prob_matches_dense_formula(B, Z, seed):
    rng = np.random.default_rng(seed)
    diag, full = _random_qs(LinearGaussian.random(3, Z, 1.0, rng), np.zeros((B, 3)), rng)
    z = rng.standard_normal((5, B, Z))
    for q in (diag, full):
        S = q.covariance()
        d = z - q.mean
        quad = np.einsum("kbi,bij,kbj->kb", d, np.linalg.inv(S), d)
        expect = -0.5 * (Z * math.log(2 * math.pi) + np.linalg.slogdet(S)[1] + quad)
        tol = roundoff(np.linalg.cond(S).max(), np.abs(expect).max())
        np.testing.assert_allclose(q.log_prob(z), expect, rtol=0, atol=tol)
        np.testing.assert_allclose(q.precision() @ S, np.broadcast_to(np.eye(Z), S.shape),
                                   atol=roundoff(np.linalg.cond(S).max(), 0))


def test_log_joint_shapes_and_terms():
    lg, x = model("mild", B=3)
    z = np.random.default_rng(0).standard_normal((5, 3, 2))
    assert lg.log_joint(x, z).shape == (5, 3) and lg.log_joint(x, z[0]).shape == (3,)
    r = x - z[1] @ lg.W.T - lg.b
    expect = (-0.5 * (lg.D * math.log(2 * math.pi * lg.sigma ** 2) + (r * r).sum(1) / lg.sigma ** 2)
              - 0.5 * (2 * math.log(2 * math.pi) + (z[1] ** 2).sum(1)))
    np.testing.assert_allclose(lg.log_joint(x, z)[1], expect, rtol=1e-13)


# ---------------------------------------------------------------------------------------------
# Bayes' rule and weight moments on a grid (Z = 1)

def _grid(center, sd, half_width=14.0, n=8001):
    """Nodes and trapezoid weights on center +- half_width sd.  For Gaussian-shaped integrands the
    trapezoid rule converges geometrically and the truncated tails are < exp(-half_width^2 / 2)."""
    z = np.linspace(center - half_width * sd, center + half_width * sd, n)
    w = np.full(n, z[1] - z[0])
    w[[0, -1]] /= 2
    return z, w


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_posterior_is_bayes_rule_on_a_grid(seed):
    """Z = 1: normalise p(x|z) p(z) (written out here) on a grid; its integral is p(x), its mean and
    variance are the posterior's."""
    rng = np.random.default_rng(seed)
    lg = LinearGaussian.random(3, 1, 0.7, rng)
    x = lg.sample(2, rng)
    mean, cov = lg.posterior(x)
    assert mean.shape == (2, 1) and cov.shape == (1, 1)
    for b in range(2):
        z, w = _grid(mean[b, 0], math.sqrt(cov[0, 0]))
        r = x[b] - lg.b - z[:, None] * lg.W[:, 0]
        log_joint = (-0.5 * (r * r).sum(1) / lg.sigma ** 2 - 0.5 * z * z
                     - 0.5 * (lg.D + 1) * math.log(2 * math.pi) - lg.D * math.log(lg.sigma))
        np.testing.assert_allclose(log_joint, lg.log_joint(x[b:b + 1], z[:, None, None])[:, 0],
                                   rtol=1e-12)
        joint = np.exp(log_joint)
        px = w @ joint
        post = joint / px
        m = w @ (post * z)
        v = w @ (post * (z - m) ** 2)
        np.testing.assert_allclose(math.log(px), lg.log_marginal(x[b:b + 1])[0], rtol=1e-10)
        np.testing.assert_allclose(m, mean[b, 0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(v, cov[0, 0], rtol=1e-10)


@pytest.mark.parametrize("q_kind", ["prior", "shifted_wide", "narrow_but_finite", "too_narrow"])
def test_weight_moments_match_grid_integral(q_kind):
    """C3: E_q[(w/p)^n] = integral p(z|x)^n q(z)^(1-n) dz, on a grid; infinite exactly when
    n M - (n-1) / var_q <= 0 (q narrower than the posterior by a factor (n-1)/n in precision)."""
    rng = np.random.default_rng(3)
    lg = LinearGaussian.random(3, 1, 0.7, rng)
    x = lg.sample(1, rng)
    m, S = lg.posterior(x)
    M = 1.0 / S[0, 0]
    mean, var = {"prior": (0.0, 1.0), "shifted_wide": (m[0, 0] + 0.5, 3.0 * S[0, 0]),
                 "narrow_but_finite": (m[0, 0] - 0.1, 0.6 * S[0, 0]),
                 "too_narrow": (m[0, 0], 0.45 * S[0, 0])}[q_kind]
    q = Gaussian.diagonal([[mean]], [[math.log(var)]])
    for n in (2, 3):
        got = lg.log_weight_moment(x, q, n)[0]
        if n * M - (n - 1) / var <= 0:
            assert got == np.inf
            continue
        # the integrand is a Gaussian in z with precision A = n M - (n-1)/var
        A = n * M - (n - 1) / var
        center = (n * M * m[0, 0] - (n - 1) * mean / var) / A
        z, w = _grid(center, 1 / math.sqrt(A))
        log_post = -0.5 * (math.log(2 * math.pi * S[0, 0]) + (z - m[0, 0]) ** 2 / S[0, 0])
        log_q = -0.5 * (math.log(2 * math.pi * var) + (z - mean) ** 2 / var)
        integral = w @ np.exp(n * log_post + (1 - n) * log_q)
        np.testing.assert_allclose(got, math.log(integral), rtol=1e-9, atol=1e-10)
    assert (lg.weight_relative_variance(x, q)[0] == np.inf) == (q_kind == "too_narrow")


# ---------------------------------------------------------------------------------------------
# importance sampling: C1, C2, C3

def _moments(lg, x, q):
    """Exact mean 1, variance and 4th central moment of r = w / p(x) under q."""
    m2, m3, m4 = (np.exp(lg.log_weight_moment(x, q, n)) for n in (2, 3, 4))
    return m2 - 1, m4 - 4 * m3 + 6 * m2 - 3


def _check_mean_and_var(r, var, mu4):
    """r (N, B) iid per column with mean 1, variance var, 4th central moment mu4."""
    N = len(r)
    assert np.all(np.abs(r.mean(axis=0) - 1) <= Z_TOL * np.sqrt(var / N)), (r.mean(0), var)
    sd_var = np.sqrt(mu4 / N - var ** 2 * (N - 3) / (N * (N - 1)))
    assert np.all(np.abs(r.var(axis=0, ddof=1) - var) <= Z_TOL * sd_var), (r.var(0), var, sd_var)


@pytest.mark.parametrize("proposal", ["prior", "fitted"])
def test_importance_weights_are_unbiased_with_exact_variance(proposal):
    """C2: E_q[w] = p(x) for any q.  C3: var(w) / p(x)^2 is ``weight_relative_variance``.
    The fitted q is the best diagonal one of the MILD model (finite 4th moment, |rho| < 1/4)."""
    lg, x = model("mild")
    q = lg.prior(len(x)) if proposal == "prior" else lg.optimal_diagonal_q(x)
    var, mu4 = _moments(lg, x, q)
    assert np.all(np.isfinite(mu4)) and abs(rho(lg)) < 0.25
    np.testing.assert_allclose(var, lg.weight_relative_variance(x, q), rtol=1e-12)
    r = np.exp(lg.log_weights(x, q, 200_000, np.random.default_rng(20)) - lg.log_marginal(x))
    _check_mean_and_var(r, var, mu4)


def test_variance_of_the_K_sample_estimate_is_var_w_over_K():
    """C3: p_hat_K / p(x) = mean of K iid r = w/p has variance var(r)/K and 4th central moment
    (mu4 + 3 (K-1) var^2) / K^3; checked over R independent estimates."""
    lg, x = model("mild")
    q, K, R = lg.prior(len(x)), 100, 2000
    var, mu4 = _moments(lg, x, q)
    rng = np.random.default_rng(21)
    lp = lg.log_marginal(x)
    ratio = np.exp(np.array([lg.importance_log_likelihood(x, q, K, rng).value for _ in range(R)])
                   - lp)
    _check_mean_and_var(ratio, var / K, (mu4 + 3 * (K - 1) * var ** 2) / K ** 3)


def test_prior_estimate_has_far_larger_variance():
    """C1: the plain Monte Carlo estimate (z from the prior) is unbiased (above) but its weights'
    relative variance dwarfs a fitted q's, which is itself > 0 = the posterior's (C4)."""
    for name in ("mild", "strong"):
        lg, x = model(name)
        prior = lg.weight_relative_variance(x, lg.prior(len(x)))
        fitted = lg.weight_relative_variance(x, lg.optimal_diagonal_q(x))
        post = lg.weight_relative_variance(x, lg.posterior_gaussian(x))
        assert np.all(prior > 1.0) and np.all(np.abs(post) < 1e-12)
        if name == "mild":
            assert np.all(prior > 50 * fitted) and np.all(fitted > 0)
        else:                                   # |rho| > 1/2: the diagonal q is too narrow
            assert np.all(fitted == np.inf) and abs(rho(lg)) > 0.5


@pytest.mark.parametrize("proposal, K", [("fitted", 10_000), ("fitted", 100), ("prior", 10_000)])
def test_importance_log_likelihood_converges_to_log_marginal(proposal, K):
    """C2/C3: p_hat_K / p(x) - 1 is within Z_TOL sqrt(var(w/p) / K) of 0 (CLT with the exact
    variance), and the reported stderr is the sample version of that standard error."""
    lg, x = model("mild")
    q = lg.prior(len(x)) if proposal == "prior" else lg.optimal_diagonal_q(x)
    rel = lg.weight_relative_variance(x, q)
    rng = np.random.default_rng(22)
    est = lg.importance_log_likelihood(x, q, K, rng)
    assert isinstance(est, Estimate) and est.n == K and est.value.shape == (len(x),)
    lp = lg.log_marginal(x)
    assert np.all(np.abs(np.expm1(est.value - lp)) <= Z_TOL * np.sqrt(rel / K))
    # same draws: value is logsumexp - log K, stderr^2 K the sample relative variance of w
    lw = lg.log_weights(x, q, K, np.random.default_rng(22))
    w = np.exp(lw - lw.max(axis=0))
    np.testing.assert_allclose(est.value, np.log(w.mean(axis=0)) + lw.max(axis=0), rtol=1e-13)
    np.testing.assert_allclose(est.stderr ** 2 * K, w.var(axis=0, ddof=1) / w.mean(axis=0) ** 2,
                               rtol=1e-10)


def test_importance_log_likelihood_is_stable_for_huge_log_weights():
    """logsumexp with the maximum subtracted: x far from the data (log w ~ -1e5) stays finite."""
    lg, _ = model("mild")
    x = np.full((2, lg.D), 300.0)
    est = lg.importance_log_likelihood(x, lg.posterior_gaussian(x), 8, np.random.default_rng(0))
    lp = lg.log_marginal(x)
    assert np.all(lp < -1e4) and np.all(np.isfinite(est.value))
    np.testing.assert_allclose(est.value, lp, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# bounds: C5, C7

def test_elbo_below_iwae_below_log_marginal_and_iwae_rises_with_K():
    """C5 on the STRONG model with its best diagonal q (ELBO gap 0.28 nats):
    IWAE_1 = ELBO (in expectation), ELBO <= IWAE_K <= log p(x), IWAE_K non-decreasing in K, and
    at K = 64 most of the gap is closed (IWAE_64 - ELBO clearly positive)."""
    lg, x = model("strong")
    q = lg.optimal_diagonal_q(x)
    elbo, lp = lg.elbo(x, q), lg.log_marginal(x)
    assert np.all(lp - elbo > 0.25)
    rng = np.random.default_rng(23)
    ests = {K: lg.iwae_bound(x, q, K, rng, replicates=400) for K in (1, 4, 16, 64)}
    e1 = ests[1]
    assert np.all(np.abs(e1.value - elbo) <= Z_TOL * e1.stderr)
    for K, e in ests.items():
        assert e.n == 400
        assert np.all(e.value >= elbo - Z_TOL * e.stderr)
        assert np.all(e.value <= lp + Z_TOL * e.stderr)
    Ks = sorted(ests)
    for a, b in zip(Ks, Ks[1:]):
        se = np.hypot(ests[a].stderr, ests[b].stderr)
        assert np.all(ests[b].value - ests[a].value >= -Z_TOL * se)
    assert np.all(ests[64].value - elbo > Z_TOL * ests[64].stderr)
    assert np.all(ests[64].value - ests[1].value > Z_TOL * np.hypot(ests[1].stderr,
                                                                       ests[64].stderr))


@pytest.mark.parametrize("proposal", ["fitted", "posterior"])
def test_distortion_and_kl_match_monte_carlo(proposal):
    """C7: the distortion -E_q[log p(x|z)] and KL(q || p(z)) = E_q[log q - log p(z)] by sampling, within Z_TOL
    standard errors (sample standard deviation / sqrt(S); S = 20000 draws of a smooth,
    Gaussian-tailed integrand)."""
    lg, x = model("strong")
    q = lg.optimal_diagonal_q(x) if proposal == "fitted" else lg.posterior_gaussian(x)
    distortion, kl = lg.distortion_and_kl(x, q)
    S = 20_000
    z = q.sample(S, np.random.default_rng(24))
    for exact, draws in ((distortion, -lg.log_likelihood(x, z)), (kl, q.log_prob(z) - lg.log_prior(z))):
        se = draws.std(axis=0, ddof=1) / math.sqrt(S)
        assert np.all(np.abs(draws.mean(axis=0) - exact) <= Z_TOL * se)


def test_gaussian_sampler_has_the_stated_moments():
    """Full-covariance sampling: sample mean within Z_TOL sqrt(S_ii / N), and the sample variance
    of a projection u^T z within Z_TOL sqrt(2 / (N-1)) (u^T S u) (Gaussian)."""
    rng = np.random.default_rng(25)
    A = rng.standard_normal((3, 3))
    cov = A @ A.T + 0.2 * np.eye(3)
    mean = rng.standard_normal((2, 3))
    N = 50_000
    for q in (Gaussian.full(mean, cov), Gaussian.diagonal(mean, np.log(np.diag(cov))[None] + 0 * mean)):
        S = q.covariance()[0]
        z = q.sample(N, rng)
        assert z.shape == (N, 2, 3)
        assert np.all(np.abs(z.mean(axis=0) - mean) <= Z_TOL * np.sqrt(np.diag(S) / N))
        u = rng.standard_normal(3)
        v = u @ S @ u
        assert np.all(np.abs((z @ u).var(axis=0, ddof=1) - v) <= Z_TOL * math.sqrt(2 / (N - 1)) * v)


# ---------------------------------------------------------------------------------------------
# the fitted diagonal encoder: C6, C8

@given(**shapes, beta=st.floats(0.2, 5.0))
def test_elbo_grad_matches_central_differences(D, Z, sigma, seed, beta):
    """Directional derivative along a random (u_mean, u_logvar): the beta-ELBO is quadratic in the
    mean and exp-linear in logvar, so with h = 1e-5 the truncation error is below
    h^2/6 sum |u_j|^3 v_j (M_beta)_jj / 2 and round-off below eps |L| / h."""
    lg, x, rng = random_case(D, Z, sigma, seed)
    mean, logvar = rng.standard_normal((len(x), Z)), rng.uniform(-2, 2, (len(x), Z))
    um, ul = rng.standard_normal(mean.shape), rng.standard_normal(mean.shape)

    def objective(t):
        distortion, kl = lg.distortion_and_kl(x, mean + t * um, logvar + t * ul)
        return -(distortion + beta * kl)

    h = 1e-5
    fd = (objective(h) - objective(-h)) / (2 * h)
    dm, dl = lg.elbo_grad(x, mean, logvar, beta)
    exact = (dm * um).sum(1) + (dl * ul).sum(1)
    Mb = beta + np.diag(lg.G) / sigma ** 2
    trunc = h ** 2 / 6 * (np.abs(ul) ** 3 * np.exp(logvar + h * np.abs(ul)) * Mb / 2).sum(1)
    tol = trunc + 1e3 * EPS * (1 + np.abs(objective(0.0))) / h
    assert np.all(np.abs(fd - exact) <= tol), (fd - exact, tol)


@given(**shapes, beta=st.floats(0.2, 5.0))
def test_optimal_diagonal_q_is_the_maximum(D, Z, sigma, seed, beta):
    """The beta-ELBO is concave in (mean, logvar) (quadratic in the mean, -v + log v in logvar), so
    a zero gradient is the global maximum: check the gradient vanishes there and random diagonal q
    do no better."""
    lg, x, rng = random_case(D, Z, sigma, seed)
    opt = lg.optimal_diagonal_q(x, beta)
    dm, dl = lg.elbo_grad(x, opt.mean, opt.logvar, beta)
    scale = np.abs(x - lg.b).max() * np.abs(lg.W).max() / sigma ** 2 + 1
    assert np.abs(dm).max() <= roundoff(np.linalg.cond(beta * np.eye(Z) + lg.G / sigma ** 2), scale)
    assert np.abs(dl).max() <= roundoff(1.0, beta)

    def objective(q):
        distortion, kl = lg.distortion_and_kl(x, q)
        return -(distortion + beta * kl)

    best = objective(opt)
    for _ in range(5):
        other = Gaussian.diagonal(opt.mean + 0.3 * rng.standard_normal(opt.mean.shape),
                                  opt.logvar + 0.3 * rng.standard_normal(opt.mean.shape))
        assert np.all(objective(other) <= best + roundoff(1.0, np.abs(best)))


@pytest.mark.parametrize("steps", [200, 4000])
def test_fit_diagonal_q_converges_at_the_stated_rate(steps):
    """Gradient ascent with lr = 1/lambda_max(M): the mean error contracts by at least
    (1 - lambda_min/lambda_max) per step; the logvar error t = logvar - logvar*, started at
    log M_jj > 0, decreases monotonically with t' <= (1 - lr/2) t (e^t - 1 >= t)."""
    lg, x = model("strong")
    rng = np.random.default_rng(26)
    fit = lg.fit_diagonal_q(x, steps=steps, rng=rng)
    opt = lg.optimal_diagonal_q(x)
    lam = np.linalg.eigvalsh(lg.M)
    lr = 1 / lam[-1]
    mean0 = np.random.default_rng(26).standard_normal(opt.mean.shape)     # the same start
    mean_bound = (1 - lam[0] * lr) ** steps * np.linalg.norm(mean0 - opt.mean, axis=1)
    logvar_bound = (1 - lr / 2) ** steps * np.log(np.diag(lg.M))
    small = roundoff(np.linalg.cond(lg.M), np.abs(opt.mean).max())
    assert np.all(np.linalg.norm(fit.mean - opt.mean, axis=1) <= mean_bound + small)
    assert np.all(fit.logvar - opt.logvar >= -small)
    assert np.all(fit.logvar - opt.logvar <= logvar_bound + small)
    if steps == 4000:                                   # converged: the closed form, to round-off
        np.testing.assert_allclose(fit.mean, opt.mean, atol=1e-10)
        np.testing.assert_allclose(fit.logvar, opt.logvar, atol=1e-10)
        np.testing.assert_allclose(lg.elbo(x, fit), lg.elbo(x, opt), atol=1e-10)


def test_fit_with_beta_matches_closed_form():
    lg, x = model("strong")
    fit = lg.fit_diagonal_q(x, steps=4000, beta=3.0)
    opt = lg.optimal_diagonal_q(x, beta=3.0)
    np.testing.assert_allclose(fit.mean, opt.mean, atol=1e-10)
    np.testing.assert_allclose(fit.logvar, opt.logvar, atol=1e-10)


def test_diagonal_q_keeps_the_hadamard_gap():
    """C6: the best diagonal q has gap KL = 1/2 (sum_j log M_jj - log det M) = -1/2 log(1 - rho^2)
    for Z = 2: > 0 for a correlated posterior, 0 when W's columns are orthogonal (M diagonal,
    and then the best diagonal q is the posterior)."""
    lg, x = model("strong")
    opt = lg.optimal_diagonal_q(x)
    hadamard = 0.5 * (np.log(np.diag(lg.M)).sum() - lg.logdet_M)
    np.testing.assert_allclose(lg.kl_to_posterior(x, opt), hadamard, rtol=1e-12)
    np.testing.assert_allclose(hadamard, -0.5 * math.log(1 - rho(lg) ** 2), rtol=1e-12)
    assert hadamard > 0.25
    np.testing.assert_allclose(lg.log_marginal(x) - lg.elbo(x, opt), hadamard, rtol=1e-10)
    Q = np.linalg.qr(np.random.default_rng(27).standard_normal((5, 2)))[0]
    ortho = LinearGaussian(Q * [2.0, 0.5], np.zeros(5), 0.5)
    x2 = ortho.sample(3, np.random.default_rng(28))
    opt2 = ortho.optimal_diagonal_q(x2)
    assert np.all(np.abs(ortho.kl_to_posterior(x2, opt2)) <= 1e-13)
    np.testing.assert_allclose(opt2.mean, ortho.posterior(x2)[0], atol=1e-13)


def test_beta_trades_rate_for_distortion():
    """C8: maximising E_q[log p(x|z)] - beta KL(q || p(z)) over diagonal q (closed form): as beta
    grows the rate KL(q || p(z)) falls strictly and the distortion -E_q[log p(x|z)] rises strictly."""
    lg, x = model("strong")
    betas = [0.1, 0.3, 1.0, 3.0, 10.0]
    rate, distortion = [], []
    for beta in betas:
        d, kl = lg.distortion_and_kl(x, lg.optimal_diagonal_q(x, beta))
        rate.append(kl)
        distortion.append(d)
    rate, distortion = np.array(rate), np.array(distortion)
    assert np.all(np.diff(rate, axis=0) < 0)
    assert np.all(np.diff(distortion, axis=0) > 0)


# ---------------------------------------------------------------------------------------------
# bad input

def _lg():
    return model("mild", B=2)


@pytest.mark.parametrize("call, word", [
    (lambda: LinearGaussian(np.ones(3), np.zeros(3), 1.0), "W must be a 2-D"),
    (lambda: LinearGaussian(np.ones((3, 2)), np.zeros(4), 1.0), "b must have shape"),
    (lambda: LinearGaussian(np.ones((3, 2)), np.zeros(3), 0.0), "sigma"),
    (lambda: LinearGaussian(np.ones((3, 2)), np.zeros(3), -1.0), "sigma"),
    (lambda: LinearGaussian(np.full((3, 2), np.nan), np.zeros(3), 1.0), "W contains NaN"),
    (lambda: LinearGaussian.random(0, 2, 1.0, np.random.default_rng(0)), "D must be"),
    (lambda: _lg()[0].log_marginal(np.zeros((2, 3))), "x must be"),
    (lambda: _lg()[0].log_marginal(np.zeros(8)), "x must be"),
    (lambda: _lg()[0].log_weights(_lg()[1], _lg()[0].prior(2), 0, np.random.default_rng(0)), "K must be"),
    (lambda: _lg()[0].importance_log_likelihood(_lg()[1], _lg()[0].prior(2), 2.5,
                                                np.random.default_rng(0)), "K must be"),
    (lambda: _lg()[0].iwae_bound(_lg()[1], _lg()[0].prior(2), 4, np.random.default_rng(0),
                                 replicates=0), "replicates"),
    (lambda: _lg()[0].elbo(_lg()[1], _lg()[0].prior(3)), "q must have mean shape"),
    (lambda: _lg()[0].elbo(_lg()[1], "posterior"), "q must be"),
    (lambda: _lg()[0].fit_diagonal_q(_lg()[1], steps=-1), "steps"),
    (lambda: _lg()[0].fit_diagonal_q(_lg()[1], lr=10.0), "lr must be <"),
    (lambda: _lg()[0].fit_diagonal_q(_lg()[1], beta=0.0), "beta"),
    (lambda: _lg()[0].log_weight_moment(_lg()[1], _lg()[0].prior(2), 0.5), "order"),
    (lambda: Gaussian(np.zeros((2, 2))), "exactly one"),
    (lambda: Gaussian(np.zeros((2, 2)), logvar=np.zeros((2, 3))), "logvar must have"),
    (lambda: Gaussian.full(np.zeros((2, 2)), np.array([[1.0, 2.0], [2.0, 1.0]])), "positive definite"),
    (lambda: Gaussian.full(np.zeros((2, 2)), np.eye(3)), "cov must have shape"),
    (lambda: Gaussian.standard(2, 2).log_prob(np.zeros((5, 3, 2))), "z must have shape"),
    (lambda: as_gaussian(Gaussian.standard(2, 2), np.zeros((2, 2))), "q_logvar must be None"),
])
def test_bad_input_raises(call, word):
    with pytest.raises(MinivaeError, match=word):
        call()


def test_tuple_proposals_are_diagonal():
    lg, x = model("mild", B=2)
    opt = lg.optimal_diagonal_q(x)
    np.testing.assert_array_equal(lg.elbo(x, (opt.mean, opt.logvar)), lg.elbo(x, opt))
    np.testing.assert_array_equal(lg.elbo(x, opt.mean, opt.logvar), lg.elbo(x, opt))
    a = lg.log_weights(x, (opt.mean, opt.logvar), 5, np.random.default_rng(1))
    b = lg.log_weights(x, opt, 5, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
