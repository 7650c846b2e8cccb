"""Numba kernels for NumPy arrays: each hot elementwise chain of a training step in one pass.

Design requirements:

* Same values as ``reference.py`` (the specification) up to float round-off; the tests in
  ``tests/test_kernels.py`` compare every kernel with it in float32 and float64.
* ``@njit(cache=True)``: nothing is compiled at import; the first call compiles (a few seconds)
  and writes the machine code to ``__pycache__``, so later processes load it in milliseconds.
* ``error_model="numpy"``: a float division never raises (Python's ZeroDivisionError check would
  stop LLVM from vectorising the loops); ``fastmath`` stays off, so no reassociation: results do
  not depend on the vector width.
* Serial.  On the 2-core machines this is written for, a ``parallel=True`` kernel between two
  multithreaded OpenBLAS GEMMs made the step several times slower (the two thread pools fight
  for the cores); one thread per elementwise pass measured best.  ``nogil=True``: a kernel
  releases the GIL, so two Python threads can run kernels at once (``minivae.threads.run_parts``:
  the two halves of a large evaluation pass, each with one BLAS thread).
* Every kernel writes into caller-given output arrays (``out=``-style arguments), so a training
  step reuses its buffers and allocates nothing.

float32 exp and log1p.  Numba calls the C library's scalar ``expf``/``log1pf``, and a loop that
calls a function cannot be vectorised.  For float32 the exponentials of the Bernoulli
likelihood, sigmoid, softplus, tanh and the reparameterisation (std, KL) therefore use the
Cephes polynomial approximations below (written in plain arithmetic, which LLVM vectorises;
about 1-2 ulp), float64 keeps ``math``:
    exp(-a), a >= 0:  a = n ln2 + r, |r| <= ln2/2;  exp(-a) = 2^-n * P(-r)   (0 below 2^-126)
    exp(x), expm1(x): the same for any sign; expm1 by its Taylor polynomial for |x| < ln2/2
    log1p(e), e in [0, 1]:  s = e / (2 + e) in [0, 1/3];  log1p(e) = 2 atanh(s)
                            = 2 s (1 + s^2/3 + s^4/5 + ... + s^12/13)   (next term < 2^-26)
    tanh(x):  |x| < 0.625: Cephes' odd polynomial;  else sign(x) (1 - e) / (1 + e), e = exp(-2|x|)

Shapes: S samples, B batch, Z latent, D data, H hidden.
"""
import math

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import types
from numba.extending import intrinsic, overload

_jit = dict(cache=True, error_model="numpy", fastmath=False, nogil=True)
f32 = np.float32


# ----------------------------------------------------------------------------- scalar helpers
@intrinsic
def _int_bits_as_f32(typingctx, i):
    """The float32 whose IEEE bits are the low 32 bits of the integer i (a bitcast)."""
    if not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(builder.trunc(args[0], ir.IntType(32)), ir.FloatType())
    return types.float32(i), codegen


@njit(**_jit)
def _exp_neg_f32(a):
    """exp(-a) for float32 a >= 0 (Cephes expf); 0 where the result would be subnormal."""
    x = -min(a, f32(87.33654))      # exp(-87.33654) is float32's smallest normal
    n = np.floor(x * f32(1.44269504088896341) + f32(0.5))
    r = x - n * f32(0.693359375) + n * f32(2.12194440e-4)
    p = f32(1.9875691500e-4)
    p = p * r + f32(1.3981999507e-3)
    p = p * r + f32(8.3334519073e-3)
    p = p * r + f32(4.1665795894e-2)
    p = p * r + f32(1.6666665459e-1)
    p = p * r + f32(5.0000001201e-1)
    p = p * r * r + r + f32(1.0)
    e = p * _int_bits_as_f32((np.int64(n) + 127) << 23)
    return e if not (a >= f32(87.33654)) else f32(0.0)      # NaN stays NaN


@njit(**_jit)
def _log1p_unit_f32(e):
    """log1p(e) for float32 e in [0, 1] as 2 atanh(e / (2 + e))."""
    s = e / (f32(2.0) + e)
    s2 = s * s
    p = f32(1.0 / 13.0)
    p = p * s2 + f32(1.0 / 11.0)
    p = p * s2 + f32(1.0 / 9.0)
    p = p * s2 + f32(1.0 / 7.0)
    p = p * s2 + f32(1.0 / 5.0)
    p = p * s2 + f32(1.0 / 3.0)
    p = p * s2 + f32(1.0)
    return f32(2.0) * s * p


@njit(**_jit)
def _tanh_f32(x):
    a = abs(x)
    z = x * x
    p = f32(-5.70498872745e-3)
    p = p * z + f32(2.06390887954e-2)
    p = p * z - f32(5.37397155531e-2)
    p = p * z + f32(1.33314422036e-1)
    p = p * z - f32(3.33332819422e-1)
    small = p * z * x + x
    e = _exp_neg_f32(f32(2.0) * a)
    big = (f32(1.0) - e) / (f32(1.0) + e)
    big = big if x >= 0 else -big
    return small if a < f32(0.625) else big


@njit(**_jit)
def _exp_f32(x):
    """exp(x) for any float32 x (Cephes expf, as _exp_neg_f32; 2^n applied in two halves so
    that n = 127 does not overflow): 0 below float32's smallest normal (x < -87.34), +inf above
    its largest value (x > 88.72), NaN stays NaN."""
    xc = min(max(x, f32(-87.33654)), f32(88.72283))
    n = np.floor(xc * f32(1.44269504088896341) + f32(0.5))
    r = xc - n * f32(0.693359375) + n * f32(2.12194440e-4)
    p = f32(1.9875691500e-4)
    p = p * r + f32(1.3981999507e-3)
    p = p * r + f32(8.3334519073e-3)
    p = p * r + f32(4.1665795894e-2)
    p = p * r + f32(1.6666665459e-1)
    p = p * r + f32(5.0000001201e-1)
    p = p * r * r + r + f32(1.0)
    ni = np.int64(n)
    n1 = ni >> 1
    e = (p * _int_bits_as_f32((n1 + 127) << 23)) * _int_bits_as_f32((ni - n1 + 127) << 23)
    e = e if x >= f32(-87.33654) else f32(0.0)
    e = e if x <= f32(88.72283) else f32(np.inf)
    return e if x == x else x


@njit(**_jit)
def _expm1_f32(x):
    """expm1(x) for float32 x: its Taylor polynomial to x^8 for |x| < ln2 / 2 (the next term
    is < 2e-10 relative), else exp(x) - 1 (|exp(x) - 1| > 0.29 there, so the subtraction loses
    under 2 bits); exact for the tiny x of a collapsed unit's log-variance."""
    p = f32(1.0 / 40320.0)
    p = p * x + f32(1.0 / 5040.0)
    p = p * x + f32(1.0 / 720.0)
    p = p * x + f32(1.0 / 120.0)
    p = p * x + f32(1.0 / 24.0)
    p = p * x + f32(1.0 / 6.0)
    p = p * x + f32(0.5)
    small = (p * x) * x + x
    big = _exp_f32(x) - f32(1.0)
    return small if abs(x) < f32(0.34657359) else big


def _exp(x):
    """exp(x): fast polynomial for float32, the C library for float64."""


def _expm1(x):
    """expm1(x): fast polynomial for float32, the C library for float64."""


def _exp_neg(a):
    """exp(-a), a >= 0: fast polynomial for float32, the C library for float64."""


def _log1p_unit(e):
    """log1p(e), e in [0, 1]."""


def _tanh(x):
    """tanh(x)."""


@overload(_exp)
def _exp_impl(x):
    if x == types.float32:
        return lambda x: _exp_f32(x)
    return lambda x: math.exp(x)


@overload(_expm1)
def _expm1_impl(x):
    if x == types.float32:
        return lambda x: _expm1_f32(x)
    return lambda x: math.expm1(x)


@overload(_exp_neg)
def _exp_neg_impl(a):
    if a == types.float32:
        return lambda a: _exp_neg_f32(a)
    return lambda a: math.exp(-a)


@overload(_log1p_unit)
def _log1p_unit_impl(e):
    if e == types.float32:
        return lambda e: _log1p_unit_f32(e)
    return lambda e: math.log1p(e)


@overload(_tanh)
def _tanh_impl(x):
    if x == types.float32:
        return lambda x: _tanh_f32(x)
    return lambda x: math.tanh(x)


@njit(**_jit)
def _lane_sum(t, n, acc):
    """sum(t[:n]) with 16 interleaved partial sums in acc (vectorisable; no reassociation
    needed).  acc: a scratch array of 16, passed in so the per-row sum allocates nothing."""
    for k in range(16):
        acc[k] = 0
    m = n - n % 16
    for j in range(0, m, 16):
        for k in range(16):
            acc[k] += t[j + k]
    s = acc[0]
    for k in range(1, 16):
        s += acc[k]
    for j in range(m, n):
        s += t[j]
    return s


# ----------------------------------------------------------------------------- activations
# Forward: y = f(h + b) for h (N, H), b (H,).  Backward: dx = dy * g(y); when db has length H
# (else length 0) also db = dx.sum(0), the bias gradient of the Linear layer before.  out may be h
# (forward) or dy (backward): every element is read before it is written.

@njit(**_jit)
def bias_add(h, b, out):
    for i in range(h.shape[0]):
        for j in range(h.shape[1]):
            out[i, j] = h[i, j] + b[j]


@njit(**_jit)
def bias_add_inplace(h, b):
    """h += b: its own kernel, since bias_add(h, b, out=h) aliases and is not vectorised
    (2.3x slower on a 10,000 x 784 block)."""
    for i in range(h.shape[0]):
        for j in range(h.shape[1]):
            h[i, j] += b[j]


@njit(**_jit)
def bias_relu(h, b, out):
    for i in range(h.shape[0]):
        for j in range(h.shape[1]):
            v = h[i, j] + b[j]
            out[i, j] = v if not (v <= 0) else f32(0.0)     # NaN stays NaN, as in the reference


@njit(**_jit)
def bias_leaky_relu(h, b, out, slope):
    for i in range(h.shape[0]):
        for j in range(h.shape[1]):
            v = h[i, j] + b[j]
            out[i, j] = v if v > 0 else v * slope


@njit(**_jit)
def bias_tanh(h, b, out):
    for i in range(h.shape[0]):
        for j in range(h.shape[1]):
            out[i, j] = _tanh(h[i, j] + b[j])


@njit(**_jit)
def bias_sigmoid(h, b, out):
    one = f32(1.0)
    for i in range(h.shape[0]):
        for j in range(h.shape[1]):
            v = h[i, j] + b[j]
            e = _exp_neg(abs(v))
            s = one / (one + e)
            out[i, j] = s if v >= 0 else e * s


@njit(**_jit)
def bias_softplus(h, b, out):
    for i in range(h.shape[0]):
        for j in range(h.shape[1]):
            v = h[i, j] + b[j]
            out[i, j] = (v if v > 0 else f32(0.0)) + _log1p_unit(_exp_neg(abs(v)))


@njit(**_jit)
def bias_elu(h, b, out, alpha):
    for i in range(h.shape[0]):
        for j in range(h.shape[1]):
            v = h[i, j] + b[j]
            out[i, j] = v if v > 0 else alpha * math.expm1(min(v, f32(0.0)))


@njit(**_jit)
def _db_init(db, n):
    for j in range(n):
        db[j] = 0


def _backward_kernel(derivative):
    """The activation backward for one f: out = dy * f'(x), with f' written through the cached
    output y as derivative(y, p) (p: the activation's parameter, or unused), and the previous
    layer's bias gradient db (length 0 to skip it) summed in the same pass."""
    @njit(**_jit)
    def kernel(dy, y, out, db, p):
        H = dy.shape[1]
        acc = db.shape[0] == H
        if acc:
            _db_init(db, H)
        for i in range(dy.shape[0]):
            for j in range(H):
                g = dy[i, j] * derivative(y[i, j], p)
                out[i, j] = g
                if acc:
                    db[j] += g
    return kernel


@njit(**_jit)
def _d_relu(v, p):
    return f32(1.0) if v > 0 else f32(0.0)


@njit(**_jit)
def _d_leaky_relu(v, slope):
    return f32(1.0) if v > 0 else slope


@njit(**_jit)
def _d_tanh(v, p):
    return f32(1.0) - v * v


@njit(**_jit)
def _d_sigmoid(v, p):
    return v * (f32(1.0) - v)


@njit(**_jit)
def _d_softplus(v, p):
    return -math.expm1(-v)


@njit(**_jit)
def _d_elu(v, alpha):
    return f32(1.0) if v > 0 else v + alpha


back_relu = _backward_kernel(_d_relu)
back_leaky_relu = _backward_kernel(_d_leaky_relu)
back_tanh = _backward_kernel(_d_tanh)
back_sigmoid = _backward_kernel(_d_sigmoid)
back_softplus = _backward_kernel(_d_softplus)
back_elu = _backward_kernel(_d_elu)


# ----------------------------------------------------------------------------- q(z|x)
@njit(**_jit)
def reparam_kl(mu, logvar, eps, z, std, kl):
    """z = mu + exp(logvar/2) eps;  kl_b = 1/2 sum_j (mu^2 + expm1(logvar) - logvar).

    mu, logvar, std: (B, Z);  eps, z: (S, B, Z);  kl: (B,).  Per row, the terms go into a
    scratch row first (a loop that vectorises) and are summed by _lane_sum."""
    S, B, Z = eps.shape
    half = f32(0.5)
    t = np.empty(Z, mu.dtype)
    acc16 = np.empty(16, mu.dtype)
    for b in range(B):
        for j in range(Z):
            lv = logvar[b, j]
            m = mu[b, j]
            std[b, j] = _exp(lv * half)
            t[j] = m * m + (_expm1(lv) - lv)        # expm1: exact for collapsed units
        kl[b] = half * _lane_sum(t, Z, acc16)
    for s_ in range(S):
        for b in range(B):
            for j in range(Z):
                z[s_, b, j] = mu[b, j] + std[b, j] * eps[s_, b, j]


@njit(**_jit)
def reparam_kl_backward(dz, eps, std, mu, logvar, w, dmu, dlogvar):
    """dmu = sum_s dz + w mu;  dlogvar = sum_s dz eps std / 2 + w expm1(logvar) / 2.
    The sums over s run in s order, row by row (each loop over j vectorises)."""
    S, B, Z = dz.shape
    half = f32(0.5)
    a = np.empty(Z, dz.dtype)
    c = np.empty(Z, dz.dtype)
    for b in range(B):
        for j in range(Z):
            a[j] = 0
            c[j] = 0
        for s_ in range(S):
            for j in range(Z):
                a[j] += dz[s_, b, j]
                c[j] += dz[s_, b, j] * eps[s_, b, j] * std[b, j] * half
        for j in range(Z):
            dmu[b, j] = a[j] + w * mu[b, j]
            dlogvar[b, j] = c[j] + w * (_expm1(logvar[b, j]) * half)


# ----------------------------------------------------------------------------- p(x|z)
@njit(**_jit)
def bernoulli_nll_grad(logits, bias, x, scale, nll, grad, db):
    """nll[s, b] = sum_d softplus(l) - x l;  grad = scale (sigmoid(l) - x), may be logits itself;
    l = logits[s, b, d] + bias[d] (the decoder's last bias, added here rather than in a pass of
    its own; zeros for none).

    logits, grad: (S, B, D); bias: (D,); x: (B, D); nll: (S, B); db: (D,) receives grad summed
    over (s, b) (the bias gradient of the layer that produced the logits), or length 0 to skip it."""
    S, B, D = logits.shape
    one = f32(1.0)
    t = np.empty(D, logits.dtype)
    e = np.empty(D, logits.dtype)
    lb = np.empty(D, logits.dtype)
    dsum = np.zeros(D, logits.dtype)
    acc16 = np.empty(16, logits.dtype)
    for s_ in range(S):
        for b in range(B):
            # two passes over the row (in L1): exp(-|l|) alone vectorises, the fused body then
            # does too; one pass measured 1.8x slower
            for d in range(D):
                l = logits[s_, b, d] + bias[d]
                lb[d] = l
                e[d] = _exp_neg(abs(l))
            for d in range(D):
                l = lb[d]
                xv = x[b, d]
                ed = e[d]
                t[d] = ((l if l > 0 else f32(0.0)) + _log1p_unit(ed)) - xv * l
                q = one / (one + ed)
                g = scale * ((q if l >= 0 else ed * q) - xv)
                grad[s_, b, d] = g
                dsum[d] += g
            nll[s_, b] = _lane_sum(t, D, acc16)
    if db.shape[0] == D:
        for d in range(D):
            db[d] = dsum[d]


@njit(**_jit)
def bernoulli_nll(logits, bias, x, nll):
    """nll[s, b] = sum_d softplus(l) - x l,  l = logits + bias   logits: (S, B, D); bias: (D,);
    x: (B, D); nll: (S, B)."""
    S, B, D = logits.shape
    t = np.empty(D, logits.dtype)
    e = np.empty(D, logits.dtype)
    lb = np.empty(D, logits.dtype)
    acc16 = np.empty(16, logits.dtype)
    for s_ in range(S):
        for b in range(B):
            for d in range(D):                     # two passes: see bernoulli_nll_grad
                l = logits[s_, b, d] + bias[d]
                lb[d] = l
                e[d] = _exp_neg(abs(l))
            for d in range(D):
                l = lb[d]
                t[d] = ((l if l > 0 else f32(0.0)) + _log1p_unit(e[d])) - x[b, d] * l
            nll[s_, b] = _lane_sum(t, D, acc16)


@njit(**_jit)
def gaussian_nll_grad(mean, x, log_sigma, scale, half_log2pi, nll, dmean, dlogsig):
    """nll[s, b] = sum_d r^2/2 + log sigma_d + log(2 pi)/2, r = (x - m)/sigma_d;
    dmean = scale (m - x)/sigma_d^2;  dlogsig = scale (1 - (x - m)^2/sigma_d^2).

    mean, dmean, dlogsig: (S, B, D); x: (B, D); log_sigma: (D,) (broadcast by the caller)."""
    S, B, D = mean.shape
    half = f32(0.5)
    inv_sig = np.empty(D, mean.dtype)
    inv_var = np.empty(D, mean.dtype)
    for d in range(D):
        inv_sig[d] = math.exp(-log_sigma[d])
        inv_var[d] = math.exp(-f32(2.0) * log_sigma[d])
    t = np.empty(D, mean.dtype)
    acc16 = np.empty(16, mean.dtype)
    for s_ in range(S):
        for b in range(B):
            for d in range(D):
                m = mean[s_, b, d]
                r = (x[b, d] - m) * inv_sig[d]
                t[d] = half * r * r + log_sigma[d] + half_log2pi
                dd = m - x[b, d]
                dmean[s_, b, d] = scale * (dd * inv_var[d])
                dlogsig[s_, b, d] = scale * (f32(1.0) - dd * dd * inv_var[d])
            nll[s_, b] = _lane_sum(t, D, acc16)


@njit(**_jit)
def gaussian_logvar_nll_grad(out, x, scales, log_var_min, floored, sigmoid_mean, half_log2pi,
                             nll, dout):
    """Kingma & Welling's head, one pass (the formulas of reference.gaussian_logvar_nll_grad):
    out, dout: (S, B, 2D) = [a | r];  x: (B, D);  scales: (S, B);  nll: (S, B).
        m = a or sigmoid(a);  v = logaddexp(r, log_var_min) when floored, else r
        nll = sum_d ((x - m)^2 e^-v + v + log 2 pi) / 2
        d/da = s (m - x) e^-v [m (1 - m)];  d/dr = s (1 - (x - m)^2 e^-v) / 2 * e^(r - v)"""
    S, B, D2 = out.shape
    D = D2 // 2
    half, one = out.dtype.type(0.5), out.dtype.type(1.0)
    t = np.empty(D, out.dtype)
    acc16 = np.empty(16, out.dtype)
    for s_ in range(S):
        for b in range(B):
            sc = scales[s_, b]
            for d in range(D):
                a = out[s_, b, d]
                r = out[s_, b, D + d]
                if sigmoid_mean:
                    e = math.exp(-abs(a))
                    m = one / (one + e) if a >= 0 else e / (one + e)
                else:
                    m = a
                if floored:
                    hi = r if r > log_var_min else log_var_min
                    v = hi + math.log1p(math.exp(-abs(r - log_var_min)))
                else:
                    v = r
                inv = math.exp(-v)
                dd = m - x[b, d]
                w = dd * inv
                t[d] = half * (dd * w + v) + half_log2pi
                da = w * (m * (one - m)) if sigmoid_mean else w
                dout[s_, b, d] = sc * da
                dout[s_, b, D + d] = sc * (half * (one - dd * w) * math.exp(r - v))
            nll[s_, b] = _lane_sum(t, D, acc16)


# ----------------------------------------------------------------------------- Adam
@njit(**_jit)
def adam_update(p, g, m, v, beta1, one_minus_beta1, beta2, one_minus_beta2, step, inv_c2, eps,
                g_floor, s_floor):
    """m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;  p <- p - step m / (sqrt(v inv_c2) + eps)
    with step = lr / (1 - b1^t), inv_c2 = 1 / (1 - b2^t); flat buffers, in place.

    Subnormal floats cost ~100 cycles per operation on x86, and Adam makes them: a parameter
    whose gradient is exactly 0 (a dead ReLU) has m decay by b1 every step until it is
    subnormal, and g^2 is subnormal for |g| < 1e-19 in float32.  So |g| < g_floor and stored
    |m|, v < s_floor count as 0 (see the dispatcher for the floors): the update they would have
    made is below lr * 1e-9 in float32, far under the parameter's own rounding."""
    zero = p.dtype.type(0.0)
    for i in range(p.shape[0]):
        gi = g[i]
        gi = gi if abs(gi) >= g_floor else zero
        mi = m[i] * beta1 + one_minus_beta1 * gi
        vi = v[i] * beta2 + one_minus_beta2 * (gi * gi)
        mi = mi if abs(mi) >= s_floor else zero
        vi = vi if vi >= s_floor else zero
        m[i] = mi
        v[i] = vi
        p[i] -= step * mi / (math.sqrt(vi * inv_c2) + eps)


# ----------------------------------------------------------------------------- conv lowering
@njit(**_jit)
def col2im(cols, xpad, K, S, Ho, Wo):
    """The adjoint of im2col: xpad = 0, then xpad[b, c, S i + p, S j + q] += cols[(c, p, q),
    (b, i, j)] for every entry (each pixel's additions in the reference's (p, q) order).
    xpad (B, C, Hp, Wp), cols (C K K, B Ho Wo); one pass instead of the reference's K*K strided
    additions over the whole image (measured 2.3x faster at the MNIST conv model's shapes; the
    forward's im2col is a plain strided copy, which NumPy already does as fast)."""
    B, C = xpad.shape[0], xpad.shape[1]
    xpad[...] = 0
    for c in range(C):
        for p in range(K):
            for q in range(K):
                row = (c * K + p) * K + q
                for b in range(B):
                    for i in range(Ho):
                        base = (b * Ho + i) * Wo
                        h = S * i + p
                        for j in range(Wo):
                            xpad[b, c, h, S * j + q] += cols[row, base + j]
