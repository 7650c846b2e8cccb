"""Objective pieces: the fused kernels (minivae.kernels, dispatched, and kernels.reference, the
specification) against the separate distribution functions and against central differences;
then the objectives' defining identities through the public VAE surface (batch mean, sample mean,
beta linear, IWAE's log K and its single-sample value).

All in float64.  "Round-off" tolerances are n * eps * (sum of the magnitudes of the terms).
"""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from minivae import distributions as dist
from minivae import kernels
from minivae.gradcheck import check_vjp
from minivae.kernels import reference
from minivae.model import VAE
from minivae.objectives import logmeanexp

EPS64 = np.finfo(np.float64).eps
dims = st.integers(1, 4)
seeds = st.integers(0, 2**32 - 1)
KERNEL_SETS = {"dispatched": kernels, "reference": reference}
ACTS = ["relu", "leaky_relu", "tanh", "sigmoid", "softplus", "elu"]


def assert_roundoff(actual, expected, magnitude, n=64):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    assert np.all(np.abs(actual - expected) <= n * EPS64 * np.asarray(magnitude) + 1e-300)


# ----------------------------------------------------------------------------- fused kernels
@pytest.mark.parametrize("impl", KERNEL_SETS)
@given(S=dims, B=dims, Z=dims, seed=seeds)
def test_reparam_kl_equals_the_pieces(impl, S, B, Z, seed):
    k = KERNEL_SETS[impl]
    rng = np.random.default_rng(seed)
    mu, logvar = rng.standard_normal((B, Z)), rng.standard_normal((B, Z))
    eps = rng.standard_normal((S, B, Z))
    z, std, kl = k.reparam_kl(mu, logvar, eps)
    z_ref, std_ref = dist.reparameterize(mu, logvar, eps)
    kl_ref = dist.kl_standard_normal(mu, logvar)
    assert_roundoff(std, std_ref, std_ref)
    assert_roundoff(z, z_ref, np.abs(mu) + np.abs(std_ref * eps))
    assert_roundoff(kl, kl_ref, np.sum(mu**2 + np.exp(logvar) + 1 + np.abs(logvar), axis=1))


@pytest.mark.parametrize("impl", KERNEL_SETS)
@given(S=st.integers(2, 4), B=dims, Z=dims, seed=seeds, kl_weight=st.floats(0, 3))
def test_reparam_kl_backward_with_several_samples(impl, S, B, Z, seed, kl_weight):
    """Gradient of F(mu, logvar) = sum(dz * z) + w * sum_b KL_b: against the separate pieces, and
    against central differences of F itself (dz, eps frozen)."""
    k = KERNEL_SETS[impl]
    rng = np.random.default_rng(seed)
    mu, logvar = rng.standard_normal((B, Z)), rng.standard_normal((B, Z))
    eps, dz = rng.standard_normal((S, B, Z)), rng.standard_normal((S, B, Z))
    _, std, _ = k.reparam_kl(mu, logvar, eps)
    dmu, dlogvar = k.reparam_kl_backward(dz, eps, std, mu, logvar, kl_weight)
    assert dmu.shape == (B, Z) and dlogvar.shape == (B, Z)

    dmu_s, dlogvar_s = dist.reparameterize_backward(dz, eps, std)
    dmu_kl, dlogvar_kl = dist.kl_standard_normal_backward(mu, logvar)
    mag_mu = np.abs(dz).sum(0) + kl_weight * np.abs(mu)
    mag_lv = np.abs(dlogvar_s).sum(0) + kl_weight * (np.exp(logvar) + 1)
    assert_roundoff(dmu, dmu_s.sum(0) + kl_weight * dmu_kl, mag_mu, n=8 * S)
    assert_roundoff(dlogvar, dlogvar_s.sum(0) + kl_weight * dlogvar_kl, mag_lv, n=8 * S)

    def F(mu, logvar):
        z, _, kl = k.reparam_kl(mu, logvar, eps)
        return np.array([np.sum(dz * z) + kl_weight * np.sum(kl)])

    check_vjp(F, lambda v: (v[0] * dmu, v[0] * dlogvar), (mu, logvar), rng)


@pytest.mark.parametrize("impl", KERNEL_SETS)
@given(S=dims, B=dims, D=dims, seed=seeds, scale=st.floats(0.01, 2.0))
def test_bernoulli_nll_grad_equals_the_pieces(impl, S, B, D, seed, scale):
    k = KERNEL_SETS[impl]
    rng = np.random.default_rng(seed)
    logits = 3 * rng.standard_normal((S, B, D))
    x = rng.uniform(0, 1, (B, D))
    nll, dl = k.bernoulli_nll_grad(logits, x, scale)
    mag = np.sum(np.abs(logits) + 1 + np.abs(x * logits), axis=-1)
    assert_roundoff(nll, dist.bernoulli_nll(logits, x), mag)
    assert_roundoff(dl, scale * dist.bernoulli_nll_grad(logits, x), scale * (1 + x))
    check_vjp(lambda l: np.array([scale * np.sum(dist.bernoulli_nll(l, x))]),
              lambda v: v[0] * dl, logits, rng)


@pytest.mark.parametrize("impl", KERNEL_SETS)
@given(S=dims, B=dims, D=dims, seed=seeds, scale=st.floats(0.01, 2.0), shared=st.booleans())
def test_gaussian_nll_grad_equals_the_pieces(impl, S, B, D, seed, scale, shared):
    k = KERNEL_SETS[impl]
    rng = np.random.default_rng(seed)
    mean, x = rng.standard_normal((S, B, D)), rng.standard_normal((B, D))
    log_sigma = np.asarray(rng.uniform(-1, 1, () if shared else (D,)))
    nll, dmean, dlogsig = k.gaussian_nll_grad(mean, x, log_sigma, scale)
    inv_var = np.exp(-2 * log_sigma)
    r2 = (x - mean) ** 2 * inv_var
    assert_roundoff(nll, dist.gaussian_nll(mean, x, log_sigma), np.sum(r2 + 1 + 2, axis=-1))
    ref_dmean, ref_dlogsig = dist.gaussian_nll_grad(mean, x, log_sigma)
    assert_roundoff(dmean, scale * ref_dmean, scale * np.abs(mean - x) * inv_var)
    assert_roundoff(dlogsig, scale * ref_dlogsig, scale * (1 + r2))

    def vjp(v):
        g = v[0] * dlogsig
        return v[0] * dmean, np.asarray(g.sum() if shared else g.sum(axis=(0, 1)))

    check_vjp(lambda m, ls: np.array([scale * np.sum(dist.gaussian_nll(m, x, ls))]),
              vjp, (mean, log_sigma), rng)


@pytest.mark.parametrize("impl", KERNEL_SETS)
@pytest.mark.parametrize("name", ACTS)
@given(B=dims, H=dims, seed=seeds)
def test_activation_kernels(impl, name, B, H, seed):
    """bias_act_forward(h, b) = f(h + b); act_backward(dy, y) = dy * f'(x) (central differences)."""
    k = KERNEL_SETS[impl]
    rng = np.random.default_rng(seed)
    h, b = rng.standard_normal((B, H)), rng.standard_normal(H)
    x = h + b
    y = reference.act_forward(name, x)                          # the specification
    assert_roundoff(k.bias_act_forward(name, h, b), y, np.abs(y) + np.abs(x), n=8)
    assert_roundoff(k.act_forward(name, x), y, np.abs(y), n=8)
    if name in ("relu", "leaky_relu", "elu"):
        x = np.where(np.abs(x) < 1e-4, 1e-4, x)                 # away from the kink
    check_vjp(lambda x: k.act_forward(name, x),
              lambda v: k.act_backward(name, v, k.act_forward(name, x)), x, rng)


# ----------------------------------------------------------------------------- logmeanexp
@given(n=st.integers(1, 6), m=dims, seed=seeds, shift=st.sampled_from([0.0, 800.0, -800.0]))
def test_logmeanexp(n, m, seed, shift):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, m))
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        out = logmeanexp(a + shift, axis=0)
    expected = np.log(np.mean(np.exp(a), axis=0)) + shift     # the naive formula, unshifted
    assert out.shape == (m,)
    assert np.all(np.abs(out - expected) <= 16 * EPS64 * (np.abs(shift) + np.max(np.abs(a)) + 1))


def test_logmeanexp_of_equal_values_is_that_value_and_handles_minus_infinity():
    np.testing.assert_allclose(logmeanexp(np.full((5, 2), 3.25)), [3.25, 3.25], rtol=4 * EPS64)
    a = np.array([[-np.inf, 0.0], [math.log(2.0), -np.inf]])
    np.testing.assert_allclose(logmeanexp(a), [0.0, -math.log(2.0)], atol=4 * EPS64)
    with np.errstate(divide="ignore"):                         # log(0) = -inf is the answer
        assert np.array_equal(logmeanexp(np.full((3, 1), -np.inf)), [-np.inf])


# ----------------------------------------------------------------------------- objective identities
LIKELIHOODS = [("bernoulli", "fixed"), ("gaussian", "fixed"), ("gaussian", "shared"),
               ("gaussian", "per-dim")]

def make_model(lik, learn, rng, objective="elbo", samples=1, beta=1.0, act="tanh", D=5, H=4, Z=2,
               seed=0):
    m = VAE(D, (H,), Z, activation=act, likelihood=lik, learn_sigma=learn, beta=beta,
            objective=objective, samples=samples, dtype="float64", seed=seed)
    if "dec.log_sigma" in m.params:
        m.params["dec.log_sigma"][...] = rng.uniform(-0.5, 0.5, m.params["dec.log_sigma"].shape)
    return m


def make_data(lik, rng, B, D=5):
    return rng.uniform(0, 1, (B, D)) if lik == "bernoulli" else rng.standard_normal((B, D))


def flat(model, grads):
    return np.concatenate([grads[k].ravel() for k in model.buffer.offsets])


def assert_grads_close(g1, g2, model):
    a, b = flat(model, g1), flat(model, g2)
    assert np.all(np.abs(a - b) <= 1e-10 * (1 + np.max(np.abs(b))))


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
@pytest.mark.parametrize("lik,learn", LIKELIHOODS)
@given(B=st.integers(2, 4), S=st.integers(1, 3), seed=seeds)
def test_loss_and_grads_average_over_the_batch(objective, lik, learn, B, S, seed):
    """Per-example terms are averaged over the batch: loss and gradient of a batch are the means
    of those of its single examples (same noise)."""
    rng = np.random.default_rng(seed)
    m = make_model(lik, learn, rng, objective, S, beta=0.7 if objective == "elbo" else 1.0)
    x, eps = make_data(lik, rng, B), rng.standard_normal((S, B, 2))
    loss, grads = m.loss_and_grads(x, eps=eps)
    parts = [m.loss_and_grads(x[i:i + 1], eps=eps[:, i:i + 1]) for i in range(B)]
    assert abs(loss - np.mean([p[0] for p in parts])) <= 1e-12 * (1 + abs(loss))
    mean_grads = {k: np.mean([p[1][k] for p in parts], axis=0) for k in grads}
    assert_grads_close(grads, mean_grads, m)


@pytest.mark.parametrize("lik,learn", LIKELIHOODS)
@given(B=dims, S=st.integers(2, 4), seed=seeds, beta=st.floats(0, 3))
def test_elbo_loss_and_grads_average_over_samples(lik, learn, B, S, seed, beta):
    """With S samples the ELBO's reconstruction term is their mean: the loss and gradient equal
    the means over single-sample runs."""
    rng = np.random.default_rng(seed)
    m = make_model(lik, learn, rng, "elbo", S, beta=beta)
    x, eps = make_data(lik, rng, B), rng.standard_normal((S, B, 2))
    loss, grads = m.loss_and_grads(x, eps=eps)
    parts = [m.loss_and_grads(x, eps=eps[s]) for s in range(S)]
    assert abs(loss - np.mean([p[0] for p in parts])) <= 1e-12 * (1 + abs(loss))
    assert_grads_close(grads, {k: np.mean([p[1][k] for p in parts], axis=0) for k in grads}, m)


@pytest.mark.parametrize("lik,learn", LIKELIHOODS)
@given(B=dims, S=st.integers(1, 3), seed=seeds, beta=st.floats(0, 4))
def test_elbo_is_linear_in_beta(lik, learn, B, S, seed, beta):
    """loss(beta) = rec + beta * KL, and so is its gradient: L(b) = L(0) + b (L(1) - L(0))."""
    rng = np.random.default_rng(seed)
    x, eps = make_data(lik, rng, B), rng.standard_normal((S, B, 2))
    runs = {}
    for b in (0.0, 1.0, beta):
        m = make_model(lik, learn, np.random.default_rng(seed), "elbo", S, beta=b, seed=seed)
        runs[b] = m.loss_and_grads(x, eps=eps)
    (l0, g0), (l1, g1), (lb, gb) = runs[0.0], runs[1.0], runs[beta]
    assert abs(lb - (l0 + beta * (l1 - l0))) <= 1e-12 * (1 + abs(l0) + beta * abs(l1))
    assert_grads_close(gb, {k: g0[k] + beta * (g1[k] - g0[k]) for k in g0}, m)
    # and the terms: rec is beta-free, KL is the closed form at the encoder's output
    t = m.elbo(x, eps=eps)
    mu, logvar = m.encode(x)
    np.testing.assert_allclose(t.kl, dist.kl_standard_normal(mu, logvar), rtol=1e-14)
    assert abs(l0 - np.mean(t.distortion)) <= 1e-12 * (1 + abs(l0))
    np.testing.assert_allclose(t.elbo, -(t.distortion + t.kl), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("lik,learn", LIKELIHOODS)
@given(B=dims, K=st.integers(2, 4), seed=seeds)
def test_iwae_with_k_copies_of_one_sample_equals_one_sample(lik, learn, B, K, seed):
    """log mean_k exp(log w) of K equal weights is log w: the bound subtracts log K exactly, and
    the normalised weights (1/K each) give the single-sample gradient."""
    rng = np.random.default_rng(seed)
    m1 = make_model(lik, learn, np.random.default_rng(seed), "iwae", 1, seed=seed)
    mk = make_model(lik, learn, np.random.default_rng(seed), "iwae", K, seed=seed)
    x, e = make_data(lik, rng, B), rng.standard_normal((1, B, 2))
    l1, g1 = m1.loss_and_grads(x, eps=e)
    lk, gk = mk.loss_and_grads(x, eps=np.repeat(e, K, axis=0))
    assert abs(lk - l1) <= 1e-12 * (1 + abs(l1))
    assert abs(mk.loss(x, eps=np.repeat(e, K, axis=0)) - l1) <= 1e-12 * (1 + abs(l1))
    assert_grads_close(gk, g1, m1)


@pytest.mark.parametrize("lik,learn", LIKELIHOODS)
@given(B=dims, seed=seeds)
def test_iwae_single_sample_is_the_elbo_with_a_monte_carlo_kl(lik, learn, B, seed):
    """K = 1: -log w = nll + log q(z) - log p(z), i.e. the ELBO loss with the closed-form KL
    replaced by its one-sample estimate (computed here from encode's mu, logvar)."""
    rng = np.random.default_rng(seed)
    m = make_model(lik, learn, np.random.default_rng(seed), "iwae", 1, seed=seed)
    x, eps = make_data(lik, rng, B), rng.standard_normal((1, B, 2))
    mu, logvar = m.encode(x)
    z = mu + np.sqrt(np.exp(logvar)) * eps[0]
    mc_kl = np.sum(-0.5 * eps[0] ** 2 - 0.5 * logvar + 0.5 * z**2, axis=1)  # log q - log p
    t = m.elbo(x, eps=eps)
    expected = np.mean(t.distortion + mc_kl)
    loss, _ = m.loss_and_grads(x, eps=eps)
    assert abs(loss - expected) <= 1e-11 * (1 + abs(expected))
    assert abs(m.loss(x, eps=eps) - expected) <= 1e-11 * (1 + abs(expected))


@pytest.mark.parametrize("lik,learn", LIKELIHOODS)
@given(B=dims, K=st.integers(2, 4), seed=seeds)
def test_iwae_bound_is_at_least_the_mean_of_its_single_sample_bounds(lik, learn, B, K, seed):
    """Jensen, sample by sample: log mean_k w_k >= mean_k log w_k, so the K-sample IWAE loss is at
    most the mean of the K one-sample losses on the same noise."""
    rng = np.random.default_rng(seed)
    mk = make_model(lik, learn, np.random.default_rng(seed), "iwae", K, seed=seed)
    m1 = make_model(lik, learn, np.random.default_rng(seed), "iwae", 1, seed=seed)
    x, eps = make_data(lik, rng, B), rng.standard_normal((K, B, 2))
    lk = mk.loss(x, eps=eps)
    singles = np.mean([m1.loss(x, eps=eps[k:k + 1]) for k in range(K)])
    assert lk <= singles + 1e-12 * (1 + abs(singles))
