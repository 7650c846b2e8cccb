"""What the claims C1-C12 share: their sizes (full and --quick), the two linear-Gaussian models
with exact answers, the fitted encoder, the proposals, and the tolerance rules.

Ground truth.  C1-C7 use the linear-Gaussian model (``minivae.linear_gaussian``), where log p(x),
p(z|x), every ELBO and KL and every moment of the importance weights are closed forms:
    MILD    LinearGaussian.random(8, 2, 0.5, make_rng(4)): posterior precision correlation
            rho = -0.21, so the best diagonal q has weights with finite 4th moment (|rho| < 1/4)
            and standard errors of variances are trustworthy (C1-C5).
    STRONG  LinearGaussian.random(5, 2, 0.5, make_rng(0)): rho = 0.65, the best diagonal q keeps an
            ELBO gap of 0.28 nats (infinite-variance weights): bounds and gaps (C5-C8, IWAE).
C7 and C8 also train small VAEs on the built-in shapes (``minivae.model.VAE``,
``minivae.train.Trainer``).  C9-C12 use ``minivae.estimators`` against closed-form
expectations of f(z) = z^2, sin z, exp(z/2) under Normal, Uniform, Exponential, Laplace and
Logistic, differentiated by central differences of the closed form (error ~1e-10, far below any
standard error here).

Tolerances.  A Monte Carlo number is checked against its exact value within Z_TOL = 4.5 standard
errors (``harness.Z_TOL``); where possible the standard error comes from *exact* moments
(``log_weight_moment``), otherwise from the sample.  The standard deviation of a sample variance
over R draws is sqrt(mu4/R - var^2 (R-3)/(R(R-1))).  An exact identity is checked to float64
round-off: ROUNDOFF * cond * eps * (1 + scale), with cond the condition number of the matrices
solved and scale the size of the terms summed (the rule of tests/test_linear_gaussian.py).  Seeds
are fixed, so a run is reproducible.
"""
import dataclasses
import math

import numpy as np

from minivae.backend import make_rng
from minivae.linear_gaussian import Gaussian, LinearGaussian

EPS = np.finfo(np.float64).eps
ROUNDOFF = 1e3
MODELS = dict(MILD="LinearGaussian.random(8, 2, 0.5, make_rng(4))",
              STRONG="LinearGaussian.random(5, 2, 0.5, make_rng(0))")


@dataclasses.dataclass
class Sizes:
    """Sample sizes; --quick divides the Monte Carlo work by ~10 and shortens the beta sweep."""
    c1_K: int = 100                    # samples per estimate of p(x)
    c1_R: int = 10_000                 # replicate estimates
    c2_N: int = 1_000_000              # weights per proposal
    c3_ns: tuple = (1, 4, 16, 64, 256, 1024)
    c3_R: int = 2000                   # replicate n-sample estimates per n
    c4_N: int = 100_000
    c5_N: int = 200_000
    iwae_Ks: tuple = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
    iwae_R: int = 200                  # replicates at the largest K; iwae_R * K_max draws per K
    c6_random: int = 30                # random proposals of each kind (diagonal, full)
    c7_S: int = 20_000
    vae_images: int = 300              # test images for the VAE's C7 check
    vae_S: int = 200                   # samples per image for each of the two ELBO estimates
    betas: tuple = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    train_images: int = 4000
    epochs: int = 5
    batch: int = 64
    test_images: int = 2000
    eval_S: int = 10                   # held-out samples per image (the same noise for every beta)
    c9_n: int = 100_000
    c9_hs: tuple = (0.3, 0.1, 0.03, 0.01, 0.003, 0.001)
    est_chunks: int = 20               # C10/C11: independent chunks (for the SE of a variance)
    est_n: int = 10_000                # samples per chunk
    c12_n: int = 100_000


QUICK = Sizes(c1_K=100, c1_R=1000, c2_N=100_000, c3_ns=(1, 4, 16, 64, 256), c3_R=500,
              c4_N=10_000, c5_N=20_000, iwae_Ks=(1, 4, 16, 64, 256), iwae_R=64, c6_random=10,
              c7_S=4000, vae_images=200, vae_S=100, betas=(0.25, 1.0, 4.0), train_images=1000,
              epochs=3, batch=32, test_images=500, eval_S=4, c9_n=20_000, c9_hs=(0.1, 0.01, 0.001),
              est_chunks=10, est_n=4000, c12_n=20_000)


def roundoff(cond, scale):
    """Float64 round-off bound for an identity whose terms have size `scale`."""
    return ROUNDOFF * cond * EPS * (1.0 + scale)


def sd_of_sample_variance(var, mu4, R):
    """Standard deviation of the unbiased sample variance of R iid draws."""
    return np.sqrt(np.maximum(mu4 / R - var ** 2 * (R - 3) / (R * (R - 1)), 0.0))


def weight_moments(lg, x, q):
    """Exact (var, mu4) of r = w / p(x) under q (mean 1), from E_q[r^n], n = 2, 3, 4."""
    m2, m3, m4 = (np.exp(lg.log_weight_moment(x, q, n)) for n in (2, 3, 4))
    return m2 - 1.0, m4 - 4.0 * m3 + 6.0 * m2 - 3.0


def draw_log_weights(lg, x, q, N, rng, chunk=1 << 17):
    """log w (N, B) drawn in chunks (bounded memory)."""
    return np.concatenate([lg.log_weights(x, q, min(chunk, N - i), rng)
                           for i in range(0, N, chunk)])


class Context:
    """The state the claims share: the two models and their data, the rng per claim, results
    computed once and used by several claims (the beta sweep, the estimator table)."""

    def __init__(self, sizes, seed, order):
        self.n, self.seed, self.order = sizes, seed, list(order)
        rng = make_rng(4)
        self.mild = LinearGaussian.random(8, 2, 0.5, rng)
        self.x_mild = self.mild.sample(4, rng)
        rng = make_rng(0)
        self.strong = LinearGaussian.random(5, 2, 0.5, rng)
        self.x_strong = self.strong.sample(4, rng)
        self.cache = {}                 # results used by several claims, computed once

    def rng(self, claim, *more):
        """A generator per claim (and sub-check), derived from --seed and the claim's row."""
        return make_rng([self.seed, self.order.index(claim), *more])

    def fitted(self, lg, x):
        """The fitted diagonal encoder: gradient ascent on the exact ELBO (``fit_diagonal_q``)."""
        return lg.fit_diagonal_q(x, steps=4000, rng=make_rng(1))

    @staticmethod
    def rho(lg):
        return float(lg.M[0, 1] / math.sqrt(lg.M[0, 0] * lg.M[1, 1]))

    def models(self):
        """The two models as claims.json states them."""
        return dict(MILD=dict(call=MODELS["MILD"], rho=self.rho(self.mild), x=self.x_mild),
                    STRONG=dict(call=MODELS["STRONG"], rho=self.rho(self.strong),
                                x=self.x_strong))


def proposals(ctx, lg, x):
    """The proposals of C2, C5, C7: the prior, the fitted encoder, a wide shifted diagonal q
    (posterior mean + 0.5, 3 times the posterior's marginal variances) and the posterior."""
    post_mean, S = lg.posterior(x)
    return {"prior": lg.prior(len(x)), "fitted": ctx.fitted(lg, x),
            "wide": Gaussian.diagonal(post_mean + 0.5, np.log(3 * np.diag(S)) + 0 * post_mean),
            "posterior": lg.posterior_gaussian(x)}

