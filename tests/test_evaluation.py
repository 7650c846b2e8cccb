"""The streamed importance-sampled log p(x) of a VAE, against exact answers.

A VAE with no hidden layers and a fixed-sigma Gaussian likelihood *is* the linear-Gaussian model
x = W z + b + sigma * noise (W = the decoder's weight, transposed), whose log p(x) is exact
(minivae.linear_gaussian).  Its encoder is a linear map, so it can be set to any q whose mean is
linear in x; with orthogonal decoder columns the exact posterior is diagonal, and the encoder can
be made to output it exactly.
"""
import math

import numpy as np
import pytest

from minivae.errors import MinivaeError
from minivae.evaluation import active_units, importance_log_likelihood
from minivae.linear_gaussian import Gaussian, LinearGaussian
from minivae.model import VAE

D, Z, SIGMA = 6, 2, 0.7


def _linear_vae(rng, orthogonal):
    model = VAE(D, (), Z, likelihood="gaussian", sigma=SIGMA, dtype="float64", seed=0)
    W = rng.standard_normal((D, Z))
    if orthogonal:
        W = np.linalg.qr(W)[0] * np.array([1.5, 0.8])        # orthogonal columns, unequal norms
    b = rng.standard_normal(D)
    model.params["dec.0.W"][...] = W.T
    model.params["dec.0.b"][...] = b
    return model, LinearGaussian(W, b, SIGMA)


def _set_encoder_to_posterior(model, lg):
    """mu(x) = S W^T (x - b) / sigma^2 and logvar = log diag S, S = (I + W^T W / sigma^2)^-1."""
    S = np.linalg.inv(np.eye(Z) + lg.W.T @ lg.W / SIGMA ** 2)
    assert np.allclose(S, np.diag(np.diag(S)))                # diagonal: orthogonal columns
    A = lg.W @ S / SIGMA ** 2                                 # (D, Z)
    model.params["enc.0.W"][...] = np.concatenate([A, np.zeros((D, Z))], axis=1)
    model.params["enc.0.b"][...] = np.concatenate([-lg.b @ A, np.log(np.diag(S))])


def test_exact_posterior_gives_the_exact_log_likelihood_for_any_k_and_chunking():
    rng = np.random.default_rng(0)
    model, lg = _linear_vae(rng, orthogonal=True)
    _set_encoder_to_posterior(model, lg)
    x = lg.sample(9, rng)
    exact = lg.log_marginal(x)
    scale = np.abs(exact).max()
    for k, rows in ((1, 10000), (7, 3), (50, 20), (5, 10000)):   # chunks over K and over examples
        est = importance_log_likelihood(model, x, k, np.random.default_rng(k), rows=rows)
        # every weight equals p(x): only float64 round-off separates the two (a few hundred ulps)
        np.testing.assert_allclose(est, exact, rtol=0, atol=1e3 * np.finfo(float).eps * scale)


def test_a_poor_encoder_converges_to_the_exact_log_likelihood_within_standard_errors():
    rng = np.random.default_rng(1)
    model, lg = _linear_vae(rng, orthogonal=True)
    x = lg.sample(5, rng)
    mu, logvar = model.encode(x)
    q = Gaussian.diagonal(np.asarray(mu), np.asarray(logvar))
    relvar = lg.weight_relative_variance(x, q)               # exact var(w) / p(x)^2, (B,)
    assert np.all(np.isfinite(relvar))
    K = 4000
    est = importance_log_likelihood(model, x, K, np.random.default_rng(2), rows=1000)
    exact = lg.log_marginal(x)
    # delta method: log of a mean of K weights has sd sqrt(relvar / K) and bias -relvar / (2K)
    sd = np.sqrt(relvar / K)
    assert np.all(np.abs(est - exact + relvar / (2 * K)) <= 5 * sd + 1e-12), (est, exact, sd)
    # and the estimate sits above the ELBO, the K = 1 bound
    assert np.all(est >= lg.elbo(x, q) - 5 * sd)


def test_k_must_be_a_positive_integer():
    model, _ = _linear_vae(np.random.default_rng(0), orthogonal=False)
    x = np.zeros((2, D))
    for bad in (0, -3, 2.5, True):
        with pytest.raises(MinivaeError, match="K"):
            importance_log_likelihood(model, x, bad, np.random.default_rng(0))
    with pytest.raises(MinivaeError, match="rows"):
        importance_log_likelihood(model, x, 3, np.random.default_rng(0), rows=0)


def test_active_units_counts_dimensions_whose_posterior_mean_varies():
    model, lg = _linear_vae(np.random.default_rng(3), orthogonal=True)
    _set_encoder_to_posterior(model, lg)
    model.params["enc.0.W"][:, 1] = 0.0          # the second mean no longer depends on x
    x = lg.sample(500, np.random.default_rng(4))
    count, variances = active_units(model, x)
    assert count == 1 and variances[1] < 1e-20 and variances[0] > 0.01   # a constant, to round-off
    assert math.isclose(variances[0], np.var(np.asarray(model.encode(x)[0])[:, 0]), rel_tol=1e-12)


@pytest.mark.parametrize("batch", [0, -1, 2.5, True, None])
def test_active_units_batch_must_be_a_positive_integer(batch):
    model, _ = _linear_vae(np.random.default_rng(0), orthogonal=False)
    with pytest.raises(MinivaeError) as e:
        active_units(model, np.zeros((4, D)), batch=batch)
    assert "batch" in str(e.value) and "\n" not in str(e.value)


def test_numpy_integer_rows_and_k_are_accepted():
    model, _ = _linear_vae(np.random.default_rng(0), orthogonal=False)
    x = np.random.default_rng(1).standard_normal((3, D))
    a = importance_log_likelihood(model, x, np.int64(4), np.random.default_rng(2), rows=np.int32(5))
    b = importance_log_likelihood(model, x, 4, np.random.default_rng(2), rows=5)
    np.testing.assert_array_equal(a, b)
    count, _ = active_units(model, x, batch=np.int64(2))
    assert count == active_units(model, x, batch=1000)[0]
    for bad in (np.int64(0), np.bool_(True), 2.0):
        with pytest.raises(MinivaeError, match="rows"):
            importance_log_likelihood(model, x, 3, np.random.default_rng(0), rows=bad)
