"""Disentanglement metrics on codes whose answer is known: the true factors themselves, a
rotation of them, independent noise and a duplicated latent (MIG, FactorVAE score), and the total
correlation estimator against the closed form of a correlated Gaussian.

Factors are drawn as the metrics see them in the study: the shapes' five factors on the
dSprites-like grid (4 shapes, 6 scales, 40 rotations, 32 x 32 positions), N images.

Tolerances.  The plug-in mutual information of two independent variables with a and b occupied
levels satisfies 2N I ~ chi^2 with df = (a - 1)(b - 1) (the G-test), so "near 0" means below
(df + 4.5 sqrt(2 df)) / (2N) nats; an estimated I has the delta-method standard error that
``mutual_information`` returns; an accuracy over n held-out votes has the binomial standard error
sqrt(p (1 - p) / n); a Monte Carlo mean has sd / sqrt(n).  Every check is at 4.5 of them.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minivae import distributions as dist
from minivae import metrics
from minivae.data import shapes
from minivae.errors import MinivaeError

N = 10000
Z_TOL = 4.5
F = len(shapes.FACTORS)


def grid_factors(n, rng):
    return metrics.factor_matrix(shapes.draw_factors(n, rng, levels=shapes.DSPRITES_LEVELS),
                                 shapes.DSPRITES_LEVELS)


def standardized(v):
    return (v - v.mean(0)) / v.std(0)


def independence_floor(a, b, n=N):
    """Upper bound (4.5 sd) of the plug-in MI between independent variables with a, b levels."""
    df = (a - 1) * (b - 1)
    return (df + Z_TOL * math.sqrt(2 * df)) / (2 * n)


def levels(col):
    return len(np.unique(col))


@pytest.fixture(scope="module")
def factors():
    return grid_factors(N, np.random.default_rng(11))


# ----------------------------------------------------------------------------- information
def test_discretize_bins_and_levels():
    v = np.array([[0.0, 3.0], [0.5, 1.0], [1.0, 3.0], [0.26, 2.0]])
    d = metrics.discretize(v, bins=4, discrete=[False, True])
    assert d[:, 0].tolist() == [0, 2, 3, 1] and d[:, 1].tolist() == [2, 0, 2, 1]
    assert metrics.discretize(np.ones((3, 1)), 5).tolist() == [[0], [0], [0]]
    with pytest.raises(MinivaeError, match="bins"):
        metrics.discretize(v, bins=0)


def test_mutual_information_of_a_variable_with_itself_is_its_entropy(rng):
    a = rng.integers(0, 7, 5000)
    p = np.bincount(a) / len(a)
    h = -np.sum(p * np.log(p))
    mi, se, shape = metrics.mutual_information(a, a)
    assert abs(mi - h) <= 1e-12 and shape == (7, 7)
    assert abs(metrics.entropy(a[:, None])[0] - h) <= 1e-12


def test_mutual_information_of_independent_variables_is_below_the_chi2_floor(rng):
    a, b = rng.integers(0, 20, N), rng.integers(0, 32, N)
    mi, _, (la, lb) = metrics.mutual_information(a, b)
    assert 0 <= mi <= independence_floor(la, lb)


def test_mutual_information_of_a_noisy_channel_matches_its_closed_form(rng):
    """a uniform on {0, 1}, b = a flipped with probability p: I = log 2 - H_b(p)."""
    p = 0.2
    a = rng.integers(0, 2, N)
    b = np.where(rng.random(N) < p, 1 - a, a)
    mi, se, _ = metrics.mutual_information(a, b)
    exact = math.log(2) + p * math.log(p) + (1 - p) * math.log(1 - p)
    assert abs(mi - exact) <= Z_TOL * se + independence_floor(2, 2)


# ----------------------------------------------------------------------------- MIG
def test_mig_of_the_true_factors_is_its_discretisation_maximum(factors):
    """codes = the factors: I(z_k; v_k) = H(bin(v_k)) exactly (the bin is a function of v_k), so
    gap_k = (H(bin v_k) - I_(2)k) / H(v_k) with I_(2)k an independent pair's plug-in MI."""
    v, discrete = factors
    r = metrics.mig(v, v, discrete=discrete)
    zb = metrics.discretize(v, 20, [False] * F)
    h_bin = metrics.entropy(zb)
    h = metrics.entropy(metrics.discretize(v, 20, discrete))
    assert np.allclose(h, [math.log(levels(v[:, k])) for k in range(F)], atol=0.01)  # uniform
    assert np.allclose(np.diag(r["mi"]), h_bin, rtol=0, atol=1e-12)
    assert r["top"].tolist() == list(range(F))
    floor = np.array([max(independence_floor(levels(zb[:, j]), levels(v[:, k]))
                          for j in range(F) if j != k) for k in range(F)])
    assert np.all(r["gaps"] <= h_bin / h + 1e-12)
    assert np.all(r["gaps"] >= (h_bin - floor) / h)
    assert r["mig"] > 0.85                       # 20 bins keep most of log 32 (0.86 of it)


def test_mig_of_a_45_degree_rotation_of_x_and_y(factors):
    """z = the factors with (x, y) -> ((x + y), (x - y)) / sqrt 2 (standardised): x and y are each
    carried equally by two latents, so their gaps are 0 up to estimation error, and MIG is the
    other three factors' gaps over 5."""
    v, discrete = factors
    s = standardized(v)
    ix, iy = shapes.FACTORS.index("x"), shapes.FACTORS.index("y")
    codes = s.copy()
    codes[:, ix], codes[:, iy] = (s[:, ix] + s[:, iy]) / math.sqrt(2), \
        (s[:, ix] - s[:, iy]) / math.sqrt(2)
    r = metrics.mig(codes, v, discrete=discrete)
    cd = metrics.discretize(codes, 20, [False] * F)
    vd = metrics.discretize(v, 20, discrete)
    for k in (ix, iy):
        (i1, se1, _), (i2, se2, _) = (metrics.mutual_information(cd[:, j], vd[:, k])
                                      for j in (ix, iy))
        assert i1 > 0.2 and i2 > 0.2                     # both carry it
        assert sorted(r["mi"][:, k])[-2] >= min(i1, i2) - 1e-12
        assert r["gaps"][k] * r["entropies"][k] <= Z_TOL * math.hypot(se1, se2)
    true = metrics.mig(v, v, discrete=discrete)
    others = [k for k in range(F) if k not in (ix, iy)]
    assert np.allclose(r["gaps"][others], true["gaps"][others], atol=0.01)
    assert r["mig"] < true["mig"] - 0.3


def test_mig_of_a_random_rotation_is_clearly_lower(factors):
    v, discrete = factors
    q, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((F, F)))
    r = metrics.mig(standardized(v) @ q, v, discrete=discrete)
    assert r["mig"] < metrics.mig(v, v, discrete=discrete)["mig"] - 0.5


def test_mig_of_independent_noise_is_near_zero(factors, rng):
    v, discrete = factors
    r = metrics.mig(rng.standard_normal((N, 6)), v, discrete=discrete)
    floor = np.array([independence_floor(20, levels(v[:, k])) for k in range(F)])
    assert np.all(r["gaps"] >= 0) and np.all(r["gaps"] <= floor / r["entropies"])
    assert r["mig"] <= np.mean(floor / r["entropies"])


def test_mig_penalises_a_duplicated_latent(factors):
    """Two identical latents carrying x: I_(1) = I_(2) exactly, so x's gap is 0 and MIG drops by
    the true gap of x over 5 (the other gaps can only shrink: one more candidate latent)."""
    v, discrete = factors
    ix = shapes.FACTORS.index("x")
    codes = np.concatenate([v, v[:, ix:ix + 1]], axis=1)
    r, true = metrics.mig(codes, v, discrete=discrete), metrics.mig(v, v, discrete=discrete)
    assert r["gaps"][ix] == 0.0
    assert r["mig"] <= true["mig"] - true["gaps"][ix] / F + 1e-12
    assert r["mig"] >= true["mig"] - true["gaps"][ix] / F - max(
        independence_floor(20, levels(v[:, k])) / true["entropies"][k] for k in range(F))


def test_mig_refuses_bad_shapes(rng):
    with pytest.raises(MinivaeError, match="2 latents"):
        metrics.mig(rng.standard_normal((10, 1)), rng.standard_normal((10, 2)))
    with pytest.raises(MinivaeError, match="rows"):
        metrics.mig(rng.standard_normal((10, 3)), rng.standard_normal((9, 2)))
    with pytest.raises(MinivaeError, match="NaN"):
        metrics.mig(np.full((10, 3), np.nan), rng.standard_normal((10, 2)))


# ----------------------------------------------------------------------------- FactorVAE
def factorvae(transform, rng, n_votes=800, batch=200):
    """The score of codes = transform(standardised factors), votes from shapes.draw_with_fixed."""
    v, _ = grid_factors(N, rng)
    mean, std = v.mean(0), v.std(0)

    def code(values):
        return transform((values - mean) / std)

    def codes_with_fixed(k, L, rng):
        f = shapes.draw_with_fixed(shapes.FACTORS[k], L, rng, levels=shapes.DSPRITES_LEVELS)
        return code(metrics.factor_matrix(f, shapes.DSPRITES_LEVELS)[0])

    votes, ks = metrics.factorvae_votes(codes_with_fixed, F, n_votes, batch, rng)
    return metrics.factorvae_score(votes, ks, code(v).std(0), F)


def test_factorvae_score_of_the_true_factors_is_one(rng):
    """Fixing factor k makes latent k constant: it wins every vote."""
    r = factorvae(lambda s: s, rng)
    assert r["score"] == 1.0 and r["classifier"].tolist() == list(range(F))


def test_factorvae_score_of_independent_noise_is_chance(rng):
    r = factorvae(lambda s: np.random.default_rng(0).standard_normal((len(s), 6)), rng)
    p = 1 / F
    assert abs(r["score"] - p) <= Z_TOL * math.sqrt(p * (1 - p) / r["n_eval"])


def test_factorvae_score_of_a_45_degree_rotation_is_0_8(rng):
    """(x, y) -> (x + y, x - y) / sqrt 2: fixing x or y halves the normalised variance of both
    mixed latents (1/2 against 1; with L = 200 codes the sample variances are 0.5 +- 0.05 and
    1 +- 0.1), so each of those votes lands on either at random and half of them are classified
    right: the expected accuracy is (3 + 2 / 2) / 5 = 0.8.  The unmixed latents are given scales
    0.5, 3 and 0.3 (variances above the pruning threshold 0.05): the score divides each latent by its spread, so they change nothing."""
    ix, iy = shapes.FACTORS.index("x"), shapes.FACTORS.index("y")

    def rot(s):
        s = s * np.array([0.5, 3.0, 0.3, 1.0, 1.0])
        s[:, ix], s[:, iy] = (s[:, ix] + s[:, iy]) / math.sqrt(2), (s[:, ix] - s[:, iy]) / math.sqrt(2)
        return s
    r = factorvae(rot, rng)
    assert abs(r["score"] - 0.8) <= Z_TOL * math.sqrt(0.8 * 0.2 / r["n_eval"])


def test_factorvae_score_does_not_see_a_duplicated_latent(rng):
    """Unlike MIG: two latents carrying x both vote for x, so the score stays 1."""
    ix = shapes.FACTORS.index("x")
    r = factorvae(lambda s: np.concatenate([s, s[:, ix:ix + 1] + 1e-3 * np.random.default_rng(
        len(s)).standard_normal((len(s), 1))], 1), rng)
    assert r["score"] == 1.0


def test_factorvae_prunes_collapsed_latents(rng):
    """A constant latent has zero variance in every vote; pruned, it never wins."""
    r = factorvae(lambda s: np.concatenate([s, np.zeros((len(s), 1))], 1), rng)
    assert r["score"] == 1.0 and not r["active"][-1] and r["classifier"][-1] == -1
    dead = factorvae(lambda s: np.zeros((len(s), 3)), rng)
    assert dead["score"] == 0.0


# ----------------------------------------------------------------------------- TC
def test_gaussian_total_correlation_closed_form():
    rho = 0.6
    cov = np.array([[2.0, rho * math.sqrt(2 * 3)], [rho * math.sqrt(2 * 3), 3.0]])
    assert abs(metrics.gaussian_total_correlation(cov) + 0.5 * math.log(1 - rho ** 2)) < 1e-14
    assert abs(metrics.gaussian_total_correlation(np.diag([1.0, 4.0, 0.1]))) < 1e-15


@settings(max_examples=4, deadline=None)
@given(Z=st.integers(2, 4), seed=st.integers(0, 2**32 - 1), s2=st.floats(0.3, 1.0),
       correlated=st.booleans())
def test_total_correlation_matches_a_correlated_gaussian(Z, seed, s2, correlated):
    """q(z|x_n) = N(A u_n, s2 I), u_n ~ N(0, I): the aggregate posterior tends to
    N(0, A A^T + s2 I), whose TC is closed form.  The estimate (the subsample's mixture) is
    within 4.5 standard errors plus its O(1/N) bias: the self-term q(z_n | x_n) / N and the
    Jensen term of the log of a mean are each about q(z|x) / q(z) ~ prod_i sqrt((l_i + s2) / s2)
    over N, l_i the eigenvalues of A A^T (the aggregate's variance over the posterior's in each
    principal direction).  (A bound from l_i <= 1 held for the diagonal A only: a random
    correlated A has l_i up to ~10, and 5% of Z = 4 draws then failed.)"""
    rng = np.random.default_rng(seed)
    n = 2000
    A = rng.standard_normal((Z, Z)) if correlated else np.diag(rng.uniform(0.5, 1.5, Z))
    mu = rng.standard_normal((n, Z)) @ A.T
    logvar = np.full((n, Z), math.log(s2))
    r = metrics.total_correlation(mu, logvar, rng)
    exact = metrics.gaussian_total_correlation(A @ A.T + s2 * np.eye(Z))
    bias = np.prod(np.sqrt((np.linalg.eigvalsh(A @ A.T) + s2) / s2)) / n
    assert abs(r["tc"] - exact) <= Z_TOL * r["se"] + 2 * bias
    assert abs(r["tc_loo"] - exact) <= Z_TOL * r["se_loo"] + 2 * bias
    assert r["n"] == n and r["marginals"].shape == (Z,)


def test_total_correlation_with_narrow_posteriors_is_bracketed_by_the_two_sums(rng):
    """Posteriors 100 times narrower than their spread in 3-D (independent): the true TC is 0.
    With N = 300 the self-term dominates: tc is far above 0 (the joint density is a spike at each
    draw) and the leave-one-out tc far below it; they straddle the truth."""
    mu = rng.standard_normal((300, 3))
    r = metrics.total_correlation(mu, np.full((300, 3), math.log(1e-4)), rng)
    assert r["tc"] > 1.0 and r["tc_loo"] < -1.0


def test_total_correlation_subsample_and_errors(rng):
    mu, lv = rng.standard_normal((500, 3)), np.zeros((500, 3))
    assert metrics.total_correlation(mu, lv, rng, n=100)["n"] == 100
    with pytest.raises(MinivaeError, match="one shape"):
        metrics.total_correlation(mu, lv[:, :2], rng)


def test_per_latent_kl_sums_to_the_rate(rng):
    mu, lv = rng.standard_normal((50, 4)), rng.standard_normal((50, 4))
    kl = metrics.per_latent_kl(mu, lv)
    assert kl.shape == (4,) and np.all(kl >= 0)
    assert abs(kl.sum() - dist.kl_standard_normal(mu, lv).mean()) <= 1e-13 * (1 + kl.sum())


# ----------------------------------------------------------------------------- the grid
def test_grid_factors_take_their_levels_and_the_default_is_unchanged():
    f = shapes.draw_factors(4000, np.random.default_rng(0), levels=shapes.DSPRITES_LEVELS)
    for name, count in shapes.DSPRITES_LEVELS.items():
        vals = np.unique(f[name])
        assert len(vals) == count and np.allclose(vals, shapes.level_values(name, count))
        lo, hi = shapes.RANGES[name]
        assert vals.min() >= lo and vals.max() <= hi
    a = shapes.draw_factors(50, np.random.default_rng(1))
    b = shapes.draw_factors(50, np.random.default_rng(1), levels=None)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    fixed = shapes.draw_with_fixed("scale", 30, np.random.default_rng(2))
    assert len(np.unique(fixed["scale"])) == 1 and len(np.unique(fixed["x"])) == 30
    with pytest.raises(MinivaeError, match="levels"):
        shapes.draw_factors(3, np.random.default_rng(0), levels={"colour": 3})
    with pytest.raises(MinivaeError, match="unknown factor"):
        shapes.draw_with_fixed("colour", 3, np.random.default_rng(0))


def test_encode_factors_is_the_model_on_the_rendered_shapes():
    from minivae.model import VAE
    model = VAE(1024, (8,), 3, seed=2)
    f = shapes.draw_factors(25, np.random.default_rng(4), levels=shapes.DSPRITES_LEVELS)
    mu, lv = metrics.encode_factors(model, f, batch=10)
    m2, l2 = model.encode(shapes.render(f).reshape(25, -1))
    assert mu.dtype == np.float64 and mu.shape == (25, 3)
    assert np.array_equal(mu, m2.astype(np.float64)) and np.array_equal(lv, l2.astype(np.float64))
    v, discrete = metrics.factor_matrix(f, shapes.DSPRITES_LEVELS)
    assert v.shape == (25, F) and discrete.all()
    assert metrics.factor_matrix(f)[1].tolist() == [True, False, False, False, False]
