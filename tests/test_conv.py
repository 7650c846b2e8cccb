"""Conv2d, ConvTranspose2d, Reshape/Flatten: forward against a direct loop, backward against
central differences (float64, random shapes, strides, paddings and channel counts), and the
adjoint identity <Conv(x), y> = <x, ConvT(y)> to float64 round-off.

Round-off bounds: a sum of n products carries at most n * eps * (the sum of their magnitudes)
(the classical gamma_n bound), so an identity between two orderings of the same sum holds to
2 n eps sum|terms|; that is orders of magnitude below the O(1) error of any indexing mistake.
"""
import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

from minivae import conv
from minivae.conv import Conv2d, ConvTranspose2d, Flatten, Reshape
from minivae.errors import MinivaeError
from minivae.gradcheck import check_vjp

EPS = np.finfo(np.float64).eps
seeds = st.integers(0, 2**32 - 1)


@st.composite
def geometry(draw):
    """(B, C, O, H, W, K, S, P) with the kernel fitting the padded input."""
    K = draw(st.integers(1, 4))
    S = draw(st.integers(1, 3))
    P = draw(st.integers(0, K - 1))
    lo = max(1, K - 2 * P)
    H, W = draw(st.integers(lo, lo + 7)), draw(st.integers(lo, lo + 7))
    return (draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3)),
            H, W, K, S, P)


def loop_conv(x, W, b, S, P):
    """cs231n's conv_forward_naive: the definition, one output element at a time."""
    B, C, H, Wd = x.shape
    O, _, K, _ = W.shape
    xp = np.pad(x, ((0, 0), (0, 0), (P, P), (P, P)))
    Ho, Wo = (H + 2 * P - K) // S + 1, (Wd + 2 * P - K) // S + 1
    y = np.zeros((B, O, Ho, Wo))
    for n in range(B):
        for o in range(O):
            for i in range(Ho):
                for j in range(Wo):
                    y[n, o, i, j] = b[o] + np.sum(W[o] * xp[n, :, S * i:S * i + K, S * j:S * j + K])
    return y


def make_conv(O, C, K, S, P, rng, dtype=np.float64, need_dx=True):
    W = rng.standard_normal((O, C, K, K)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype)
    return Conv2d(W, b, np.zeros_like(W), np.zeros_like(b), S, P, need_dx=need_dx)


def make_convT(C, O, K, S, P, rng, op=0, dtype=np.float64):
    W = rng.standard_normal((C, O, K, K)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype)
    return ConvTranspose2d(W, b, np.zeros_like(W), np.zeros_like(b), S, P, output_padding=op)


def conv_and_input(g, seed):
    """(rng, a float64 Conv2d, an input x (B, C, H, W)) for a drawn geometry."""
    B, C, O, H, W, K, S, P = g
    rng = np.random.default_rng(seed)
    layer = make_conv(O, C, K, S, P, rng)
    return rng, layer, rng.standard_normal((B, C, H, W))


# ----------------------------------------------------------------------------- forward
@given(g=geometry(), seed=seeds)
def test_conv2d_forward_matches_direct_loop(g, seed):
    B, C, O, H, W, K, S, P = g
    rng, layer, x = conv_and_input(g, seed)
    y = layer.forward(x)
    expected = loop_conv(x, layer.W, layer.b, S, P)
    assert y.shape == expected.shape == (B, O, (H + 2 * P - K) // S + 1, (W + 2 * P - K) // S + 1)
    assert y.flags.c_contiguous
    bound = loop_conv(np.abs(x), np.abs(layer.W), np.abs(layer.b), S, P)
    n = C * K * K + 1
    assert np.all(np.abs(y - expected) <= 2 * n * EPS * bound)


@given(g=geometry(), seed=seeds)
def test_conv_transpose_forward_is_the_conv_input_gradient_by_loops(g, seed):
    """ConvT(y)[b,c,S i+p-P, S j+q-P] += W[o,c,p,q] y[b,o,i,j], written as a direct loop."""
    B, C, O, H, W, K, S, P = g
    rng = np.random.default_rng(seed)
    Ho, Wo = (H + 2 * P - K) // S + 1, (W + 2 * P - K) // S + 1
    assume((H + 2 * P - K) % S == (W + 2 * P - K) % S)
    op = (H + 2 * P - K) % S
    layer = make_convT(O, C, K, S, P, rng, op)
    y = rng.standard_normal((B, O, Ho, Wo))
    out = layer.forward(y)
    ref = np.zeros((B, C, H + 2 * P, W + 2 * P))
    for n in range(B):
        for o in range(O):
            for i in range(Ho):
                for j in range(Wo):
                    ref[n, :, S * i:S * i + K, S * j:S * j + K] += layer.W[o] * y[n, o, i, j]
    ref = ref[:, :, P:P + H, P:P + W] + layer.b[:, None, None]
    assert out.shape == (B, C, H, W)
    assert np.max(np.abs(out - ref)) <= 2 * (O * K * K + 1) * EPS * (
        np.sum(np.abs(layer.W)) * np.max(np.abs(y)) + np.max(np.abs(layer.b)))


# ----------------------------------------------------------------------------- adjoint
@given(g=geometry(), seed=seeds)
def test_adjoint_identity_to_float64_round_off(g, seed):
    """<Conv(x), y> = <x, ConvT(y)> with the same weights and zero biases."""
    B, C, O, H, W, K, S, P = g
    r = (H + 2 * P - K) % S
    assume(r == (W + 2 * P - K) % S)
    rng = np.random.default_rng(seed)
    Wt = rng.standard_normal((O, C, K, K))
    zc, zo = np.zeros(C), np.zeros(O)
    c = Conv2d(Wt, zo, np.zeros_like(Wt), zo.copy(), S, P)
    t = ConvTranspose2d(Wt, zc, np.zeros_like(Wt), zc.copy(), S, P, output_padding=r)
    x = rng.standard_normal((B, C, H, W))
    y = rng.standard_normal((B, O, (H + 2 * P - K) // S + 1, (W + 2 * P - K) // S + 1))
    lhs = float(np.sum(c.forward(x) * y))
    ty = t.forward(y)
    assert ty.shape == x.shape
    rhs = float(np.sum(x * ty))
    magnitude = float(np.sum(loop_conv(np.abs(x), np.abs(Wt), zo, S, P) * np.abs(y)))
    n_terms = B * O * y.shape[2] * y.shape[3] * C * K * K
    assert abs(lhs - rhs) <= 2 * n_terms * EPS * magnitude


# ----------------------------------------------------------------------------- backward
def _conv_of(layer):
    def f(x, W, b):
        return Conv2d(W, b, np.zeros_like(W), np.zeros_like(b), layer.stride,
                      layer.padding).forward(x)
    return f


def _vjp(layer):
    def vjp(v):
        dx = layer.backward(v)
        return dx, layer.dW, layer.db
    return vjp


@given(g=geometry(), seed=seeds)
def test_conv2d_backward_dx_dW_db(g, seed):
    rng, layer, x = conv_and_input(g, seed)
    f = _conv_of(layer)

    def fwd(x, W, b):                     # the layer under test caches for its own backward
        layer.forward(x)
        return f(x, W, b)
    check_vjp(fwd, _vjp(layer), (x, layer.W.copy(), layer.b.copy()), rng)


@given(g=geometry(), seed=seeds)
def test_conv_transpose_backward_dx_dW_db(g, seed):
    B, C, O, Hi, Wi, K, S, P = g
    rng = np.random.default_rng(seed)
    op = int(rng.integers(0, S))
    layer = make_convT(C, O, K, S, P, rng, op)
    assume((Hi - 1) * S - 2 * P + K + op >= 1 and (Wi - 1) * S - 2 * P + K + op >= 1)
    x = rng.standard_normal((B, C, Hi, Wi))

    def fwd(x, W, b):
        layer.forward(x)
        return ConvTranspose2d(W, b, np.zeros_like(W), np.zeros_like(b), S, P, op).forward(x)
    check_vjp(fwd, _vjp(layer), (x, layer.W.copy(), layer.b.copy()), rng)


@given(B=st.integers(1, 3), shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       seed=seeds)
def test_reshape_and_flatten_backward(B, shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, int(np.prod(shape))))
    r = Reshape(shape)
    check_vjp(r.forward, r.backward, x, rng)
    f = Flatten()
    x4 = rng.standard_normal((B, *shape))
    assert f.forward(x4).shape == (B, int(np.prod(shape)))
    check_vjp(f.forward, f.backward, x4, rng)


def test_gradients_are_written_not_accumulated_and_need_dx_false(rng):
    layer = make_conv(3, 2, 3, 2, 1, rng)
    x = rng.standard_normal((2, 2, 7, 7))
    dy = rng.standard_normal(layer.forward(x).shape)
    layer.backward(dy)
    dW, db = layer.dW.copy(), layer.db.copy()
    layer.forward(x)
    layer.backward(dy)
    np.testing.assert_array_equal(layer.dW, dW)
    np.testing.assert_array_equal(layer.db, db)
    first = Conv2d(layer.W, layer.b, np.zeros_like(dW), np.zeros_like(db), 2, 1, need_dx=False)
    first.forward(x)
    assert first.backward(dy) is None
    np.testing.assert_array_equal(first.dW, dW)


@pytest.mark.parametrize("which", ["conv", "convT"])
def test_chunked_batches_equal_one_chunk(which, rng, monkeypatch):
    """A column matrix above MAX_COLS is processed in chunks of images: same values."""
    def run():
        r = np.random.default_rng(7)
        if which == "conv":
            layer, x = make_conv(3, 2, 4, 2, 1, r), r.standard_normal((5, 2, 8, 8))
        else:
            layer, x = make_convT(3, 2, 4, 2, 1, r), r.standard_normal((5, 3, 4, 4))
        y = layer.forward(x)
        dx = layer.backward(r.standard_normal(y.shape))
        return y, dx, layer.dW.copy(), layer.db.copy()
    whole = run()
    monkeypatch.setattr(conv, "MAX_COLS", 2 * 16 * 16 + 1)       # two images' columns (or fewer)
    chunked = run()
    for a, b in zip(whole, chunked):
        np.testing.assert_allclose(a, b, rtol=0, atol=64 * EPS * np.max(np.abs(a)))


def test_float32_in_float32_out(rng):
    layer = make_conv(4, 1, 4, 2, 1, rng, dtype=np.float32)
    y = layer.forward(rng.standard_normal((2, 1, 8, 8)).astype(np.float32))
    dx = layer.backward(np.ones_like(y))
    t = make_convT(4, 1, 4, 2, 1, rng, dtype=np.float32)
    z = t.forward(y)
    dz = t.backward(np.ones_like(z))
    assert {a.dtype for a in (y, dx, z, dz, layer.dW, t.dW)} == {np.dtype(np.float32)}


def test_backward_without_forward_and_bad_input_fail_loudly(rng):
    layer = make_conv(2, 3, 3, 1, 1, rng)
    with pytest.raises(RuntimeError, match="without a forward"):
        layer.backward(np.zeros((1, 2, 4, 4)))
    with pytest.raises(MinivaeError, match=r"expects input \(B, 3, H, W\)"):
        layer.forward(np.zeros((1, 2, 4, 4)))
    with pytest.raises(MinivaeError, match="smaller than the 3x3 kernel"):
        make_conv(2, 3, 3, 1, 0, rng).forward(np.zeros((1, 3, 2, 2)))
    with pytest.raises(MinivaeError, match="padding must be smaller"):
        make_conv(2, 3, 3, 1, 3, rng)
    with pytest.raises(MinivaeError, match="output_padding must be smaller"):
        make_convT(2, 3, 3, 2, 1, rng, op=2)


@pytest.mark.parametrize("cls, shape, fan_in", [(Conv2d, (64, 8, 4, 4), 8 * 16),
                                                (ConvTranspose2d, (8, 64, 4, 4), 64 * 16)])
def test_init_is_pytorch_default(cls, shape, fan_in):
    """W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = W.shape[1] K K, drawn W then b."""
    W, b = np.empty(shape, np.float32), np.empty(shape[0 if cls is Conv2d else 1], np.float32)
    cls.init(W, b, np.random.default_rng(3))
    r = np.random.default_rng(3)
    bound = 1 / np.sqrt(fan_in)
    np.testing.assert_array_equal(W, r.uniform(-bound, bound, shape).astype(np.float32))
    np.testing.assert_array_equal(b, r.uniform(-bound, bound, b.shape).astype(np.float32))


# ----------------------------------------------------------------------------- the kernels
@given(g=geometry(), dtype=st.sampled_from([np.float32, np.float64]), seed=seeds)
def test_numpy_lowering_equals_the_reference_bit_for_bit(g, dtype, seed):
    """im2col is a copy on both paths (NumPy's strided view, the reference's slices); col2im adds
    each pixel's entries in the same (p, q) order in the Numba loop and in the reference's
    strided additions: so both agree exactly."""
    from minivae import kernels
    from minivae.kernels import reference
    B, C, _, H, W, K, S, P = g
    rng = np.random.default_rng(seed)
    Ho, Wo = (H + 2 * P - K) // S + 1, (W + 2 * P - K) // S + 1
    xpad = rng.standard_normal((B, C, H + 2 * P, W + 2 * P)).astype(dtype)
    assert kernels.active(xpad) == "numba"
    np.testing.assert_array_equal(kernels.im2col(xpad, K, S, Ho, Wo),       # copies: exact
                                  reference.im2col(xpad, K, S, Ho, Wo))
    cols = rng.standard_normal((C * K * K, B * Ho * Wo)).astype(dtype)
    a, b = np.full_like(xpad, np.nan), np.full_like(xpad, np.nan)      # zeroed by col2im
    np.testing.assert_array_equal(kernels.col2im(cols, a, K, S, Ho, Wo),
                                  reference.col2im(cols, b, K, S, Ho, Wo))


def test_layers_on_the_reference_kernels_match(rng):
    """The conv layers give the same values through the reference lowering (the CuPy path)."""
    from minivae import kernels

    def run():
        r = np.random.default_rng(11)
        c, t = make_conv(3, 2, 4, 2, 1, r), make_convT(3, 2, 4, 2, 1, r)
        x = r.standard_normal((2, 2, 8, 8))
        y = c.forward(x)
        z = t.forward(y)
        return z, c.backward(t.backward(np.ones_like(z))), c.dW.copy(), t.dW.copy()
    fast = run()
    with kernels.use("reference"):
        ref = run()
    for a, b in zip(fast, ref):
        np.testing.assert_array_equal(a, b)
