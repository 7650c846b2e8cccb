"""Training objectives, each a forward pass and its hand-derived backward, reading top to bottom.

Notation: x (B, D) a batch; eps (S, B, Z) standard-normal noise; q(z|x) = N(mu, exp(logvar)).

ELBO with S samples and weight beta (beta = 1: the ELBO; beta != 1: the beta-VAE), in nats/example:
    loss = 1/B sum_b [ 1/S sum_s -log p(x_b | z_sb) + beta * KL(q(z|x_b) || N(0, I)) ]
    z_sb = mu_b + exp(logvar_b / 2) * eps_sb

Capacity-controlled beta-VAE (Burgess et al. 2018), C the capacity in nats:
    loss = 1/B sum_b 1/S sum_s -log p(x_b | z_sb) + gamma * | 1/B sum_b KL_b - C |

IWAE bound with K = S samples (Burda et al. 2016):
    log w_sb = log p(x_b | z_sb) + log p(z_sb) - log q(z_sb | x_b)
             = -nll_sb - 1/2 sum_j (z_sbj^2 - eps_sbj^2 - logvar_bj)        (the log 2 pi cancel)
    loss = -1/B sum_b [ logsumexp_s log w_sb - log S ]
    gradient: d loss / d log w_sb = -wt_sb / B with wt_b = softmax_s(log w_b) the normalised
    weights, held constant: grad loss = -1/B sum_b sum_s wt_sb grad log w_sb.

ELBO with the encoder's gradient by the score function (REINFORCE; ``score_elbo_loss``):
    the same loss, the same decoder gradient; the encoder's gradient is
    1/(S B) sum (f - c) d log q / d(mu, logvar) instead of the path through z (see the function).

All three functions write the parameter gradients into the model's flat gradient buffer and return a
``Terms`` of 0-d device arrays (no host synchronisation inside a training step).
"""
import math
from collections import namedtuple

import numpy as np

from . import kernels, threads
from .backend import get_array_module
from .distributions import gaussian_score
from .errors import MinivaeError
from .estimators import leave_one_out_mean

Terms = namedtuple("Terms", "loss distortion kl")
Terms.__doc__ = """Batch means, in nats per example: loss (the objective), distortion
(-E_q log p(x|z) >= 0 for a discrete likelihood) and kl (KL(q(z|x) || p(z)), the rate).
The ELBO is -(distortion + kl); the beta-ELBO loss distortion + beta kl."""


Forward = namedtuple("Forward", "ws enc dec mu logvar z std kl out nll_kw")


def _encode_and_sample(model, x, eps):
    """The start of every pass, on the model's workspaces: x -> encoder -> (mu, logvar) ->
    z = mu + std * eps and the KL.  Returns (ws, enc, dec, mu, logvar, z, std, kl)."""
    S, B, Z = eps.shape
    ws = model._step_buffers(S, B)
    enc, dec = model._plan("enc", B), model._plan("dec", S * B)
    head = enc.forward(x)
    mu, logvar = head[:, :Z], head[:, Z:]
    z, std, kl = kernels.reparam_kl(mu, logvar, eps, out=(ws.z, ws.std, ws.kl))
    return ws, enc, dec, mu, logvar, z, std, kl


def _forward(model, x, eps):
    """The pass every objective starts with, on the model's workspaces:
        x -> encoder -> (mu, logvar) -> z = mu + std * eps, KL -> decoder -> out (S, B, D).

    A likelihood that adds the decoder's last bias inside its own kernel (``takes_bias``: the
    Bernoulli's, on an MLP decoder) gets out before that bias, which saves a pass over the
    (S B, D) output; ``nll_kw`` is then the keyword {bias: b} to pass to its nll and
    nll_and_grad (else {}), so that they see the logits out + b."""
    S, B, Z = eps.shape
    ws, enc, dec, mu, logvar, z, std, kl = _encode_and_sample(model, x, eps)
    if getattr(model.likelihood, "takes_bias", False) and hasattr(dec, "last_bias"):
        out = dec.forward(z.reshape(S * B, Z), add_last_bias=False).reshape(S, B, -1)
        nll_kw = {"bias": dec.last_bias}
    else:
        out = dec.forward(z.reshape(S * B, Z)).reshape(S, B, -1)
        nll_kw = {}
    return Forward(ws, enc, dec, mu, logvar, z, std, kl, out, nll_kw)


def _reconstruction_backward(model, x, eps):
    """The forward pass, the distortion term's value and its backward down to dz:
        dout = 1/(S B) * d nll / d out,  dz = decoder backward of dout   (S, B, Z).
    Returns (Forward, distortion, dz): distortion is the batch mean of -log p(x|z) (a 0-d device array)."""
    xp = get_array_module(x)
    S, B, Z = eps.shape
    f = _forward(model, x, eps)
    nll, dout, db_done = model.likelihood.nll_and_grad(f.out, x, 1.0 / (S * B), nll=f.ws.nll,
                                                       grad=f.ws.dout, db=f.dec.out_db, **f.nll_kw)
    distortion = xp.mean(nll)                    # mean over samples and batch
    dz = f.dec.backward(dout.reshape(S * B, -1), db_done).reshape(S, B, Z)
    return f, distortion, dz


def elbo_loss(model, x, eps, beta):
    """The (beta-)ELBO loss and its gradient.  x: (B, D); eps: (S, B, Z).

    backward, the forward reversed (1/B and 1/S scale the per-example terms once, at the top):
        dout              = 1/(S B) * d nll / d out                   (the likelihood's gradient)
        dz                = decoder backward of dout                  (S, B, Z)
        dmu, dlogvar      = reparameterisation backward of dz  +  beta/B * dKL   (fan-out: add)
        encoder backward of (dmu, dlogvar)

    Runs on the model's workspaces (``model._plan``, ``model._step_buffers``): fused kernels,
    GEMMs into preallocated outputs, nothing allocated once a batch size has been seen.
    """
    S, B, Z = eps.shape
    f, distortion, dz = _reconstruction_backward(model, x, eps)
    kl_mean = get_array_module(x).mean(f.kl)
    loss = distortion + kl_mean * kl_mean.dtype.type(beta)
    kernels.reparam_kl_backward(dz, eps, f.std, f.mu, f.logvar, beta / B,
                                out=(f.ws.dhead[:, :Z], f.ws.dhead[:, Z:]))
    f.enc.backward(f.ws.dhead)
    return Terms(loss, distortion, kl_mean)


def capacity_loss(model, x, eps, gamma, capacity):
    """The capacity-controlled beta-VAE loss of Burgess et al. (2018) and its gradient.

        loss = 1/(S B) sum_sb -log p(x_b | z_sb)  +  gamma * | KLbar - C |,
        KLbar = 1/B sum_b KL(q(z|x_b) || N(0, I)),   C = capacity (nats per example)

    x: (B, D); eps: (S, B, Z); gamma > 0; C >= 0 (the trainer raises it linearly from 0 to
    C_max, see ``minivae.schedules``).  The KL is pushed towards C from both sides: below C
    the penalty pays for information, above C it charges gamma per nat.

    backward: the distortion's part is that of the ELBO (dz from the decoder); the KL enters
    only through KLbar, and d|u|/du = sign(u), so
        d loss / d KL_b   = gamma * sign(KLbar - C) / B          (one weight for the batch)
        dmu      = reparameterisation backward of dz  +  w * mu                  (fan-out: add)
        dlogvar  = reparameterisation backward of dz  +  w * (exp(logvar) - 1) / 2,
        w = gamma * sign(KLbar - C) / B.
    The kink: |u| has no derivative at u = 0 (KLbar = C exactly); its subdifferential is the
    interval [-gamma, gamma] / B, and we take 0, its minimum-norm element (what sign(0) gives):
    at the kink the step follows the distortion alone.  A float32 KLbar equals C with
    probability ~0, and near it the loss is not smooth, so finite differences are only checked
    away from it (tests/test_objectives.py).

    w is a 0-d device array (no host synchronisation), so the KL part is added after the fused
    kernel (called with KL weight 0): two (B, Z) elementwise updates.
    """
    xp = get_array_module(x)
    S, B, Z = eps.shape
    f, distortion, dz = _reconstruction_backward(model, x, eps)
    t = f.kl.dtype.type
    kl_mean = xp.mean(f.kl)
    gap = kl_mean - t(capacity)
    loss = distortion + t(gamma) * xp.abs(gap)
    dmu, dlogvar = kernels.reparam_kl_backward(dz, eps, f.std, f.mu, f.logvar, 0.0,
                                               out=(f.ws.dhead[:, :Z], f.ws.dhead[:, Z:]))
    w = xp.sign(gap) * t(gamma / B)                                  # 0-d, on the device
    dmu += w * f.mu
    dlogvar += (w * t(0.5)) * xp.expm1(f.logvar)
    f.enc.backward(f.ws.dhead)
    return Terms(loss, distortion, kl_mean)


BASELINES = ("none", "mean")


def score_baseline(signal, baseline):
    """The control variate c (S, B) of the learning signal (S, B): 0 ('none') or, per example, the
    leave-one-out mean of the other S - 1 samples' signals ('mean', S >= 2)."""
    if baseline == "none":
        return signal.dtype.type(0)
    if baseline == "mean":
        if signal.shape[0] < 2:
            raise MinivaeError(f"baseline 'mean' (leave-one-out) needs at least 2 samples per "
                               f"example, got {signal.shape[0]}; raise samples (--k) or use "
                               "baseline 'none'")
        return leave_one_out_mean(signal, axis=0)
    raise MinivaeError(f"baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")


def score_elbo_loss(model, x, eps, beta, baseline="none"):
    """The (beta-)ELBO loss of ``elbo_loss``, the encoder's gradient by the score function.

    x: (B, D); eps: (S, B, Z).  z_sb = mu_b + std_b eps_sb is a *sample* of q(z|x_b): no derivative
    flows through it.  Per example b and sample s, three named arrays (S, B) / (S, B, Z):
        signal  f_sb = log p(x_b|z_sb) + beta (log p(z_sb) - log q(z_sb|x_b))
                     = -nll_sb - beta/2 sum_j (z_sbj^2 - eps_sbj^2 - logvar_bj)   (log 2 pi cancels)
        base    c_sb = 0 ('none') or (sum_t f_tb - f_sb) / (S - 1) ('mean', leave-one-out)
        score   d log q(z_sb|x_b) / d mu_b = eps_sb / std_b,   d / d logvar_b = (eps_sb^2 - 1) / 2
    Derivation.  With phi the encoder's parameters, L = E_q[f_phi(z)] where f depends on phi
    only through -beta log q_phi(z|x), and (Leibniz, then d q = q d log q)
        dL/dphi = E_q[f d log q/dphi] + E_q[d f_phi/dphi] = E_q[f score] - beta E_q[score]
                = E_q[f score]                                   since E_q[score] = d/dphi 1 = 0,
                = E_q[(f - c) score]   for any c independent of z_sb: E[c score] = E[c] E[score] = 0
    (the leave-one-out c uses the other samples only, so it qualifies; the plain mean would not).
    The loss is -ELBO, so its gradient estimate is, summed into the encoder head:
        dmu_b     = -1/(S B) sum_s (f_sb - c_sb) eps_sb / std_b
        dlogvar_b = -1/(S B) sum_s (f_sb - c_sb) (eps_sb^2 - 1) / 2
    The decoder's parameters theta do not shape q, so d/dtheta E_q[log p_theta(x|z)] =
    E_q[d log p_theta(x|z)/dtheta]: the decoder's gradient is elbo_loss's, at the same z.  The
    loss reported is also elbo_loss's (distortion + beta KL, KL in closed form); its mean is -1/(S B)
    sum f's.  Same mean gradient as elbo_loss: tests/test_score_estimator.py.
    """
    xp = get_array_module(x)
    S, B, Z = eps.shape
    dt = eps.dtype.type
    ws, enc, dec, mu, logvar, z, std, kl, out, nll_kw = _forward(model, x, eps)
    nll, dout, db_done = model.likelihood.nll_and_grad(out, x, 1.0 / (S * B), nll=ws.nll,
                                                       grad=ws.dout, db=dec.out_db, **nll_kw)
    distortion = xp.mean(nll)
    kl_mean = xp.mean(kl)
    loss = distortion + kl_mean * dt(beta)
    dec.backward(dout.reshape(S * B, -1), db_done)       # its dz is not used: no path through z

    signal = -nll - dt(0.5 * beta) * xp.sum(z * z - eps * eps - logvar, axis=-1)      # (S, B)
    base = score_baseline(signal, baseline)                                             # (S, B)
    score_mu, score_logvar = gaussian_score(eps, std)                                   # (S, B, Z)
    weight = ((signal - base) * dt(-1.0 / (S * B)))[..., None]                          # (S, B, 1)
    xp.sum(weight * score_mu, axis=0, out=ws.dhead[:, :Z])
    xp.sum(weight * score_logvar, axis=0, out=ws.dhead[:, Z:])
    enc.backward(ws.dhead)
    return Terms(loss, distortion, kl_mean)


SPLIT_ROWS = 4096     # decoder rows (S B) from which log_weights runs in two halves


def log_weights(model, x, eps):
    """Importance log-weights log w_sb = log p(x_b, z_sb) - log q(z_sb | x_b): (S, B).

    Forward only; also returns what the IWAE backward needs (mu, logvar, z, std, out, kl): views
    of the model's workspaces, valid until its next pass with the same sizes (out: the
    decoder's output, for a Bernoulli MLP decoder before its last bias; see _forward).

    Where minivae chose the BLAS thread count (minivae.threads.split_available) and the pass
    decodes at least SPLIT_ROWS rows of an MLP decoder on the CPU, it runs as two halves of the
    samples, s < S/2 and s >= S/2, each decoded and scored with one BLAS thread, on two
    threads when there are cores for them (threads.run_parts): the same values for any thread
    count.
    """
    S, B, Z = eps.shape
    if (S >= 2 and S * B >= SPLIT_ROWS and model.xp is np and threads.split_available()
            and hasattr(model._plan("dec", S * B), "forward_rows")):
        with threads.single_blas():
            return _log_weights_halves(model, x, eps)
    ws, _, _, mu, logvar, z, std, kl, out, nll_kw = _forward(model, x, eps)
    return _log_w(model, out, x, z, eps, logvar, ws, nll_kw), (mu, logvar, z, std, out, kl)


def _log_weights_halves(model, x, eps):
    """log_weights with the decoder and the likelihood in two halves of the samples."""
    S, B, Z = eps.shape
    ws, enc, dec, mu, logvar, z, std, kl = _encode_and_sample(model, x, eps)
    zf = z.reshape(S * B, Z)
    fuse = getattr(model.likelihood, "takes_bias", False)
    nll_kw = {"bias": dec.last_bias} if fuse else {}
    out = dec.h[-1].reshape(S, B, -1)
    logw = np.empty((S, B), z.dtype)
    t = z.dtype.type(0.5)

    def half(s0, s1):
        dec.forward_rows(zf, s0 * B, s1 * B, add_last_bias=not fuse)
        nll = model.likelihood.nll(out[s0:s1], x, nll=ws.nll[s0:s1], **nll_kw)
        zs, es = z[s0:s1], eps[s0:s1]           # _log_w's expression, on these samples' rows
        logw[s0:s1] = -nll - t * np.sum(zs * zs - es * es - logvar, axis=-1)

    h = S // 2
    threads.run_parts(lambda: half(0, h), lambda: half(h, S))
    return logw, (mu, logvar, z, std, out, kl)


def _log_w(model, out, x, z, eps, logvar, ws=None, nll_kw=None):
    nll = model.likelihood.nll(out, x, nll=None if ws is None else ws.nll, **(nll_kw or {}))
    half = z.dtype.type(0.5)
    xp = get_array_module(z)
    return -nll - half * xp.sum(z * z - eps * eps - logvar, axis=-1)


def logmeanexp(a, axis=0):
    """log (1/n) sum exp(a) along axis, with the maximum subtracted first (never overflows)."""
    xp = get_array_module(a)
    m = xp.max(a, axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0)
    out = xp.log(xp.mean(xp.exp(a - m), axis=axis)) + xp.squeeze(m, axis=axis)
    return out


def iwae_loss(model, x, eps):
    """The K-sample IWAE loss (K = eps.shape[0]) and its gradient.

    backward (wt = softmax over samples of log w, held constant):
        d loss / d log w_sb = -wt_sb / B
        log w depends on out through -nll:          dout = wt_sb / B * d nll / d out
        on z through log p(z) = -z^2/2 + const:     dz   = decoder backward of dout + wt_sb / B * z
        on logvar directly through -log q:          -log q = 1/2 sum (eps^2 + logvar) + const,
                                                    so dlogvar += -1/B sum_s wt_sb / 2 = -1/(2B)
        and dmu, dlogvar from dz by the reparameterisation backward (no KL term: it is inside w).
    """
    xp = get_array_module(x)
    S, B, Z = eps.shape
    ws, enc, dec, mu, logvar, z, std, kl, out, nll_kw = _forward(model, x, eps)
    lik = model.likelihood
    logw = _log_w(model, out, x, z, eps, logvar, ws, nll_kw)                # (S, B)
    nll = ws.nll                                                            # written by _log_w

    m = xp.max(logw, axis=0, keepdims=True)
    e = xp.exp(logw - m)
    total = xp.sum(e, axis=0, keepdims=True)
    wt = e / total                                                          # (S, B)
    bound = xp.log(total[0]) + m[0] - z.dtype.type(math.log(S))            # (B,)
    loss = -xp.mean(bound)

    c = wt * z.dtype.type(1.0 / B)                                          # (S, B)
    _, dout, _ = lik.nll_and_grad(out, x, c[..., None], **nll_kw)  # also weights a learned log sigma
    dz = dec.backward(dout.reshape(S * B, -1)).reshape(S, B, Z)
    dz += c[..., None] * z
    dmu, dlogvar = kernels.reparam_kl_backward(dz, eps, std, mu, logvar, 0.0,
                                               out=(ws.dhead[:, :Z], ws.dhead[:, Z:]))
    dlogvar -= z.dtype.type(0.5 / B)
    enc.backward(ws.dhead)
    return Terms(loss, xp.mean(nll), xp.mean(kl))


OBJECTIVES = ("elbo", "iwae")
