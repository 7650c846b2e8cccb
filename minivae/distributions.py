"""The distributions of a VAE, each with the derivatives its backward pass needs.

Written once against ``xp`` (NumPy or CuPy), in plain array operations: this is the readable
specification.  The fused kernels in ``minivae.kernels`` compute the same quantities in one pass
and are tested against these functions.

Shapes: B batch, Z latent, D data.  Per-example quantities are summed over dimensions: (B,).

Diagonal Gaussian q(z|x) = N(mu, diag(exp(logvar)))
    reparameterise   z = mu + std * eps,  std = exp(logvar / 2),  eps ~ N(0, I)
                     dz/dmu = 1,  dz/dlogvar = eps * std / 2
    KL to N(0, I)    KL = 1/2 sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j)
                     dKL/dmu = mu,  dKL/dlogvar = (exp(logvar) - 1) / 2
    score            log q(z) = -1/2 sum_j (logvar_j + (z_j - mu_j)^2 exp(-logvar_j) + log 2 pi)
                     at z fixed, with (z - mu) / std = eps:
                     d log q/dmu = (z - mu) / std^2 = eps / std
                     d log q/dlogvar = -1/2 + (z - mu)^2 / (2 std^2) = (eps^2 - 1) / 2

Bernoulli p(x|z) from logits l:   -log p(x|z) = sum_d softplus(l_d) - x_d l_d
                                  d/dl = sigmoid(l) - x
Gaussian p(x|z) = N(m, sigma^2):  -log p(x|z) = sum_d (x_d - m_d)^2 / (2 sigma_d^2) + log sigma_d
                                                      + log(2 pi) / 2
                                  d/dm = (m - x) / sigma^2,  d/dlog sigma = 1 - (x - m)^2 / sigma^2
Gaussian p(x|z) = N(m, exp(v)), v a log-variance per example and pixel (Kingma & Welling 2013):
                                  -log p(x|z) = 1/2 sum_d (x_d - m_d)^2 exp(-v_d) + v_d + log(2 pi)
                                  d/dm = (m - x) exp(-v),    d/dv = (1 - (x - m)^2 exp(-v)) / 2
    the floor on sigma            v = log(exp(r) + sigma_min^2) = logaddexp(r, 2 log sigma_min)
                                  dv/dr = exp(r) / (exp(r) + sigma_min^2) = exp(r - v)  (in (0, 1])
    the squashed mean             m = sigmoid(a),  dm/da = m (1 - m)
"""
import math

from .backend import get_array_module

LOG_2PI = math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------- Gaussian q(z|x)
def reparameterize(mu, logvar, eps):
    """z = mu + exp(logvar / 2) * eps.     mu, logvar, eps: (..., Z) -> z, std: (..., Z)."""
    xp = get_array_module(mu)
    std = xp.exp(logvar * logvar.dtype.type(0.5))
    return mu + std * eps, std


def reparameterize_backward(dz, eps, std):
    """(dmu, dlogvar) from dz:  dmu = dz,  dlogvar = dz * eps * std / 2."""
    return dz, dz * eps * std * dz.dtype.type(0.5)


def kl_standard_normal(mu, logvar):
    """KL(N(mu, exp(logvar)) || N(0, I)) per example: (B, Z) -> (B,)."""
    xp = get_array_module(mu)
    half = mu.dtype.type(0.5)
    # expm1(logvar) - logvar, not exp(logvar) - 1 - logvar: no cancellation near logvar = 0,
    # where collapsed units sit (float32 would otherwise lose every digit of a tiny KL)
    return half * xp.sum(mu * mu + (xp.expm1(logvar) - logvar), axis=-1)


def kl_standard_normal_backward(mu, logvar):
    """(dKL/dmu, dKL/dlogvar) = (mu, (exp(logvar) - 1) / 2), per element."""
    xp = get_array_module(mu)
    return mu, xp.expm1(logvar) * logvar.dtype.type(0.5)


def gaussian_score(eps, std):
    """d log q(z) / d(mu, logvar) at a fixed sample z = mu + std * eps:  (eps / std, (eps^2 - 1) / 2).

    eps (..., Z), std broadcasting against it.  The gradient of ``gaussian_log_prob`` in its
    parameters (the score-function estimator's score), written in eps so no subtraction z - mu
    loses digits."""
    return eps / std, (eps * eps - 1) * eps.dtype.type(0.5)


def gaussian_log_prob(z, mu, logvar):
    """log N(z; mu, diag(exp(logvar))) summed over the last axis."""
    xp = get_array_module(z)
    half = z.dtype.type(0.5)
    d = z - mu
    return -half * xp.sum(d * d * xp.exp(-logvar) + logvar + z.dtype.type(LOG_2PI), axis=-1)


def standard_normal_log_prob(z):
    """log N(z; 0, I) summed over the last axis."""
    xp = get_array_module(z)
    return -z.dtype.type(0.5) * xp.sum(z * z + z.dtype.type(LOG_2PI), axis=-1)


# ----------------------------------------------------------------------------- decoders p(x|z)
def softplus(x):
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)): never overflows, exact for large |x|."""
    xp = get_array_module(x)
    return xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))


def sigmoid(x):
    """1 / (1 + exp(-x)) through e = exp(-|x|): 1/(1+e) for x >= 0, e/(1+e) for x < 0."""
    xp = get_array_module(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def bernoulli_nll(logits, x):
    """-log Bernoulli(x; sigmoid(logits)) summed over the last axis: (..., D) -> (...,).

    softplus(l) - x*l equals -x log sigmoid(l) - (1-x) log(1 - sigmoid(l)) and is also the
    cross-entropy for grey targets x in [0, 1].
    """
    xp = get_array_module(logits)
    return xp.sum(softplus(logits) - x * logits, axis=-1)


def bernoulli_nll_grad(logits, x):
    """d/dlogits of bernoulli_nll: sigmoid(l) - x."""
    return sigmoid(logits) - x


def gaussian_nll(mean, x, log_sigma):
    """-log N(x; mean, sigma^2) summed over the last axis; log_sigma broadcasts, e.g. () or (D,)."""
    xp = get_array_module(mean)
    half = mean.dtype.type(0.5)
    r = (x - mean) * xp.exp(-log_sigma)
    return xp.sum(half * r * r + log_sigma + half * mean.dtype.type(LOG_2PI), axis=-1)


def gaussian_nll_grad(mean, x, log_sigma):
    """(d/dmean, d/dlog_sigma) per element: ((mean - x) / sigma^2, 1 - (x - mean)^2 / sigma^2)."""
    xp = get_array_module(mean)
    inv_var = xp.exp(-2 * log_sigma)
    d = mean - x
    return d * inv_var, 1 - d * d * inv_var


def gaussian_logvar_nll(mean, logvar, x):
    """-log N(x; mean, exp(logvar)) summed over the last axis; mean, logvar (..., D), x broadcasts."""
    xp = get_array_module(mean)
    half = mean.dtype.type(0.5)
    d = x - mean
    return half * xp.sum(d * d * xp.exp(-logvar) + logvar + mean.dtype.type(LOG_2PI), axis=-1)


def gaussian_logvar_nll_grad(mean, logvar, x):
    """(d/dmean, d/dlogvar) of gaussian_logvar_nll per element:
    ((mean - x) exp(-logvar), (1 - (x - mean)^2 exp(-logvar)) / 2)."""
    xp = get_array_module(mean)
    d = mean - x
    w = d * xp.exp(-logvar)
    return w, mean.dtype.type(0.5) * (1 - d * w)


def floored_logvar(r, log_var_min):
    """v = log(exp(r) + exp(log_var_min)): a log-variance that never falls below log_var_min
    (the log of sigma_min^2), smooth, and equal to r far above the floor.  log_var_min = -inf
    (sigma_min = 0) gives v = r.  Returns v; its derivative is floored_logvar_grad(r, v)."""
    xp = get_array_module(r)
    if log_var_min == -math.inf:
        return r
    return xp.logaddexp(r, r.dtype.type(log_var_min))


def floored_logvar_grad(r, v):
    """dv/dr = exp(r) / (exp(r) + sigma_min^2) = exp(r - v), in (0, 1] since r <= v."""
    xp = get_array_module(r)
    return xp.exp(r - v)
