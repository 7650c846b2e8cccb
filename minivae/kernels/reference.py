"""Plain-array reference of every fused kernel: the specification the fast versions must match.

Each function is a few ``xp`` expressions built from ``minivae.distributions``; the Numba (CPU)
and CuPy (GPU) kernels compute the same values in one pass over memory, and the tests compare
them with these.  Set ``MINIVAE_KERNELS=reference`` to run the whole library on these alone.

Shapes: S Monte Carlo samples, B batch, Z latent, D data.
"""
from .. import distributions as dist
from ..backend import get_array_module

LOG_2PI = dist.LOG_2PI
LEAKY_SLOPE = 0.01
ELU_ALPHA = 1.0


def _relu(x, xp):
    return xp.maximum(x, 0)


def _leaky_relu(x, xp):
    return xp.where(x > 0, x, x * x.dtype.type(LEAKY_SLOPE))


def _elu(x, xp):
    return xp.where(x > 0, x, x.dtype.type(ELU_ALPHA) * xp.expm1(xp.minimum(x, 0)))


# name -> (f(x), f'(x) written through y = f(x))
ACTIVATIONS = {
    "relu": (_relu, lambda y, xp: (y > 0).astype(y.dtype)),
    "leaky_relu": (_leaky_relu, lambda y, xp: xp.where(y > 0, y.dtype.type(1),
                                                       y.dtype.type(LEAKY_SLOPE))),
    "tanh": (lambda x, xp: xp.tanh(x), lambda y, xp: 1 - y * y),
    "sigmoid": (lambda x, xp: dist.sigmoid(x), lambda y, xp: y * (1 - y)),
    "softplus": (lambda x, xp: dist.softplus(x), lambda y, xp: -xp.expm1(-y)),
    "elu": (_elu, lambda y, xp: xp.where(y > 0, y.dtype.type(1), y + y.dtype.type(ELU_ALPHA))),
}


def act_forward(name, x):
    """y = f(x)."""
    return ACTIVATIONS[name][0](x, get_array_module(x))


def act_backward(name, dy, y):
    """dx = dy * f'(x), f' written through the cached output y."""
    return dy * ACTIVATIONS[name][1](y, get_array_module(y))


def bias_act_forward(name, h, b):
    """y = f(h + b)     h: (B, H) the GEMM output x @ W, b: (H,)."""
    return act_forward(name, h + b)


def reparam_kl(mu, logvar, eps):
    """z = mu + exp(logvar/2) * eps and KL(q || N(0, I)) per example.

    mu, logvar: (B, Z); eps: (S, B, Z)  ->  z (S, B, Z), std (B, Z), kl (B,)
    """
    z, std = dist.reparameterize(mu, logvar, eps)
    return z, std, dist.kl_standard_normal(mu, logvar)


def reparam_kl_backward(dz, eps, std, mu, logvar, kl_weight):
    """Gradients of  sum(dz * z) + kl_weight * sum_b KL_b  with respect to mu and logvar.

    z feeds the decoder S times (the sample axis) and mu, logvar also feed the KL: fan-out, so
    the two contributions add:
        dmu     = sum_s dz_s                     + kl_weight * mu
        dlogvar = sum_s dz_s * eps_s * std / 2   + kl_weight * (exp(logvar) - 1) / 2
    """
    dmu_s, dlogvar_s = dist.reparameterize_backward(dz, eps, std)
    dmu_kl, dlogvar_kl = dist.kl_standard_normal_backward(mu, logvar)
    w = mu.dtype.type(kl_weight)
    return dmu_s.sum(axis=0) + w * dmu_kl, dlogvar_s.sum(axis=0) + w * dlogvar_kl


def bernoulli_nll_grad(logits, x, scale, bias=None):
    """nll (S, B) = sum_d softplus(l) - x l, and dlogits = scale * (sigmoid(l) - x).

    logits: (S, B, D); x: (B, D) (broadcast over S); bias: (D,) or None.  With a bias the
    logits are l = logits + bias (the decoder's last GEMM output before its bias is added:
    the fast kernels add it on the fly instead of in a pass of its own).
    """
    if bias is not None:
        logits = logits + bias
    return dist.bernoulli_nll(logits, x), logits.dtype.type(scale) * dist.bernoulli_nll_grad(logits, x)


def bernoulli_nll(logits, x, bias=None):
    """nll (S, B) = sum_d softplus(l) - x l    logits: (S, B, D); x: (B, D); l = logits + bias."""
    if bias is not None:
        logits = logits + bias
    return dist.bernoulli_nll(logits, x)


def gaussian_nll_grad(mean, x, log_sigma, scale):
    """nll (S, B), dmean = scale * (mean - x) / sigma^2, dlog_sigma = scale * (1 - r^2) per element.

    mean: (S, B, D); x: (B, D); log_sigma: () or (D,) broadcasting over D.
    """
    s = mean.dtype.type(scale)
    dmean, dlogsig = dist.gaussian_nll_grad(mean, x, log_sigma)
    return dist.gaussian_nll(mean, x, log_sigma), s * dmean, s * dlogsig


def gaussian_logvar_nll_grad(out, x, scale, log_var_min, sigmoid_mean):
    """Kingma & Welling's head (minivae.decoders.GaussianPerExample): out (S, B, 2D) = [a | r],
    m = a or sigmoid(a), v = logaddexp(r, log_var_min) (r itself when log_var_min = -inf).
    Returns nll (S, B) and dout (S, B, 2D) = scale * d nll / d out; scale: a number or (S, B, 1)."""
    xp = get_array_module(out)
    D = out.shape[-1] // 2
    a, r = out[..., :D], out[..., D:]
    m = dist.sigmoid(a) if sigmoid_mean else a
    v = dist.floored_logvar(r, log_var_min)
    dm, dv = dist.gaussian_logvar_nll_grad(m, v, x)
    if sigmoid_mean:
        dm = dm * (m * (1 - m))
    dv = dv * dist.floored_logvar_grad(r, v)
    s = out.dtype.type(scale) if isinstance(scale, (int, float)) else scale
    return dist.gaussian_logvar_nll(m, v, x), xp.concatenate((dm * s, dv * s), axis=-1)


def adam_update(p, g, m, v, lr, beta1, beta2, eps, t):
    """One bias-corrected Adam step over flat buffers, in place.

        m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
        p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    """
    xp = get_array_module(p)
    dt = p.dtype.type
    m *= dt(beta1)
    m += dt(1 - beta1) * g
    v *= dt(beta2)
    v += dt(1 - beta2) * (g * g)
    c1 = 1 - beta1 ** t
    c2 = 1 - beta2 ** t
    p -= dt(lr / c1) * m / (xp.sqrt(v * dt(1 / c2)) + dt(eps))


# ----------------------------------------------------------------------------- conv lowering
def im2col(xpad, K, S, Ho, Wo, out=None):
    """cols (C K K, B Ho Wo) of a padded input xpad (B, C, Hp, Wp):
    cols[(c, p, q), (b, i, j)] = xpad[b, c, S i + p, S j + q].  out: a buffer to fill.

    One strided slice copy per kernel offset (p, q): the window corners S i + p, S j + q are the
    slice p : p + S (Ho - 1) + 1 : S (basic slicing only, so CuPy runs it unchanged)."""
    B, C = xpad.shape[:2]
    if out is None:
        out = get_array_module(xpad).empty((C * K * K, B * Ho * Wo), xpad.dtype)
    c6 = out.reshape(C, K, K, B, Ho, Wo)
    for p in range(K):
        for q in range(K):
            c6[:, p, q] = xpad[:, :, p:p + S * (Ho - 1) + 1:S,
                               q:q + S * (Wo - 1) + 1:S].transpose(1, 0, 2, 3)
    return out


def col2im(cols, xpad, K, S, Ho, Wo):
    """The adjoint of im2col, into xpad (B, C, Hp, Wp): zeroed, then every entry of cols
    (C K K, B Ho Wo) is added onto the pixel im2col read it from (one strided addition per kernel
    offset (p, q)), so <im2col(x), c> = <x, col2im(c)>."""
    C = xpad.shape[1]
    c6 = cols.reshape(C, K, K, xpad.shape[0], Ho, Wo)
    xpad[...] = 0
    for p in range(K):
        for q in range(K):
            xpad[:, :, p:p + S * (Ho - 1) + 1:S, q:q + S * (Wo - 1) + 1:S] += \
                c6[:, p, q].transpose(1, 0, 2, 3)
    return xpad
