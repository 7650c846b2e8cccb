"""Decoder likelihoods p(x|z): what the decoder's outputs mean, and the gradient of -log p(x|z).

A likelihood turns the decoder's last-layer outputs ``out`` (S, B, D) into
    nll_and_grad(out, x, scale, nll=None, grad=None, db=None)
        -> nll (S, B), d(sum scale * nll)/d out (S, B, D), whether db was written
where scale is one number (the ELBO's 1/(S B)) or per-example weights (S, B, 1) (the IWAE's
normalised weights over B).
and writes the gradient of any parameter it owns (a learned log sigma) into its gradient view.

    Bernoulli   out = logits l             -log p = sum softplus(l) - x l,  d/dl = sigmoid(l) - x
    Gaussian    out = mean m, sigma fixed  -log p = sum (x - m)^2 / (2 sigma^2) + log sigma + log(2 pi)/2
                or log sigma learned: one shared value or one per dimension (params 'dec.log_sigma')
    GaussianPerExample   out = [a | r] (S, B, 2D): Kingma & Welling's decoder, a mean and a
                log-variance per example and pixel, predicted from z (heteroscedastic)

Every Gaussian head takes mean='identity' (m = out) or 'sigmoid' (m = sigmoid(out), for data in
[0, 1]: the mean, and so every reconstruction and sample mean, stays inside the data's range);
the gradient then picks up dm/da = m (1 - m).

A head says how many decoder outputs it reads per data dimension through out_features(D): D for
Bernoulli and Gaussian, 2 D for GaussianPerExample (the mean's D columns, then the log-variance's
D), so any decoder (an MLP here, a convolutional one elsewhere) ends in out_features(D) outputs.

The variance's numerical risk.  A decoder that predicts its own variance can drive it to 0 on a
pixel it reconstructs exactly (a background pixel that is always 0, a saturated one that is always
1): -log p there falls without bound (log sigma -> -inf), the ELBO grows without bound and the
gradient (x - m) / sigma^2 explodes.  GaussianPerExample therefore floors the variance smoothly,
    v = log(exp(r) + sigma_min^2)       (sigma >= sigma_min; sigma_min = 0 removes the floor)
with sigma_min = 1/256 by default: for data in [0, 1] on 256 grey levels, no pixel's density can
then exceed 256 / sqrt(2 pi), so the 8-bit (discretised) log-likelihood of every pixel stays
below 0, as a probability's must.  The fixed, shared and per-dim modes are not floored (their
sigma is one number per pixel for the whole dataset, which a constant pixel can still drive to 0:
prefer fixed sigma, or per-example with its floor, on data with constant pixels).
"""
import math

import numpy as np

from . import distributions as dist
from . import kernels
from .backend import get_array_module
from .errors import MinivaeError

LIKELIHOODS = ("bernoulli", "gaussian")


def _is_number(scale):
    return isinstance(scale, (int, float, np.floating, np.integer))


SIGMA_MODES = ("fixed", "shared", "per-dim", "per-example")
MEANS = ("identity", "sigmoid")
SIGMA_MIN = 1.0 / 256        # the default floor of GaussianPerExample's sigma (see above)


class Bernoulli:
    """Pixels are independent Bernoulli(sigmoid(l)); targets may also be grey levels in [0, 1]."""

    name = "bernoulli"
    needs_unit_interval = True
    takes_bias = True       # nll/nll_and_grad add the decoder's last bias in their kernel

    def out_features(self, data_dim):
        return data_dim

    def param_shapes(self, data_dim):
        return {}

    def bind(self, buffer):
        pass

    def nll_and_grad(self, out, x, scale, nll=None, grad=None, db=None, bias=None):
        """(nll (S, B), dout, db_written), in one fused pass.  nll (S, B) and grad (S, B, D),
        when given, are workspaces written instead of allocating; db (D,), when given, receives
        the gradient summed over (S, B): the last decoder bias's gradient.  bias (D,), when
        given: the logits are out + bias (the decoder's output before its last bias)."""
        if not _is_number(scale):                    # per-example weights (S, B, 1)
            nll, dout = kernels.bernoulli_nll_grad(out, x, 1.0, bias=bias)
            dout *= scale
            return nll, dout, False
        bufs = None if nll is None or grad is None else (nll, grad)
        nll, dout = kernels.bernoulli_nll_grad(out, x, scale, out=bufs, db=db, bias=bias)
        return nll, dout, db is not None

    def nll(self, out, x, nll=None, bias=None):
        return kernels.bernoulli_nll(out, x, out=nll, bias=bias)

    def mean(self, out):
        return dist.sigmoid(out)

    def sample(self, out, rng):
        p = self.mean(out)
        return (rng.random(p.shape, dtype=p.dtype) < p).astype(p.dtype)


class Gaussian:
    """Pixels are independent N(m, sigma^2): sigma fixed, or log sigma learned (shared or per-dim).

    With a learned log sigma the gradient sums over every place the parameter is used:
        dlog_sigma = scale * sum_{s,b} (1 - (x - m)^2 / sigma^2)        (and over d when shared)
    mean 'sigmoid': m = sigmoid(out), and d/dout = (m - x) / sigma^2 * m (1 - m).
    """

    name = "gaussian"
    needs_unit_interval = False

    def __init__(self, sigma=1.0, learn="fixed", mean="identity"):
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
            raise MinivaeError(f"sigma must be a positive number, got {sigma!r}")
        if learn not in SIGMA_MODES[:3]:
            raise MinivaeError(f"learn_sigma must be one of {', '.join(SIGMA_MODES[:3])} for "
                               f"Gaussian (per-example: GaussianPerExample), got {learn!r}")
        self.sigma, self.learn, self.mean_fn = float(sigma), learn, _check_mean(mean)
        self.log_sigma = self.dlog_sigma = None

    def out_features(self, data_dim):
        return data_dim

    def param_shapes(self, data_dim):
        if self.learn == "fixed":
            return {}
        return {"dec.log_sigma": (1,) if self.learn == "shared" else (data_dim,)}

    def bind(self, buffer):
        if self.learn == "fixed":
            self.log_sigma = None
        else:
            self.log_sigma = buffer.params["dec.log_sigma"]
            self.dlog_sigma = buffer.grads["dec.log_sigma"]

    def init(self):
        if self.log_sigma is not None:
            self.log_sigma[...] = math.log(self.sigma)

    def _log_sigma(self, out):
        if self.log_sigma is not None:
            return self.log_sigma
        return out.dtype.type(math.log(self.sigma))

    def nll_and_grad(self, out, x, scale, nll=None, grad=None, db=None):
        """(nll (S, B), dout, False): the decoder's bias gradient is left to the decoder."""
        weights = None if _is_number(scale) else scale   # per-example weights (S, B, 1)
        m = self.mean(out)
        nll_, dmean, dlogsig = kernels.gaussian_nll_grad(m, x, self._log_sigma(out),
                                                         1.0 if weights is not None else scale)
        if self.mean_fn == "sigmoid":
            dmean *= m * (1 - m)                          # dm/dout of m = sigmoid(out)
        if weights is not None:
            dmean *= weights
            dlogsig *= weights
        if self.log_sigma is not None:
            axes = tuple(range(dlogsig.ndim - 1)) if self.learn == "per-dim" else None
            self.dlog_sigma[...] = dlogsig.sum(axis=axes)
        if nll is not None:
            nll[...] = nll_
            nll_ = nll
        return nll_, dmean, False

    def nll(self, out, x, nll=None):
        value = dist.gaussian_nll(self.mean(out), x, self._log_sigma(out))
        return _into(nll, value)

    def mean(self, out):
        return dist.sigmoid(out) if self.mean_fn == "sigmoid" else out

    def sample(self, out, rng):
        xp = get_array_module(out)
        noise = rng.standard_normal(out.shape, dtype=out.dtype)
        return self.mean(out) + xp.exp(self._log_sigma(out)) * noise


class GaussianPerExample:
    """Kingma & Welling's Gaussian decoder: a mean and a variance per example and pixel.

    out (S, B, 2D) = [a | r]:  m = a or sigmoid(a),  v = log(exp(r) + sigma_min^2)  (log-variance)
        -log p(x|z) = 1/2 sum_d (x_d - m_d)^2 exp(-v_d) + v_d + log(2 pi)
    backward (scale: 1/(S B), or per-example weights (S, B, 1)):
        d/da = scale * (m - x) exp(-v) * [m (1 - m) with the sigmoid mean]
        d/dr = scale * (1 - (x - m)^2 exp(-v)) / 2 * exp(r - v)       (exp(r - v) = dv/dr)
    The floor sigma_min (default 1/256; 0: none) is explained in the module docstring.
    init_output_bias starts every pixel's sigma at ``sigma`` (the r half of the last bias).
    """

    name = "gaussian"
    needs_unit_interval = False
    learn = "per-example"

    def __init__(self, sigma=1.0, mean="identity", sigma_min=SIGMA_MIN):
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
            raise MinivaeError(f"sigma must be a positive number, got {sigma!r}")
        if not (isinstance(sigma_min, (int, float)) and not isinstance(sigma_min, bool)
                and math.isfinite(sigma_min) and 0 <= sigma_min < sigma):
            raise MinivaeError(f"sigma_min (the floor on the decoder's sigma) must be a number "
                               f">= 0 and below the initial sigma {sigma!r}, got {sigma_min!r}")
        self.sigma, self.mean_fn, self.sigma_min = float(sigma), _check_mean(mean), float(sigma_min)
        self.log_var_min = 2 * math.log(sigma_min) if sigma_min > 0 else -math.inf

    def out_features(self, data_dim):
        return 2 * data_dim

    def param_shapes(self, data_dim):
        return {}

    def bind(self, buffer):
        pass

    def init_output_bias(self, b):
        """b: the decoder's last bias (2D,): its log-variance half gets log(sigma^2 - sigma_min^2)."""
        D = b.shape[0] // 2
        b[D:] = math.log(self.sigma ** 2 - self.sigma_min ** 2)

    def _split(self, out):
        """(a, r, m, v) of out (..., 2D)."""
        D = out.shape[-1] // 2
        a, r = out[..., :D], out[..., D:]
        return a, r, self.mean(out), dist.floored_logvar(r, self.log_var_min)

    def nll_and_grad(self, out, x, scale, nll=None, grad=None, db=None):
        """(nll (S, B), dout (S, B, 2D), False); grad, when given, is written instead of allocating."""
        ok = grad is not None and grad.shape == out.shape and grad.dtype == out.dtype
        value, dout = kernels.gaussian_logvar_nll_grad(
            out, x, scale if _is_number(scale) else scale, self.log_var_min,
            self.mean_fn == "sigmoid", grad=grad if ok else None)
        return _into(nll, value), dout, False

    def nll(self, out, x, nll=None):
        _, _, m, v = self._split(out)
        return _into(nll, dist.gaussian_logvar_nll(m, v, x))

    def mean(self, out):
        a = out[..., :out.shape[-1] // 2]
        return dist.sigmoid(a) if self.mean_fn == "sigmoid" else a

    def sigma_of(self, out):
        """The decoder's standard deviation per pixel, exp(v / 2): (..., D)."""
        xp = get_array_module(out)
        _, _, _, v = self._split(out)
        return xp.exp(v * out.dtype.type(0.5))

    def sample(self, out, rng):
        m = self.mean(out)
        return m + self.sigma_of(out) * rng.standard_normal(m.shape, dtype=m.dtype)


def _into(buf, value):
    if buf is None:
        return value
    buf[...] = value
    return buf


def _check_mean(mean):
    if mean not in MEANS:
        raise MinivaeError(f"gaussian mean must be one of {', '.join(MEANS)}, got {mean!r}")
    return mean


def make_likelihood(name, sigma=1.0, learn_sigma="fixed", mean="identity", sigma_min=SIGMA_MIN):
    if learn_sigma not in SIGMA_MODES:
        raise MinivaeError(f"learn_sigma must be one of {', '.join(SIGMA_MODES)}, "
                           f"got {learn_sigma!r}")
    if name == "bernoulli":
        return Bernoulli()
    if name == "gaussian":
        if learn_sigma == "per-example":
            return GaussianPerExample(sigma, mean, sigma_min)
        return Gaussian(sigma, learn_sigma, mean)
    raise MinivaeError(f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {name!r}")
