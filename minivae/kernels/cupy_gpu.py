"""CuPy kernels for CuPy arrays: the same chains as numba_cpu.py, one GPU launch (or two) each.

Imported by ``minivae.kernels`` only when a CuPy array arrives, so CuPy is never imported on a
machine that does not use it.  Kernels are defined once, at module level; CuPy compiles each
on its first call for a dtype and caches the binary on disk.  float32 and float64 both work
(the CUDA source uses the templated type T; math through CUDA's overloaded exp/log1p/tanh).

Conventions that the tests hold every kernel to:

* A kernel with several outputs returns a tuple (CuPy's rule); each wrapper unpacks it.
* NaN and +-inf come out as the reference (``reference.py``) gives them.  A comparison with NaN
  is false, so a ternary must put NaN on the branch that keeps it: ReLU is ``v < 0 ? 0 : v``,
  not ``v > 0 ? v : 0`` (which would turn a NaN weight into a dead unit and hide a divergence).
* Wrappers touch only device arrays and Python scalars; nothing here reads a value back to the
  host, so a training step queues its kernels without waiting on the GPU.

How this is tested without a GPU.  ``tests/fakecupy.py`` stands in for CuPy: its
ElementwiseKernel and ReductionKernel compile *these CUDA C bodies* for the host and run them,
and its arrays refuse silent host/device mixing as CuPy does; ``tests/test_cupy_path.py`` runs
every wrapper against the reference through it, and compiles every body with NVRTC for a GPU
architecture when the ``nvrtc`` extra is installed.  On a machine with a GPU, ``pytest -m gpu``
runs the same checks on the device.
"""
import cupy as cp
import numpy as np

from .reference import LEAKY_SLOPE, ELU_ALPHA, LOG_2PI

# y = f(h + b): h (N, H) raw, b (H,) broadcast by CuPy.
_ACT_F = {
    "relu": "T v = h + b; y = v < (T)0 ? (T)0 : v;",
    "leaky_relu": f"T v = h + b; y = v > (T)0 ? v : v * (T){LEAKY_SLOPE!r};",
    "tanh": "y = tanh(h + b);",
    "sigmoid": "T v = h + b; T e = exp(-fabs(v)); T s = (T)1 / ((T)1 + e); y = v >= (T)0 ? s : e * s;",
    "softplus": "T v = h + b; y = (v > (T)0 ? v : (T)0) + log1p(exp(-fabs(v)));",
    "elu": f"T v = h + b; y = v > (T)0 ? v : (T){ELU_ALPHA!r} * expm1(v > (T)0 ? (T)0 : v);",
}
_ACT_G = {   # f'(x) through y
    "relu": "y > (T)0 ? (T)1 : (T)0",
    "leaky_relu": f"y > (T)0 ? (T)1 : (T){LEAKY_SLOPE!r}",
    "tanh": "(T)1 - y * y",
    "sigmoid": "y * ((T)1 - y)",
    "softplus": "-expm1(-y)",
    "elu": f"y > (T)0 ? (T)1 : y + (T){ELU_ALPHA!r}",
}
_FWD = {name: cp.ElementwiseKernel("T h, T b", "T y", body, f"minivae_fwd_{name}")
        for name, body in _ACT_F.items()}
_BWD = {name: cp.ElementwiseKernel("T dy, T y", "T dx", f"dx = dy * ({g});", f"minivae_bwd_{name}")
        for name, g in _ACT_G.items()}
_BIAS = cp.ElementwiseKernel("T h, T b", "T y", "y = h + b;", "minivae_bias_add")

# Bernoulli: per-element term and gradient, then a row sum (cupy.sum over the last axis).
# The logits are l0 + bias: the decoder's last GEMM output and its bias (0 for none), added here.
_BERN = cp.ElementwiseKernel(
    "T l0, T bias, T x, T scale", "T term, T g",
    """T l = l0 + bias;
       T e = exp(-fabs(l));
       term = (l > (T)0 ? l : (T)0) + log1p(e) - x * l;
       T q = (T)1 / ((T)1 + e);
       g = scale * ((l >= (T)0 ? q : e * q) - x);""",
    "minivae_bernoulli")
_BERN_NLL = cp.ReductionKernel(
    "T l0, T bias, T x", "T nll",
    "(l0 + bias > (T)0 ? l0 + bias : (T)0) + log1p(exp(-fabs(l0 + bias))) - x * (l0 + bias)",
    "a + b", "nll = a", "0", "minivae_bernoulli_nll")
_GAUSS = cp.ElementwiseKernel(
    "T m, T x, T ls, T scale, T half_log2pi", "T term, T dm, T dls",
    """T r = (x - m) * exp(-ls);
       term = (T)0.5 * r * r + ls + half_log2pi;
       T iv = exp((T)-2 * ls);
       T d = m - x;
       dm = scale * (d * iv);
       dls = scale * ((T)1 - d * d * iv);""",
    "minivae_gaussian")
_REPARAM = cp.ElementwiseKernel(
    "T mu, T logvar, T eps", "T z", "z = mu + exp(logvar * (T)0.5) * eps;", "minivae_reparam")
_KL_TERM = cp.ReductionKernel(
    "T mu, T logvar", "T kl", "mu * mu + (expm1(logvar) - logvar)", "a + b",
    "kl = (T)0.5 * a", "0", "minivae_kl")
_DLOGVAR_S = cp.ElementwiseKernel(
    "T dz, T eps, T std", "T t", "t = dz * eps * std * (T)0.5;", "minivae_dlogvar_sample")
_KL_GRAD = cp.ElementwiseKernel(
    "T smu, T slv, T mu, T logvar, T w", "T dmu, T dlogvar",
    "dmu = smu + w * mu; dlogvar = slv + w * (expm1(logvar) * (T)0.5);", "minivae_kl_grad")
_ADAM = cp.ElementwiseKernel(
    "T g, T b1, T omb1, T b2, T omb2, T step, T inv_c2, T eps", "T p, T m, T v",
    """T mi = m * b1 + omb1 * g;
       T vi = v * b2 + omb2 * (g * g);
       m = mi; v = vi;
       p -= step * mi / (sqrt(vi * inv_c2) + eps);""",
    "minivae_adam")


def _out(out, like):
    return cp.empty_like(like) if out is None else out


def bias_add(h, b, out=None):
    return _BIAS(h, b, _out(out, h))


def bias_act_forward(name, h, b, out=None):
    return _FWD[name](h, b, _out(out, h))


def act_forward(name, x, out=None):
    return _FWD[name](x, x.dtype.type(0), _out(out, x))


def act_backward(name, dy, y, out=None, db=None):
    dx = _BWD[name](dy, y, _out(out, dy))
    if db is not None:
        dx.reshape(-1, dx.shape[-1]).sum(axis=0, out=db)
    return dx


def reparam_kl(mu, logvar, eps, out=None):
    z, std, kl = out if out is not None else (cp.empty_like(eps), cp.empty_like(mu),
                                              cp.empty(mu.shape[0], mu.dtype))
    cp.exp(logvar * mu.dtype.type(0.5), out=std)
    _REPARAM(mu, logvar, eps, z)
    _KL_TERM(mu, logvar, out=kl, axis=-1)
    return z, std, kl


def reparam_kl_backward(dz, eps, std, mu, logvar, kl_weight, out=None):
    dmu, dlogvar = out if out is not None else (cp.empty_like(mu), cp.empty_like(mu))
    smu = dz.sum(axis=0)
    slv = _DLOGVAR_S(dz, eps, std).sum(axis=0)
    _KL_GRAD(smu, slv, mu, logvar, mu.dtype.type(kl_weight), dmu, dlogvar)
    return dmu, dlogvar


def _bias(bias, like):
    return like.dtype.type(0) if bias is None else bias


def bernoulli_nll_grad(logits, x, scale, out=None, db=None, bias=None):
    nll, g = out if out is not None else (None, None)
    term = cp.empty_like(logits)
    term, g = _BERN(logits, _bias(bias, logits), x, logits.dtype.type(scale), term,
                    _out(g, logits))
    nll = term.sum(axis=-1, out=nll)
    if db is not None:
        g.reshape(-1, g.shape[-1]).sum(axis=0, out=db)
    return nll, g


def bernoulli_nll(logits, x, out=None, bias=None):
    return _BERN_NLL(logits, _bias(bias, logits), x, out=out, axis=-1)


def gaussian_nll_grad(mean, x, log_sigma, scale, out=None):
    dt = mean.dtype.type
    nll, dm, dls = out if out is not None else (None, cp.empty_like(mean), cp.empty_like(mean))
    term = cp.empty_like(mean)
    ls = cp.asarray(log_sigma, dtype=mean.dtype)
    _GAUSS(mean, x, ls, dt(scale), dt(0.5) * dt(LOG_2PI), term, dm, dls)
    return term.sum(axis=-1, out=nll), dm, dls


def adam_update(p, g, m, v, lr, beta1, beta2, eps, t):
    dt = p.dtype.type
    c1, c2 = 1 - beta1 ** t, 1 - beta2 ** t
    _ADAM(g, dt(beta1), dt(1 - beta1), dt(beta2), dt(1 - beta2), dt(lr / c1), dt(1 / c2),
          dt(eps), p, m, v)


# Philox4x32-10 (minivae/philox.py has the algorithm and its NumPy reference): element i of draw
# `call` of key (k0, k1) takes the counter (lo(i), hi(i), lo(call), hi(call)).
_PHILOX_ROUNDS = """
    unsigned long long _ii = (unsigned long long)i;
    unsigned int r0 = (unsigned int)_ii, r1 = (unsigned int)(_ii >> 32), r2 = c2, r3 = c3;
    unsigned int q0 = k0, q1 = k1;
    for (int _r = 0; _r < 10; ++_r) {
        unsigned long long p0 = 0xD2511F53ull * r0, p1 = 0xCD9E8D57ull * r2;
        unsigned int n0 = (unsigned int)(p1 >> 32) ^ r1 ^ q0;
        unsigned int n2 = (unsigned int)(p0 >> 32) ^ r3 ^ q1;
        r1 = (unsigned int)p1; r3 = (unsigned int)p0; r0 = n0; r2 = n2;
        q0 += 0x9E3779B9u; q1 += 0xBB67AE85u;
    }
"""
_PHILOX_ARGS = "uint32 k0, uint32 k1, uint32 c2, uint32 c3"
_PHILOX = {
    "uniform": cp.ElementwiseKernel(_PHILOX_ARGS, "T y", _PHILOX_ROUNDS + """
    if (sizeof(T) == 4) {
        y = (T)(r0 >> 8) * (T)5.9604644775390625e-08;
    } else {
        y = (T)(((unsigned long long)r0 << 21) ^ (r1 >> 11)) * (T)1.1102230246251565e-16;
    }""", "minivae_philox_uniform"),
    "normal": cp.ElementwiseKernel(_PHILOX_ARGS, "T y", _PHILOX_ROUNDS + """
    T u1, u2;
    if (sizeof(T) == 4) {
        u1 = ((T)(r0 >> 8) + (T)0.5) * (T)5.9604644775390625e-08;
        u2 = (T)(r2 >> 8) * (T)5.9604644775390625e-08;
    } else {
        u1 = ((T)(((unsigned long long)r0 << 21) ^ (r1 >> 11)) + (T)0.5) * (T)1.1102230246251565e-16;
        u2 = (T)(((unsigned long long)r2 << 21) ^ (r3 >> 11)) * (T)1.1102230246251565e-16;
    }
    y = sqrt((T)-2 * log(u1)) * cos((T)6.283185307179586 * u2);""", "minivae_philox_normal"),
}


def philox(which, key, call, out):
    """Fill the C-contiguous array out with draw number `call` ('uniform' or 'normal')."""
    _PHILOX[which](np.uint32(key[0]), np.uint32(key[1]), np.uint32(call & 0xFFFFFFFF),
                   np.uint32(call >> 32), out)
    return out
