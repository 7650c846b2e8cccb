"""Distributions: values against independent formulas, derivatives against central differences
(float64, minivae.gradcheck.check_vjp), and the two statistical facts no gradient check can see:
the closed-form KL equals E_q[log q - log p], and the sampler's variance is exp(logvar).
"""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from minivae import distributions as dist
from minivae import kernels
from minivae.gradcheck import check_vjp, vjp_error

EPS64 = np.finfo(np.float64).eps
LOG_2PI = math.log(2 * math.pi)

dims = st.integers(1, 5)
seeds = st.integers(0, 2**32 - 1)


def gaussian_inputs(rng, shape, lv_scale=1.0):
    return rng.standard_normal(shape), lv_scale * rng.standard_normal(shape)


# ----------------------------------------------------------------------------- reparameterisation
@given(S=dims, B=dims, Z=dims, seed=seeds)
def test_reparameterize_value(S, B, Z, seed):
    rng = np.random.default_rng(seed)
    mu, logvar = gaussian_inputs(rng, (B, Z))
    eps = rng.standard_normal((S, B, Z))
    z, std = dist.reparameterize(mu, logvar, eps)
    true_std = np.sqrt(np.exp(logvar))                        # independent of exp(logvar / 2)
    assert z.shape == (S, B, Z)
    np.testing.assert_allclose(std, true_std, rtol=8 * EPS64)
    np.testing.assert_allclose(z, mu + true_std * eps, rtol=0,
                               atol=8 * EPS64 * (np.abs(mu) + np.abs(true_std * eps)).max())


@given(S=dims, B=dims, Z=dims, seed=seeds)
def test_reparameterize_backward(S, B, Z, seed):
    """z(mu, logvar) with eps frozen; the sample axis S broadcasts, so the VJP sums over it."""
    rng = np.random.default_rng(seed)
    mu, logvar = gaussian_inputs(rng, (B, Z))
    eps = rng.standard_normal((S, B, Z))
    _, std = dist.reparameterize(mu, logvar, eps)

    def f(mu, logvar):
        return dist.reparameterize(mu, logvar, eps)[0]

    def vjp(dz):
        dmu, dlogvar = dist.reparameterize_backward(dz, eps, std)
        return dmu.sum(axis=0), dlogvar.sum(axis=0)

    check_vjp(f, vjp, (mu, logvar), rng)


# ----------------------------------------------------------------------------- KL to N(0, I)
@given(B=dims, Z=dims, seed=seeds)
def test_kl_value(B, Z, seed):
    rng = np.random.default_rng(seed)
    mu, logvar = gaussian_inputs(rng, (B, Z), 2.0)
    var = np.exp(logvar)
    expected = np.sum(0.5 * mu**2 + 0.5 * var - 0.5 - 0.5 * logvar, axis=1)
    kl = dist.kl_standard_normal(mu, logvar)
    assert kl.shape == (B,)
    # a sum of 4Z rounded terms: |error| <= 16 Z eps * sum of their magnitudes
    assert np.all(np.abs(kl - expected)
                  <= 16 * Z * EPS64 * np.sum(mu**2 + var + 1 + np.abs(logvar), 1))
    assert np.all(kl >= -8 * Z * EPS64)                              # KL >= 0


def test_kl_is_zero_at_the_prior():
    assert np.array_equal(dist.kl_standard_normal(np.zeros((2, 3)), np.zeros((2, 3))), np.zeros(2))


@given(B=dims, Z=dims, seed=seeds)
def test_kl_backward(B, Z, seed):
    rng = np.random.default_rng(seed)
    mu, logvar = gaussian_inputs(rng, (B, Z), 2.0)

    def vjp(v):
        dmu, dlogvar = dist.kl_standard_normal_backward(mu, logvar)
        return v[:, None] * dmu, v[:, None] * dlogvar

    check_vjp(dist.kl_standard_normal, vjp, (mu, logvar), rng)


def _mc_kl(mu, logvar, eps):
    """log q(z) - log p(z) at z = mu + sigma eps, with independent density formulas: (N, B)."""
    var = np.exp(logvar)
    z = mu + np.sqrt(var) * eps
    log_q = -0.5 * np.sum((z - mu) ** 2 / var + logvar + LOG_2PI, axis=-1)
    log_p = -0.5 * np.sum(z**2 + LOG_2PI, axis=-1)
    return log_q - log_p


def _within(estimates, value, n_sigma=5.0):
    """Is value within n_sigma standard errors of the mean of estimates (axis 0)?"""
    se = estimates.std(axis=0, ddof=1) / math.sqrt(estimates.shape[0])
    return np.abs(estimates.mean(axis=0) - value) <= n_sigma * se + 1e-12


@given(B=st.integers(1, 3), Z=st.integers(1, 4), seed=seeds)
def test_kl_closed_form_equals_monte_carlo(B, Z, seed):
    rng = np.random.default_rng(seed)
    mu = rng.uniform(-2, 2, (B, Z))
    logvar = rng.uniform(-2, 2, (B, Z))
    samples = _mc_kl(mu, logvar, rng.standard_normal((4000, B, Z)))
    assert np.all(_within(samples, dist.kl_standard_normal(mu, logvar)))


def test_kl_monte_carlo_check_rejects_variance_written_as_std(rng):
    """The check above has power: a KL that uses exp(logvar/2) for the variance is rejected."""
    mu = np.array([[0.5, -1.0, 0.0]])
    logvar = np.array([[1.5, -1.5, 1.0]])
    samples = _mc_kl(mu, logvar, rng.standard_normal((4000, 1, 3)))
    wrong = 0.5 * np.sum(mu**2 + np.exp(logvar / 2) - 1 - logvar, axis=-1)
    assert np.all(_within(samples, dist.kl_standard_normal(mu, logvar)))
    assert not np.any(_within(samples, wrong))


# ----------------------------------------------------------------------------- the sampler
N_SAMPLES = 4000


def _moments_consistent(z, mean, var, n_sigma=5.0):
    """Per element: sample mean within n_sigma SE of mean, sample variance within n_sigma SE of var.

    z: (N, ...) draws.  SE of the mean sqrt(var/N); SE of the (ddof=1) variance of a normal
    sample var * sqrt(2/(N-1)).
    """
    n = z.shape[0]
    mean_ok = np.abs(z.mean(axis=0) - mean) <= n_sigma * np.sqrt(var / n)
    var_ok = np.abs(z.var(axis=0, ddof=1) - var) <= n_sigma * var * math.sqrt(2.0 / (n - 1))
    return mean_ok, var_ok


def _spread_logvar(rng, shape):
    """|logvar| in [0.5, 2]: exp(logvar) and exp(2 logvar) differ by a factor >= 1.65, far beyond
    5 standard errors (11% at N = 4000), so a sampler with std = exp(logvar) must be rejected."""
    return rng.choice([-1.0, 1.0], shape) * rng.uniform(0.5, 2.0, shape)


SAMPLERS = {
    "distributions.reparameterize": lambda mu, lv, eps: dist.reparameterize(mu, lv, eps)[0],
    "kernels.reparam_kl": lambda mu, lv, eps: kernels.reparam_kl(mu, lv, eps)[0],
    "kernels.reference.reparam_kl":
        lambda mu, lv, eps: kernels.reference.reparam_kl(mu, lv, eps)[0],
}


@pytest.mark.parametrize("sampler", SAMPLERS)
@given(B=st.integers(1, 3), Z=st.integers(1, 3), seed=seeds)
def test_sampler_mean_and_variance_are_mu_and_exp_logvar(sampler, B, Z, seed):
    rng = np.random.default_rng(seed)
    mu = rng.uniform(-3, 3, (B, Z))
    logvar = _spread_logvar(rng, (B, Z))
    z = SAMPLERS[sampler](mu, logvar, rng.standard_normal((N_SAMPLES, B, Z)))
    assert z.shape == (N_SAMPLES, B, Z)
    mean_ok, var_ok = _moments_consistent(z, mu, np.exp(logvar))
    assert np.all(mean_ok) and np.all(var_ok)
    # the same samples reject the variance of the classic bug, std = exp(logvar)
    _, wrong_var_ok = _moments_consistent(z, mu, np.exp(2 * logvar))
    assert not np.any(wrong_var_ok)


@given(B=st.integers(1, 3), Z=st.integers(1, 3), seed=seeds)
def test_sampler_check_rejects_std_equal_to_exp_logvar(B, Z, seed):
    """The statistical test itself, fed a sampler with the classic bug, goes red."""
    rng = np.random.default_rng(seed)
    mu = rng.uniform(-3, 3, (B, Z))
    logvar = _spread_logvar(rng, (B, Z))
    z_wrong = mu + np.exp(logvar) * rng.standard_normal((N_SAMPLES, B, Z))
    mean_ok, var_ok = _moments_consistent(z_wrong, mu, np.exp(logvar))
    assert not np.any(var_ok)


# ----------------------------------------------------------------------------- log-densities
@given(B=dims, Z=dims, seed=seeds)
def test_gaussian_log_prob_values(B, Z, seed):
    rng = np.random.default_rng(seed)
    mu, logvar = gaussian_inputs(rng, (B, Z))
    z = rng.standard_normal((B, Z))
    var = np.exp(logvar)
    expected = np.sum(-0.5 * (z - mu) ** 2 / var - 0.5 * logvar - 0.5 * LOG_2PI, axis=1)
    scale = np.sum((z - mu) ** 2 / var + np.abs(logvar) + LOG_2PI, axis=1)
    np.testing.assert_allclose(dist.gaussian_log_prob(z, mu, logvar), expected, rtol=0,
                               atol=np.max(16 * Z * EPS64 * scale))
    np.testing.assert_allclose(dist.standard_normal_log_prob(z),
                               np.sum(-0.5 * z**2 - 0.5 * LOG_2PI, axis=1), rtol=16 * Z * EPS64)


# ----------------------------------------------------------------------------- Bernoulli
def _bernoulli_inputs(rng, S, B, D, scale=3.0):
    logits = scale * rng.standard_normal((S, B, D))
    x = rng.uniform(0, 1, (B, D))
    x[rng.random((B, D)) < 0.3] = 0.0           # some exact binary targets too
    x[rng.random((B, D)) < 0.3] = 1.0
    return logits, x


@given(S=dims, B=dims, D=dims, seed=seeds)
def test_bernoulli_nll_value(S, B, D, seed):
    rng = np.random.default_rng(seed)
    logits, x = _bernoulli_inputs(rng, S, B, D)
    p = 1 / (1 + np.exp(-logits))
    expected = -np.sum(x * np.log(p) + (1 - x) * np.log1p(-p), axis=-1)
    nll = dist.bernoulli_nll(logits, x)
    assert nll.shape == (S, B)
    # log(p) from a rounded p: relative error ~ eps / (1 - p) at worst, |logits| <= ~15 here
    np.testing.assert_allclose(nll, expected, rtol=1e-9, atol=1e-9)


@given(S=dims, B=dims, D=dims, seed=seeds, scale=st.sampled_from([0.1, 3.0, 30.0]))
def test_bernoulli_nll_grad(S, B, D, seed, scale):
    """check_vjp's round-off allowance scales with |nll|; at x = 1, l >> 0 the nll is the small
    difference softplus(l) - l of two ~|l| terms, each rounded to ~eps |l|, so the allowance here
    adds the same 64 eps / h factor applied to those intermediate magnitudes."""
    rng = np.random.default_rng(seed)
    logits, x = _bernoulli_inputs(rng, S, B, D, scale)
    seen = {}

    def vjp(v):
        seen["v"] = v
        return v[..., None] * dist.bernoulli_nll_grad(logits, x)

    h = 1e-6
    analytic, numeric, tol = vjp_error(lambda l: dist.bernoulli_nll(l, x), vjp, logits, rng, h)
    terms = np.abs(seen["v"][..., None]) * (np.abs(logits) + math.log(2) + np.abs(x * logits))
    assert abs(analytic - numeric) <= tol + 64 * EPS64 * np.sum(terms) / h


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bernoulli_at_huge_logits_is_finite_and_exact(dtype):
    """softplus(l) - x l never forms exp(|l|): at l = +-1e4 no overflow, no NaN, no warning."""
    logits = np.array([[[-1e4, -1e4, 1e4, 1e4, 0.0]]], dtype=dtype)
    x = np.array([[0.0, 1.0, 0.0, 1.0, 0.5]], dtype=dtype)
    # underflow of exp(-1e4) to 0 is the correct answer, so only it is allowed
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        nll = dist.bernoulli_nll(logits, x)
        grad = dist.bernoulli_nll_grad(logits, x)
        nll_k, grad_k = kernels.bernoulli_nll_grad(logits, x, 1.0)
    expected = 0.0 + 1e4 + 1e4 + 0.0 + math.log(2.0)      # per element: 0, 1e4, 1e4, 0, log 2
    assert nll.dtype == dtype and grad.dtype == dtype
    np.testing.assert_allclose(nll, [[expected]], rtol=4 * np.finfo(dtype).eps)
    np.testing.assert_array_equal(grad, [[[0.0, -1.0, 1.0, 0.0, 0.0]]])
    np.testing.assert_array_equal(grad_k, grad)
    np.testing.assert_array_equal(nll_k, nll)


# ----------------------------------------------------------------------------- Gaussian p(x|z)
log_sigma_shapes = st.sampled_from(["scalar", "per-dim"])


def _gaussian_inputs(rng, S, B, D, ls_shape):
    mean = rng.standard_normal((S, B, D))
    x = rng.standard_normal((B, D))
    log_sigma = rng.uniform(-1, 1, () if ls_shape == "scalar" else (D,))
    return mean, x, np.asarray(log_sigma, dtype=np.float64)


@given(S=dims, B=dims, D=dims, seed=seeds, ls_shape=log_sigma_shapes)
def test_gaussian_nll_value(S, B, D, seed, ls_shape):
    rng = np.random.default_rng(seed)
    mean, x, log_sigma = _gaussian_inputs(rng, S, B, D, ls_shape)
    sigma = np.broadcast_to(np.exp(log_sigma), (D,))
    expected = np.sum((x - mean) ** 2 / (2 * sigma**2) + np.log(sigma) + 0.5 * LOG_2PI, axis=-1)
    nll = dist.gaussian_nll(mean, x, log_sigma)
    assert nll.shape == (S, B)
    np.testing.assert_allclose(nll, expected, rtol=1e-12, atol=1e-12 * D)


@given(S=dims, B=dims, D=dims, seed=seeds, ls_shape=log_sigma_shapes)
def test_gaussian_nll_grads_mean_and_log_sigma(S, B, D, seed, ls_shape):
    rng = np.random.default_rng(seed)
    mean, x, log_sigma = _gaussian_inputs(rng, S, B, D, ls_shape)

    def vjp(v):
        dmean, dlogsig = dist.gaussian_nll_grad(mean, x, log_sigma)
        dlogsig = v[..., None] * dlogsig                          # (S, B, D) per element
        # log sigma broadcasts over S, B (and D when shared): its gradient sums over them
        dlogsig = dlogsig.sum() if log_sigma.ndim == 0 else dlogsig.sum(axis=(0, 1))
        return v[..., None] * dmean, np.asarray(dlogsig)

    check_vjp(lambda m, ls: dist.gaussian_nll(m, x, ls), vjp, (mean, log_sigma), rng)


# ----------------------------------------------------------------------------- stability, dtype
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softplus_and_sigmoid_are_stable_and_exact_at_extremes(dtype):
    x = np.array([-1e4, -50.0, 0.0, 50.0, 1e4], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        sp, sg = dist.softplus(x), dist.sigmoid(x)
    assert sp.dtype == dtype and sg.dtype == dtype
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(sp, np.logaddexp(0, x64), rtol=2 * np.finfo(dtype).eps,
                               atol=np.finfo(dtype).tiny)
    np.testing.assert_allclose(sg, np.exp(-np.logaddexp(0, -x64)), rtol=4 * np.finfo(dtype).eps,
                               atol=np.finfo(dtype).tiny)


def test_every_distribution_function_preserves_float32(rng):
    f32 = np.float32
    mu, logvar = (a.astype(f32) for a in gaussian_inputs(rng, (3, 2)))
    eps = rng.standard_normal((4, 3, 2)).astype(f32)
    z, std = dist.reparameterize(mu, logvar, eps)
    outs = [z, std, *dist.reparameterize_backward(z, eps, std),
            dist.kl_standard_normal(mu, logvar), *dist.kl_standard_normal_backward(mu, logvar),
            dist.gaussian_log_prob(z, mu, logvar), dist.standard_normal_log_prob(z)]
    logits = rng.standard_normal((4, 3, 5)).astype(f32)
    x = rng.uniform(0, 1, (3, 5)).astype(f32)
    outs += [dist.bernoulli_nll(logits, x), dist.bernoulli_nll_grad(logits, x),
             dist.softplus(logits), dist.sigmoid(logits)]
    for log_sigma in (f32(0.3), rng.uniform(-1, 1, 5).astype(f32)):
        outs += [dist.gaussian_nll(logits, x, log_sigma),
                 *dist.gaussian_nll_grad(logits, x, log_sigma)]
    for i, a in enumerate(outs):
        assert a.dtype == f32, f"output {i} is {a.dtype}"
