"""A public vector-Jacobian check: does a hand-written backward match the forward?

For y = f(x) with Jacobian J, a backward computes J^T v.  For random directions u (input space)
and v (output space) the identity

        <u, J^T v>  =  <J u, v>  ~  < (f(x + h u) - f(x - h u)) / (2h),  v >

must hold up to the central difference's error: truncation O(h^2 |f'''|) plus round-off of about
eps_machine * |f| * |v| / h.  One check costs two extra forward passes, whatever the size of x.
Run it in float64 (h = 1e-6 makes both errors ~1e-10 relative).

    from minivae.gradcheck import check_vjp
    layer = Linear(...float64 views...)
    check_vjp(layer.forward, layer.backward, x, rng)      # raises AssertionError on a mismatch
"""
import numpy as np

from .backend import get_array_module, to_host


def _as_tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def vjp_error(f, vjp, x, rng, h=1e-6):
    """(<u, J^T v>, finite-difference <J u, v>, tolerance) for random u, v.

    f: inputs -> output array; vjp: v -> gradient(s) with respect to the inputs (same structure
    as x; None entries are skipped).  x: an array or a tuple of arrays, float64.
    The forward is evaluated once at x before vjp is called, so layers may cache.
    """
    xs = _as_tuple(x)
    for a in xs:
        if a.dtype != np.float64:
            raise TypeError(f"gradient checks need float64 inputs, got {a.dtype}")
    xp = get_array_module(*xs)
    y = f(*xs)
    v = xp.asarray(rng.standard_normal(y.shape))
    grads = _as_tuple(vjp(v))
    grads = tuple(None if g is None else g.copy() for g in grads)
    us = [xp.asarray(rng.standard_normal(a.shape)) for a in xs]
    analytic = sum(float(xp.sum(u * g)) for u, g in zip(us, grads) if g is not None)
    plus = f(*[a + h * u if g is not None else a for a, u, g in zip(xs, us, grads)])
    plus = plus.copy()
    minus = f(*[a - h * u if g is not None else a for a, u, g in zip(xs, us, grads)])
    numeric = float(xp.sum((plus - minus) * v)) / (2 * h)
    # round-off: each output carries ~eps*|y| error, amplified by 1/h and weighted by |v|
    eps = np.finfo(np.float64).eps
    scale_y = float(xp.sum(xp.abs(y) * xp.abs(v)) + xp.sum(xp.abs(plus) * xp.abs(v)))
    scale_g = sum(float(xp.sqrt(xp.sum(u * u)) * xp.sqrt(xp.sum(g * g)))
                  for u, g in zip(us, grads) if g is not None)
    tol = 64 * eps * scale_y / h + 1e-6 * scale_g + 1e-12
    return analytic, numeric, tol


def check_vjp(f, vjp, x, rng, h=1e-6, trials=1):
    """Assert <u, J^T v> = <J u, v> (to the central difference's error) for random u, v."""
    for _ in range(trials):
        a, n, tol = vjp_error(f, vjp, x, rng, h)
        if not abs(a - n) <= tol:
            raise AssertionError(f"vector-Jacobian mismatch: backward gives {a!r}, finite "
                                 f"differences {n!r} (|diff| {abs(a - n):.3g} > tol {tol:.3g})")
    return a, n


def check_gradient(loss, grad, theta, rng, h=1e-6):
    """Assert a scalar loss's gradient: <u, grad> = (loss(theta + h u) - loss(theta - h u)) / 2h.

    loss: flat theta -> float; grad: flat gradient at theta (float64).
    """
    theta = to_host(theta) if get_array_module(theta) is np else theta
    xp = get_array_module(theta)
    u = xp.asarray(rng.standard_normal(theta.shape))
    analytic = float(xp.sum(u * grad))
    lp, lm = loss(theta + h * u), loss(theta - h * u)
    numeric = (lp - lm) / (2 * h)
    eps = np.finfo(np.float64).eps
    tol = 64 * eps * (abs(lp) + abs(lm)) / h + 1e-6 * float(xp.sqrt(xp.sum(u * u) * xp.sum(grad * grad))) + 1e-12
    if not abs(analytic - numeric) <= tol:
        raise AssertionError(f"gradient mismatch: analytic {analytic!r}, finite differences "
                             f"{numeric!r} (|diff| {abs(analytic - numeric):.3g} > tol {tol:.3g})")
    return analytic, numeric
