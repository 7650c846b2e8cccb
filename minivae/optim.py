"""Optimisers over one flat parameter buffer: a step is a few whole-buffer operations.

    SGD with momentum   v <- mu v + g;          p <- p - lr v              (mu = 0: plain SGD)
    Adam                m <- b1 m + (1-b1) g;   v <- b2 v + (1-b2) g^2
                        p <- p - lr * m_hat / (sqrt(v_hat) + eps),  m_hat = m / (1 - b1^t),
                                                                    v_hat = v / (1 - b2^t)
    clip_grad_norm      g <- g * min(1, max_norm / ||g||)  over the whole buffer (the trainer's)
"""
import math

import numpy as np

from . import kernels
from .backend import get_array_module
from .errors import MinivaeError


def _real(v):
    """v as a float if it is a finite real number (Python or NumPy scalar, not a bool), else None."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _check_lr(lr):
    v = _real(lr)
    if v is None or not v > 0:
        raise MinivaeError(f"learning rate must be a positive number, got {lr!r}")
    return v


def clip_grad_norm(grad, max_norm, sq_norm=None, sync=True):
    """Scale the flat gradient in place by max_norm / ||g|| when ||g|| > max_norm; returns
    ||g|| before clipping as a float (inf or nan, with grad left alone, when grad is not finite).

    ||g||^2 is summed in grad's dtype; when that overflows while every element is finite
    (float32 with ||g|| above ~1.8e19) it is summed again in float64, so a huge finite gradient
    is scaled to length max_norm instead of to zero.  sq_norm: float(dot(grad, grad)) when the
    caller has it already (the trainer's finiteness check), saving a pass over the buffer.

    sync=False (the GPU training step): nothing is read back to the host.  ||g||^2 is summed in
    float64 on the device (no overflow for float32 gradients), the scale min(1, max_norm/||g||)
    is applied there, and the norm is returned as a 0-d device array.  A NaN gradient stays NaN
    (the trainer's finiteness check sees it).
    """
    m = _real(max_norm)
    if m is None or m < 0:
        raise MinivaeError(f"max_norm must be a finite number >= 0, got {max_norm!r}")
    xp = get_array_module(grad)
    if not sync:
        if sq_norm is None:
            g64 = grad.astype(np.float64)        # one float64 copy, not one per operand
            sq_norm = xp.dot(g64, g64)
        sq = sq_norm
        norm = xp.sqrt(sq)
        grad *= xp.where(norm > m, m / norm, 1.0).astype(grad.dtype)
        return norm
    if sq_norm is None:
        sq_norm = float(xp.dot(grad, grad))
    if not math.isfinite(sq_norm):
        if not bool(xp.isfinite(grad).all()):
            return sq_norm
        g64 = grad.astype(np.float64)
        sq_norm = float(xp.dot(g64, g64))
    norm = math.sqrt(sq_norm)
    if norm > m:
        grad *= grad.dtype.type(m / norm)
    return norm


class SGD:
    """SGD with (heavy-ball) momentum over a ParamBuffer's flat data and grad arrays."""

    def __init__(self, buffer, lr=1e-2, momentum=0.9):
        self.lr = _check_lr(lr)
        mu = _real(momentum)
        if mu is None or not 0 <= mu < 1:
            raise MinivaeError(f"momentum must be a real number in [0, 1), got {momentum!r}")
        self.momentum = mu
        self.p, self.g = buffer.data, buffer.grad
        self.v = get_array_module(self.p).zeros_like(self.p)
        self.t = 0

    def step(self):
        dt = self.p.dtype.type
        self.v *= dt(self.momentum)
        self.v += self.g
        self.p -= dt(self.lr) * self.v
        self.t += 1

    def state(self):
        return {"v": self.v}, {"t": self.t}

    def load_state(self, arrays, scalars):
        self.v[...] = arrays["v"]
        self.t = int(scalars["t"])


class Adam:
    """Adam (Kingma & Ba) with bias correction, over a ParamBuffer's flat arrays."""

    def __init__(self, buffer, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        self.lr = _check_lr(lr)
        b = ([_real(v) for v in betas] if isinstance(betas, (tuple, list)) and len(betas) == 2
             else [None])
        if any(v is None or not 0 <= v < 1 for v in b):
            raise MinivaeError(f"Adam betas must be two real numbers in [0, 1), got {betas!r}")
        e = _real(eps)
        if e is None or not e > 0:
            raise MinivaeError(f"Adam eps must be a positive finite number, got {eps!r}")
        self.beta1, self.beta2, self.eps = b[0], b[1], e
        self.p, self.g = buffer.data, buffer.grad
        xp = get_array_module(self.p)
        self.m, self.v = xp.zeros_like(self.p), xp.zeros_like(self.p)
        self.t = 0

    def step(self):
        self.t += 1
        kernels.adam_update(self.p, self.g, self.m, self.v, self.lr, self.beta1, self.beta2,
                            self.eps, self.t)

    def state(self):
        """(arrays, scalars) to checkpoint."""
        return {"m": self.m, "v": self.v}, {"t": self.t}

    def load_state(self, arrays, scalars):
        self.m[...] = arrays["m"]
        self.v[...] = arrays["v"]
        self.t = int(scalars["t"])


OPTIMIZERS = {"adam": Adam, "sgd": SGD}


def make_optimizer(name, buffer, lr):
    try:
        cls = OPTIMIZERS[name]
    except KeyError:
        raise MinivaeError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}") from None
    return cls(buffer, lr=lr)
