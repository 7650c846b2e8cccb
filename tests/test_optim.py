"""Optimisers over a ParamBuffer's flat data and grad arrays: SGD with momentum, Adam, clipping."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from minivae import kernels
from minivae.errors import MinivaeError
from minivae.kernels import reference
from minivae.model import VAE
from minivae.optim import SGD, Adam, clip_grad_norm, make_optimizer
from minivae.params import ParamBuffer

EPS64 = np.finfo(np.float64).eps
seeds = st.integers(0, 2**32 - 1)


def make_buffer(rng, dtype=np.float64):
    buf = ParamBuffer({"a.W": (3, 4), "a.b": (4,), "c": (2,)}, xp=np, dtype=dtype)
    buf.data[...] = rng.standard_normal(buf.size)
    return buf


# ----------------------------------------------------------------------------- Adam
@given(seed=seeds, lr=st.floats(1e-4, 1e-1), log_scale=st.floats(-3, 3))
def test_adam_first_step_moves_every_parameter_by_lr_times_sign(seed, lr, log_scale):
    """Bias correction makes the first step lr * g / (|g| + eps) ~ lr * sign(g), whatever |g|.

    Exactly: |step + lr sign(g)| = lr * eps / (|g| + eps); plus the rounding of p - step."""
    rng = np.random.default_rng(seed)
    buf = make_buffer(rng)
    g = 10.0**log_scale * rng.standard_normal(buf.size)
    g[np.abs(g) < 1e-6] = 1e-6
    buf.grad[...] = g
    p0 = buf.data.copy()
    opt = Adam(buf, lr=lr)
    opt.step()
    step = buf.data - p0
    bound = lr * opt.eps / (np.abs(g) + opt.eps) + 8 * EPS64 * (np.abs(p0) + lr)
    assert np.all(np.abs(step + lr * np.sign(g)) <= bound)


def _adam_by_hand(p, grads, lr, b1, b2, eps):
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return p


@given(seed=seeds, steps=st.integers(1, 6), b1=st.floats(0.0, 0.99), b2=st.floats(0.5, 0.9999))
def test_adam_matches_the_formula_over_several_steps(seed, steps, b1, b2):
    rng = np.random.default_rng(seed)
    buf = make_buffer(rng)
    p0 = buf.data.copy()
    grads = [rng.standard_normal(buf.size) for _ in range(steps)]
    opt = Adam(buf, lr=1e-2, betas=(b1, b2), eps=1e-8)
    for g in grads:
        buf.grad[...] = g
        opt.step()
    expected = _adam_by_hand(p0, grads, 1e-2, b1, b2, 1e-8)
    # each step's update is lr * O(1 / (1 - b1)), computed to a few ulps
    np.testing.assert_allclose(buf.data, expected, rtol=0,
                               atol=64 * steps * EPS64 * (np.max(np.abs(p0)) + 1e-2 / (1 - b1) + 1))
    assert opt.t == steps


@pytest.mark.parametrize("impl", [kernels, reference], ids=["dispatched", "reference"])
def test_adam_update_kernel_matches_the_formula(impl, rng):
    p, g = rng.standard_normal(50), rng.standard_normal(50)
    m, v = 0.1 * rng.standard_normal(50), rng.uniform(0, 1, 50)
    p0, m0, v0 = p.copy(), m.copy(), v.copy()
    impl.adam_update(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 7)
    m1 = 0.9 * m0 + 0.1 * g
    v1 = 0.999 * v0 + 0.001 * g * g
    p1 = p0 - 1e-3 * (m1 / (1 - 0.9**7)) / (np.sqrt(v1 / (1 - 0.999**7)) + 1e-8)
    assert np.all(np.abs(m - m1) <= 8 * EPS64 * (np.abs(m0) + np.abs(g)))
    assert np.all(np.abs(v - v1) <= 8 * EPS64 * (v0 + g * g))
    assert np.all(np.abs(p - p1) <= 16 * EPS64 * (np.abs(p0) + 1))


def test_adam_converges_on_an_ill_conditioned_quadratic(rng):
    """f(p) = 1/2 sum a_i (p_i - c_i)^2 with curvatures a_i over four decades.  Adam's step is
    scale-free, so every coordinate approaches c_i; with lr decayed as lr0 / sqrt(t) the iterate
    settles within a few final step sizes of the minimum."""
    buf = ParamBuffer({"p": (20,)}, xp=np, dtype=np.float64)
    a = np.logspace(-2, 2, 20)
    c = rng.uniform(-3, 3, 20)
    buf.data[...] = c + rng.uniform(-2, 2, 20)
    f0 = 0.5 * np.sum(a * (buf.data - c) ** 2)
    opt = Adam(buf, lr=0.1)
    for t in range(1, 3001):
        opt.lr = 0.1 / math.sqrt(t)
        buf.grad[...] = a * (buf.data - c)
        opt.step()
    assert np.max(np.abs(buf.data - c)) < 0.05
    assert 0.5 * np.sum(a * (buf.data - c) ** 2) < 1e-4 * f0


# ----------------------------------------------------------------------------- SGD
@given(seed=seeds, lr=st.floats(1e-3, 1.0), momentum=st.floats(0.0, 0.99))
def test_sgd_momentum_two_steps_by_hand(seed, lr, momentum):
    """v1 = g0, p1 = p0 - lr g0;  v2 = mu g0 + g1, p2 = p1 - lr (mu g0 + g1)."""
    rng = np.random.default_rng(seed)
    buf = make_buffer(rng)
    p0 = buf.data.copy()
    g0, g1 = rng.standard_normal(buf.size), rng.standard_normal(buf.size)
    opt = SGD(buf, lr=lr, momentum=momentum)
    buf.grad[...] = g0
    opt.step()
    p1 = p0 - lr * g0
    tol = 8 * EPS64 * (np.abs(p0) + lr * (np.abs(g0) + np.abs(g1)))
    assert np.all(np.abs(buf.data - p1) <= tol)
    buf.grad[...] = g1
    opt.step()
    p2 = p1 - lr * (momentum * g0 + g1)
    assert np.all(np.abs(buf.data - p2) <= 2 * tol)


def test_sgd_without_momentum_is_plain_gradient_descent(rng):
    buf = make_buffer(rng)
    opt = SGD(buf, lr=0.1, momentum=0.0)
    for _ in range(3):
        p, g = buf.data.copy(), rng.standard_normal(buf.size)
        buf.grad[...] = g
        opt.step()
        assert np.all(np.abs(buf.data - (p - 0.1 * g)) <= 4 * EPS64 * (np.abs(p) + np.abs(g)))


# ----------------------------------------------------------------------------- clipping
@given(seed=seeds, log_norm=st.floats(-3, 3), max_norm=st.floats(0.01, 10.0))
def test_clip_grad_norm(seed, log_norm, max_norm):
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(17)
    g *= 10.0**log_norm / np.linalg.norm(g)
    buf = ParamBuffer({"g": (17,)}, xp=np, dtype=np.float64)
    buf.grad[...] = g
    norm = clip_grad_norm(buf.grad, max_norm)
    true_norm = np.linalg.norm(g)
    assert abs(float(norm) - true_norm) <= 32 * EPS64 * true_norm        # the norm before
    if true_norm > max_norm * (1 + 32 * EPS64):
        # g * max_norm / ||g||: same direction, length max_norm
        scale = max_norm / true_norm
        assert np.all(np.abs(buf.grad - g * scale) <= 64 * EPS64 * np.abs(g))
        assert abs(np.linalg.norm(buf.grad) - max_norm) <= 64 * EPS64 * max_norm
    elif true_norm < max_norm * (1 - 32 * EPS64):
        np.testing.assert_array_equal(buf.grad, g)                          # untouched
    assert np.linalg.norm(buf.grad) <= max_norm * (1 + 64 * EPS64) or true_norm <= max_norm


def test_clip_grad_norm_of_zero_gradient_and_float32():
    z = np.zeros(5)
    assert float(clip_grad_norm(z, 1.0)) == 0.0 and np.all(z == 0)
    g = np.full(4, 3.0, dtype=np.float32)                                  # norm 6
    norm = clip_grad_norm(g, 1.5)
    assert g.dtype == np.float32
    np.testing.assert_allclose(g, np.full(4, 0.75), rtol=4 * np.finfo(np.float32).eps)
    assert abs(float(norm) - 6.0) <= 1e-5


# ----------------------------------------------------------------------------- over a model
@pytest.mark.parametrize("name", ["adam", "sgd"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_optimizer_steps_the_whole_model_buffer_and_lowers_the_loss(name, dtype, rng):
    model = VAE(8, (6,), 2, dtype=dtype, seed=0)
    x = (rng.uniform(0, 1, (16, 8)) < 0.3).astype(dtype)
    eps = rng.standard_normal((1, 16, 2))
    opt = make_optimizer(name, model.buffer, lr=1e-2)
    before = model.buffer.data.copy()
    loss0, _ = model.loss_and_grads(x, eps=eps)
    opt.step()
    moved = model.buffer.data != before
    g = model.buffer.grad
    assert np.all(moved[g != 0])                           # every parameter with a gradient moved
    assert model.buffer.data.dtype == np.dtype(dtype)
    for _ in range(30):
        model.loss_and_grads(x, eps=eps)
        opt.step()
    assert model.loss(x, eps=eps) < loss0


@pytest.mark.parametrize("cls", [Adam, SGD])
def test_state_round_trip_resumes_exactly(cls, rng):
    a, b = make_buffer(rng), None
    b = ParamBuffer(a.shapes, xp=np, dtype=np.float64)
    grads = [rng.standard_normal(a.size) for _ in range(6)]
    opt_a = cls(a, lr=1e-2)
    for g in grads[:3]:
        a.grad[...] = g
        opt_a.step()
    b.data[...] = a.data
    opt_b = cls(b, lr=1e-2)
    arrays, scalars = opt_a.state()
    opt_b.load_state({k: v.copy() for k, v in arrays.items()}, dict(scalars))
    for g in grads[3:]:
        a.grad[...] = g
        b.grad[...] = g
        opt_a.step()
        opt_b.step()
    assert np.array_equal(a.data, b.data)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("lr", [0, -1e-3, float("nan"), float("inf"), "0.1"])
@pytest.mark.parametrize("cls", [Adam, SGD])
def test_bad_learning_rate(cls, lr, rng):
    with pytest.raises(MinivaeError) as e:
        cls(make_buffer(rng), lr=lr)
    assert "learning rate" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("momentum", [-0.1, 1.0, 1.5])
def test_bad_momentum(momentum, rng):
    with pytest.raises(MinivaeError) as e:
        SGD(make_buffer(rng), lr=0.1, momentum=momentum)
    assert "momentum" in str(e.value)


@pytest.mark.parametrize("betas", [(1.0, 0.999), (0.9, 1.0), (-0.1, 0.9)])
def test_bad_adam_betas(betas, rng):
    with pytest.raises(MinivaeError) as e:
        Adam(make_buffer(rng), betas=betas)
    assert "betas" in str(e.value)


def test_unknown_optimizer(rng):
    with pytest.raises(MinivaeError) as e:
        make_optimizer("rmsprop", make_buffer(rng), 1e-3)
    assert "optimizer" in str(e.value) and "rmsprop" in str(e.value) and "\n" not in str(e.value)


def test_numpy_scalars_are_accepted(rng):
    """A float32 learning rate passes TrainConfig.check, so the optimisers take it too."""
    a = Adam(make_buffer(rng), lr=np.float32(1e-3), betas=(np.float32(0.9), np.float64(0.999)),
             eps=np.float32(1e-8))
    assert type(a.lr) is float and abs(a.lr - 1e-3) < 1e-10 and type(a.eps) is float
    s = SGD(make_buffer(rng), lr=np.float64(0.1), momentum=np.float32(0.5))
    assert (s.lr, s.momentum) == (0.1, 0.5)
    assert make_optimizer("sgd", make_buffer(rng), np.int64(1)).lr == 1.0


@pytest.mark.parametrize("lr", [True, None, np.float32("nan")])
def test_bad_learning_rate_types(lr, rng):
    with pytest.raises(MinivaeError) as e:
        Adam(make_buffer(rng), lr=lr)
    assert "learning rate" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("momentum", ["0.5", None, float("nan"), True, np.float32(1.0)])
def test_bad_momentum_types(momentum, rng):
    with pytest.raises(MinivaeError) as e:
        SGD(make_buffer(rng), lr=0.1, momentum=momentum)
    assert "momentum" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("betas", ["ab", (0.9,), None, (0.9, "x"), (float("nan"), 0.9)])
def test_bad_adam_betas_types(betas, rng):
    with pytest.raises(MinivaeError) as e:
        Adam(make_buffer(rng), betas=betas)
    assert "betas" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("eps", [0.0, -1e-8, float("nan"), float("inf"), "1e-8", None])
def test_bad_adam_eps(eps, rng):
    with pytest.raises(MinivaeError) as e:
        Adam(make_buffer(rng), eps=eps)
    assert "eps" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("n", [1, 1000])
def test_clip_grad_norm_when_the_float32_squared_norm_overflows(n):
    """Every g_i = 1e20 is a finite float32 but ||g||^2 >= 1e40 is not: the norm is taken in
    float64 and g is scaled to length max_norm, not zeroed (inf -> scale 0)."""
    g = np.full(n, 1e20, dtype=np.float32)
    norm = clip_grad_norm(g, 2.0)
    assert abs(norm - 1e20 * math.sqrt(n)) <= 1e-6 * 1e20 * math.sqrt(n)   # float32 input
    assert g.dtype == np.float32 and np.all(g > 0)
    F32 = np.finfo(np.float32).eps
    np.testing.assert_allclose(g, np.full(n, 2.0 / math.sqrt(n)), rtol=4 * F32)
    assert abs(np.linalg.norm(g.astype(np.float64)) - 2.0) <= 8 * F32 * 2.0


def test_clip_grad_norm_leaves_a_nonfinite_gradient_alone():
    g = np.array([1.0, np.inf, 2.0], dtype=np.float32)
    assert not math.isfinite(clip_grad_norm(g, 1.0))
    np.testing.assert_array_equal(g, [1.0, np.inf, 2.0])


@pytest.mark.parametrize("max_norm", [-1.0, float("nan"), float("inf"), "1", None, True])
def test_clip_grad_norm_rejects_a_bad_bound(max_norm):
    with pytest.raises(MinivaeError) as e:
        clip_grad_norm(np.ones(3), max_norm)
    assert "max_norm" in str(e.value) and "\n" not in str(e.value)
