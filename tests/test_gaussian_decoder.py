"""The Gaussian decoders: Kingma & Welling's per-example mean and log-variance (with its floor on
sigma), and the sigmoid mean of every Gaussian head.  Derivatives against central differences
(float64 vector-Jacobian checks), values against independent formulas, samples against their
variance, the whole model's gradient, checkpoints and dtype."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minivae import distributions as dist
from minivae.errors import MinivaeError
from minivae.gradcheck import check_gradient, check_vjp
from minivae.decoders import SIGMA_MIN, Gaussian, GaussianPerExample, make_likelihood
from minivae.model import VAE

LOG_2PI = math.log(2 * math.pi)
dims = st.integers(1, 4)
seeds = st.integers(0, 2**32 - 1)
floors = st.sampled_from([0.0, 1 / 256, 0.3])
means = st.sampled_from(["identity", "sigmoid"])


def _sigmoid(a):
    return np.exp(-np.logaddexp(0.0, -a))


# ----------------------------------------------------------------------------- the pieces
@given(S=dims, B=dims, D=dims, seed=seeds)
def test_logvar_nll_value_is_the_gaussian_density(S, B, D, seed):
    rng = np.random.default_rng(seed)
    m, v, x = rng.standard_normal((S, B, D)), rng.uniform(-3, 3, (S, B, D)), rng.standard_normal((B, D))
    var = np.exp(v)
    expected = -np.sum(np.log(np.exp(-(x - m) ** 2 / (2 * var)) / np.sqrt(2 * np.pi * var)), -1)
    np.testing.assert_allclose(dist.gaussian_logvar_nll(m, v, x), expected, rtol=1e-12,
                               atol=1e-12 * D)


@given(S=dims, B=dims, D=dims, seed=seeds)
def test_logvar_nll_grad(S, B, D, seed):
    rng = np.random.default_rng(seed)
    m, v, x = rng.standard_normal((S, B, D)), rng.uniform(-3, 3, (S, B, D)), rng.standard_normal((B, D))

    def vjp(w):
        dm, dv = dist.gaussian_logvar_nll_grad(m, v, x)
        return w[..., None] * dm, w[..., None] * dv

    check_vjp(lambda m_, v_: dist.gaussian_logvar_nll(m_, v_, x), vjp, (m, v), rng)


@given(n=st.integers(1, 20), sigma_min=floors, seed=seeds)
def test_floored_logvar_value_and_grad(n, sigma_min, seed):
    rng = np.random.default_rng(seed)
    r = rng.uniform(-12, 6, n)
    c = 2 * math.log(sigma_min) if sigma_min > 0 else -math.inf
    v = dist.floored_logvar(r, c)
    np.testing.assert_allclose(np.exp(v), np.exp(r) + sigma_min ** 2, rtol=1e-12)
    assert np.all(v >= c) and np.all(v >= r)
    check_vjp(lambda r_: dist.floored_logvar(r_, c),
              lambda w: w * dist.floored_logvar_grad(r, v), r, rng)


def test_floored_logvar_at_extremes_is_finite_and_exact():
    r = np.array([-1e4, -100.0, 0.0, 100.0, 1e4], np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        v = dist.floored_logvar(r, 2 * math.log(1 / 256))
        g = dist.floored_logvar_grad(r, v)
    assert v.dtype == np.float32 and g.dtype == np.float32
    np.testing.assert_allclose(v[:2], 2 * math.log(1 / 256), rtol=1e-6)     # the floor
    np.testing.assert_array_equal(v[3:], r[3:])                            # far above: r
    np.testing.assert_allclose(g, [0, 0, 1 / (1 + 256.0 ** -2), 1, 1], rtol=1e-6, atol=1e-30)


# ----------------------------------------------------------------------------- the heads
def _weights(rng, scale_kind, S, B):
    return 0.37 if scale_kind == "number" else rng.uniform(0, 1, (S, B, 1))


@given(S=dims, B=dims, D=dims, seed=seeds, mean=means, sigma_min=floors,
       scale_kind=st.sampled_from(["number", "weights"]))
def test_per_example_head_backward(S, B, D, seed, mean, sigma_min, scale_kind):
    """d(sum scale * nll)/d out for out = [a | r], the ELBO's scalar scale and the IWAE's
    per-example weights, with and without the floor and the sigmoid."""
    rng = np.random.default_rng(seed)
    lik = GaussianPerExample(sigma=1.0, mean=mean, sigma_min=sigma_min)
    assert lik.out_features(D) == 2 * D
    out = np.concatenate([rng.standard_normal((S, B, D)), rng.uniform(-4, 2, (S, B, D))], -1)
    x = rng.uniform(0, 1, (B, D))
    scale = _weights(rng, scale_kind, S, B)
    w = scale if scale_kind == "number" else scale[..., 0]
    nll, dout, db_done = lik.nll_and_grad(out, x, scale)
    assert dout.shape == out.shape and not db_done
    np.testing.assert_allclose(nll, lik.nll(out, x), rtol=1e-14)
    check_vjp(lambda o: lik.nll(o, x) * w, lambda v: v[..., None] * dout, out, rng)
    # the value, from the documented formulas
    a, r = out[..., :D], out[..., D:]
    m = _sigmoid(a) if mean == "sigmoid" else a
    var = np.exp(r) + sigma_min ** 2
    expected = np.sum(0.5 * (x - m) ** 2 / var + 0.5 * np.log(var) + 0.5 * LOG_2PI, -1)
    np.testing.assert_allclose(nll, expected, rtol=1e-12)
    np.testing.assert_allclose(lik.mean(out), m, rtol=1e-15)
    np.testing.assert_allclose(lik.sigma_of(out), np.sqrt(var), rtol=1e-12)


@pytest.mark.parametrize("learn", ["fixed", "shared", "per-dim"])
@given(S=dims, B=dims, D=dims, seed=seeds, scale_kind=st.sampled_from(["number", "weights"]))
@settings(max_examples=20)
def test_sigmoid_mean_of_the_homoscedastic_heads(learn, S, B, D, seed, scale_kind):
    from minivae.params import ParamBuffer
    rng = np.random.default_rng(seed)
    lik = Gaussian(sigma=0.7, learn=learn, mean="sigmoid")
    buf = ParamBuffer(lik.param_shapes(D), dtype=np.float64)
    lik.bind(buf)
    if learn != "fixed":
        lik.log_sigma[...] = rng.uniform(-1, 1, lik.log_sigma.shape)
    out, x = rng.standard_normal((S, B, D)) * 2, rng.uniform(0, 1, (B, D))
    scale = _weights(rng, scale_kind, S, B)
    w = scale if scale_kind == "number" else scale[..., 0]
    _, dout, _ = lik.nll_and_grad(out, x, scale)
    check_vjp(lambda o: lik.nll(o, x) * w, lambda v: v[..., None] * dout, out, rng)
    np.testing.assert_allclose(lik.mean(out), _sigmoid(out), rtol=1e-15)


def test_samples_have_the_predicted_mean_and_variance(rng):
    """Draws of sample(): mean m and variance exp(v), within 5 standard errors (n = 200,000)."""
    lik = GaussianPerExample(sigma=1.0, mean="sigmoid", sigma_min=0.05)
    out = np.array([[0.3, -2.0, 1.0, -1.0, -9.0, 0.5]])        # a = 0.3, -2, 1; r = -1, -9, 0.5
    n = 200_000
    draws = lik.sample(np.broadcast_to(out, (n, 6)).copy(), rng)
    m, sd = lik.mean(out)[0], lik.sigma_of(out)[0]
    np.testing.assert_array_less(np.abs(draws.mean(0) - m), 5 * sd / math.sqrt(n))
    # the sample variance's standard error is var * sqrt(2 / (n - 1)) for Gaussian draws
    np.testing.assert_array_less(np.abs(draws.var(0, ddof=1) - sd ** 2),
                                 5 * sd ** 2 * math.sqrt(2 / (n - 1)))
    np.testing.assert_allclose(sd[1], math.sqrt(math.exp(-9.0) + 0.05 ** 2))   # near the floor


def test_the_floor_bounds_the_density():
    """However small the decoder makes r, sigma stays >= sigma_min and -log p per pixel stays
    >= log sigma_min + log(2 pi) / 2 (without the floor it falls without bound)."""
    D = 3
    out = np.concatenate([np.full((1, 1, D), 0.25), np.full((1, 1, D), -500.0)], -1)
    x = np.full((1, D), 0.25)                                  # reconstructed exactly
    floored = GaussianPerExample(sigma_min=SIGMA_MIN).nll(out, x)[0, 0]
    assert floored == pytest.approx(D * (math.log(SIGMA_MIN) + 0.5 * LOG_2PI), rel=1e-12)
    # the 8-bit log-likelihood of a pixel, log p + log(1/256), stays below 0
    assert -floored / D - math.log(256) < 0
    bare = GaussianPerExample(sigma_min=0.0).nll(out, x)[0, 0]
    assert bare < -700


@pytest.mark.parametrize("kw, needle", [
    (dict(sigma_min=-0.1), "sigma_min"), (dict(sigma_min=float("nan")), "sigma_min"),
    (dict(sigma=0.001, sigma_min=0.01), "sigma_min"), (dict(mean="tanh"), "mean"),
])
def test_bad_head_options(kw, needle):
    with pytest.raises(MinivaeError, match=needle):
        make_likelihood("gaussian", **{"learn_sigma": "per-example", **kw})


# ----------------------------------------------------------------------------- in the model
def _model(objective, mean, sigma_min, seed, D=4, dtype="float64"):
    return VAE(D, (3,), 2, activation="tanh", likelihood="gaussian", learn_sigma="per-example",
               gaussian_mean=mean, sigma_min=sigma_min, objective=objective,
               samples=3 if objective == "iwae" else 2, dtype=dtype, seed=seed)


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
@given(seed=seeds, mean=means, sigma_min=floors, B=dims)
@settings(max_examples=15)
def test_model_gradient_matches_central_differences(objective, seed, mean, sigma_min, B):
    rng = np.random.default_rng(seed)
    model = _model(objective, mean, sigma_min, seed)
    assert model.params["dec.1.W"].shape == (3, 8) and "dec.log_sigma" not in model.params
    model.buffer.data[...] += 0.3 * rng.standard_normal(model.buffer.size)
    x = rng.uniform(0, 1, (B, 4))
    eps = rng.standard_normal((model.samples, B, 2))
    theta0 = model.buffer.data.copy()
    loss, _ = model.loss_and_grads(x, eps=eps)
    g = model.buffer.grad.copy()
    assert abs(model.loss(x, eps=eps) - loss) <= 1e-12 * (1 + abs(loss))

    def loss_at(theta):
        model.buffer.data[...] = theta
        return model.loss(x, eps=eps)

    try:
        check_gradient(loss_at, g, theta0, rng)
    finally:
        model.buffer.data[...] = theta0


def test_model_forward_by_hand_and_initial_sigma(rng):
    model = _model("elbo", "sigmoid", 0.01, seed=3)
    b = model.params["dec.1.b"]
    np.testing.assert_allclose(b[4:], math.log(1.0 - 0.01 ** 2))   # sigma starts at --sigma
    p = model.params
    x, eps = rng.uniform(0, 1, (2, 4)), rng.standard_normal((1, 2, 2))
    head = np.tanh(x @ p["enc.0.W"] + p["enc.0.b"]) @ p["enc.1.W"] + p["enc.1.b"]
    mu, logvar = head[:, :2], head[:, 2:]
    z = mu + np.exp(logvar / 2) * eps[0]
    out = np.tanh(z @ p["dec.0.W"] + p["dec.0.b"]) @ p["dec.1.W"] + p["dec.1.b"]
    m, var = _sigmoid(out[:, :4]), np.exp(out[:, 4:]) + 0.01 ** 2
    nll = np.sum(0.5 * (x - m) ** 2 / var + 0.5 * np.log(var) + 0.5 * LOG_2PI, -1)
    kl = 0.5 * np.sum(mu ** 2 + np.exp(logvar) - 1 - logvar, -1)
    t = model.elbo(x, eps=eps)
    np.testing.assert_allclose(t.distortion, nll, rtol=1e-12)
    np.testing.assert_allclose(t.kl, kl, rtol=1e-12)
    np.testing.assert_allclose(model.reconstruct(x), _sigmoid(
        (np.tanh(mu @ p["dec.0.W"] + p["dec.0.b"]) @ p["dec.1.W"] + p["dec.1.b"])[:, :4]),
        rtol=1e-12)
    s = model.sample(5, rng)
    assert s.shape == (5, 4) and np.all((s > 0) & (s < 1))


def test_float32_in_float32_out(rng):
    model = _model("elbo", "sigmoid", SIGMA_MIN, seed=0, dtype="float32")
    x = rng.uniform(0, 1, (3, 4)).astype(np.float32)
    loss, grads = model.loss_and_grads(x, rng=rng)
    assert math.isfinite(loss) and all(g.dtype == np.float32 for g in grads.values())
    assert model.decode(np.zeros((2, 2), np.float32)).dtype == np.float32
    assert model.elbo(x, rng=rng).distortion.dtype == np.float32


def test_checkpoint_round_trip_keeps_the_head(tmp_path, rng):
    from minivae.data import Dataset
    from minivae.train import TrainConfig, Trainer
    from minivae.rundir import load_run
    x = rng.uniform(0, 1, (40, 4)).astype(np.float32)
    data = Dataset("toy", x, None, x[:10], image_shape=(2, 2), binarize="none")
    model = _model("elbo", "sigmoid", 0.02, seed=1, dtype="float32")
    Trainer(model, data, TrainConfig(epochs=1, batch_size=20), str(tmp_path), log=lambda m: None).fit()
    loaded, meta, _, _ = load_run(str(tmp_path))
    assert meta["model"]["gaussian_mean"] == "sigmoid" and meta["model"]["sigma_min"] == 0.02
    assert isinstance(loaded.likelihood, GaussianPerExample)
    assert loaded.likelihood.sigma_min == 0.02 and loaded.likelihood.mean_fn == "sigmoid"
    np.testing.assert_array_equal(loaded.buffer.data, model.buffer.data)


# ----------------------------------------------------------------------------- the fused kernel
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sigmoid_mean", [False, True])
@pytest.mark.parametrize("sigma_min", [0.0, 1 / 256])
@pytest.mark.parametrize("weights", [False, True])
def test_numba_kernel_matches_the_reference(dtype, sigmoid_mean, sigma_min, weights):
    """The one-pass Numba kernel against the plain-array specification, extremes included
    (|a| = 60, r = -60 .. 60).  Both round in dtype; their difference is bounded by the
    round-off of the operands: with e = exp(-v), m - x cancels to eps (|m| + |x|), 1 - (x-m)^2 e
    to eps (1 + (|m| + |x|)^2 e), v's own error eps |v| scales e, and a sum over D adds D eps."""
    from minivae import kernels
    rng = np.random.default_rng(5)
    S, B, D = 2, 3, 37
    out = np.concatenate([rng.normal(0, 3, (S, B, D)), rng.uniform(-8, 3, (S, B, D))], -1)
    out[0, 0, :4] = [60, -60, 0, 1e-3]
    out[0, 0, D:D + 4] = [-60, 60, -30, 0]
    out = out.astype(dtype)
    x = rng.uniform(0, 1, (B, D)).astype(dtype)
    scale = rng.uniform(0, 1, (S, B, 1)).astype(dtype) if weights else 0.25
    c = 2 * math.log(sigma_min) if sigma_min else -math.inf
    assert kernels.active(out) == "numba"
    nll, dout = kernels.gaussian_logvar_nll_grad(out, x, scale, c, sigmoid_mean)
    with kernels.use("reference"):
        ref_nll, ref_dout = kernels.gaussian_logvar_nll_grad(out, x, scale, c, sigmoid_mean)
    assert nll.dtype == dtype and dout.dtype == dtype and dout.shape == out.shape
    # the size of every operand, in float64 from the same inputs
    o = out.astype(np.float64)
    a, r = o[..., :D], o[..., D:]
    m = _sigmoid(a) if sigmoid_mean else a
    v = np.logaddexp(r, c) if sigma_min else r
    e, big = np.exp(-v), np.abs(m) + np.abs(x)
    s = np.broadcast_to(np.asarray(scale, np.float64), (S, B, 1))
    lift = 1 + np.abs(v)
    size_a = s * big * e * lift * (m * (1 - m) + np.abs(m) * 4 * np.finfo(dtype).eps
                                   if sigmoid_mean else 1)
    size_r = s * (1 + big ** 2 * e * lift) * np.exp(r - v)
    eps, tiny = np.finfo(dtype).eps, np.finfo(dtype).tiny
    diff = np.abs(dout.astype(np.float64) - ref_dout)
    np.testing.assert_array_less(diff[..., :D], 16 * eps * size_a + tiny)
    np.testing.assert_array_less(diff[..., D:], 16 * eps * size_r + tiny)
    size_nll = np.sum(big ** 2 * e * lift + np.abs(v) + 1, axis=-1)
    np.testing.assert_array_less(np.abs(nll.astype(np.float64) - ref_nll),
                                 (16 + 2 * D) * eps * size_nll)
    # the kernel writes into given buffers
    bufs = (np.empty_like(nll), np.empty_like(dout))
    got = kernels.gaussian_logvar_nll_grad(out, x, scale, c, sigmoid_mean, *bufs)
    assert got[0] is bufs[0] and got[1] is bufs[1] and np.array_equal(got[1], dout)
