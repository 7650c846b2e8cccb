"""What a trained VAE is measured by: the held-out ELBO, the importance-sampled log p(x), the
active units, and the 8-bit scale papers report continuous densities on.

    ELBO(x)  = -(distortion + KL),  distortion = -E_q log p(x|z)       (evaluate: means over x)

    log p(x) = log E_{q(z|x)}[ p(x, z) / q(z|x) ]  ~  logsumexp_k log w_k - log K,
    log w_k  = log p(x | z_k) + log p(z_k) - log q(z_k | x),    z_k ~ q(z|x),  k = 1..K

The estimate is the K-sample IWAE bound evaluated at large K: a lower bound in expectation that
rises to log p(x) as K grows (Burda et al. 2016).  Memory stays bounded: the K samples of a chunk
of examples are decoded ``rows`` at a time, and the log-sum-exp is accumulated in a streaming form
(running maximum m and running sum s of exp(log w - m)), so no (K, N) array is ever held.
"""
import math

import numpy as np

from .backend import to_device, to_host
from .errors import MinivaeError
from .objectives import log_weights


def _positive_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1


def evaluate(model, x, rng, batch=1000, samples=1):
    """Held-out means over x (N, D), in nats per example: loss (distortion + beta KL, the model's
    training objective with its beta), distortion (-E_q log p(x|z), by ``samples`` draws per
    example), kl and elbo = -(distortion + kl).  Noise from rng; batched to bound memory."""
    if not _positive_int(batch):
        raise MinivaeError(f"batch must be a positive integer, got {batch!r}")
    if not hasattr(x, "shape") or len(x) < 1:
        raise MinivaeError(f"x must be an array of at least one example, got "
                           f"{getattr(x, 'shape', type(x).__name__)}")
    xp = model.xp
    tot = xp.zeros(2, dtype=np.float64)   # summed on the device; read back once at the end
    for i in range(0, len(x), batch):
        xb = to_device(x[i:i + batch], xp, model.dtype)
        t = model.elbo(xb, rng=rng, samples=samples)
        tot[0] += xp.sum(t.distortion)
        tot[1] += xp.sum(t.kl)
    n = len(x)
    distortion, kl = (float(v) / n for v in to_host(tot))
    return {"loss": distortion + model.beta * kl, "distortion": distortion, "kl": kl,
            "elbo": -(distortion + kl)}


def _check_k(k):
    if not _positive_int(k):
        raise MinivaeError(f"K (importance samples) must be an integer >= 1, got {k!r}")
    return int(k)


def importance_log_likelihood(model, x, k, rng, rows=10000, progress=False):
    """Per-example estimates of log p(x) (N,) as float64 host values.

    model: a VAE; x: (N, D); k: samples per example; rng: generator of the model's array module;
    rows: most z samples decoded at once (memory bound: rows * max(D, H) numbers).
    """
    k = _check_k(k)
    if not _positive_int(rows):
        raise MinivaeError(f"rows must be a positive integer, got {rows!r}")
    rows = int(rows)
    xp, dt = model.xp, model.dtype
    x = model.check_data(to_device(x, xp))
    n = len(x)
    per_chunk = max(1, rows // k)          # examples per chunk when all K fit in `rows`
    k_step = min(k, rows)                  # samples per pass when they do not
    out = np.empty(n, dtype=np.float64)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n * k, unit="sample", unit_scale=True, desc=f"IWAE K={k}", leave=False)
    try:
        for i in range(0, n, per_chunk):
            xb = x[i:i + per_chunk]
            B = len(xb)
            m = xp.full(B, -np.inf, dtype=np.float64)
            s = xp.zeros(B, dtype=np.float64)
            for j in range(0, k, k_step):
                kk = min(k_step, k - j)
                eps = xp.asarray(rng.standard_normal((kk, B, model.latent_dim), dtype=dt))
                logw, _ = log_weights(model, xb, eps)
                logw = logw.astype(np.float64)
                m_new = xp.maximum(m, logw.max(axis=0))
                s = s * xp.exp(m - m_new) + xp.exp(logw - m_new).sum(axis=0)
                m = m_new
                if bar is not None:
                    bar.update(kk * B)
            out[i:i + B] = to_host(xp.log(s) + m - math.log(k))
    finally:
        if bar is not None:
            bar.close()
    return out


def active_units(model, x, threshold=0.01, batch=1000):
    """Latent dimensions in use: Var_x(E_q[z_j | x]) > threshold (Burda et al. 2016, sec. 5.2).

    Returns (count, per-dimension variances as a host float64 array (Z,)).  A unit whose
    posterior mean does not move with the input carries no information about x: the KL term
    has collapsed it onto the prior.
    """
    if not _positive_int(batch):
        raise MinivaeError(f"batch must be a positive integer, got {batch!r}")
    batch = int(batch)
    xp = model.xp
    means = []
    for i in range(0, len(x), batch):
        mu, _ = model.encode(to_device(x[i:i + batch], xp, model.dtype))
        means.append(to_host(mu).astype(np.float64))
    variances = np.concatenate(means).var(axis=0)
    return int((variances > threshold).sum()), variances


def eight_bit(log_p, dims):
    """A continuous density's log p(x) (nats, data scaled to [0, 1]) on the 8-bit scale papers
    report: (log p(x) - D log 256 nats, bits per dimension -(log p(x) - D log 256) / (D log 2)).

    The density of x in [0, 1]^D times the volume 256^-D of one cell of 256 grey levels per
    dimension is the probability of the cell (the discretised likelihood, exact when the density
    is flat inside a cell, as for uniformly dequantised data (k + u) / 256); its negative log in
    bits, divided by D, is bits/dim.  Data stored as k / 255 differ from k / 256 by a factor
    255/256 per dimension, 0.0056 bits/dim, which this conversion ignores, as the papers do."""
    if not _positive_int(dims):
        raise MinivaeError(f"dims must be a positive integer, got {dims!r}")
    nats = float(log_p) - dims * math.log(256.0)
    return nats, -nats / (dims * math.log(2.0))
