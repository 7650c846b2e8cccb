"""Layers: forward values against independent formulas, backward against central differences.

Every gradient check runs in float64 through minivae.gradcheck.check_vjp (the identity
<u, J^T v> = <J u, v> along random u, v), whose tolerance is the central difference's own error.
Kinked activations (relu, leaky_relu, elu) are kept 1e-4 away from 0 with ``assume``: the
perturbation h*u moves inputs by ~1e-6 * |u_i| < 1e-5, so no input crosses its kink.
"""
import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

from minivae import layers
from minivae.errors import MinivaeError
from minivae.gradcheck import check_vjp
from minivae.params import ParamBuffer

ACTS = ["relu", "leaky_relu", "tanh", "sigmoid", "softplus", "elu"]
KINKED = {"relu", "leaky_relu", "elu"}
KINK_MARGIN = 1e-4


def _sigmoid(x):
    return np.exp(-np.logaddexp(0.0, -x))          # relative error ~ |x| eps, no cancellation


# independent formulas (not the library's), float64
REFERENCE = {
    "relu": lambda x: np.maximum(x, 0.0),
    "leaky_relu": lambda x: np.where(x > 0, x, 0.01 * x),
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "softplus": lambda x: np.logaddexp(0.0, x),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
}

dims = st.integers(1, 6)
seeds = st.integers(0, 2**32 - 1)
scales = st.sampled_from([0.1, 1.0, 3.0, 10.0])


def make_linear(din, dout, rng, dtype=np.float64, need_dx=True):
    buf = ParamBuffer({"W": (din, dout), "b": (dout,)}, xp=np, dtype=dtype)
    W, b = buf.params["W"], buf.params["b"]
    layers.Linear.init(W, b, rng)
    return layers.Linear(W, b, buf.grads["W"], buf.grads["b"], need_dx=need_dx), buf


# ----------------------------------------------------------------------------- Linear
@given(B=dims, Din=dims, Dout=dims, seed=seeds)
def test_linear_forward_is_x_at_W_plus_b(B, Din, Dout, seed):
    rng = np.random.default_rng(seed)
    layer, buf = make_linear(Din, Dout, rng)
    x = rng.standard_normal((B, Din))
    y = layer.forward(x)
    W, b = buf.params["W"], buf.params["b"]
    expected = np.einsum("bi,ij->bj", x, W) + b
    # a dot product of Din terms: |error| <= Din * eps * sum |x_i W_ij| (+ |b|)
    bound = (Din + 1) * np.finfo(np.float64).eps * (np.abs(x) @ np.abs(W) + np.abs(b))
    assert y.shape == (B, Dout)
    assert np.all(np.abs(y - expected) <= 2 * bound)


@given(B=dims, Din=dims, Dout=dims, seed=seeds)
def test_linear_backward_dx(B, Din, Dout, seed):
    rng = np.random.default_rng(seed)
    layer, _ = make_linear(Din, Dout, rng)
    check_vjp(layer.forward, layer.backward, rng.standard_normal((B, Din)), rng)


@given(B=dims, Din=dims, Dout=dims, seed=seeds, need_dx=st.booleans())
def test_linear_backward_dW_db_dx_together(B, Din, Dout, seed, need_dx):
    """W and b as inputs of a function: f(x, W, b) = layer.forward(x) with W, b written in."""
    rng = np.random.default_rng(seed)
    layer, buf = make_linear(Din, Dout, rng, need_dx=need_dx)

    def f(x, W, b):
        buf.params["W"][...] = W
        buf.params["b"][...] = b
        return layer.forward(x)

    def vjp(v):
        dx = layer.backward(v)
        if not need_dx:
            assert dx is None
        return dx, buf.grads["W"].copy(), buf.grads["b"].copy()

    x = rng.standard_normal((B, Din))
    W = rng.standard_normal((Din, Dout))
    b = rng.standard_normal(Dout)
    check_vjp(f, vjp, (x, W, b), rng)


@given(B=dims, Din=dims, Dout=dims, seed=seeds)
def test_linear_need_dx_false_returns_none_and_still_writes_gradients(B, Din, Dout, seed):
    rng = np.random.default_rng(seed)
    layer, buf = make_linear(Din, Dout, rng, need_dx=False)
    ref, ref_buf = make_linear(Din, Dout, np.random.default_rng(seed))
    x, dy = rng.standard_normal((B, Din)), rng.standard_normal((B, Dout))
    layer.forward(x)
    ref.forward(x)
    assert layer.backward(dy) is None
    assert ref.backward(dy) is not None
    assert np.array_equal(buf.grad, ref_buf.grad)


def test_linear_gradients_are_written_not_accumulated(rng):
    layer, buf = make_linear(4, 3, rng)
    x, dy = rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
    layer.forward(x)
    layer.backward(dy)
    first = buf.grad.copy()
    layer.forward(x)
    layer.backward(dy)
    assert np.array_equal(buf.grad, first)


def test_linear_second_backward_without_forward_raises(rng):
    layer, _ = make_linear(3, 2, rng)
    layer.forward(rng.standard_normal((4, 3)))
    layer.backward(rng.standard_normal((4, 2)))
    with pytest.raises((RuntimeError, MinivaeError)):
        layer.backward(rng.standard_normal((4, 2)))


def test_linear_backward_before_any_forward_raises(rng):
    layer, _ = make_linear(3, 2, rng)
    with pytest.raises((RuntimeError, MinivaeError)):
        layer.backward(rng.standard_normal((4, 2)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_preserves_dtype(dtype, rng):
    layer, buf = make_linear(4, 3, rng, dtype=dtype)
    x = rng.standard_normal((5, 4)).astype(dtype)
    y = layer.forward(x)
    dx = layer.backward(np.ones_like(y))
    assert y.dtype == dtype and dx.dtype == dtype
    assert buf.grad.dtype == dtype and buf.data.dtype == dtype


# ----------------------------------------------------------------------------- activations
@pytest.mark.parametrize("name", ACTS)
@given(B=dims, D=dims, seed=seeds, scale=scales)
def test_activation_forward_matches_formula(name, B, D, seed, scale):
    rng = np.random.default_rng(seed)
    x = scale * rng.standard_normal((B, D))
    y = layers.activation(name).forward(x)
    expected = REFERENCE[name](x)
    # each formula is a few correctly rounded operations: relative error <= ~|x| * 8 eps
    # (sigmoid through exp(-log(1 + e^-x)) carries |x| eps)
    tol = 8 * np.finfo(np.float64).eps * (1 + np.abs(x)) * np.maximum(np.abs(expected), 1e-300)
    assert y.shape == x.shape
    assert np.all(np.abs(y - expected) <= tol)


@pytest.mark.parametrize("name", ACTS)
@given(B=dims, D=dims, seed=seeds, scale=scales)
def test_activation_backward(name, B, D, seed, scale):
    rng = np.random.default_rng(seed)
    x = scale * rng.standard_normal((B, D))
    if name in KINKED:
        assume(np.min(np.abs(x)) > KINK_MARGIN)
    layer = layers.activation(name)
    check_vjp(layer.forward, layer.backward, x, rng)


def test_activation_derivative_on_both_sides_of_the_kink():
    """f'(x) from the cached output, checked at one point on each side for the kinked ones."""
    x = np.array([[-2.0, 2.0]])
    expected = {"relu": [0.0, 1.0], "leaky_relu": [0.01, 1.0], "elu": [np.exp(-2.0), 1.0]}
    for name, d in expected.items():
        layer = layers.activation(name)
        layer.forward(x)
        np.testing.assert_allclose(layer.backward(np.ones_like(x))[0], d, rtol=1e-15)


@pytest.mark.parametrize("name", ACTS)
def test_activation_second_backward_without_forward_raises(name, rng):
    layer = layers.activation(name)
    x = rng.standard_normal((3, 4))
    layer.forward(x)
    layer.backward(np.ones_like(x))
    with pytest.raises((RuntimeError, MinivaeError)):
        layer.backward(np.ones_like(x))


@pytest.mark.parametrize("name", ACTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_preserves_dtype(name, dtype, rng):
    layer = layers.activation(name)
    x = rng.standard_normal((3, 4)).astype(dtype)
    y = layer.forward(x)
    dx = layer.backward(np.ones_like(y))
    assert y.dtype == dtype and dx.dtype == dtype


@pytest.mark.parametrize("name", ACTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_is_stable_at_extreme_inputs(name, dtype):
    """No overflow, no NaN, no warning at |x| = 1e4 (exp(1e4) overflows in any float)."""
    x = np.array([[-1e4, -100.0, 0.5, 100.0, 1e4]], dtype=dtype)
    layer = layers.activation(name)
    # underflow (exp(-1e4) -> 0) is the correct answer there, so only it is allowed
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        y = layer.forward(x)
        dx = layer.backward(np.ones_like(x))
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    np.testing.assert_allclose(y.astype(np.float64), REFERENCE[name](x.astype(np.float64)),
                               rtol=2 * np.finfo(dtype).eps,
                               atol=np.finfo(dtype).tiny)        # subnormals lose relative bits


def test_unknown_activation_names_the_argument():
    with pytest.raises(MinivaeError) as e:
        layers.activation("swish")
    assert "activation" in str(e.value) and "swish" in str(e.value)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- MLP
def _mlp_reference(buf, prefix, sizes, act, x):
    """The MLP by hand from the named parameters: Linear -> act -> ... -> Linear (no last act)."""
    pre = []
    n = len(sizes) - 1
    for i in range(n):
        x = x @ buf.params[f"{prefix}.{i}.W"] + buf.params[f"{prefix}.{i}.b"]
        if i < n - 1:
            pre.append(x)
            x = REFERENCE[act](x)
    return x, pre


mlp_sizes = st.lists(st.integers(1, 5), min_size=2, max_size=4)


@given(sizes=mlp_sizes, act=st.sampled_from(ACTS), B=dims, seed=seeds,
       need_input_grad=st.booleans())
def test_mlp_over_a_param_buffer(sizes, act, B, seed, need_input_grad):
    """Forward against a hand-written MLP; backward (dx and every parameter at once, through the
    flat buffers) against central differences."""
    rng = np.random.default_rng(seed)
    shapes = layers.mlp_shapes("net", sizes)
    assert list(shapes) == [f"net.{i}.{p}" for i in range(len(sizes) - 1) for p in "Wb"]
    buf = ParamBuffer(shapes, xp=np, dtype=np.float64)
    buf.data[...] = rng.standard_normal(buf.size)
    mlp = layers.build_mlp(buf, "net", sizes, act, need_input_grad=need_input_grad)
    x = rng.standard_normal((B, sizes[0]))

    expected, pre = _mlp_reference(buf, "net", sizes, act, x)
    if act in KINKED and pre:
        assume(min(np.min(np.abs(p)) for p in pre) > KINK_MARGIN)
    y = mlp.forward(x)
    assert y.shape == (B, sizes[-1])
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12 * (1 + np.max(np.abs(expected))))

    def f(x, theta):
        buf.data[...] = theta
        return mlp.forward(x)

    def vjp(v):
        dx = mlp.backward(v)
        assert (dx is None) == (not need_input_grad)
        return dx, buf.grad.copy()

    check_vjp(f, vjp, (x, buf.data.copy()), rng)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mlp_preserves_dtype(dtype, rng):
    sizes = (4, 3, 2)
    buf = ParamBuffer(layers.mlp_shapes("m", sizes), xp=np, dtype=dtype)
    buf.data[...] = rng.standard_normal(buf.size)
    mlp = layers.build_mlp(buf, "m", sizes, "tanh")
    y = mlp.forward(rng.standard_normal((5, 4)).astype(dtype))
    dx = mlp.backward(np.ones_like(y))
    assert y.dtype == dtype and dx.dtype == dtype and buf.grad.dtype == dtype
