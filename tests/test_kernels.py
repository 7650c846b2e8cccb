"""The Numba kernels against the plain-array reference (minivae/kernels/reference.py).

Tolerances come from float round-off, u = finfo(dtype).eps:
* an elementwise value: |fast - ref| <= 8 u (|ref| + m), m the largest |ref| of the array.  The
  float32 kernels evaluate exp, log1p and tanh by polynomials good to about 2 ulp (the reference
  uses the C library's, itself within 1 ulp), and a few roundings follow; the m term covers
  results that are differences of O(m) quantities (sigmoid(l) - x, 1 - y^2) and exp(-a) for a >
  87.3, which the kernel flushes to 0 instead of a float32 subnormal (< 1.2e-38).
* a sum of n terms t_i (per-example NLL, KL, bias gradients): the recursive-summation bound
  n u sum |t_i| plus the elementwise error of each term, 8 u sum |t_i|.
float64 kernels use the C library's exp/log1p/tanh and agree to the same bounds with u = 2^-52.
"""
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, strategies as st

from minivae import kernels
from minivae.kernels import reference as ref

DTYPES = [np.float32, np.float64]
seeds = st.integers(0, 2**32 - 1)
dims = st.integers(1, 40)


def close(fast, want, dt, scale=None):
    """|fast - want| <= 8 u (|want| + m), elementwise (see the module docstring)."""
    fast, want = np.asarray(fast), np.asarray(want)
    assert fast.dtype == want.dtype == np.dtype(dt)
    u = np.finfo(dt).eps
    m = np.max(np.abs(want)) if scale is None else scale
    tol = 8 * u * (np.abs(want) + m) + np.finfo(dt).tiny     # tiny: a flushed subnormal
    bad = np.abs(fast.astype(np.float64) - want.astype(np.float64)) > tol
    assert not bad.any(), (fast[bad][:5], want[bad][:5])


def sum_close(fast, want, terms_abs_sum, n, dt, elem_scale=0.0):
    """Sums of n terms: |fast - want| <= (n + 8) u sum|t| + 8 u n m, where m (elem_scale) is the
    absolute part of each term's own error (see close)."""
    u = np.finfo(dt).eps
    err = np.abs(np.asarray(fast, np.float64) - np.asarray(want, np.float64))
    tol = (n + 8) * u * terms_abs_sum + 8 * u * n * elem_scale + np.finfo(dt).tiny
    assert (err <= tol).all(), err.max()


def randn(rng, shape, dt, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dt)


@pytest.fixture(autouse=True)
def _auto_mode():
    with kernels.use("auto"):
        yield


# ----------------------------------------------------------------------------- activations
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("name", sorted(kernels.ACTIVATIONS))
@given(B=dims, H=dims, seed=seeds, scale=st.sampled_from([0.1, 1.0, 10.0, 100.0]))
def test_bias_act_forward(name, dt, B, H, seed, scale):
    rng = np.random.default_rng(seed)
    h, b = randn(rng, (B, H), dt, scale), randn(rng, H, dt, scale)
    assert kernels.active(h) == "numba"
    want = ref.bias_act_forward(name, h, b)
    close(kernels.bias_act_forward(name, h, b), want, dt)
    out = h.copy()                                   # in place: out is the input
    kernels.bias_act_forward(name, out, b, out=out)
    close(out, want, dt)


@pytest.mark.parametrize("dt", DTYPES)
@given(B=dims, H=dims, seed=seeds)
def test_bias_add(dt, B, H, seed):
    rng = np.random.default_rng(seed)
    h, b = randn(rng, (B, H), dt), randn(rng, H, dt)
    np.testing.assert_array_equal(kernels.bias_add(h, b), h + b)      # one rounding: exact
    inplace = h.copy()                              # out is h: the in-place kernel
    assert kernels.bias_add(inplace, b, out=inplace) is inplace
    np.testing.assert_array_equal(inplace, h + b)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("name", sorted(kernels.ACTIVATIONS))
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=3), seed=seeds)
def test_act_forward_any_shape(name, dt, shape, seed):
    x = randn(np.random.default_rng(seed), shape, dt, 5.0)
    close(kernels.act_forward(name, x), ref.act_forward(name, x), dt)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("name", sorted(kernels.ACTIVATIONS))
@given(B=dims, H=dims, seed=seeds)
def test_act_backward_and_bias_grad(name, dt, B, H, seed):
    rng = np.random.default_rng(seed)
    y = ref.act_forward(name, randn(rng, (B, H), dt, 3.0))
    dy = randn(rng, (B, H), dt)
    want = ref.act_backward(name, dy, y)
    close(kernels.act_backward(name, dy, y), want, dt)
    db = np.full(H, np.nan, dt)                      # garbage in db must not leak through
    dx = dy.copy()
    kernels.act_backward(name, dx, y, out=dx, db=db)
    close(dx, want, dt)
    sum_close(db, want.sum(axis=0, dtype=np.float64), np.abs(want).sum(axis=0), B, dt,
              elem_scale=np.max(np.abs(want)))


# ----------------------------------------------------------------------------- q(z|x)
@pytest.mark.parametrize("dt", DTYPES)
@given(S=st.integers(1, 4), B=dims, Z=dims, seed=seeds)
def test_reparam_kl(dt, S, B, Z, seed):
    rng = np.random.default_rng(seed)
    head = randn(rng, (B, 2 * Z), dt, 2.0)
    mu, logvar = head[:, :Z], head[:, Z:]            # column views, as in the model
    eps = randn(rng, (S, B, Z), dt)
    z, std, kl = kernels.reparam_kl(mu, logvar, eps)
    zr, stdr, klr = ref.reparam_kl(mu, logvar, eps)
    close(std, stdr, dt, scale=0)
    close(z, zr, dt, scale=np.max(np.abs(mu)) + np.max(np.abs(stdr * eps)))  # mu + std eps
    terms = np.abs(mu * mu) + np.exp(logvar) + 1 + np.abs(logvar)
    sum_close(kl, klr, 0.5 * terms.sum(axis=1), Z, dt)

    dz = randn(rng, (S, B, Z), dt)
    dhead = np.full((B, 2 * Z), np.nan, dt)
    kernels.reparam_kl_backward(dz, eps, std, mu, logvar, 0.3, out=(dhead[:, :Z], dhead[:, Z:]))
    dmur, dlvr = ref.reparam_kl_backward(dz, eps, std, mu, logvar, 0.3)
    close(dhead[:, :Z], dmur, dt)
    close(dhead[:, Z:], dlvr, dt)


def test_float32_exp_and_expm1_polynomials():
    """numba_cpu's vectorisable float32 exp(x) and expm1(x) (the reparameterisation's std and KL)
    against float64 NumPy: relative error <= 4 u over [-87, 88] (exp) and for expm1 near 0, where
    exp(x) - 1 would lose every digit; 0 below float32's smallest normal, inf above its largest,
    NaN kept."""
    from numba import njit
    from minivae.kernels import numba_cpu as nb

    @njit
    def run(x, e, m):
        for i in range(x.shape[0]):
            e[i] = nb._exp_f32(x[i])
            m[i] = nb._expm1_f32(x[i])

    u = np.finfo(np.float32).eps
    x = np.concatenate([np.linspace(-87.3, 88.7, 200001), np.linspace(-0.5, 0.5, 100001),
                        np.geomspace(1e-30, 1e-1, 3000), -np.geomspace(1e-30, 1e-1, 3000),
                        [0.0, -0.0]]).astype(np.float32)
    e, m = np.empty_like(x), np.empty_like(x)
    run(x, e, m)
    x64 = x.astype(np.float64)
    want_e, want_m = np.exp(x64), np.expm1(x64)
    assert (np.abs(e - want_e) <= 4 * u * want_e).all()
    assert (np.abs(m - want_m) <= 4 * u * np.abs(want_m)).all()
    special = np.array([np.nan, np.inf, 89.0, 1e4, -np.inf, -88.0, -1e4], np.float32)
    e, m = np.empty_like(special), np.empty_like(special)
    run(special, e, m)
    assert np.isnan(e[0]) and np.isnan(m[0])
    assert (e[1:4] == np.inf).all() and (m[1:4] == np.inf).all()
    assert (e[4:] == 0).all() and (m[4:] == -1).all()


# ----------------------------------------------------------------------------- p(x|z)
@pytest.mark.parametrize("dt", DTYPES)
@given(S=st.integers(1, 3), B=dims, D=st.integers(1, 100), seed=seeds,
       scale=st.sampled_from([0.5, 5.0, 50.0]), grey=st.booleans())
def test_bernoulli_nll_grad(dt, S, B, D, seed, scale, grey):
    rng = np.random.default_rng(seed)
    logits = randn(rng, (S, B, D), dt, scale)
    x = rng.random((B, D)).astype(dt) if grey else (rng.random((B, D)) < 0.5).astype(dt)
    nllr, gr = ref.bernoulli_nll_grad(logits, x, 1.0 / (S * B))
    terms = np.abs(ref.ACTIVATIONS["softplus"][0](logits, np)) + np.abs(x * logits)
    tsum = terms.sum(axis=-1)

    nll, g = kernels.bernoulli_nll_grad(logits, x, 1.0 / (S * B))
    sum_close(nll, nllr, tsum, D, dt)
    close(g, gr, dt, scale=1.0 / (S * B))            # sigmoid(l) - x: O(1) before scaling
    nll_only = kernels.bernoulli_nll(logits, x)
    sum_close(nll_only, nllr, tsum, D, dt)

    buf_nll, db = np.full((S, B), np.nan, dt), np.full(D, np.nan, dt)
    work = logits.copy()                             # the logits become their gradient
    kernels.bernoulli_nll_grad(work, x, 1.0 / (S * B), out=(buf_nll, work), db=db)
    close(work, gr, dt, scale=1.0 / (S * B))
    sum_close(buf_nll, nllr, tsum, D, dt)
    sum_close(db, gr.sum(axis=(0, 1), dtype=np.float64), np.abs(gr).sum(axis=(0, 1)), S * B, dt,
              elem_scale=1.0 / (S * B))


@pytest.mark.parametrize("dt", DTYPES)
@given(S=st.integers(1, 3), B=dims, D=st.integers(1, 100), seed=seeds)
def test_bernoulli_kernels_add_the_bias_themselves(dt, S, B, D, seed):
    """bias=b on the GEMM output h is the kernel on l = h + b: the same bits (l is the same one
    float addition), and within round-off of the reference given h and b."""
    rng = np.random.default_rng(seed)
    h, bias = randn(rng, (S, B, D), dt, 4.0), randn(rng, D, dt, 2.0)
    x = (rng.random((B, D)) < 0.5).astype(dt)
    l = h + bias
    nll, g = kernels.bernoulli_nll_grad(l, x, 0.5)
    db0 = np.empty(D, dt)
    kernels.bernoulli_nll_grad(l, x, 0.5, db=db0)
    db = np.full(D, np.nan, dt)
    nll_b, g_b = kernels.bernoulli_nll_grad(h, x, 0.5, db=db, bias=bias)
    np.testing.assert_array_equal(nll_b, nll)
    np.testing.assert_array_equal(g_b, g)
    np.testing.assert_array_equal(db, db0)
    np.testing.assert_array_equal(kernels.bernoulli_nll(h, x, bias=bias), kernels.bernoulli_nll(l, x))
    nllr, gr = ref.bernoulli_nll_grad(h, x, 0.5, bias=bias)
    tsum = (np.abs(ref.ACTIVATIONS["softplus"][0](l, np)) + np.abs(x * l)).sum(axis=-1)
    sum_close(nll_b, nllr, tsum, D, dt)
    close(g_b, gr, dt, scale=0.5)
    with kernels.use("reference"):                   # the reference path of the dispatcher
        nll_r, g_r = kernels.bernoulli_nll_grad(h, x, 0.5, bias=bias)
    np.testing.assert_array_equal(nll_r, nllr)
    np.testing.assert_array_equal(g_r, gr)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("sigma_shape", ["scalar", "shared", "per-dim"])
@given(S=st.integers(1, 3), B=dims, D=dims, seed=seeds)
def test_gaussian_nll_grad(dt, sigma_shape, S, B, D, seed):
    rng = np.random.default_rng(seed)
    mean, x = randn(rng, (S, B, D), dt), randn(rng, (B, D), dt)
    ls = {"scalar": dt(0.3), "shared": randn(rng, 1, dt, 0.5),
          "per-dim": randn(rng, D, dt, 0.5)}[sigma_shape]
    nll, dm, dls = kernels.gaussian_nll_grad(mean, x, ls, 0.25)
    nllr, dmr, dlsr = ref.gaussian_nll_grad(mean, x, ls, 0.25)
    r2 = ((x - mean) * np.exp(-np.asarray(ls, np.float64))) ** 2
    terms = 0.5 * r2 + np.abs(np.asarray(ls, np.float64)) + 1.0
    sum_close(nll, nllr, terms.sum(axis=-1), D, dt)
    close(dm, dmr, dt)
    close(dls, dlsr, dt, scale=0.25 * (1 + r2.max()))


# ----------------------------------------------------------------------------- Adam
@pytest.mark.parametrize("dt", DTYPES)
@given(n=st.integers(1, 3000), steps=st.integers(1, 4), seed=seeds)
def test_adam_update(dt, n, steps, seed):
    rng = np.random.default_rng(seed)
    p, m, v = randn(rng, n, dt), np.zeros(n, dt), np.zeros(n, dt)
    pr, mr, vr = p.copy(), m.copy(), v.copy()
    for t in range(1, steps + 1):
        g = randn(rng, n, dt)
        kernels.adam_update(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, t)
        ref.adam_update(pr, g, mr, vr, 1e-3, 0.9, 0.999, 1e-8, t)
    close(m, mr, dt)
    close(v, vr, dt)
    close(p - pr, np.zeros_like(p), dt, scale=1e-3 * steps)   # each step moves p by <~ lr


# ----------------------------------------------------------------------------- dispatch
def test_use_switches_to_the_reference():
    x = np.zeros((2, 3), np.float32)
    assert kernels.active(x) == "numba"
    with kernels.use("reference"):
        assert kernels.active(x) == "reference"
        y = kernels.bias_act_forward("relu", x, np.zeros(3, np.float32))
        assert y.dtype == np.float32
    assert kernels.active(x) == "numba"
    assert kernels.active(x.astype(np.float16)) == "reference"   # not a kernel dtype


def test_environment_variable_selects_the_reference():
    code = ("import numpy as np, sys; from minivae import kernels; "
            "print(kernels.active(np.zeros(1, np.float32)), 'minivae.kernels.numba_cpu' in sys.modules)")
    env = dict(os.environ, MINIVAE_KERNELS="reference")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["reference", "False"]


def test_import_compiles_nothing():
    """import minivae (and building a model) imports neither the Numba kernels nor CuPy."""
    code = ("import sys, minivae, minivae.model, minivae.train; "
            "minivae.model.VAE(784, (8,), 2); "
            "print(any(m in sys.modules for m in ('minivae.kernels.numba_cpu', "
            "'minivae.kernels.cupy_gpu', 'cupy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]


def test_float32_in_float32_out():
    rng = np.random.default_rng(0)
    l, x = randn(rng, (1, 4, 5), np.float32), np.ones((4, 5), np.float32)
    for a in kernels.bernoulli_nll_grad(l, x, 0.5):
        assert a.dtype == np.float32
    for a in kernels.reparam_kl(l[0], l[0], l):
        assert a.dtype == np.float32


# ----------------------------------------------------------------------------- the step
def _model_and_batch(B, act="relu", D=30):
    from minivae.model import VAE
    model = VAE(D, (16, 12), 4, activation=act, seed=3)
    rng = np.random.default_rng(1)
    return model, (rng.random((B, D)) < 0.5).astype(np.float32), rng


def test_step_allocates_nothing_in_steady_state():
    from minivae.optim import Adam
    model, x, rng = _model_and_batch(64, D=784)
    opt = Adam(model.buffer)
    eps = rng.standard_normal((1, 64, 4), dtype=np.float32)
    for _ in range(3):                               # compile, make the workspaces
        model.forward_backward(x, eps)
        opt.step()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(5):
            model.forward_backward(x, eps)
            opt.step()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    # one (B, D) float32 array is 200,704 bytes; what remains are Python objects: array views
    # (reshapes, column halves), 0-d results, argument tuples, about 10 kB in all
    assert peak < 32_000, peak


def test_workspaces_survive_evaluation_and_short_batches():
    """Gradients of a step do not depend on what ran before it (other batch sizes, eval)."""
    model, x, rng = _model_and_batch(32, act="tanh")
    eps = rng.standard_normal((1, 32, 4), dtype=np.float32)
    model.forward_backward(x, eps)
    g1 = model.buffer.grad.copy()
    plan = model._plan("dec", 32)
    model.forward_backward(x[:7], eps[:, :7])        # a short last batch: its own workspace
    model.elbo(x[:5], rng=rng)                        # evaluation through the layers
    model.loss(x[:9], rng=rng)
    model.forward_backward(x, eps)
    assert model._plan("dec", 32) is plan            # not reallocated
    np.testing.assert_array_equal(model.buffer.grad, g1)


def test_step_matches_reference_kernels():
    """The whole step with the fast kernels equals the step with the reference ones."""
    model, x, rng = _model_and_batch(16, act="tanh")
    eps = rng.standard_normal((2, 16, 4), dtype=np.float32)
    model.samples = 2
    t = model.forward_backward(x, eps)
    g = model.buffer.grad.copy()
    with kernels.use("reference"):
        tr = model.forward_backward(x, eps)
    close(np.float32(t.loss), np.float32(tr.loss), np.float32)
    gr = model.buffer.grad
    assert np.max(np.abs(g - gr)) <= 64 * np.finfo(np.float32).eps * np.max(np.abs(gr))


@pytest.mark.parametrize("name", sorted(kernels.ACTIVATIONS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_propagates_through_bias_activation_like_the_reference(name, dtype):
    """A NaN weight must reach the loss (where the divergence guard sees it), not vanish."""
    h = np.array([[np.nan, 1.0, -1.0]], dtype)
    b = np.zeros(3, dtype)
    fast = kernels.bias_act_forward(name, h.copy(), b)
    want = ref.bias_act_forward(name, h.copy(), b)
    assert np.isnan(want[0, 0]) and np.isnan(fast[0, 0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_never_stores_subnormal_moments(dtype):
    """A parameter whose gradient turns 0 (a dead unit) has m decay by beta1 every step; left
    alone it would become subnormal (~100x slower arithmetic on x86).  The kernel flushes it to
    0 instead, and the parameters stay within round-off of the reference's."""
    rng = np.random.default_rng(0)
    n = 4096
    p = rng.standard_normal(n).astype(dtype)
    g = (rng.standard_normal(n) * np.logspace(-25, 0, n)).astype(dtype)
    m, v = np.zeros(n, dtype), np.zeros(n, dtype)
    p_ref, m_ref, v_ref = p.copy(), m.copy(), v.copy()
    tiny = np.finfo(dtype).tiny
    for t in range(1, 1201):
        grad = g if t <= 5 else np.zeros(n, dtype)          # the gradients then stop
        kernels.adam_update(p, grad, m, v, 1e-3, 0.9, 0.999, 1e-8, t)
        ref.adam_update(p_ref, grad, m_ref, v_ref, 1e-3, 0.9, 0.999, 1e-8, t)
        for a in (m, v):
            assert not np.any((a != 0) & (np.abs(a) < tiny)), t
    if dtype == np.float32:     # the reference did go subnormal: the test exercises the flush
        assert np.any((m_ref != 0) & (np.abs(m_ref) < tiny))
    np.testing.assert_allclose(p, p_ref, rtol=8 * np.finfo(dtype).eps, atol=0)


def test_kl_of_a_nearly_collapsed_unit_keeps_its_digits_in_float32():
    """KL per unit = (mu^2 + expm1(lv) - lv) / 2 ~ lv^2 / 4 near lv = 0: exp(lv) - 1 - lv would
    cancel to float32 round-off (~1e-8), far above the true value (~1e-9 here)."""
    lv = np.full((1, 3), 1e-4 / 2 ** 0.5, np.float32) * np.array([1, 2, 3], np.float32)
    mu = np.zeros((1, 3), np.float32)
    eps = np.zeros((1, 1, 3), np.float32)
    exact = 0.5 * float(np.sum(np.expm1(lv.astype(np.float64)) - lv.astype(np.float64)))
    for kl in (ref.reparam_kl(mu, lv, eps)[2], kernels.reparam_kl(mu, lv, eps)[2]):
        assert kl.dtype == np.float32
        # expm1's own rounding (half an ulp of |lv| per unit, doubled for the sum) bounds the
        # error; exp(lv) - 1 - lv errs by an ulp of 1.0 per unit, ~1000x more
        bound = float(np.sum(np.abs(lv))) * np.finfo(np.float32).eps
        assert abs(float(kl[0]) - exact) <= bound, (float(kl[0]), exact, bound)
        assert bound < 0.01 * exact


def test_exp_of_large_negative_logits_is_accurate_to_the_smallest_normal():
    """sigmoid(-87.3) = exp(-87.3)/(1 + ...): the float32 kernel's exp must not clamp early."""
    logits = np.array([[-87.3, -87.0, -80.0]], np.float32)
    y = kernels.act_forward("sigmoid", logits)
    want = 1 / (1 + np.exp(-logits.astype(np.float64)))
    np.testing.assert_allclose(y, want, rtol=1e-5)
