"""minivae.gradcheck itself: it must pass correct derivatives and catch wrong ones.

A gradient check that always passes would make every other gradient test in the suite vacuous,
so each wrong-derivative case below is one the checker must reject.  With one random direction a
wrong gradient g + d escapes only when |<u, d>| falls below the tolerance, which for the errors
used here (|d| ~ |g|) has probability ~ tol / |d| ~ 1e-6.
"""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minivae.gradcheck import check_gradient, check_vjp, vjp_error

dims = st.integers(1, 6)
seeds = st.integers(0, 2**32 - 1)


def linear_map(rng, m, n):
    A = rng.standard_normal((m, n))
    return A, (lambda x: x @ A.T), (lambda v: v @ A)           # f(x) = A x row-wise, J^T v


@given(B=dims, m=dims, n=dims, seed=seeds)
def test_check_vjp_passes_a_correct_linear_vjp(B, m, n, seed):
    rng = np.random.default_rng(seed)
    _, f, vjp = linear_map(rng, m, n)
    a, num = check_vjp(f, vjp, rng.standard_normal((B, n)), rng)
    assert abs(a - num) <= 1e-8 * (1 + abs(a))


@given(B=dims, m=dims, n=dims, seed=seeds, trials=st.integers(1, 3))
def test_check_vjp_passes_a_correct_nonlinear_vjp(B, m, n, seed, trials):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, n))
    f = lambda x: np.tanh(x @ A.T) * np.exp(0.1 * x.sum(axis=1, keepdims=True))  # noqa: E731
    x = rng.standard_normal((B, n))

    def vjp(v):                                             # by the product and chain rules
        t = np.tanh(x @ A.T)
        e = np.exp(0.1 * x.sum(axis=1, keepdims=True))
        return ((v * e * (1 - t * t)) @ A) + 0.1 * np.sum(v * t * e, axis=1, keepdims=True)

    check_vjp(f, vjp, x, rng, trials=trials)


WRONG = {                                                   # J^T v = v @ A is right
    "transposed": lambda A, v: v @ A.T,                     # (A square and not symmetric)
    "factor-two": lambda A, v: 2 * (v @ A),
    "sign": lambda A, v: -(v @ A),
    "dropped-row": lambda A, v: v[:, :-1] @ A[:-1],         # one output forgotten (m >= 2)
}


@pytest.mark.parametrize("kind", WRONG)
@given(B=dims, m=st.integers(2, 6), n=st.integers(2, 6), seed=seeds)
def test_check_vjp_rejects_a_wrong_vjp(kind, B, m, n, seed):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, m) if kind == "transposed" else (m, n))
    if kind == "transposed":
        A = A + np.triu(np.ones((m, m)))                    # clearly not symmetric
    x = rng.standard_normal((B, A.shape[1]))
    wrong = lambda v: WRONG[kind](A, v)                     # noqa: E731
    with pytest.raises(AssertionError, match="vector-Jacobian mismatch"):
        check_vjp(lambda x: x @ A.T, wrong, x, rng, trials=3)


@given(seed=seeds, rel=st.sampled_from([1e-3, 1e-2]))
def test_check_vjp_resolves_small_relative_errors(seed, rel):
    """A derivative off by 0.1% is caught: float64 central differences are good to ~1e-9."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.5, 2.0, (4, 5))
    with pytest.raises(AssertionError):
        check_vjp(np.sin, lambda v: (1 + rel) * v * np.cos(x), x, rng, trials=3)


def test_check_vjp_tuple_inputs_and_none_gradients(rng):
    """Several inputs: the VJP returns one gradient per input, None where it has none (that
    input is then held fixed)."""
    x, y = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    f = lambda x, y: x * y + np.sin(x)                           # noqa: E731
    check_vjp(f, lambda v: (v * (y + np.cos(x)), v * x), (x, y), rng)
    check_vjp(f, lambda v: (None, v * x), (x, y), rng)        # only y's gradient
    check_vjp(f, lambda v: (v * (y + np.cos(x)), None), (x, y), rng)
    with pytest.raises(AssertionError):
        check_vjp(f, lambda v: (v * y, v * x), (x, y), rng, trials=3)   # cos(x) forgotten


def test_check_vjp_needs_float64(rng):
    x = rng.standard_normal((2, 3)).astype(np.float32)
    with pytest.raises(TypeError, match="float64"):
        check_vjp(lambda x: 2 * x, lambda v: 2 * v, x, rng)


def test_vjp_error_reports_analytic_numeric_and_tolerance(rng):
    x = rng.standard_normal((3, 3))
    a, n, tol = vjp_error(lambda x: x**3, lambda v: 3 * x**2 * v, x, rng)
    assert 0 < tol < 1e-4 * (1 + abs(a))
    assert abs(a - n) <= tol


@given(n=st.integers(1, 30), seed=seeds)
def test_check_gradient_passes_and_rejects(n, seed):
    """loss(theta) = sum log(1 + theta^2) + (w . theta)^2; its gradient, then two wrong ones."""
    rng = np.random.default_rng(seed)
    theta, w = rng.standard_normal(n), rng.standard_normal(n)
    loss = lambda t: float(np.sum(np.log1p(t * t)) + np.dot(w, t) ** 2)      # noqa: E731
    grad = 2 * theta / (1 + theta**2) + 2 * np.dot(w, theta) * w
    check_gradient(loss, grad, theta, rng)
    for wrong in (2 * grad, grad + rng.standard_normal(n) * np.linalg.norm(grad)):
        with pytest.raises(AssertionError, match="gradient mismatch"):
            check_gradient(loss, wrong, theta, rng)


def test_check_gradient_leaves_theta_unchanged(rng):
    theta = rng.standard_normal(5)
    before = theta.copy()
    check_gradient(lambda t: float(np.sum(t**2)), 2 * theta, theta, rng)
    assert np.array_equal(theta, before)
