"""The VAE through its public surface: loss_and_grads against central differences of loss (frozen
noise, float64, every likelihood x activation x objective), the forward against a hand computation
from model.params, determinism, initialisation, dtype, and bad input.
"""
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from minivae.errors import MinivaeError
from minivae.gradcheck import check_gradient
from minivae.model import VAE

EPS64 = np.finfo(np.float64).eps
ACTS = ["relu", "leaky_relu", "tanh", "sigmoid", "softplus", "elu"]
KINKED = {"relu", "leaky_relu", "elu"}
LIKELIHOODS = [("bernoulli", "fixed"), ("gaussian", "fixed"), ("gaussian", "shared"),
               ("gaussian", "per-dim")]
LOG_2PI = math.log(2 * math.pi)
seeds = st.integers(0, 2**32 - 1)

# independent activation formulas (float64)
REFERENCE = {
    "relu": lambda x: np.maximum(x, 0.0),
    "leaky_relu": lambda x: np.where(x > 0, x, 0.01 * x),
    "tanh": np.tanh,
    "sigmoid": lambda x: np.exp(-np.logaddexp(0.0, -x)),
    "softplus": lambda x: np.logaddexp(0.0, x),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
}


# ----------------------------------------------------------------------------- helpers
def make_data(lik, rng, B, D):
    if lik == "gaussian":
        return rng.standard_normal((B, D))
    x = rng.uniform(0, 1, (B, D))
    x[rng.random((B, D)) < 0.25] = 0.0           # binary pixels and grey levels
    x[rng.random((B, D)) < 0.25] = 1.0
    return x


def flat_grads(model, grads):
    """The returned name -> gradient mapping, concatenated in the flat buffer's layout."""
    return np.concatenate([grads[k].ravel() for k in model.buffer.offsets])


def forward_by_hand(model, x, eps, act):
    """The documented model from model.params alone: encoder MLP -> head columns (mu | logvar) ->
    z = mu + exp(logvar/2) eps -> decoder MLP.  Returns mu, logvar, decoder out (S, B, D) and
    every hidden pre-activation (to keep kinked activations away from their kink)."""
    p, Z = model.params, model.latent_dim
    pre = []

    def mlp(prefix, h):
        n = len(model.hidden) + 1
        for i in range(n):
            h = h @ p[f"{prefix}.{i}.W"] + p[f"{prefix}.{i}.b"]
            if i < n - 1:
                pre.append(h)
                h = REFERENCE[act](h)
        return h

    head = mlp("enc", x)
    mu, logvar = head[:, :Z], head[:, Z:]
    z = mu + np.sqrt(np.exp(logvar)) * eps
    S, B, _ = eps.shape
    out = mlp("dec", z.reshape(S * B, Z)).reshape(S, B, -1)
    return mu, logvar, out, pre


def nll_by_hand(model, lik, out, x):
    if lik == "bernoulli":
        return np.sum(np.logaddexp(0.0, out) - x * out, axis=-1)
    if "dec.log_sigma" in model.params:
        log_sigma = np.broadcast_to(model.params["dec.log_sigma"], (model.data_dim,))
    else:
        log_sigma = np.full(model.data_dim, math.log(model.config["sigma"]))
    r = (x - out) / np.exp(log_sigma)
    return np.sum(0.5 * r * r + log_sigma + 0.5 * LOG_2PI, axis=-1)


def model_cases():
    return [pytest.param(objective, lik, learn, act, id=f"{objective}-{lik}-{learn}-{act}")
            for objective in ("elbo", "iwae") for lik, learn in LIKELIHOODS for act in ACTS]


# ----------------------------------------------------------------------------- the gradient
@pytest.mark.parametrize("objective,lik,learn,act", model_cases())
@given(D=st.integers(1, 5), hidden=st.lists(st.integers(1, 4), min_size=0, max_size=2),
       Z=st.integers(1, 3), B=st.integers(1, 3), S=st.integers(1, 3), K=st.integers(2, 4),
       beta=st.floats(0.0, 3.0), sigma=st.sampled_from([0.5, 1.0, 2.0]), seed=seeds,
       two_dim_eps=st.booleans())
def test_loss_and_grads_matches_central_differences(objective, lik, learn, act, D, hidden, Z, B,
                                                    S, K, beta, sigma, seed, two_dim_eps):
    """<u, grad> = (loss(theta + h u) - loss(theta - h u)) / 2h over the whole flat parameter
    vector, the noise frozen (eps given).  ELBO with S in 1..3 and any beta; IWAE with K in 2..4."""
    rng = np.random.default_rng(seed)
    samples = K if objective == "iwae" else S
    if objective == "iwae":
        beta = 1.0                                    # the IWAE bound has no KL term to weight
    model = VAE(D, tuple(hidden), Z, activation=act, likelihood=lik, learn_sigma=learn,
                sigma=sigma, beta=beta, objective=objective, samples=samples, dtype="float64",
                seed=seed)
    model.buffer.data[...] += 0.3 * rng.standard_normal(model.buffer.size)   # away from the init
    x = make_data(lik, rng, B, D)
    eps = rng.standard_normal((samples, B, Z))
    if two_dim_eps and samples == 1:
        eps = eps[0]                                  # (B, Z) is accepted for one sample
    eps3 = eps.reshape(samples, B, Z)
    _, _, _, pre = forward_by_hand(model, x, eps3, act)
    if act in KINKED and pre:
        # h u moves a pre-activation by ~1e-6 * |x| * sqrt(fan_in) < 1e-4: no kink is crossed
        assume(min(np.min(np.abs(a)) for a in pre) > 1e-3)

    theta0 = model.buffer.data.copy()
    loss, grads = model.loss_and_grads(x, eps=eps)
    assert set(grads) == set(model.params)
    assert all(grads[k].shape == model.params[k].shape for k in grads)
    g = flat_grads(model, grads)
    assert np.all(np.isfinite(g)) and math.isfinite(loss)
    # loss() and loss_and_grads() compute the same objective (by different code paths)
    assert abs(model.loss(x, eps=eps) - loss) <= 1e-12 * (1 + abs(loss))

    def loss_at(theta):
        model.buffer.data[...] = theta
        return model.loss(x, eps=eps)

    try:
        check_gradient(loss_at, g, theta0, rng)
    finally:
        model.buffer.data[...] = theta0


@pytest.mark.parametrize("lik,learn", LIKELIHOODS)
@pytest.mark.parametrize("act", ACTS)
@settings(max_examples=10)
@given(D=st.integers(1, 5), H=st.integers(1, 4), Z=st.integers(1, 3), B=st.integers(1, 3),
       S=st.integers(1, 3), beta=st.floats(0.0, 3.0), seed=seeds)
def test_elbo_loss_value_matches_a_hand_computation(lik, learn, act, D, H, Z, B, S, beta, seed):
    """The forward itself (which no gradient check can validate): loss = mean_{s,b} nll +
    beta * mean_b KL, computed here from model.params with independent formulas."""
    rng = np.random.default_rng(seed)
    model = VAE(D, (H,), Z, activation=act, likelihood=lik, learn_sigma=learn, beta=beta,
                sigma=1.5, dtype="float64", seed=seed)
    if learn != "fixed":
        model.params["dec.log_sigma"][...] = rng.uniform(-1, 1, model.params["dec.log_sigma"].shape)
    x, eps = make_data(lik, rng, B, D), rng.standard_normal((S, B, Z))
    mu, logvar, out, _ = forward_by_hand(model, x, eps, act)
    nll = nll_by_hand(model, lik, out, x)
    kl = 0.5 * np.sum(mu**2 + np.exp(logvar) - 1 - logvar, axis=1)
    expected = np.mean(nll) + beta * np.mean(kl)
    tol = 1e-11 * (1 + np.mean(np.abs(nll)) + beta * np.mean(kl))
    loss, _ = model.loss_and_grads(x, eps=eps)
    assert abs(loss - expected) <= tol
    assert abs(model.loss(x, eps=eps) - expected) <= tol
    enc_mu, enc_logvar = model.encode(x)
    np.testing.assert_allclose(enc_mu, mu, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(enc_logvar, logvar, rtol=1e-12, atol=1e-12)
    t = model.elbo(x, eps=eps)
    np.testing.assert_allclose(t.distortion, np.mean(nll, axis=0), rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(t.kl, kl, rtol=1e-11, atol=1e-11)


def test_grads_mapping_is_the_flat_gradient_buffer_and_a_copy(rng):
    model = VAE(6, (5, 4), 3, likelihood="gaussian", learn_sigma="per-dim", dtype="float64",
                seed=1)
    x = rng.standard_normal((4, 6))
    _, grads = model.loss_and_grads(x, eps=rng.standard_normal((2, 4, 3)))
    assert list(model.buffer.offsets) == list(model.params)
    assert np.array_equal(flat_grads(model, grads), model.buffer.grad)
    for k in grads:
        assert np.array_equal(grads[k], model.grads[k])
    kept = {k: g.copy() for k, g in grads.items()}
    model.loss_and_grads(x, eps=rng.standard_normal((2, 4, 3)))     # new noise, new gradients
    assert all(np.array_equal(grads[k], kept[k]) for k in grads)    # the returned ones stay put
    assert not np.array_equal(flat_grads(model, grads), model.buffer.grad)


def test_params_layout_and_views(rng):
    D, H1, H2, Z = 7, 5, 4, 3
    model = VAE(D, (H1, H2), Z, likelihood="gaussian", learn_sigma="shared", seed=0)
    expected = {"enc.0.W": (D, H1), "enc.0.b": (H1,), "enc.1.W": (H1, H2), "enc.1.b": (H2,),
                "enc.2.W": (H2, 2 * Z), "enc.2.b": (2 * Z,),
                "dec.0.W": (Z, H2), "dec.0.b": (H2,), "dec.1.W": (H2, H1), "dec.1.b": (H1,),
                "dec.2.W": (H1, D), "dec.2.b": (D,), "dec.log_sigma": (1,)}
    assert {k: tuple(v.shape) for k, v in model.params.items()} == expected
    total = sum(math.prod(s) for s in expected.values())
    assert model.num_params() == total == model.buffer.size
    # params are views: writing one changes the model
    x = rng.standard_normal((2, D)).astype(np.float32)
    mu0, _ = model.encode(x)
    mu0 = mu0.copy()
    model.params["enc.2.b"][:Z] += 1.0
    mu1, _ = model.encode(x)
    np.testing.assert_allclose(mu1, mu0 + 1.0, rtol=1e-6, atol=1e-6)
    assert model.buffer.data[model.buffer.offsets["enc.2.b"]] == model.params["enc.2.b"][0]


# ----------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_loss_and_grads_with_eps_is_bitwise_deterministic(dtype, objective, rng):
    model = VAE(8, (6,), 3, objective=objective, samples=3, dtype=dtype, seed=4)
    x = rng.uniform(0, 1, (5, 8)).astype(dtype)
    eps = rng.standard_normal((3, 5, 3)).astype(dtype)
    l1, g1 = model.loss_and_grads(x, eps=eps)
    l2, g2 = model.loss_and_grads(x, eps=eps)
    assert l1 == l2
    assert all(np.array_equal(g1[k], g2[k]) for k in g1)
    assert model.loss(x, eps=eps) == model.loss(x, eps=eps)
    # the same generator seed gives the same noise
    l3, g3 = model.loss_and_grads(x, rng=np.random.default_rng(9))
    l4, g4 = model.loss_and_grads(x, rng=np.random.default_rng(9))
    assert l3 == l4 and all(np.array_equal(g3[k], g4[k]) for k in g3)
    s1 = model.sample(4, np.random.default_rng(2))
    s2 = model.sample(4, np.random.default_rng(2))
    assert np.array_equal(s1, s2)


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_results_survive_later_calls_and_batch_sizes_do_not_interfere(objective):
    """Whatever buffers the model reuses between calls, a returned array is never overwritten by
    a later call, and a model that has seen many batch sizes (in any order) computes exactly
    what a fresh model computes."""
    rng = np.random.default_rng(5)

    def fresh():
        return VAE(6, (5, 4), 2, objective=objective, samples=2, dtype="float64", seed=3)

    model = fresh()
    batches = {B: (rng.uniform(0, 1, (B, 6)), rng.standard_normal((2, B, 2))) for B in range(1, 13)}
    x1, e1 = batches[3]
    loss1, grads1 = model.loss_and_grads(x1, eps=e1)
    mu1, logvar1 = model.encode(x1)
    t1 = model.elbo(x1, eps=e1)
    dec1 = model.decode(e1[0])
    rec1 = model.reconstruct(x1)
    kept = [a.copy() for a in (*grads1.values(), mu1, logvar1, *t1, dec1, rec1)]
    for B in (*range(1, 13), 3, 12, 1, 7):                  # more sizes than any small cache
        x, e = batches[B]
        model.loss_and_grads(x, eps=e)
        model.encode(x)
        model.elbo(x, eps=e)
        model.decode(e[0])
        model.reconstruct(x)
    for before, now in zip(kept, (*grads1.values(), mu1, logvar1, *t1, dec1, rec1)):
        assert np.array_equal(before, now)
    for B in (3, 12, 1, 7):
        x, e = batches[B]
        l_a, g_a = model.loss_and_grads(x, eps=e)
        l_b, g_b = fresh().loss_and_grads(x, eps=e)
        assert l_a == l_b and all(np.array_equal(g_a[k], g_b[k]) for k in g_a)
    # and between a forward and its backward nothing else is pending: encode between two
    # training steps leaves the next step's result unchanged
    model.encode(batches[5][0])
    assert model.loss_and_grads(x1, eps=e1)[0] == loss1


# ----------------------------------------------------------------------------- initialisation
def test_same_seed_same_init_and_another_seed_another():
    a = VAE(10, (8, 6), 3, seed=7).buffer.data
    b = VAE(10, (8, 6), 3, seed=7).buffer.data
    c = VAE(10, (8, 6), 3, seed=8).buffer.data
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_float32_init_is_the_float64_init_rounded():
    """Drawn in float64 and cast: the same seed gives the same start in either dtype."""
    a = VAE(10, (8,), 3, seed=3, dtype="float32").buffer.data
    b = VAE(10, (8,), 3, seed=3, dtype="float64").buffer.data
    assert np.array_equal(a, b.astype(np.float32))


@given(seed=seeds)
@settings(max_examples=5)
def test_init_follows_pytorch_linear_rule(seed):
    """W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for every Linear, fan_in = W.shape[0].

    For U(-a, a): E w = 0 (SE a / sqrt(3n)); E w^2 = a^2/3, so std = a / sqrt(3), with
    Var(w^2) = a^4/5 - a^4/9 = 4 a^4 / 45 (SE sqrt(4 a^4 / (45 n))).  5 standard errors.
    The largest |w| of n draws exceeds a (1 - 20/n) with probability 1 - e^-20, which pins the
    bound from below (Xavier's sqrt(6 / (fan_in + fan_out)) or 1/fan_out would be caught)."""
    model = VAE(64, (48,), 8, seed=seed, dtype="float64")
    for name, W in model.params.items():
        if not name.endswith(".W"):
            continue
        b = model.params[name[:-1] + "b"]
        a = 1.0 / math.sqrt(W.shape[0])
        for w in (W.ravel(), b.ravel()):
            n = w.size
            assert np.all(np.abs(w) <= a)
            assert abs(w.mean()) <= 5 * a / math.sqrt(3 * n)
            assert abs(np.mean(w * w) - a * a / 3) <= 5 * math.sqrt(4 * a**4 / (45 * n))
        assert np.max(np.abs(W)) >= a * (1 - 20 / W.size)
        if W.size >= 256:
            assert abs(W.std() - a / math.sqrt(3)) <= 0.1 * a / math.sqrt(3)


# ----------------------------------------------------------------------------- dtype
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lik,learn", LIKELIHOODS)
@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_model_dtype_is_preserved(dtype, lik, learn, objective, rng):
    model = VAE(6, (5,), 2, likelihood=lik, learn_sigma=learn, objective=objective, samples=2,
                dtype=dtype.__name__, seed=0)
    assert model.buffer.data.dtype == dtype and model.buffer.grad.dtype == dtype
    x = make_data(lik, rng, 3, 6)
    for xin in (x.astype(dtype), x.astype(np.float64), x.astype(np.float32)):
        loss, grads = model.loss_and_grads(xin, rng=np.random.default_rng(0))
        assert isinstance(loss, float)
        assert all(g.dtype == dtype for g in grads.values())
        mu, logvar = model.encode(xin)
        assert mu.dtype == dtype and logvar.dtype == dtype
        assert mu.shape == (3, 2) and logvar.shape == (3, 2)
        rec = model.reconstruct(xin)
        assert rec.dtype == dtype and rec.shape == (3, 6)
        t = model.elbo(xin, rng=np.random.default_rng(0), samples=3)
        assert all(a.dtype == dtype and a.shape == (3,) for a in t)
    z = rng.standard_normal((4, 2))
    for zin in (z.astype(dtype), z):
        out = model.decode(zin)
        assert out.dtype == dtype and out.shape == (4, 6)
    s = model.sample(5, np.random.default_rng(1))
    assert s.dtype == dtype and s.shape == (5, 6)
    if lik == "bernoulli":                                       # probabilities
        assert np.all((s >= 0) & (s <= 1)) and np.all((rec >= 0) & (rec <= 1))


def test_reconstruct_is_decode_of_the_posterior_mean(rng):
    model = VAE(6, (5,), 2, dtype="float64", seed=2)
    x = rng.uniform(0, 1, (3, 6))
    mu, _ = model.encode(x)
    np.testing.assert_array_equal(model.reconstruct(x), model.decode(mu.copy()))


# ----------------------------------------------------------------------------- bad input
def assert_one_line_error(excinfo, *keywords):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for k in keywords:
        assert k in msg, f"{k!r} not in {msg!r}"


@pytest.mark.parametrize("kwargs,keyword", [
    (dict(data_dim=0), "data_dim"), (dict(data_dim=-3), "data_dim"),
    (dict(data_dim=2.5), "data_dim"), (dict(data_dim=True), "data_dim"),
    (dict(latent_dim=0), "latent_dim"), (dict(latent_dim=2.0), "latent_dim"),
    (dict(hidden=(0,)), "hidden"), (dict(hidden=(4, -1)), "hidden"), (dict(hidden=-2), "hidden"),
    (dict(beta=-0.5), "beta"), (dict(beta=float("nan")), "beta"), (dict(beta=float("inf")), "beta"),
    (dict(beta="1"), "beta"),
    (dict(activation="swish"), "activation"), (dict(likelihood="poisson"), "likelihood"),
    (dict(objective="vimco"), "objective"), (dict(samples=0), "samples"),
    (dict(dtype="float16"), "dtype"), (dict(dtype="int32"), "dtype"),
    (dict(device="tpu"), "device"),
    (dict(likelihood="gaussian", sigma=0.0), "sigma"),
    (dict(likelihood="gaussian", sigma=-1.0), "sigma"),
    (dict(likelihood="gaussian", learn_sigma="always"), "learn_sigma"),
])
def test_bad_constructor_arguments(kwargs, keyword):
    args = dict(data_dim=4, hidden=(3,), latent_dim=2)
    args.update(kwargs)
    with pytest.raises(MinivaeError) as e:
        VAE(**args)
    assert_one_line_error(e, keyword)


BAD_CONSTRUCTOR_MORE = [
    pytest.param(dict(likelihood="gaussian", sigma="abc"), "sigma", id="sigma-str"),
    pytest.param(dict(sigma=None), "sigma", id="sigma-none"),
    pytest.param(dict(seed=-1), "seed", id="seed-negative"),
    pytest.param(dict(seed="abc"), "seed", id="seed-str"),
    pytest.param(dict(likelihood="bernoulli", learn_sigma="always"), "learn_sigma",
                 id="learn_sigma-unknown-with-bernoulli"),
]


@pytest.mark.parametrize("kwargs,keyword", BAD_CONSTRUCTOR_MORE)
def test_bad_constructor_arguments_more(kwargs, keyword):
    args = dict(data_dim=4, hidden=(3,), latent_dim=2)
    args.update(kwargs)
    with pytest.raises(MinivaeError) as e:
        VAE(**args)
    assert_one_line_error(e, keyword)


def test_numpy_scalar_beta_is_accepted():
    assert VAE(4, (3,), 2, beta=np.float32(2.0)).beta == 2.0


def test_good_constructor_variants_are_accepted():
    VAE(4, (), 2)                                            # no hidden layer: linear maps
    VAE(np.int64(4), 3, np.int32(2))                         # NumPy integers, an int hidden
    VAE(4, [3, 3], 2, beta=0)                                # beta = 0: an autoencoder plus noise


BAD_X = {
    "too-many-columns": (np.zeros((2, 5)), ["x", "shape"]),
    "one-dimensional": (np.zeros(4), ["x", "shape"]),
    "three-dimensional": (np.zeros((2, 4, 1)), ["x", "shape"]),
    "empty-batch": (np.zeros((0, 4)), ["x"]),
    "a-list": ([[0.0, 0.0, 0.0, 0.0]], ["x"]),
    "complex": (np.zeros((2, 4), dtype=complex), ["x", "dtype"]),
    "strings": (np.array([["a"] * 4]), ["x", "dtype"]),
    "nan": (np.array([[0.0, np.nan, 0.0, 0.0]]), ["x", "NaN"]),
    "inf": (np.array([[0.0, np.inf, 0.0, 0.0]]), ["x", "infinite"]),
    "minus-inf": (np.array([[0.0, 0.5, -np.inf, 0.0]]), ["x", "infinite"]),
}


def _x_methods(model):
    r = lambda: np.random.default_rng(0)       # noqa: E731
    return {
        "loss_and_grads": lambda x: model.loss_and_grads(x, rng=r()),
        "loss": lambda x: model.loss(x, rng=r()),
        "elbo": lambda x: model.elbo(x, rng=r()),
        "encode": model.encode,
        "reconstruct": model.reconstruct,
    }


@pytest.mark.parametrize("method", ["loss_and_grads", "loss", "elbo", "encode", "reconstruct"])
@pytest.mark.parametrize("case", BAD_X)
@pytest.mark.parametrize("lik", ["bernoulli", "gaussian"])
def test_bad_x_is_a_one_line_error_naming_x(method, case, lik):
    model = VAE(4, (3,), 2, likelihood=lik)
    x, keywords = BAD_X[case]
    with pytest.raises(MinivaeError) as e:
        _x_methods(model)[method](x)
    assert_one_line_error(e, *keywords)


@pytest.mark.parametrize("method", ["loss_and_grads", "loss", "elbo", "encode", "reconstruct"])
@pytest.mark.parametrize("bad", [1.5, -0.25, 255.0])
def test_x_outside_unit_interval_with_bernoulli(method, bad):
    model = VAE(4, (3,), 2, likelihood="bernoulli")
    x = np.array([[0.0, 0.5, bad, 1.0]])
    with pytest.raises(MinivaeError) as e:
        _x_methods(model)[method](x)
    assert_one_line_error(e, "x", "[0, 1]")
    # the same data is fine for a Gaussian likelihood
    _x_methods(VAE(4, (3,), 2, likelihood="gaussian"))[method](x)


def test_bad_noise_and_missing_generator():
    model = VAE(4, (3,), 2)
    x = np.full((3, 4), 0.5)
    for eps in (np.zeros((2, 3, 3)), np.zeros((2, 2, 2)), np.zeros((3,)), np.zeros((1, 1, 3, 2))):
        with pytest.raises(MinivaeError) as e:
            model.loss_and_grads(x, eps=eps)
        assert_one_line_error(e, "eps")
        with pytest.raises(MinivaeError):
            model.loss(x, eps=eps)
    for f in (model.loss_and_grads, model.loss, model.elbo):
        with pytest.raises(MinivaeError) as e:
            f(x)                                               # neither eps nor rng
        assert_one_line_error(e, "rng")
    with pytest.raises(MinivaeError) as e:
        model.elbo(x, rng=np.random.default_rng(0), samples=0)
    assert_one_line_error(e, "samples")


def test_eps_as_a_list_is_a_clear_error_or_accepted():
    model = VAE(4, (3,), 2)
    try:
        model.loss_and_grads(np.full((1, 4), 0.5), eps=[[0.1, -0.2]])
    except MinivaeError as e:
        assert "eps" in str(e) and "\n" not in str(e)


def test_bad_decode_and_sample_arguments():
    model = VAE(4, (3,), 2)
    for z in (np.zeros((3, 3)), np.zeros(2), np.zeros((1, 2, 2))):
        with pytest.raises(MinivaeError) as e:
            model.decode(z)
        assert_one_line_error(e, "z")
    for n in (0, -1, 2.5, True):
        with pytest.raises(MinivaeError) as e:
            model.sample(n, np.random.default_rng(0))
        assert_one_line_error(e, "n")
    with pytest.raises(MinivaeError) as e:
        model.sample(3, None)
    assert_one_line_error(e, "rng")


@pytest.mark.parametrize("rng", [0, 1.5, "seed", np.random.RandomState(0).random_sample])
def test_sample_rng_must_be_a_generator(rng):
    model = VAE(4, (3,), 2)
    with pytest.raises(MinivaeError) as e:
        model.sample(3, rng)
    assert_one_line_error(e, "rng")


def test_sample_accepts_any_object_with_standard_normal():
    model = VAE(4, (3,), 2)

    class Zeros:
        def standard_normal(self, shape, dtype):
            return np.zeros(shape, dtype)
    x = model.sample(2, Zeros())
    assert x.shape == (2, 4) and np.array_equal(x[0], x[1])
    assert model.sample(2, np.random.default_rng(0)).dtype == np.float32
