"""The linear-Gaussian latent model: a VAE whose every quantity is exact in closed form.

    z ~ N(0, I_Z),    x | z ~ N(W z + b, sigma^2 I_D)          W: (D, Z)  b: (D,)  sigma > 0

In batch form the rows of x: (B, D) are x_b = z_b @ W.T + b + sigma * noise.  Marginalising z gives
x ~ N(b, C), C = W W^T + sigma^2 I_D, and the posterior is Gaussian with a precision that does not
depend on x:

    M = I_Z + W^T W / sigma^2                       (Z, Z)  posterior precision
    p(z | x) = N(m(x), M^{-1}),  m(x) = M^{-1} W^T (x - b) / sigma^2

So log p(x), p(z|x), the ELBO of any Gaussian q, KL(q || p(z|x)), the variance of importance
weights and the optimal diagonal q all have formulas, and the Monte Carlo estimators of the VAE
derivation can be checked against them.  Everything is computed in float64 (this is the ground
truth; inputs are converted).

Which function supports which step of the derivation (claims of issue 3):

    C1  log p(x) = log E_{p(z)}[p(x|z)]: ``importance_log_likelihood(x, lg.prior(B), K, rng)`` is
        the plain Monte Carlo estimate; ``weight_relative_variance(x, lg.prior(B))`` is its
        (large) exact relative variance.
    C2  importance sampling: ``log_weights`` (log w = log p(x, z) - log q(z)) with any ``Gaussian``
        q; the mean of w is p(x) for every q (tested: E[p_hat / p(x)] = 1).
    C3  var(p_hat_K) / p(x)^2 = var(w) / (K p(x)^2): ``weight_relative_variance`` is var(w)/p(x)^2
        in closed form (``log_weight_moment`` any moment); ``importance_log_likelihood(...).stderr``
        is its sample estimate / sqrt(K).
    C4  q = ``posterior_gaussian(x)``: every log-weight equals log p(x); variance zero to round-off.
    C5  ``elbo`` <= ``iwae_bound`` (K) <= ``log_marginal``, equality for q = the posterior.
    C6  ``elbo(x, q) = log_marginal(x) - kl_to_posterior(x, q)`` exactly; ``fit_diagonal_q`` /
        ``optimal_diagonal_q`` is the "fitted encoder": a diagonal q cannot remove the KL
        1/2 (sum_j log M_jj - log det M) > 0 when M is not diagonal.
    C7  ``distortion_and_kl(x, q) -> (-E_q[log p(x|z)], KL(q || p(z)))``, elbo = -(sum).
    C8  ``optimal_diagonal_q(x, beta)``: maximiser of E_q[log p(x|z)] - beta KL(q || p(z)); the
        rate KL falls and the distortion -E_q[log p(x|z)] rises as beta grows (exactly).

Typical use (what scripts/derivation.py builds on):

    rng = make_rng(0)
    lg = LinearGaussian.random(D=5, Z=2, sigma=0.5, rng=rng)
    x = lg.sample(8, rng)                                   # (8, 5)
    prior, post = lg.prior(8), lg.posterior_gaussian(x)     # Gaussian proposals
    fit = lg.fit_diagonal_q(x, rng=rng)                     # diagonal Gaussian, the best one
    lg.log_marginal(x), lg.elbo(x, fit), lg.kl_to_posterior(x, fit)
    lg.iwae_bound(x, fit, K=10, rng=rng).value
    lg.importance_log_likelihood(x, prior, K=10_000, rng=rng)   # Estimate(value, stderr, n)

Caveat for C3 with a fitted encoder: when the posterior is strongly correlated (Z = 2: precision
correlation |rho| >= 1/2) the best diagonal q is so narrow that var(w) is infinite
(``weight_relative_variance`` returns inf) and standard errors mean nothing.  A model with finite
moments up to the 4th (|rho| < 1/4) is ``LinearGaussian.random(8, 2, 0.5, make_rng(4))``;
``LinearGaussian.random(5, 2, 0.5, make_rng(0))`` (|rho| = 0.65, ELBO gap 0.28 nats) shows the
gap and the IWAE bound well.  tests/test_linear_gaussian.py uses these two.
"""
import math
from typing import NamedTuple

import numpy as np

from .errors import MinivaeError

LOG_2PI = math.log(2.0 * math.pi)


class Estimate(NamedTuple):
    """A Monte Carlo estimate per data row: value (B,), its standard error (B,), and n, the number
    of independent terms averaged (replicates for ``iwae_bound``, samples K for
    ``importance_log_likelihood``)."""
    value: np.ndarray
    stderr: np.ndarray
    n: int


# ---------------------------------------------------------------------------------------------
# input checks

def _count(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise MinivaeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _positive(name, value):
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not (math.isfinite(v) and v > 0):
        raise MinivaeError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def _array(name, value, ndim, last=None):
    a = np.asarray(value, dtype=np.float64)
    if a.ndim != ndim or (last is not None and a.shape[-1] != last):
        want = f"{ndim}-D" + (f" with last dimension {last}" if last is not None else "")
        raise MinivaeError(f"{name} must be a {want} array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise MinivaeError(f"{name} contains NaN or inf; pass finite values")
    return a


def _logsumexp(a, axis=0):
    """log sum exp(a) along axis, with the maximum subtracted first (no overflow; -inf safe)."""
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.log(np.sum(np.exp(a - m), axis=axis)) + np.squeeze(m, axis=axis)


# ---------------------------------------------------------------------------------------------
# the proposal type

class Gaussian:
    """A batch of Gaussians q_b(z) = N(mean_b, Sigma_b), one per data row b.

    mean: (B, Z).  The covariance is either
      diagonal: Sigma_b = diag(exp(logvar_b)), logvar (B, Z)        (an encoder's output), or
      full:     cov (Z, Z) shared by all rows (the exact posterior's) or (B, Z, Z).

    Build one with ``Gaussian.standard(B, Z)`` (the prior N(0, I)), ``Gaussian.diagonal(mean,
    logvar)`` or ``Gaussian.full(mean, cov)``.

    sample(K, rng) -> z (K, B, Z):  z = mean + exp(logvar / 2) * eps, or mean + L eps with
        L L^T = cov (Cholesky), eps ~ N(0, I).
    log_prob(z) for z (..., B, Z) -> (..., B):
        -1/2 [Z log 2 pi + log det Sigma_b + (z - mean_b)^T Sigma_b^{-1} (z - mean_b)],
        the quadratic form computed as |L^{-1} (z - mean)|^2 (a sum of squares, never negative).
    """

    def __init__(self, mean, logvar=None, cov=None):
        mean = _array("mean", mean, 2)
        B, Z = mean.shape
        if (logvar is None) == (cov is None):
            raise MinivaeError("Gaussian needs exactly one of logvar (diagonal) or cov (full)")
        self.mean = mean
        self.logvar = self.cov = self._chol = self._chol_inv = None
        if logvar is not None:
            logvar = _array("logvar", logvar, 2)
            if logvar.shape != mean.shape:
                raise MinivaeError(f"logvar must have the shape of mean {mean.shape}, "
                                   f"got {logvar.shape}")
            self.logvar = logvar
        else:
            cov = np.asarray(cov, dtype=np.float64)
            if cov.shape not in ((Z, Z), (B, Z, Z)):
                raise MinivaeError(f"cov must have shape ({Z}, {Z}) or ({B}, {Z}, {Z}), "
                                   f"got {cov.shape}")
            if not np.all(np.isfinite(cov)) or not np.allclose(cov, np.swapaxes(cov, -1, -2)):
                raise MinivaeError("cov must be a finite symmetric matrix")
            try:
                self._chol = np.linalg.cholesky(cov)
            except np.linalg.LinAlgError:
                raise MinivaeError("cov is not positive definite; pass a valid covariance") from None
            self.cov = cov
            eye = np.broadcast_to(np.eye(Z), cov.shape)
            self._chol_inv = np.linalg.solve(self._chol, eye)

    @classmethod
    def standard(cls, B, Z):
        """N(0, I_Z) for each of B rows (the prior p(z))."""
        B, Z = _count("B", B), _count("Z", Z)
        return cls(np.zeros((B, Z)), logvar=np.zeros((B, Z)))

    @classmethod
    def diagonal(cls, mean, logvar):
        return cls(mean, logvar=logvar)

    @classmethod
    def full(cls, mean, cov):
        return cls(mean, cov=cov)

    @property
    def B(self):
        return self.mean.shape[0]

    @property
    def Z(self):
        return self.mean.shape[1]

    @property
    def is_diagonal(self):
        return self.logvar is not None

    def covariance(self):
        """Sigma as a (B, Z, Z) array."""
        if self.is_diagonal:
            return np.exp(self.logvar)[:, :, None] * np.eye(self.Z)
        return np.broadcast_to(self.cov, (self.B, self.Z, self.Z)).copy()

    def precision(self):
        """Sigma^{-1} as a (B, Z, Z) array."""
        if self.is_diagonal:
            return np.exp(-self.logvar)[:, :, None] * np.eye(self.Z)
        P = np.swapaxes(self._chol_inv, -1, -2) @ self._chol_inv      # L^{-T} L^{-1}
        return np.broadcast_to(P, (self.B, self.Z, self.Z)).copy()

    def logdet(self):
        """log det Sigma_b, (B,)."""
        if self.is_diagonal:
            return self.logvar.sum(axis=1)
        d = 2.0 * np.log(np.diagonal(self._chol, axis1=-2, axis2=-1)).sum(axis=-1)
        return np.broadcast_to(d, (self.B,)).copy()

    def trace_with(self, A):
        """tr(A Sigma_b) for a symmetric (Z, Z) matrix A, (B,)."""
        if self.is_diagonal:
            return np.exp(self.logvar) @ np.diag(A)
        return np.broadcast_to(np.einsum("ij,...ij->...", A, self.cov), (self.B,)).copy()

    def sample(self, K, rng):
        K = _count("K", K)
        eps = rng.standard_normal((K, self.B, self.Z))
        if self.is_diagonal:
            return self.mean + np.exp(0.5 * self.logvar) * eps
        return self.mean + (self._chol @ eps[..., None])[..., 0]

    def log_prob(self, z):
        z = np.asarray(z, dtype=np.float64)
        if z.shape[-2:] != self.mean.shape:
            raise MinivaeError(f"z must have shape (..., {self.B}, {self.Z}), got {z.shape}")
        d = z - self.mean
        if self.is_diagonal:
            quad = (d * d * np.exp(-self.logvar)).sum(axis=-1)
        else:
            y = (self._chol_inv @ d[..., None])[..., 0]
            quad = (y * y).sum(axis=-1)
        return -0.5 * (self.Z * LOG_2PI + self.logdet() + quad)

    def __repr__(self):
        kind = "diagonal" if self.is_diagonal else f"full cov {self.cov.shape}"
        return f"Gaussian(B={self.B}, Z={self.Z}, {kind})"


def as_gaussian(q, q_logvar=None):
    """A ``Gaussian`` from q: a Gaussian, a tuple (mean, logvar), or a mean with q_logvar given.

    The tuple form is always diagonal (an encoder's (mu, logvar)); a full covariance needs
    ``Gaussian.full(mean, cov)`` (a (B, Z) logvar and a (Z, Z) cov would be ambiguous when B = Z).
    """
    if isinstance(q, Gaussian):
        if q_logvar is not None:
            raise MinivaeError("q_logvar must be None when q is already a Gaussian")
        return q
    if q_logvar is None:
        if isinstance(q, tuple) and len(q) == 2:
            return Gaussian(q[0], logvar=q[1])
        raise MinivaeError("q must be a Gaussian, a tuple (mean, logvar), or a mean with q_logvar")
    return Gaussian(q, logvar=q_logvar)


# ---------------------------------------------------------------------------------------------
# the model

class LinearGaussian:
    """x = W z + b + sigma * noise,  z ~ N(0, I_Z), noise ~ N(0, I_D).   W: (D, Z), b: (D,).

    Cached at construction (the posterior precision does not depend on x):
        G = W^T W                     (Z, Z)
        M = I_Z + G / sigma^2         (Z, Z), its Cholesky factor L (M = L L^T), log det M
        S = M^{-1}                    (Z, Z)  posterior covariance
    All methods take x: (B, D) and return per-row float64 arrays (B,) unless stated otherwise.
    """

    def __init__(self, W, b, sigma):
        W = _array("W", W, 2)
        D, Z = W.shape
        b = _array("b", b, 1)
        if b.shape != (D,):
            raise MinivaeError(f"b must have shape ({D},) to match W {W.shape}, got {b.shape}")
        self.W, self.b, self.sigma = W, b, _positive("sigma", sigma)
        self.G = W.T @ W
        self.M = np.eye(Z) + self.G / self.sigma ** 2
        self._L = np.linalg.cholesky(self.M)
        self.logdet_M = 2.0 * np.log(np.diag(self._L)).sum()
        L_inv = np.linalg.solve(self._L, np.eye(Z))
        self.S = L_inv.T @ L_inv

    @classmethod
    def random(cls, D, Z, sigma, rng):
        """W with N(0, 1) entries (so W^T W, hence M, is almost surely not diagonal: the posterior
        is correlated), b ~ N(0, I_D)."""
        D, Z = _count("D", D), _count("Z", Z)
        return cls(rng.standard_normal((D, Z)), rng.standard_normal(D), sigma)

    @property
    def D(self):
        return self.W.shape[0]

    @property
    def Z(self):
        return self.W.shape[1]

    def _x(self, x):
        return _array("x", x, 2, last=self.D)

    def _z(self, z, B):
        z = np.asarray(z, dtype=np.float64)
        if z.ndim < 2 or z.shape[-2:] != (B, self.Z):
            raise MinivaeError(f"z must have shape (..., {B}, {self.Z}), got {z.shape}")
        return z

    # --- sampling and densities --------------------------------------------------------------

    def sample(self, B, rng, return_z=False):
        """x (B, D) drawn from the model (and the z (B, Z) behind it when return_z)."""
        B = _count("B", B)
        z = rng.standard_normal((B, self.Z))
        x = z @ self.W.T + self.b + self.sigma * rng.standard_normal((B, self.D))
        return (x, z) if return_z else x

    def log_likelihood(self, x, z):
        """log p(x | z) = -D/2 log(2 pi sigma^2) - |x - W z - b|^2 / (2 sigma^2).
        x: (B, D), z: (..., B, Z) -> (..., B)."""
        x = self._x(x)
        z = self._z(z, len(x))
        r = x - z @ self.W.T - self.b
        return -0.5 * (self.D * (LOG_2PI + 2.0 * math.log(self.sigma))
                       + (r * r).sum(axis=-1) / self.sigma ** 2)

    def log_prior(self, z):
        """log p(z) = -Z/2 log 2 pi - |z|^2 / 2.   z: (..., Z) -> (...)."""
        z = np.asarray(z, dtype=np.float64)
        return -0.5 * (self.Z * LOG_2PI + (z * z).sum(axis=-1))

    def log_joint(self, x, z):
        """log p(x, z) = log p(x | z) + log p(z).   x: (B, D), z: (..., B, Z) -> (..., B)."""
        return self.log_likelihood(x, z) + self.log_prior(z)

    def log_marginal(self, x):
        """Exact log p(x) = log N(x; b, C), C = W W^T + sigma^2 I_D, in Z dimensions.

        Matrix determinant lemma: det C = sigma^{2D} det M.
        Woodbury: C^{-1} = (I - W M^{-1} W^T / sigma^2) / sigma^2, so with r = x - b and
        m = M^{-1} W^T r / sigma^2 (the posterior mean), C^{-1} r = (r - W m) / sigma^2 and
            r^T C^{-1} r = |r|^2/sigma^2 - m^T M m = |r - W m|^2 / sigma^2 + |m|^2,
        the last form a sum of squares (no cancellation).  Hence
            log p(x) = -1/2 [D log 2 pi + 2 D log sigma + log det M + |r - W m|^2/sigma^2 + |m|^2].
        """
        x = self._x(x)
        m = self.posterior_mean(x)
        e = x - self.b - m @ self.W.T
        return -0.5 * (self.D * (LOG_2PI + 2.0 * math.log(self.sigma)) + self.logdet_M
                       + (e * e).sum(axis=1) / self.sigma ** 2 + (m * m).sum(axis=1))

    # --- the exact posterior -----------------------------------------------------------------

    def posterior_mean(self, x):
        """m(x) = M^{-1} W^T (x - b) / sigma^2, (B, Z); solved with the Cholesky factor of M."""
        x = self._x(x)
        rhs = self.W.T @ (x - self.b).T / self.sigma ** 2             # (Z, B)
        return np.linalg.solve(self._L.T, np.linalg.solve(self._L, rhs)).T

    def posterior(self, x):
        """Exact p(z | x) = N(mean, cov): mean (B, Z), cov = M^{-1} (Z, Z).

        Bayes: log p(z|x) = log p(x|z) + log p(z) - log p(x)
             = -|x - b - W z|^2 / (2 sigma^2) - |z|^2 / 2 + const(x)
             = -1/2 z^T (I + W^T W / sigma^2) z + z^T W^T (x - b) / sigma^2 + const(x),
        a Gaussian with precision M and mean M^{-1} W^T (x - b) / sigma^2.
        """
        return self.posterior_mean(x), self.S.copy()

    def posterior_gaussian(self, x):
        """The exact posterior as a (full-covariance) ``Gaussian`` proposal."""
        return Gaussian.full(self.posterior_mean(x), self.S)

    def prior(self, B):
        """The prior N(0, I_Z) as a ``Gaussian`` proposal for B rows (the proposal of C1)."""
        return Gaussian.standard(B, self.Z)

    # --- ELBO and KLs ------------------------------------------------------------------------

    def _q(self, x, q, q_logvar):
        q = as_gaussian(q, q_logvar)
        if q.mean.shape != (len(x), self.Z):
            raise MinivaeError(f"q must have mean shape ({len(x)}, {self.Z}) to match x, "
                               f"got {q.mean.shape}")
        return q

    def distortion_and_kl(self, x, q, q_logvar=None):
        """(distortion -E_q[log p(x|z)], KL(q || p(z))), both (B,), for a Gaussian q = N(mu, Sigma)
        (C7); the ELBO is -(distortion + KL).

        With z = mu + delta, E[delta] = 0, Cov[delta] = Sigma, and r = x - b:
            E_q |r - W z|^2 = |r - W mu|^2 + E[delta^T W^T W delta] = |r - W mu|^2 + tr(G Sigma)
            E_q[log p(x|z)] = -D/2 log(2 pi sigma^2) - (|r - W mu|^2 + tr(G Sigma)) / (2 sigma^2)
            KL(q || N(0, I)) = 1/2 [tr Sigma + |mu|^2 - Z - log det Sigma]
        For a diagonal q, tr(G Sigma) = sum_j exp(logvar_j) |W[:, j]|^2.
        q: a ``Gaussian``, a tuple (mean, logvar), or mean (B, Z) with q_logvar (B, Z).
        """
        x = self._x(x)
        q = self._q(x, q, q_logvar)
        e = x - self.b - q.mean @ self.W.T
        distortion = 0.5 * (self.D * (LOG_2PI + 2.0 * math.log(self.sigma))
                            + ((e * e).sum(axis=1) + q.trace_with(self.G)) / self.sigma ** 2)
        kl = 0.5 * (q.trace_with(np.eye(self.Z)) + (q.mean ** 2).sum(axis=1) - self.Z - q.logdet())
        return distortion, kl

    def elbo(self, x, q, q_logvar=None):
        """Exact ELBO(q) = E_q[log p(x|z)] - KL(q || p(z)) = E_q[log p(x, z) - log q(z)], (B,).
        See ``distortion_and_kl`` for the formulas; equals ``log_marginal - kl_to_posterior``
        (C6)."""
        distortion, kl = self.distortion_and_kl(x, q, q_logvar)
        return -(distortion + kl)

    def kl_to_posterior(self, x, q, q_logvar=None):
        """Exact KL(q || p(z|x)) for q = N(mu, Sigma), (B,)   (the ELBO gap, C6).

        KL(N(mu, Sigma) || N(m, M^{-1})) = 1/2 [tr(M Sigma) + (mu - m)^T M (mu - m) - Z
                                                 + log det M^{-1} - log det Sigma]
        (mu - m)^T M (mu - m) = |L^T (mu - m)|^2 with M = L L^T.  Computed independently of
        ``elbo`` and ``log_marginal``, so the identity ELBO = log p(x) - KL is a real check.
        """
        x = self._x(x)
        q = self._q(x, q, q_logvar)
        u = (q.mean - self.posterior_mean(x)) @ self._L                 # rows: (L^T (mu - m))^T
        return 0.5 * (q.trace_with(self.M) + (u * u).sum(axis=1) - self.Z
                      - self.logdet_M - q.logdet())

    # --- the fitted diagonal encoder ---------------------------------------------------------

    def _M_beta(self, beta):
        return beta * np.eye(self.Z) + self.G / self.sigma ** 2

    def elbo_grad(self, x, q_mean, q_logvar, beta=1.0):
        """Gradient of L_beta = E_q[log p(x|z)] - beta KL(q || p(z)) for diagonal q = N(mu, diag v),
        v = exp(logvar).  Returns (d mu, d logvar), both (B, Z).  beta = 1 is the ELBO.

        With r = x - b, c_j = |W[:, j]|^2 = G_jj and M_beta = beta I + G / sigma^2:
            L_beta = const - (|r - W mu|^2 + sum_j v_j c_j) / (2 sigma^2)
                     - beta/2 sum_j (v_j + mu_j^2 - 1 - logvar_j)
            d mu     = W^T (r - W mu) / sigma^2 - beta mu = W^T r / sigma^2 - M_beta mu
            d logvar = v * dL/dv + beta/2 = 1/2 (beta - v_j (c_j / sigma^2 + beta))
                     = 1/2 (beta - v_j (M_beta)_jj)
        Setting both to zero: mu* = M_beta^{-1} W^T r / sigma^2, v*_j = beta / (M_beta)_jj; at beta = 1
        that is the posterior mean and precision diag(M) (``optimal_diagonal_q``).
        """
        x = self._x(x)
        q_mean = _array("q_mean", q_mean, 2, last=self.Z)
        q_logvar = _array("q_logvar", q_logvar, 2, last=self.Z)
        beta = _positive("beta", beta)
        Mb = self._M_beta(beta)
        d_mean = (x - self.b) @ self.W / self.sigma ** 2 - q_mean @ Mb
        d_logvar = 0.5 * (beta - np.exp(q_logvar) * np.diag(Mb))
        return d_mean, d_logvar

    def fit_diagonal_q(self, x, steps=2000, lr=None, rng=None, beta=1.0):
        """The best diagonal Gaussian q for each row of x, by gradient ascent on the exact
        (beta-)ELBO with the closed-form gradients of ``elbo_grad``; returns a diagonal Gaussian.

        mu is started at N(0, I) draws from rng (at 0 when rng is None), logvar at 0 (the prior).
        lr=None takes 1 / lambda_max(M_beta): the mean's gradient is linear, d mu = c - M_beta mu,
        so each step contracts the mean error by (I - lr M_beta), stable for lr < 2 / lambda_max
        and at least as fast as (1 - lambda_min / lambda_max)^steps for the default; near the
        optimum each logvar error contracts by (1 - lr beta / 2) per step.
        For beta = 1 its gap to log p(x) is KL(q* || p(z|x)) = 1/2 (sum_j log M_jj - log det M),
        which is > 0 unless M is diagonal (Hadamard's inequality): the part of the ELBO gap a
        diagonal encoder can never close (C6).
        """
        x = self._x(x)
        steps = _count("steps", steps, minimum=0)
        beta = _positive("beta", beta)
        lam_max = np.linalg.eigvalsh(self._M_beta(beta))[-1]
        lr = 1.0 / lam_max if lr is None else _positive("lr", lr)
        if lr >= 2.0 / lam_max:
            raise MinivaeError(f"lr must be < 2 / lambda_max(M_beta) = {2.0 / lam_max:.4g} for "
                               f"gradient ascent to converge, got {lr!r}")
        B = len(x)
        mean = np.zeros((B, self.Z)) if rng is None else rng.standard_normal((B, self.Z))
        logvar = np.zeros((B, self.Z))
        for _ in range(steps):
            d_mean, d_logvar = self.elbo_grad(x, mean, logvar, beta)
            mean = mean + lr * d_mean
            logvar = logvar + lr * d_logvar
        return Gaussian.diagonal(mean, logvar)

    def optimal_diagonal_q(self, x, beta=1.0):
        """Closed-form maximiser over diagonal q of E_q[log p(x|z)] - beta KL(q || p(z)):
            mean = M_beta^{-1} W^T (x - b) / sigma^2,  var_j = beta / (M_beta)_jj,
        M_beta = beta I + W^T W / sigma^2 (see ``elbo_grad``).  At beta = 1: mean = the posterior
        mean, precision = diag(M).  As beta grows the rate KL(q || p(z)) falls and the distortion
        -E_q[log p(x|z)] rises (C8)."""
        x = self._x(x)
        beta = _positive("beta", beta)
        Mb = self._M_beta(beta)
        mean = np.linalg.solve(Mb, self.W.T @ (x - self.b).T / self.sigma ** 2).T
        logvar = np.broadcast_to(np.log(beta) - np.log(np.diag(Mb)), mean.shape).copy()
        return Gaussian.diagonal(mean, logvar)

    # --- importance sampling -----------------------------------------------------------------

    def log_weights(self, x, q, K, rng):
        """Importance log-weights log w_k = log p(x, z_k) - log q(z_k), z_k ~ q, (K, B)   (C2).

        E_q[w] = integral q(z) p(x, z) / q(z) dz = p(x) for any q with q > 0 where p(x, z) > 0.
        q: a ``Gaussian`` (e.g. ``prior(B)``, ``posterior_gaussian(x)``, ``fit_diagonal_q(x)``)
        or a tuple (mean, logvar).
        """
        x = self._x(x)
        q = self._q(x, q, None)
        z = q.sample(_count("K", K), rng)                                # (K, B, Z)
        return self.log_joint(x, z) - q.log_prob(z)

    def importance_log_likelihood(self, x, q, K, rng):
        """log p_hat_K(x) = log (1/K) sum_k w_k = logsumexp_k(log w_k) - log K, and its standard
        error; returns Estimate(value (B,), stderr (B,), n=K).

        p_hat_K is unbiased for p(x) with var(p_hat_K) = var(w) / K (C3); by the delta method
        sd(log p_hat_K) ~ sqrt(var(w) / K) / p(x), estimated from the same K weights as
        sqrt(v / K) with v = var(w~) / mean(w~)^2, w~_k = exp(log w_k - max_k log w_k) (scale-free,
        so the max-shift costs nothing).  log p_hat_K is biased low by about v / (2K) (Jensen).
        """
        K = _count("K", K)
        lw = self.log_weights(x, q, K, rng)
        value = _logsumexp(lw, axis=0) - math.log(K)
        return Estimate(value, np.sqrt(_sample_relative_variance(lw) / K), K)

    def iwae_bound(self, x, q, K, rng, replicates=64):
        """Monte Carlo estimate of IWAE_K = E[log (1/K) sum_k w_k] (z_1..z_K ~ q iid), averaged over
        independent replicates; returns Estimate(value (B,), stderr (B,), n=replicates).

        Jensen: IWAE_K <= log E[(1/K) sum w_k] = log p(x); IWAE_1 = E_q[log w] = ELBO; and IWAE_K
        is non-decreasing in K (Burda et al. 2016, Thm 1), -> log p(x) as K -> inf when w is
        bounded.  stderr = sample std of the replicates / sqrt(replicates) (nan for 1 replicate).
        """
        K = _count("K", K)
        R = _count("replicates", replicates)
        lw = self.log_weights(x, q, K * R, rng).reshape(R, K, -1)         # (R, K, B)
        per = _logsumexp(lw, axis=1) - math.log(K)                          # (R, B)
        stderr = per.std(axis=0, ddof=1) / math.sqrt(R) if R > 1 else np.full(per.shape[1], np.nan)
        return Estimate(per.mean(axis=0), stderr, R)

    def log_weight_moment(self, x, q, order=2):
        """Exact log E_q[(w / p(x))^n] for n = order >= 1 and a Gaussian proposal q, (B,); +inf where
        the moment is infinite.

        w / p(x) = p(z|x) / q(z), so E_q[(w/p)^n] = integral N(z; m, S)^n N(z; mu, Sigma)^(1-n) dz.
        Write y = z - m, d = m - mu, P = M = S^{-1}, Lambda = Sigma^{-1}.  The exponent is -Q/2 with
            Q(y) = n y^T M y - (n-1) (y + d)^T Lambda (y + d)
                 = y^T A y - 2 (n-1) y^T Lambda d - (n-1) d^T Lambda d,    A = n M - (n-1) Lambda.
        The integral is finite iff A is positive definite; then Q's minimum is
            Q* = -(n-1)^2 (Lambda d)^T A^{-1} (Lambda d) - (n-1) d^T Lambda d,
        integral exp(-Q/2) dy = (2 pi)^{Z/2} det(A)^{-1/2} exp(-Q*/2), and the (2 pi) factors of the
        n + (1 - n) densities leave (2 pi)^{-Z/2}, so
            log E_q[(w/p)^n] = n/2 log det M + (n-1)/2 log det Sigma - 1/2 log det A
                               + 1/2 [(n-1)^2 (Lambda d)^T A^{-1} (Lambda d) + (n-1) d^T Lambda d].
        n = 1 gives 0 (E_q[w] = p(x), C2).  A fails to be positive definite when q is too narrow:
        its tails are lighter than the posterior's, and p(z|x)^n / q(z)^(n-1) is not integrable.
        """
        x = self._x(x)
        q = self._q(x, q, None)
        n = float(order)
        if not (math.isfinite(n) and n >= 1):
            raise MinivaeError(f"order must be a number >= 1, got {order!r}")
        Lam = q.precision()                                                  # (B, Z, Z)
        A = n * self.M - (n - 1) * Lam
        finite = np.linalg.eigvalsh(A)[:, 0] > 0
        A = np.where(finite[:, None, None], A, np.eye(self.Z))
        d = self.posterior_mean(x) - q.mean
        Ld = (Lam @ d[..., None])[..., 0]
        quad = ((n - 1) ** 2 * (Ld * np.linalg.solve(A, Ld[..., None])[..., 0]).sum(axis=1)
                + (n - 1) * (d * Ld).sum(axis=1))
        log_m = (0.5 * n * self.logdet_M + 0.5 * (n - 1) * q.logdet()
                 - 0.5 * np.linalg.slogdet(A)[1] + 0.5 * quad)
        return np.where(finite, log_m, np.inf)

    def weight_relative_variance(self, x, q, q_logvar=None):
        """Exact var_q(w) / p(x)^2 = E_q[(w / p(x))^2] - 1 for the Gaussian proposal q, (B,)   (C3);
        the relative variance of the K-sample estimate is this / K.  See ``log_weight_moment``
        (n = 2, A = 2 M - Lambda); +inf where the weights have infinite variance.

        Zero for q = the posterior (C4).  For the prior, A = M + G / sigma^2 > 0 (and w / p(x) =
        p(x|z) / p(x) is bounded, so every moment is finite).  For the optimal diagonal q
        (precision diag(M)), A = diag(M) + 2 offdiag(M): when Z = 2 it is positive definite iff the
        posterior precision correlation rho = M_12 / sqrt(M_11 M_22) has |rho| < 1/2 (the n-th
        moment has A = diag(M) + n offdiag(M): finite iff |rho| < 1/n).  A too narrow
        (under-dispersed) q such as a fitted diagonal encoder of a strongly correlated posterior
        therefore gives weights of infinite variance: p_hat_K still converges, but slower than
        1/sqrt(K), and a reported stderr cannot be trusted.
        """
        log_m2 = self.log_weight_moment(x, as_gaussian(q, q_logvar), 2)
        return np.where(np.isfinite(log_m2), np.expm1(np.minimum(log_m2, 700.0)), np.inf)

def _sample_relative_variance(lw):
    """var(w) / mean(w)^2 along axis 0 from log-weights (K, B), computed on w~ = exp(lw - max)."""
    w = np.exp(lw - lw.max(axis=0))
    if len(w) < 2:
        return np.full(w.shape[1], np.nan)
    return w.var(axis=0, ddof=1) / w.mean(axis=0) ** 2

