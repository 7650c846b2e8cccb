"""Gradient estimators for g(theta) = d/dtheta E_{q_theta}[f(z)], the problem behind every VAE encoder.

Two unbiased estimators, each an average of n iid summands s_i (one row per sample, one column per
parameter), so each returns the mean and the per-sample variance of its summands
(``GradientEstimate(grad, var, n, names)``; standard error sqrt(var / n)):

    score function (REINFORCE):  g = E_q[f(z) d/dtheta log q_theta(z)]      s_i = (f(z_i) - c) score(z_i)
    reparameterisation:          g = E_eps[f'(g_theta(eps)) d g_theta(eps) / dtheta],
                                 z = g_theta(eps), eps ~ a fixed base noise  s_i = f'(z_i) dz_i/dtheta

Families (scalar parameters, samples are float64 arrays (n,)); parameters in the order of ``names``:

    Normal(mu, sigma)      N(mu, sigma^2), parameterised by sigma (not log sigma); z = mu + sigma eps
    Uniform(a, b)          U(a, b); z = a + (b - a) u, u ~ U(0, 1)
    Exponential(rate)      density rate exp(-rate z) on z >= 0; z = eps / rate, eps ~ Exp(1)
    Laplace(loc, scale)    density exp(-|z - loc| / scale) / (2 scale); z = loc + scale eps
    Logistic(loc, scale)   z = loc + scale log(u / (1 - u)), u ~ U(0, 1)
    Bernoulli(p=...)       or Bernoulli(logits=...): parameter "p" or "logit"; discrete, so only the
                           score function applies (its sampler z = 1[u < p] is a step function)

Which function supports which step of the derivation (claims of issue 3):

    C9   ``finite_difference(f, family, n, rng, h, noise="fresh")``: differentiating the plain Monte
         Carlo average (1/n) sum f(z_i), z_i ~ q_theta, does not work.  With the samples held as data
         the average has derivative 0 (f does not depend on theta); re-sampling at theta +- h, the
         central difference has per-sample variance ~ var f / (2 h^2), which blows up as h -> 0.
         The Leibniz rule says why: d/dtheta integral f q_theta dz = integral f d q_theta/dtheta dz
         is not an expectation under q_theta of anything computed from f(z) alone.  The two ways
         out: d q = q d log q (C10), or move theta into f through z = g_theta(eps) (C11);
         ``noise="fixed"`` is the latter, and its limit h -> 0 is the pathwise estimator.
    C10  ``score_function``: unbiased, high variance; ``baseline`` (a constant or the leave-one-out
         mean) lowers the variance and keeps it unbiased.
    C11  ``reparameterization``: unbiased, far lower variance for smooth f (for Normal, f = z^2:
         see tests/test_estimators.py for the exact variance ratios).
    C12  Normal, Uniform, Exponential, Laplace, Logistic have ``reparameterize``; ``Bernoulli`` does
         not (MinivaeError says why).  Uniform has no unbiased score-function estimator: its
         support moves with (a, b) (``score_function`` refuses it, see ``Uniform``).

Each family also has ``mean_square()`` = E[z^2] and ``mean_square_grad()`` = d/dtheta E[z^2] in
closed form (the ground truth of the tests and of scripts/derivation.py), and Bernoulli has
``exact_grad(f)`` = (f(1) - f(0)) dp/dtheta.

    rng = make_rng(0)
    fam = Normal(1.0, 0.5)
    sf = score_function(lambda z: z**2, fam, 10_000, rng, baseline="mean")
    rp = reparameterization(lambda z: z**2, lambda z: 2 * z, fam, 10_000, rng)
    rp.grad, rp.stderr, fam.mean_square_grad()       # (2 mu, 2 sigma) = (2.0, 1.0)
"""
import math
from typing import NamedTuple

import numpy as np

from .errors import MinivaeError


class GradientEstimate(NamedTuple):
    """grad (P,): the mean of the n summands; var (P,): their sample variance (ddof=1; nan for
    n = 1); n; names: the parameter names in the order of grad."""
    grad: np.ndarray
    var: np.ndarray
    n: int
    names: tuple

    @property
    def stderr(self):
        """sqrt(var / n): the standard error of grad."""
        return np.sqrt(self.var / self.n)

    def as_dict(self):
        return {name: (float(g), float(s)) for name, g, s in zip(self.names, self.grad, self.stderr)}


# ---------------------------------------------------------------------------------------------
# input checks

def _count(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise MinivaeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _real(owner, name, value, positive=False):
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not math.isfinite(v) or (positive and v <= 0):
        need = "a finite number > 0" if positive else "a finite number"
        raise MinivaeError(f"{owner}: {name} must be {need}, got {value!r}")
    return v


def _summands(s):
    """GradientEstimate fields from summands (n, P)."""
    n = len(s)
    var = s.var(axis=0, ddof=1) if n > 1 else np.full(s.shape[1], np.nan)
    return s.mean(axis=0), var, n


def _apply(name, f, z):
    """f(z) as a float64 array (n,); a scalar result (constant f) is broadcast."""
    v = np.asarray(f(z), dtype=np.float64)
    if v.ndim == 0:
        v = np.full(z.shape, float(v))
    if v.shape != z.shape:
        raise MinivaeError(f"{name} must map z of shape {z.shape} to the same shape "
                           f"(elementwise), got {v.shape}")
    return v


# ---------------------------------------------------------------------------------------------
# families

class Family:
    """A one-dimensional distribution q_theta with named scalar parameters theta (P,).

    noise(n, rng) -> eps (n,)      draws of the parameter-free base noise
    transform(eps) -> z (n,)       z = g_theta(eps), so z ~ q_theta
    sample(n, rng) -> z (n,)       transform(noise(n, rng))
    log_prob(z) -> (n,)            log q_theta(z)
    score(z) -> (n, P)             d/dtheta log q_theta(z)
    dz_dtheta(eps) -> (n, P)       pathwise derivative d g_theta(eps) / dtheta (continuous only)
    reparameterize(eps) -> (z, dz_dtheta)
    """
    names = ()
    reparameterizable = True
    support_depends_on_theta = False

    @property
    def theta(self):
        return np.array([getattr(self, k) for k in self.names], dtype=np.float64)

    def with_theta(self, theta):
        """The same family at other parameter values (in the order of names)."""
        return type(self)(*[float(t) for t in theta])

    def sample(self, n, rng):
        return self.transform(self.noise(_count("n", n), rng))

    def reparameterize(self, eps):
        eps = np.asarray(eps, dtype=np.float64)
        return self.transform(eps), self.dz_dtheta(eps)

    def __repr__(self):
        args = ", ".join(f"{k}={getattr(self, k):g}" for k in self.names)
        return f"{type(self).__name__}({args})"


class Normal(Family):
    """N(mu, sigma^2), theta = (mu, sigma).  (Named Normal so it does not collide with the batched
    multivariate ``linear_gaussian.Gaussian``.)

    z = mu + sigma eps, eps ~ N(0, 1):         dz/dmu = 1,  dz/dsigma = eps = (z - mu) / sigma
    log q = -1/2 log(2 pi) - log sigma - (z - mu)^2 / (2 sigma^2)
    score:  d/dmu = (z - mu) / sigma^2,        d/dsigma = ((z - mu)^2 / sigma^2 - 1) / sigma
    E[z^2] = mu^2 + sigma^2,  gradient (2 mu, 2 sigma)
    """
    names = ("mu", "sigma")

    def __init__(self, mu, sigma):
        self.mu = _real("Normal", "mu", mu)
        self.sigma = _real("Normal", "sigma", sigma, positive=True)

    def noise(self, n, rng):
        return rng.standard_normal(_count("n", n))

    def transform(self, eps):
        return self.mu + self.sigma * np.asarray(eps, dtype=np.float64)

    def dz_dtheta(self, eps):
        eps = np.asarray(eps, dtype=np.float64)
        return np.stack([np.ones_like(eps), eps], axis=1)

    def log_prob(self, z):
        t = (np.asarray(z, dtype=np.float64) - self.mu) / self.sigma
        return -0.5 * math.log(2 * math.pi) - math.log(self.sigma) - 0.5 * t * t

    def score(self, z):
        t = (np.asarray(z, dtype=np.float64) - self.mu) / self.sigma
        return np.stack([t / self.sigma, (t * t - 1.0) / self.sigma], axis=1)

    def mean_square(self):
        return self.mu ** 2 + self.sigma ** 2

    def mean_square_grad(self):
        return np.array([2 * self.mu, 2 * self.sigma])


class Uniform(Family):
    """U(a, b), theta = (a, b), a < b.

    z = a + (b - a) u, u ~ U(0, 1):     dz/da = 1 - u,  dz/db = u
    log q = -log(b - a) on [a, b];  score (inside the support): (1/(b - a), -1/(b - a))
    E[z^2] = (a^2 + a b + b^2) / 3,  gradient ((2a + b) / 3, (a + 2b) / 3)

    No score-function estimator: the support [a, b] moves with theta, so the Leibniz rule has
    boundary terms, d/db integral_a^b f(z) / (b - a) dz = f(b) / (b - a) - E[f] / (b - a) (and
    -f(a) / (b - a) + E[f] / (b - a) for a), and E[f score] = (E[f], -E[f]) / (b - a) misses them.
    ``score_function`` raises for it; the reparameterisation estimator is unbiased.
    """
    names = ("a", "b")
    support_depends_on_theta = True

    def __init__(self, a, b):
        self.a = _real("Uniform", "a", a)
        self.b = _real("Uniform", "b", b)
        if not self.b > self.a:
            raise MinivaeError(f"Uniform: b must be > a, got a={a!r}, b={b!r}")

    def noise(self, n, rng):
        return rng.random(_count("n", n))

    def transform(self, u):
        return self.a + (self.b - self.a) * np.asarray(u, dtype=np.float64)

    def dz_dtheta(self, u):
        u = np.asarray(u, dtype=np.float64)
        return np.stack([1.0 - u, u], axis=1)

    def log_prob(self, z):
        z = np.asarray(z, dtype=np.float64)
        inside = (z >= self.a) & (z <= self.b)
        return np.where(inside, -math.log(self.b - self.a), -np.inf)

    def score(self, z):
        z = np.asarray(z, dtype=np.float64)
        w = 1.0 / (self.b - self.a)
        return np.stack([np.full(z.shape, w), np.full(z.shape, -w)], axis=1)

    def mean_square(self):
        return (self.a ** 2 + self.a * self.b + self.b ** 2) / 3

    def mean_square_grad(self):
        return np.array([(2 * self.a + self.b) / 3, (self.a + 2 * self.b) / 3])


class Exponential(Family):
    """Exp(rate): q(z) = rate exp(-rate z) on z >= 0, theta = (rate,).

    z = eps / rate, eps ~ Exp(1) (= -log u):    dz/drate = -eps / rate^2 = -z / rate
    log q = log rate - rate z;   score: 1 / rate - z
    E[z^2] = 2 / rate^2,  gradient -4 / rate^3
    """
    names = ("rate",)

    def __init__(self, rate):
        self.rate = _real("Exponential", "rate", rate, positive=True)

    def noise(self, n, rng):
        return rng.standard_exponential(_count("n", n))

    def transform(self, eps):
        return np.asarray(eps, dtype=np.float64) / self.rate

    def dz_dtheta(self, eps):
        eps = np.asarray(eps, dtype=np.float64)
        return (-eps / self.rate ** 2)[:, None]

    def log_prob(self, z):
        z = np.asarray(z, dtype=np.float64)
        return np.where(z >= 0, math.log(self.rate) - self.rate * z, -np.inf)

    def score(self, z):
        return (1.0 / self.rate - np.asarray(z, dtype=np.float64))[:, None]

    def mean_square(self):
        return 2.0 / self.rate ** 2

    def mean_square_grad(self):
        return np.array([-4.0 / self.rate ** 3])


class LocationScale(Family):
    """z = loc + scale * eps with eps from a fixed standard member: theta = (loc, scale),
    dz/dloc = 1, dz/dscale = eps.  Subclasses give the noise and the density."""
    names = ("loc", "scale")

    def __init__(self, loc, scale):
        self.loc = _real(type(self).__name__, "loc", loc)
        self.scale = _real(type(self).__name__, "scale", scale, positive=True)

    def transform(self, eps):
        return self.loc + self.scale * np.asarray(eps, dtype=np.float64)

    def dz_dtheta(self, eps):
        eps = np.asarray(eps, dtype=np.float64)
        return np.stack([np.ones_like(eps), eps], axis=1)


class Laplace(LocationScale):
    """Laplace(loc, scale): q(z) = exp(-|z - loc| / scale) / (2 scale), theta = (loc, scale).

    z = loc + scale eps, eps ~ Laplace(0, 1):   dz/dloc = 1,  dz/dscale = eps
    log q = -log(2 scale) - |z - loc| / scale
    score:  d/dloc = sign(z - loc) / scale,  d/dscale = (|z - loc| / scale - 1) / scale
    (the kink at z = loc has probability 0).   E[z^2] = loc^2 + 2 scale^2,  gradient (2 loc, 4 scale)
    """

    def noise(self, n, rng):
        return rng.laplace(0.0, 1.0, _count("n", n))

    def log_prob(self, z):
        t = np.abs(np.asarray(z, dtype=np.float64) - self.loc) / self.scale
        return -math.log(2 * self.scale) - t

    def score(self, z):
        d = np.asarray(z, dtype=np.float64) - self.loc
        return np.stack([np.sign(d) / self.scale, (np.abs(d) / self.scale - 1.0) / self.scale],
                        axis=1)

    def mean_square(self):
        return self.loc ** 2 + 2 * self.scale ** 2

    def mean_square_grad(self):
        return np.array([2 * self.loc, 4 * self.scale])


class Logistic(LocationScale):
    """Logistic(loc, scale), theta = (loc, scale); with t = (z - loc) / scale:

    log q = -t - log scale - 2 softplus(-t);   d log q / dt = 1 - 2 sigmoid(t) = -tanh(t / 2)
    score:  d/dloc = tanh(t / 2) / scale,  d/dscale = (t tanh(t / 2) - 1) / scale
    z = loc + scale eps, eps = log(u / (1 - u)):   dz/dloc = 1,  dz/dscale = eps
    E[z^2] = loc^2 + pi^2 scale^2 / 3,  gradient (2 loc, 2 pi^2 scale / 3)
    """

    def noise(self, n, rng):
        return rng.logistic(0.0, 1.0, _count("n", n))

    def log_prob(self, z):
        t = (np.asarray(z, dtype=np.float64) - self.loc) / self.scale
        return -t - math.log(self.scale) - 2.0 * np.logaddexp(0.0, -t)

    def score(self, z):
        t = (np.asarray(z, dtype=np.float64) - self.loc) / self.scale
        th = np.tanh(0.5 * t)
        return np.stack([th / self.scale, (t * th - 1.0) / self.scale], axis=1)

    def mean_square(self):
        return self.loc ** 2 + math.pi ** 2 * self.scale ** 2 / 3

    def mean_square_grad(self):
        return np.array([2 * self.loc, 2 * math.pi ** 2 * self.scale / 3])


class Bernoulli(Family):
    """Bernoulli over {0, 1}: ``Bernoulli(p)`` with theta = (p,), 0 < p < 1, or
    ``Bernoulli(logits=l)`` with theta = (logit,), p = sigmoid(l).

    log q = z log p + (1 - z) log(1 - p) = z l - softplus(l)
    score:  d/dp = z / p - (1 - z) / (1 - p);   d/dlogit = z - p
    exact:  d/dp E[f] = f(1) - f(0);   d/dlogit E[f] = p (1 - p) (f(1) - f(0))

    Not reparameterisable: the sampler z = 1[u < p], u ~ U(0, 1) is a step function of u, so
    dz/dtheta = 0 wherever it exists (all u != p).  The "pathwise" estimator would be exactly 0,
    however many samples: all of the gradient sits in the jump, which moves with p.
    ``reparameterize`` / ``dz_dtheta`` raise MinivaeError; ``transform(u)`` (the step function)
    exists so that ``finite_difference`` can show this.
    """
    reparameterizable = False

    def __init__(self, p=None, logits=None):
        if (p is None) == (logits is None):
            raise MinivaeError("Bernoulli: pass exactly one of p or logits")
        if p is not None:
            p = _real("Bernoulli", "p", p)
            if not 0.0 < p < 1.0:
                raise MinivaeError(f"Bernoulli: p must be in (0, 1) (open), got {p!r}")
            self.p, self.logit, self.names = p, math.log(p) - math.log1p(-p), ("p",)
        else:
            l = _real("Bernoulli", "logits", logits)
            self.logit, self.p, self.names = l, 1.0 / (1.0 + math.exp(-l)), ("logit",)

    def with_theta(self, theta):
        (t,) = theta
        return Bernoulli(p=float(t)) if self.names == ("p",) else Bernoulli(logits=float(t))

    def _dp_dtheta(self):
        return 1.0 if self.names == ("p",) else self.p * (1.0 - self.p)

    def noise(self, n, rng):
        return rng.random(_count("n", n))

    def transform(self, u):
        return (np.asarray(u, dtype=np.float64) < self.p).astype(np.float64)

    def dz_dtheta(self, u):
        raise MinivaeError(
            "Bernoulli cannot be reparameterised: its sample z = 1[u < p] is a step function of "
            "the noise, so dz/dp = 0 almost everywhere and the pathwise estimator would be 0 "
            "(biased); use score_function")

    def reparameterize(self, eps):
        self.dz_dtheta(eps)

    def log_prob(self, z):
        z = np.asarray(z, dtype=np.float64)
        return z * self.logit - np.logaddexp(0.0, self.logit)

    def score(self, z):
        z = np.asarray(z, dtype=np.float64)
        if self.names == ("p",):
            return (z / self.p - (1.0 - z) / (1.0 - self.p))[:, None]
        return (z - self.p)[:, None]

    def exact_grad(self, f):
        """d/dtheta E[f(z)] = (f(1) - f(0)) dp/dtheta, (1,)."""
        f0, f1 = _apply("f", f, np.array([0.0, 1.0]))
        return np.array([(f1 - f0) * self._dp_dtheta()])

    def mean_square(self):
        return self.p

    def mean_square_grad(self):
        return np.array([self._dp_dtheta()])

    def __repr__(self):
        return f"Bernoulli(p={self.p:g})" if self.names == ("p",) else f"Bernoulli(logits={self.logit:g})"


# ---------------------------------------------------------------------------------------------
# estimators

def _check_family(family):
    if not isinstance(family, Family):
        raise MinivaeError(f"family must be a minivae.estimators Family (Normal, Uniform, ...), "
                           f"got {type(family).__name__}")


def leave_one_out_mean(f, axis=0):
    """c_i = (sum_j f_j - f_i) / (n - 1) along ``axis`` (n >= 2): the mean of the *other* samples,
    independent of sample i, so E[c_i score(z_i)] = 0 (the baseline of ``score_function`` and of
    the VAE score-function estimators, ``minivae.objectives.score_elbo_loss``).  f: any array
    (NumPy or CuPy), float dtype kept."""
    n = f.shape[axis]
    if n < 2:
        raise MinivaeError(f"the leave-one-out mean needs at least 2 samples, got {n}")
    return (f.sum(axis=axis, keepdims=True) - f) / f.dtype.type(n - 1)


def score_function(f, family, n, rng, baseline=None):
    """Score-function (REINFORCE) estimate of d/dtheta E_{q_theta}[f(z)]   (C10).

    Derivation: d/dtheta integral f(z) q_theta(z) dz = integral f(z) q_theta(z) d log q_theta(z)
    / dtheta dz = E_q[f(z) score(z)], valid when the support of q does not move with theta (so not
    for Uniform, which raises).  Summands s_i = (f(z_i) - c_i) score(z_i), z_i ~ q_theta iid.

    baseline (control variate) c_i:
      None     c = 0.
      a number c: still unbiased because E[score] = integral d q / dtheta = d/dtheta 1 = 0, so
               E[c score] = 0; it helps when c is near E[f] (it cancels f's offset).
      "mean"   the leave-one-out mean c_i = (sum_{j != i} f(z_j)) / (n - 1), n >= 2.  c_i is
               independent of z_i, so E[c_i score(z_i)] = E[c_i] E[score(z_i)] = 0: unbiased.
               The plain mean f_bar = (1/n) sum_j f(z_j) would not be: it contains f(z_i), and
               E[f_bar score(z_i)] = (1/n) E[f(z_i) score(z_i)] = g / n, so the estimate would
               be (1 - 1/n) g in expectation.  Leave-one-out gives f(z_i) - c_i =
               n/(n-1) (f(z_i) - f_bar), exactly the 1/(1 - 1/n) correction; the estimate is
               the unbiased sample covariance of f and the score.  Its summands share the
               other samples, so they are weakly dependent and sqrt(var / n) is the standard
               error to leading order in 1/n (not exactly, as it is for iid summands).

    f: vectorised z (n,) -> (n,).  Returns GradientEstimate(grad (P,), var (P,), n, names).
    """
    _check_family(family)
    n = _count("n", n)
    if family.support_depends_on_theta:
        raise MinivaeError(
            f"score_function: {family!r} has a support that moves with its parameters, so "
            "d/dtheta E[f] = E[f score] + boundary terms (e.g. f(b)/(b-a) for b) and the "
            "score-function estimator is biased; use reparameterization")
    z = family.sample(n, rng)
    fz = _apply("f", f, z)
    if baseline is None:
        c = 0.0
    elif isinstance(baseline, str):
        if baseline != "mean":
            raise MinivaeError(f"baseline must be None, a number or 'mean', got {baseline!r}")
        if n < 2:
            raise MinivaeError("baseline='mean' needs n >= 2 (the leave-one-out mean of f needs "
                               f"another sample), got n={n}")
        c = leave_one_out_mean(fz)
    else:
        c = _real("score_function", "baseline", baseline)
    return GradientEstimate(*_summands((fz - c)[:, None] * family.score(z)), family.names)


def reparameterization(f, df, family, n, rng):
    """Reparameterisation (pathwise) estimate of d/dtheta E_{q_theta}[f(z)]   (C11, C12).

    With z = g_theta(eps), eps from a fixed base distribution, E_q[f(z)] = E_eps[f(g_theta(eps))]
    and theta now sits inside the integrand, so (f smooth, dominated convergence)
        d/dtheta E_eps[f(g_theta(eps))] = E_eps[f'(z) dz/dtheta].
    Summands s_i = df(z_i) * dz_i/dtheta.  For Normal: (f'(z), f'(z) eps).
    df: f's derivative (vectorised, no autodiff).  f itself is not needed for the gradient; it is
    taken so that both estimators share a signature (it is evaluated only to check its shape).
    Families whose sample is not differentiable in theta (Bernoulli) raise MinivaeError.
    Returns GradientEstimate(grad (P,), var (P,), n, names).
    """
    _check_family(family)
    n = _count("n", n)
    if not family.reparameterizable:
        family.dz_dtheta(np.zeros(1))            # raises with the reason
    eps = family.noise(n, rng)
    z, dz = family.reparameterize(eps)
    _apply("f", f, z)
    return GradientEstimate(*_summands(_apply("df", df, z)[:, None] * dz), family.names)


def finite_difference(f, family, n, rng, h=1e-3, noise="fixed"):
    """Central differences of the plain Monte Carlo average of f, one parameter at a time   (C9).

    Summands s_i[j] = (f(g_{theta + h e_j}(eps_i)) - f(g_{theta - h e_j}(eps'_i))) / (2 h), with
      noise="fixed": eps'_i = eps_i (common random numbers: the same noise at theta +- h).  This
                     is differentiating the reparameterised sample; as h -> 0 it tends to the
                     pathwise summand f'(z_i) dz_i/dtheta when g_theta is smooth, and to 0 for a
                     Bernoulli (the step rarely crosses u_i: for h << 1/n every summand is 0).
      noise="fresh": eps' drawn anew (what "sample at theta +- h and average f" does).  The two
                     averages are independent, so var(s) = (var f(theta+h) + var f(theta-h)) /
                     (4 h^2) ~ var f / (2 h^2): the plain sampling estimate of E[f] carries no
                     usable derivative, since the difference of two averages is noise of size
                     sqrt(var f / n) / h long before it resolves the O(h) change in the mean.
    One draw eps serves all parameters (so with fixed noise and the same rng state the summands
    are those of ``reparameterization`` up to O(h^2)); fresh noise draws eps' per parameter.
    h > 0 must keep theta +- h valid (e.g. sigma > h).
    Returns GradientEstimate(grad (P,), var (P,), n, names).
    """
    _check_family(family)
    n = _count("n", n)
    h = _real("finite_difference", "h", h, positive=True)
    if noise not in ("fixed", "fresh"):
        raise MinivaeError(f"noise must be 'fixed' or 'fresh', got {noise!r}")
    theta = family.theta
    eps = family.noise(n, rng)
    cols = []
    for j in range(len(theta)):
        step = np.zeros_like(theta)
        step[j] = h
        up, down = family.with_theta(theta + step), family.with_theta(theta - step)
        eps2 = eps if noise == "fixed" else family.noise(n, rng)
        cols.append((_apply("f", f, up.transform(eps)) - _apply("f", f, down.transform(eps2)))
                    / (2.0 * h))
    return GradientEstimate(*_summands(np.stack(cols, axis=1)), family.names)
