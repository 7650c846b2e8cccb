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
SIGMA_MODES = ("fixed", "shared", "per-dim")


class Bernoulli:
    """Pixels are independent Bernoulli(sigmoid(l)); targets may also be grey levels in [0, 1]."""

    name = "bernoulli"
    needs_unit_interval = True

    def param_shapes(self, data_dim):
        return {}

    def bind(self, buffer):
        pass

    def nll_and_grad(self, out, x, scale, nll=None, grad=None, db=None):
        """(nll (S, B), dout, db_written), in one fused pass.  nll (S, B) and grad (S, B, D),
        when given, are workspaces written instead of allocating; db (D,), when given, receives
        the gradient summed over (S, B): the last decoder bias's gradient."""
        if not _is_number(scale):                    # per-example weights (S, B, 1)
            nll, dout = kernels.bernoulli_nll_grad(out, x, 1.0)
            dout *= scale
            return nll, dout, False
        bufs = None if nll is None or grad is None else (nll, grad)
        nll, dout = kernels.bernoulli_nll_grad(out, x, scale, out=bufs, db=db)
        return nll, dout, db is not None

    def nll(self, out, x, nll=None):
        return kernels.bernoulli_nll(out, x, out=nll)

    def mean(self, out):
        return dist.sigmoid(out)

    def sample(self, out, rng):
        p = self.mean(out)
        return (rng.random(p.shape, dtype=p.dtype) < p).astype(p.dtype)


class Gaussian:
    """Pixels are independent N(m, sigma^2): sigma fixed, or log sigma learned (shared or per-dim).

    With a learned log sigma the gradient sums over every place the parameter is used:
        dlog_sigma = scale * sum_{s,b} (1 - (x - m)^2 / sigma^2)        (and over d when shared)
    """

    name = "gaussian"
    needs_unit_interval = False

    def __init__(self, sigma=1.0, learn="fixed"):
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
            raise MinivaeError(f"sigma must be a positive number, got {sigma!r}")
        if learn not in SIGMA_MODES:
            raise MinivaeError(f"learn_sigma must be one of {', '.join(SIGMA_MODES)}, got {learn!r}")
        self.sigma, self.learn = float(sigma), learn
        self.log_sigma = self.dlog_sigma = None

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
        """(nll (S, B), dmean, False): the decoder's bias gradient is left to the decoder."""
        weights = None if _is_number(scale) else scale   # per-example weights (S, B, 1)
        nll_, dmean, dlogsig = kernels.gaussian_nll_grad(out, x, self._log_sigma(out),
                                                         1.0 if weights is not None else scale)
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
        value = dist.gaussian_nll(out, x, self._log_sigma(out))
        if nll is None:
            return value
        nll[...] = value
        return nll

    def mean(self, out):
        return out

    def sample(self, out, rng):
        xp = get_array_module(out)
        noise = rng.standard_normal(out.shape, dtype=out.dtype)
        return out + xp.exp(self._log_sigma(out)) * noise


def make_likelihood(name, sigma=1.0, learn_sigma="fixed"):
    if learn_sigma not in SIGMA_MODES:
        raise MinivaeError(f"learn_sigma must be one of {', '.join(SIGMA_MODES)}, "
                           f"got {learn_sigma!r}")
    if name == "bernoulli":
        return Bernoulli()
    if name == "gaussian":
        return Gaussian(sigma, learn_sigma)
    raise MinivaeError(f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {name!r}")
