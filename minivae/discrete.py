"""A VAE with K independent Bernoulli latents, trained by the score function or by the
Concrete (Gumbel-softmax) relaxation, and evaluated exactly by enumerating all 2^K states.

    encoder   MLP  D -> H1 -> ... -> K     logits l of q(z|x) = prod_k Bernoulli(z_k; p_k), p = sigmoid(l)
    prior     p(z) = prod_k Bernoulli(z_k; 1/2) = 2^-K
    decoder   MLP  K -> ... -> H1 -> D     Bernoulli logits of p(x|z)

Noise is an argument: eps (S, B, K) standard *logistic* noise, eps = log u - log(1 - u),
u ~ U(0, 1) (``logistic_noise``).  With a = l + eps:
    the discrete sample   z = 1[a > 0]               P(z_k = 1) = P(eps > -l_k) = sigmoid(l_k) = p_k
    the relaxed sample    y = sigmoid(a / tau)       (the binary Concrete of Maddison et al. 2017;
                                                      Jang et al. 2017), y -> z as tau -> 0
so both estimators see the same draws, and the relaxation at small tau is the discrete model.

KL in closed form, per example (log p = -softplus(-l), log(1 - p) = -softplus(l)):
    KL(q || p) = sum_k [p_k log p_k + (1 - p_k) log(1 - p_k) + log 2]
               = sum_k [log 2 - p_k softplus(-l_k) - (1 - p_k) softplus(l_k)]
    dKL/dl_k   = p_k (1 - p_k) l_k          (since softplus(l) - softplus(-l) = l, dp/dl = p (1 - p))

The objective is the ELBO, E_q[log p(x|z)] - KL.  Two gradients of the loss (-ELBO) for the
encoder (``score_loss``, ``relaxed_loss``); the decoder's is d/dtheta nll at the sample, averaged.
Exact evaluation (``DiscreteVAE.exact``): for K <= MAX_ENUMERATE the ELBO and log p(x) by summing
over all 2^K states; beyond, ``DiscreteVAE.evaluate`` importance-samples log p(x) with q as the
proposal.  Bernoulli decoder only (the enumeration writes log p(x|z) for all states as one GEMM).
"""
import math
from collections import namedtuple

import numpy as np

from . import distributions as dist
from .backend import get_array_module, resolve_device, to_device, to_host
from .errors import MinivaeError
from .layers import mlp_shapes
from .model import ELBO, VAE, _positive_int
from .objectives import BASELINES, Terms, score_baseline
from .params import ParamBuffer

ESTIMATORS = ("score", "relaxed")
MAX_ENUMERATE = 16          # 2^16 states: exact evaluation; above, importance sampling

Exact = namedtuple("Exact", "elbo logpx distortion kl")
Exact.__doc__ = """Per-example exact values (B,) as float64 host arrays: the ELBO, log p(x)
(a sum over all 2^K states), distortion = -E_q[log p(x|z)] and kl = KL(q(z|x) || p(z));
elbo = -(distortion + kl)."""


# ----------------------------------------------------------------------------- the pieces
def logistic_noise(rng, shape=None, dtype=np.float32, out=None):
    """Standard logistic draws log u - log(1 - u), u ~ U(0, 1) from rng (NumPy or CuPy), into
    out when given.  u is raised to the smallest normal number, so no draw is -inf."""
    u = rng.random(shape, dtype=dtype) if out is None else rng.random(out=out, dtype=dtype)
    xp = get_array_module(u)
    xp.maximum(u, np.finfo(u.dtype).tiny, out=u)
    tmp = xp.log1p(-u)
    xp.log(u, out=u)
    u -= tmp
    return u


def bernoulli_kl(logits):
    """KL(prod_k Bernoulli(sigmoid(l_k)) || Bernoulli(1/2)^K) per example: (B, K) -> (B,)."""
    xp = get_array_module(logits)
    p = dist.sigmoid(logits)
    return xp.sum(logits.dtype.type(math.log(2.0)) - p * dist.softplus(-logits)
                  - (1 - p) * dist.softplus(logits), axis=-1)


def bernoulli_kl_grad(logits):
    """d KL / d l = p (1 - p) l, per element."""
    p = dist.sigmoid(logits)
    return p * (1 - p) * logits


def bernoulli_log_prob(z, logits):
    """log q(z) = sum_k z_k l_k - softplus(l_k), summed over the last axis (z in {0, 1})."""
    xp = get_array_module(z)
    return xp.sum(z * logits - dist.softplus(logits), axis=-1)


def bernoulli_score(z, logits):
    """d log q(z) / d l = z - sigmoid(l): the score of the encoder's logits at a fixed z."""
    return z - dist.sigmoid(logits)


def hard_sample(logits, eps):
    """z = 1[l + eps > 0] (S, B, K) in the logits' dtype: a Bernoulli(sigmoid(l)) draw."""
    return (logits + eps > 0).astype(logits.dtype)


def relaxed_sample(logits, eps, tau):
    """y = sigmoid((l + eps) / tau) (S, B, K) and dy/dl = y (1 - y) / tau."""
    y = dist.sigmoid((logits + eps) * logits.dtype.type(1.0 / tau))
    return y, y * (1 - y) * logits.dtype.type(1.0 / tau)


def all_states(K, dtype):
    """The 2^K binary vectors (2^K, K), state c's bit k = (c >> k) & 1."""
    c = np.arange(2 ** K)[:, None]
    return ((c >> np.arange(K)) & 1).astype(dtype)


# ----------------------------------------------------------------------------- the objectives
def score_loss(model, x, eps, baseline="none"):
    """-ELBO and its gradient, the encoder's by the score function.  x (B, D), eps (S, B, K).

    z_sb = 1[l_b + eps_sb > 0] ~ q(z|x_b).  Three named arrays:
        signal  f_sb = log p(x_b | z_sb) = -nll_sb                                  (S, B)
        base    c_sb = 0 ('none') or the leave-one-out mean over the other S - 1 samples ('mean')
        score   d log q(z_sb|x_b) / d l_b = z_sb - p_b                              (S, B, K)
    ELBO = E_q[log p(x|z)] - KL.  The reconstruction term by the score function,
        d/dl E_q[f(z)] = sum_z f(z) d q(z)/dl = E_q[f(z) d log q(z)/dl] = E_q[(f - c) (z - p)],
    (E_q[z - p] = 0, so any c independent of z_sb leaves it unbiased), the KL term exactly:
        dl_b = -1/(S B) sum_s (f_sb - c_sb) (z_sb - p_b)  +  1/B p_b (1 - p_b) l_b
    The decoder: d/dtheta E_q[log p_theta(x|z)] = E_q[d log p_theta(x|z)/dtheta] at the samples.
    (The KL in closed form rather than inside the signal, as ``score_elbo_loss`` has it for the
    Gaussian: it is exact here at no cost, so it adds no variance.)
    """
    xp = get_array_module(x)
    S, B, K = eps.shape
    dt = eps.dtype.type
    enc, dec = model._plan("enc", B), model._plan("dec", S * B)
    logits = enc.forward(x)
    z = hard_sample(logits, eps)
    out = dec.forward(z.reshape(S * B, K)).reshape(S, B, -1)
    nll, dout = model.likelihood.nll_and_grad(out, x, 1.0 / (S * B))[:2]
    kl = bernoulli_kl(logits)
    dec.backward(dout.reshape(S * B, -1))                # its dz is not used: z is a sample

    signal = -nll                                                          # (S, B)
    base = score_baseline(signal, baseline)                                # (S, B)
    score = bernoulli_score(z, logits)                                     # (S, B, K)
    dl = xp.sum(((signal - base) * dt(-1.0 / (S * B)))[..., None] * score, axis=0)
    dl += bernoulli_kl_grad(logits) * dt(1.0 / B)
    enc.backward(dl)
    distortion, kl_mean = xp.mean(nll), xp.mean(kl)
    return Terms(distortion + kl_mean, distortion, kl_mean)


def relaxed_loss(model, x, eps, tau):
    """The relaxed objective and its exact gradient.  x (B, D), eps (S, B, K), tau > 0.

        loss_tau = 1/(S B) sum_sb nll(x_b | y_sb) + 1/B sum_b KL(q(z|x_b) || p(z)),
        y_sb = sigmoid((l_b + eps_sb) / tau)
    The decoder is fed y in (0, 1)^K, not a binary z: for tau > 0 this is not the discrete ELBO
    (nor a bound on the discrete model's log p(x)), and its gradient is a biased estimate of the
    ELBO's.  As tau -> 0, y -> z and loss_tau -> -ELBO, while the gradient's variance grows like
    1/tau (dy/dl = y (1 - y) / tau is a spike at a = 0).  The KL kept is the discrete one (the
    relaxed densities' KL of Maddison et al. would be a different objective; docs/estimators.md).
    backward (pathwise: y is a differentiable function of l at fixed eps):
        dy = decoder backward of dout = 1/(S B) d nll / d out
        dl_b = sum_s dy_sb * y_sb (1 - y_sb) / tau  +  1/B p_b (1 - p_b) l_b
    """
    xp = get_array_module(x)
    S, B, K = eps.shape
    dt = eps.dtype.type
    enc, dec = model._plan("enc", B), model._plan("dec", S * B)
    logits = enc.forward(x)
    y, dy_dl = relaxed_sample(logits, eps, tau)
    out = dec.forward(y.reshape(S * B, K)).reshape(S, B, -1)
    nll, dout = model.likelihood.nll_and_grad(out, x, 1.0 / (S * B))[:2]
    kl = bernoulli_kl(logits)
    dy = dec.backward(dout.reshape(S * B, -1)).reshape(S, B, K)
    dl = xp.sum(dy * dy_dl, axis=0)
    dl += bernoulli_kl_grad(logits) * dt(1.0 / B)
    enc.backward(dl)
    distortion, kl_mean = xp.mean(nll), xp.mean(kl)
    return Terms(distortion + kl_mean, distortion, kl_mean)


# ----------------------------------------------------------------------------- the model
class DiscreteVAE(VAE):
    """A VAE whose K = latent_dim latents are independent Bernoulli variables.

    estimator     'score' (the score function, unbiased; baseline 'none' or 'mean', the
                  leave-one-out mean over the S samples of each example) or 'relaxed' (the binary
                  Concrete relaxation at temperature tau: biased, low variance)
    samples       S samples per example;  temperature: tau of 'relaxed'
    The others as in ``minivae.model.VAE`` (likelihood 'bernoulli' only, no beta).
    Shares the VAE's parameter buffer, workspaces and checks; its latent pieces are its own.
    """

    def __init__(self, data_dim, hidden=(200,), latent_dim=10, activation="relu",
                 dtype="float32", seed=0, device=None, samples=1, estimator="score",
                 baseline="none", temperature=0.5, likelihood="bernoulli"):
        if likelihood != "bernoulli":
            raise MinivaeError(f"the Bernoulli-latent VAE has a Bernoulli decoder only, got "
                               f"likelihood {likelihood!r}")
        if estimator not in ESTIMATORS:
            raise MinivaeError(f"estimator for Bernoulli latents must be one of "
                               f"{', '.join(ESTIMATORS)}, got {estimator!r}")
        if baseline not in BASELINES:
            raise MinivaeError(f"baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
        if baseline != "none" and estimator != "score":
            raise MinivaeError(f"baseline {baseline!r} applies to estimator 'score' only")
        samples = _positive_int("samples", samples)
        if baseline == "mean" and samples < 2:
            raise MinivaeError("baseline 'mean' (leave-one-out) needs samples >= 2 per example, "
                               f"got {samples}; raise samples (--k) or use baseline 'none'")
        ok = (not isinstance(temperature, bool)
              and isinstance(temperature, (int, float, np.integer, np.floating))
              and math.isfinite(temperature) and temperature > 0)
        if not ok:
            raise MinivaeError(f"temperature must be a finite number > 0, got {temperature!r}")
        super().__init__(data_dim, hidden, latent_dim, activation, "bernoulli", 1.0, dtype, seed,
                         device, samples=samples)
        self.estimator, self.baseline, self.temperature = estimator, baseline, float(temperature)
        self.config = dict(latent="bernoulli", data_dim=self.data_dim, hidden=list(self.hidden),
                           latent_dim=self.latent_dim, activation=activation,
                           dtype=self.dtype.__name__, seed=int(seed),
                           device=resolve_device(device), samples=samples, estimator=estimator,
                           baseline=baseline, temperature=float(temperature))

    def _layout(self, data_dim, hidden, latent_dim, out_dim):
        """Encoder head K logits (not 2Z)."""
        return (data_dim, *hidden, latent_dim), (latent_dim, *hidden[::-1], out_dim)

    # ------------------------------------------------------------------ noise and passes
    def draw_noise(self, rng, shape=None, out=None):
        return logistic_noise(rng, shape, self.dtype, out)

    def _noise(self, B, eps, rng, samples=None):
        S = self.samples if samples is None else _positive_int("samples", samples)
        shape = (S, B, self.latent_dim)
        if eps is None:
            if rng is None:
                raise MinivaeError("pass eps (logistic noise of shape (S, B, K)) or rng")
            return self.draw_noise(rng, shape)
        return super()._noise(B, eps, None, samples)

    def forward_backward(self, x, eps, beta=None, capacity=None, gamma=None):
        """One pass of the configured estimator (eps: logistic noise (S, B, K)).  The KL
        schedules (beta warm-up, capacity) are the Gaussian VAE's; here they are refused."""
        if beta is not None or capacity is not None:
            raise MinivaeError("KL warm-up and capacity schedules apply to Gaussian latents only")
        if self.estimator == "relaxed":
            return relaxed_loss(self, x, eps, self.temperature)
        return score_loss(self, x, eps, self.baseline)

    def encode(self, x):
        """The logits l (B, K) of q(z|x)."""
        return self.encoder.forward(self.check_data(x))

    def loss(self, x, eps=None, rng=None):
        """The training objective alone: -ELBO at the hard samples ('score') or the relaxed
        objective ('relaxed'), for finite differences."""
        x = self.check_data(x)
        eps = self._noise(x.shape[0], eps, rng)
        S, B, K = eps.shape
        logits = self.encoder.forward(x)
        z = (relaxed_sample(logits, eps, self.temperature)[0] if self.estimator == "relaxed"
             else hard_sample(logits, eps))
        out = self.decoder.forward(z.reshape(S * B, K)).reshape(S, B, -1)
        return float(self.xp.mean(self.likelihood.nll(out, x)) + self.xp.mean(bernoulli_kl(logits)))

    def elbo(self, x, eps=None, rng=None, samples=None):
        """Per-example terms (B,) of the *discrete* ELBO: distortion by S hard samples, KL exact."""
        x = self.check_data(x)
        eps = self._noise(x.shape[0], eps, rng, samples)
        S, B, K = eps.shape
        logits = self.encoder.forward(x)
        z = hard_sample(logits, eps)
        out = self.decoder.forward(z.reshape(S * B, K)).reshape(S, B, -1)
        distortion = self.likelihood.nll(out, x).mean(axis=0)
        kl = bernoulli_kl(logits)
        return ELBO(-(distortion + kl), distortion, kl)

    def reconstruct(self, x):
        """The mean of p(x|z) at the mode of q(z|x), z = 1[l > 0]."""
        logits = self.encode(x)
        return self.likelihood.mean(self.decoder.forward((logits > 0).astype(self.dtype)))

    def sample(self, n, rng):
        """n draws of the mean of p(x|z), z ~ Bernoulli(1/2)^K: (n, D)."""
        n = _positive_int("n", n)
        if not callable(getattr(rng, "random", None)):
            raise MinivaeError(f"sample needs rng, a seeded Generator (minivae.backend.make_rng), "
                               f"got {type(rng).__name__}")
        z = (rng.random((n, self.latent_dim), dtype=self.dtype) < 0.5).astype(self.dtype)
        return self.decode(z)

    # ------------------------------------------------------------------ exact evaluation
    def exact(self, x, chunk=4096):
        """Exact per-example ELBO, log p(x), distortion and KL (float64 host arrays (B,)) by summing over
        all 2^K states, K <= MAX_ENUMERATE:
            log q(z_c|x_b)  = z_c . l_b - sum_k softplus(l_bk)          (B, C) one GEMM
            log p(x_b|z_c)  = x_b . L_c - sum_d softplus(L_cd)          (B, C) one GEMM,
                              L_c the decoder's logits at state c
            distortion_b = -sum_c q(z_c|x_b) log p(x_b|z_c),  ELBO_b = -(distortion_b + KL_b)
            log p(x_b) = logsumexp_c [log p(x_b|z_c)] - K log 2
        States go through the decoder `chunk` at a time (memory: chunk * max(D, H) numbers)."""
        K = self.latent_dim
        if K > MAX_ENUMERATE:
            raise MinivaeError(f"exact evaluation enumerates 2^K states, K <= {MAX_ENUMERATE}; "
                               f"this model has K = {K}: use evaluate() (importance sampling)")
        xp = self.xp
        x = self.check_data(x)
        logits = self.encoder.forward(x)
        sp_l = xp.sum(dist.softplus(logits), axis=1).astype(np.float64)
        kl = to_host(bernoulli_kl(logits)).astype(np.float64)
        B = len(x)
        log_px_z = xp.zeros(B, np.float64)       # E_q log p(x|z) = -distortion
        m = xp.full(B, -np.inf, np.float64)
        s = xp.zeros(B, np.float64)
        states = to_device(all_states(K, self.dtype), xp)
        for i in range(0, len(states), chunk):
            zc = states[i:i + chunk]
            L = self.decoder.forward(zc)                                        # (C, D)
            logpx_z = (x @ L.T).astype(np.float64) - xp.sum(dist.softplus(L), axis=1).astype(
                np.float64)                                                     # (B, C)
            logq = (logits @ zc.T).astype(np.float64) - sp_l[:, None]           # (B, C)
            log_px_z += xp.sum(xp.exp(logq) * logpx_z, axis=1)
            m_new = xp.maximum(m, logpx_z.max(axis=1))
            s = s * xp.exp(m - m_new) + xp.exp(logpx_z - m_new[:, None]).sum(axis=1)
            m = m_new
        distortion = -to_host(log_px_z)
        logpx = to_host(xp.log(s) + m) - K * math.log(2.0)
        return Exact(-(distortion + kl), logpx, distortion, kl)

    def evaluate(self, x, rng, samples=1000, rows=10000):
        """{elbo, logpx, exact, ...} means over x (N, D): exact by enumeration when K <= 16,
        else importance sampling with q(z|x) as the proposal and `samples` draws per example:
            log p(x) ~ logmeanexp_m [log p(x|z_m) - K log 2 - log q(z_m|x)]   (a lower bound in
            expectation, the IWAE bound, tight as samples grow), ELBO ~ mean_m log p(x|z_m) - KL,
        with standard errors over the examples (and of the ELBO's Monte Carlo part)."""
        n = len(x)
        if self.latent_dim <= MAX_ENUMERATE:
            parts = [self.exact(to_device(x[i:i + 500], self.xp)) for i in range(0, n, 500)]
            elbo = np.concatenate([p.elbo for p in parts])
            logpx = np.concatenate([p.logpx for p in parts])
            return {"exact": True, "elbo": float(elbo.mean()), "logpx": float(logpx.mean()),
                    "logpx_minus_elbo": float((logpx - elbo).mean()), "n": n}
        samples = _positive_int("samples", samples)
        per = max(1, rows // samples)
        elbo, logpx = [], []
        for i in range(0, n, per):
            xb = self.check_data(to_device(x[i:i + per], self.xp))
            eps = self.draw_noise(rng, (samples, len(xb), self.latent_dim))
            logits = self.encoder.forward(xb)
            z = hard_sample(logits, eps)
            out = self.decoder.forward(z.reshape(-1, self.latent_dim)).reshape(samples, len(xb), -1)
            lpxz = -to_host(self.likelihood.nll(out, xb)).astype(np.float64)          # (M, B)
            logq = to_host(bernoulli_log_prob(z, logits[None])).astype(np.float64)
            logw = lpxz - self.latent_dim * math.log(2.0) - logq
            mx = logw.max(axis=0)
            logpx.append(np.log(np.mean(np.exp(logw - mx), axis=0)) + mx)
            elbo.append(lpxz.mean(axis=0) - to_host(bernoulli_kl(logits)).astype(np.float64))
        elbo, logpx = np.concatenate(elbo), np.concatenate(logpx)
        se = (lambda a: float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else None)
        return {"exact": False, "samples": samples, "elbo": float(elbo.mean()),
                "elbo_stderr": se(elbo), "logpx": float(logpx.mean()), "logpx_stderr": se(logpx),
                "logpx_minus_elbo": float((logpx - elbo).mean()), "n": n}

    def __repr__(self):
        c = self.config
        sizes = "-".join(map(str, [c["data_dim"], *c["hidden"], c["latent_dim"]]))
        est = (f"relaxed tau={c['temperature']:g}" if c["estimator"] == "relaxed" else
               "score" + (", leave-one-out baseline" if c["baseline"] == "mean" else ""))
        return (f"DiscreteVAE({sizes} Bernoulli latents, {c['activation']}, {est}, "
                f"S={c['samples']}, {c['dtype']}, {c['device']}, {self.num_params()} parameters)")


def discrete_param_shapes(cfg):
    """name -> shape of a DiscreteVAE config's parameters (without building it)."""
    D, K, H = cfg["data_dim"], cfg["latent_dim"], cfg["hidden"]
    return {**mlp_shapes("enc", (D, *H, K)), **mlp_shapes("dec", (K, *H[::-1], D))}
