"""Disentanglement metrics: how the latents of a trained model line up with known factors.

Every metric takes plain arrays and returns numbers; the model only produces the codes
(``encode_factors`` renders shapes for given factors and encodes them), a metric never reaches
into it.  Codes are small ((N, Z) with N a few thousand), so the metrics run on host NumPy in
float64; device arrays are moved to the host first.

    codes     (N, Z)  posterior means mu(x) (MIG, FactorVAE) or (mu, logvar) (TC, per-latent KL)
    factors   (N, F)  the true factor values of the same images

MIG (Chen et al. 2018, *Isolating sources of disentanglement in VAEs*, sec. 4.1):
    I_jk  = I(z_j; v_k), the mutual information between latent j (discretised) and factor k
    MIG   = 1/F sum_k ( I_(1)k - I_(2)k ) / H(v_k),      I_(1)k >= I_(2)k the two largest over j
A factor captured by one latent alone scores 1; by two latents equally (a duplicated latent), or
by none, 0.  The latents are discretised into ``bins`` equal-width bins between their minimum
and maximum (disentanglement_lib's histogram discretiser; Chen et al. estimate I with
q(z|x) itself on dSprites' grid), the continuous factors likewise, a discrete factor keeps its
levels.  The plug-in I of two independent variables with a and b occupied levels is biased
upwards by about (a - 1)(b - 1) / (2N) nats (2N I ~ chi^2 with that many degrees of freedom,
the G-test), the floor of every "near 0" below.

FactorVAE score (Kim & Mnih 2018, *Disentangling by factorising*, sec. 4): a vote fixes factor
k at one value, draws L images with the other factors random, divides each latent by its
standard deviation over the whole data, and records d = argmin_j Var(z_j / s_j) over the L
codes; the majority-vote classifier maps d to the factor most often fixed when d won, and the
score is its accuracy on held-out votes (chance 1/F).  Latents whose variance over the data is
below ``prune`` (collapsed onto the prior) take no part (disentanglement_lib prunes at 0.05).

Total correlation of the aggregate posterior q(z) = 1/N sum_n q(z|x_n):
    TC = KL( q(z) || prod_j q(z_j) ) = E_q(z)[ log q(z) - sum_j log q(z_j) ]
Estimated by the exact sum over a subsample (Chen et al. 2018, sec. 3 and their
``elbo_decomposition``), not by minibatch-weighted sampling: for each of N subsampled images one
z_n ~ q(z|x_n) (a stratified draw from the subsample's mixture), and
    log q(z_n)   = logsumexp_m log q(z_n | x_m) - log N,      the same per dimension for q(z_nj),
summed over all N posteriors (O(N^2 Z), chunked).  Why: at evaluation time the N^2 sum over a
few thousand images is cheap, and it estimates the TC of the subsample's aggregate posterior
with no importance weights; minibatch-weighted sampling (their training-time estimator) stands
a batch of M for the whole data with weights that make it biased for small M.  The remaining
bias, from a finite mixture standing for q(z), is O(1/N) when the posteriors overlap (the
self-term q(z_n|x_n)/N and the Jensen term of a log of a mean), but not when they are narrow
against their spacing: then the self-term dominates (see tc_loo below, the leave-one-out
version that brackets it from the other side).  The standard error returned, sd(t_n)/sqrt(N)
of the per-draw terms t_n, bounds the stratified sampling error from above.
"""
import math

import numpy as np

from .backend import to_host
from .errors import MinivaeError

LOG_2PI = math.log(2 * math.pi)


def _host(a, name, ndim):
    a = np.asarray(to_host(a), dtype=np.float64)
    if a.ndim != ndim:
        raise MinivaeError(f"{name} must be a {ndim}-D array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise MinivaeError(f"{name} holds NaN or infinite values")
    return a


def _columns(codes, factors):
    codes = _host(codes, "codes", 2)
    factors = np.asarray(to_host(factors))
    if factors.ndim != 2 or len(factors) != len(codes) or len(codes) < 2:
        raise MinivaeError(f"factors must be (N, F) with the codes' N = {len(codes)} >= 2 rows, "
                           f"got {factors.shape}")
    return codes, factors


# ------------------------------------------------------------------------------ information
def discretize(values, bins=20, discrete=None):
    """(N, K) -> int (N, K): each column into ``bins`` equal-width bins between its minimum and
    maximum (a constant column: one bin); a column marked in ``discrete`` (K,) booleans, or of
    an integer dtype, keeps its own levels (0..L-1)."""
    values = np.asarray(to_host(values))
    if values.ndim != 2:
        raise MinivaeError(f"discretize: values must be (N, K), got shape {values.shape}")
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise MinivaeError(f"bins must be a positive integer, got {bins!r}")
    if discrete is None:
        discrete = [values.dtype.kind in "iub"] * values.shape[1]
    if len(discrete) != values.shape[1]:
        raise MinivaeError(f"discrete must name each of the {values.shape[1]} columns, got "
                           f"{len(discrete)}")
    out = np.empty(values.shape, dtype=np.int64)
    for k in range(values.shape[1]):
        col = values[:, k]
        if discrete[k]:
            out[:, k] = np.unique(col, return_inverse=True)[1].ravel()
            continue
        lo, hi = float(col.min()), float(col.max())
        if hi == lo:
            out[:, k] = 0
            continue
        edges = np.linspace(lo, hi, bins + 1)[1:-1]
        out[:, k] = np.searchsorted(edges, col, side="right")
    return out


def _joint(a, b):
    """Joint frequency table of two int vectors, with the empty rows and columns dropped."""
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1.0)
    table = table[table.sum(1) > 0][:, table.sum(0) > 0]
    return table / table.sum()


def entropy(labels):
    """Plug-in entropy in nats of each column of an int (N, K) array: (K,)."""
    labels = np.asarray(labels)
    out = np.empty(labels.shape[1])
    for k in range(labels.shape[1]):
        p = np.bincount(labels[:, k]) / len(labels)
        p = p[p > 0]
        out[k] = -np.sum(p * np.log(p))
    return out


def mutual_information(a, b):
    """(I, se, levels): the plug-in mutual information in nats of two int vectors (N,), its
    delta-method standard error sqrt((E[l^2] - I^2) / N), l = log p(a,b) / (p(a) p(b)), and
    (levels of a, levels of b) occupied."""
    p = _joint(np.asarray(a), np.asarray(b))
    pa, pb = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    logr = np.log(p[nz] / (pa * pb)[nz])
    mi = float(np.sum(p[nz] * logr))
    var = max(float(np.sum(p[nz] * logr ** 2)) - mi * mi, 0.0)
    return max(mi, 0.0), math.sqrt(var / len(a)), p.shape


def mutual_information_matrix(codes, factors, bins=20, discrete=None):
    """I(z_j; v_k) in nats, (Z, F), after ``discretize`` of both (codes: (N, Z) continuous;
    factors: (N, F), the columns marked in ``discrete`` kept as levels)."""
    codes, factors = _columns(codes, factors)
    zd, vd = discretize(codes, bins, [False] * codes.shape[1]), discretize(factors, bins,
                                                                           discrete)
    return np.array([[mutual_information(zd[:, j], vd[:, k])[0] for k in range(vd.shape[1])]
                     for j in range(zd.shape[1])])


def mig(codes, factors, bins=20, discrete=None):
    """The mutual information gap (Chen et al. 2018).  codes (N, Z), Z >= 2; factors (N, F);
    discrete (F,): the factor columns that are levels (default: those of an integer dtype).

    Returns a dict: mig (the mean over factors of the normalised gap), gaps (F,), the MI matrix
    mi (Z, F) in nats, factor entropies (F,), top (F,) the index of the best latent per factor.
    """
    codes, factors = _columns(codes, factors)
    if codes.shape[1] < 2:
        raise MinivaeError(f"MIG needs at least 2 latents (a gap between the top two), got "
                           f"{codes.shape[1]}")
    mi = mutual_information_matrix(codes, factors, bins, discrete)
    h = entropy(discretize(factors, bins, discrete))
    top = np.sort(mi, axis=0)[::-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        gaps = np.where(h > 0, (top[0] - top[1]) / h, 0.0)
    return dict(mig=float(gaps.mean()), gaps=gaps, mi=mi, entropies=h,
                top=np.argmax(mi, axis=0))


# ------------------------------------------------------------------------------ FactorVAE
def factorvae_votes(codes_with_fixed, n_factors, n_votes, batch, rng):
    """Draw the votes: for each, a factor k uniform over n_factors and
    ``codes_with_fixed(k, batch, rng)`` -> (batch, Z) codes of images sharing factor k's value.
    Returns (codes (n_votes, batch, Z), k (n_votes,))."""
    ks = rng.integers(0, n_factors, size=n_votes)
    return np.stack([_host(codes_with_fixed(int(k), batch, rng), "codes", 2) for k in ks]), ks


def factorvae_score(vote_codes, vote_factors, scale, n_factors, n_train=None, prune=0.05):
    """The FactorVAE score (Kim & Mnih 2018) from votes.

    vote_codes (V, L, Z): L codes per vote, one factor fixed; vote_factors (V,): which;
    scale (Z,): each latent's standard deviation over the whole data; n_train: votes that train
    the majority-vote classifier (default half), the rest measure its accuracy; latents with
    scale^2 < prune are left out.  Returns dict(score (held-out accuracy), train_accuracy,
    classifier (Z,) the factor each latent votes for (-1: never won or pruned), active (Z,),
    n_eval, chance = 1/n_factors).
    """
    v = _host(vote_codes, "vote_codes", 3)
    ks = np.asarray(vote_factors).astype(np.int64)
    scale = _host(scale, "scale", 1)
    V, L, Z = v.shape
    if ks.shape != (V,) or scale.shape != (Z,) or L < 2:
        raise MinivaeError(f"vote_codes (V, L >= 2, Z), vote_factors (V,) and scale (Z,) must "
                           f"agree, got {v.shape}, {ks.shape}, {scale.shape}")
    n_train = V // 2 if n_train is None else int(n_train)
    if not 1 <= n_train < V:
        raise MinivaeError(f"n_train must leave votes on both sides (1..{V - 1}), got {n_train}")
    active = scale ** 2 >= prune
    classifier = np.full(Z, -1)
    if not active.any():
        return dict(score=0.0, train_accuracy=0.0, classifier=classifier, active=active,
                    n_eval=V - n_train, chance=1 / n_factors)
    var = np.var(v / np.where(scale > 0, scale, 1.0), axis=1, ddof=1)       # (V, Z)
    d = np.argmin(np.where(active, var, np.inf), axis=1)                      # (V,)
    counts = np.zeros((Z, n_factors))
    np.add.at(counts, (d[:n_train], ks[:n_train]), 1)
    won = counts.sum(1) > 0
    classifier[won] = np.argmax(counts[won], axis=1)
    train_acc = counts.max(1).sum() / n_train
    score = float(np.mean(classifier[d[n_train:]] == ks[n_train:]))
    return dict(score=score, train_accuracy=float(train_acc), classifier=classifier,
                active=active, n_eval=V - n_train, chance=1 / n_factors)


# ------------------------------------------------------------------------------ q(z)
def _log_normal(z, mu, logvar):
    """log N(z; mu, exp(logvar)) per element, broadcasting."""
    return -0.5 * ((z - mu) ** 2 * np.exp(-logvar) + logvar + LOG_2PI)


def _logsumexp(a, axis):
    m = a.max(axis=axis, keepdims=True)
    return np.log(np.exp(a - m).sum(axis=axis)) + np.squeeze(m, axis)


def total_correlation(mu, logvar, rng, n=None, chunk=256):
    """TC of the aggregate posterior by the exact sum over a subsample (module docstring).

    mu, logvar: (N, Z) of q(z|x_n); n: subsample size (default all N); rng: a Generator for the
    subsample and the draws z_n ~ q(z|x_n).  Returns dict(tc, se, tc_loo, se_loo, n, joint
    (E log q(z)), marginals (Z,) (E log q(z_j))).

    tc_loo leaves each draw's own posterior out of the sums (1/(N-1) sum_{m != n}).  When the
    posteriors are narrow against their spacing (a high rate, I(x; z) near or above log N) the
    self-term dominates log q(z_n): the joint density is overestimated, and tc with it, while
    the leave-one-out sums underestimate it (Jensen, worst in Z dimensions).  The two estimates
    agree when N is large enough for the rate; their gap is the warning that it is not.
    """
    mu, logvar = _host(mu, "mu", 2), _host(logvar, "logvar", 2)
    if mu.shape != logvar.shape:
        raise MinivaeError(f"mu and logvar must have one shape, got {mu.shape}, {logvar.shape}")
    N, Z = mu.shape
    if n is not None and n < N:
        idx = rng.choice(N, size=int(n), replace=False)
        mu, logvar, N = mu[idx], logvar[idx], int(n)
    if N < 2:
        raise MinivaeError(f"total_correlation needs at least 2 posteriors, got {N}")
    z = mu + np.exp(0.5 * logvar) * rng.standard_normal(mu.shape)
    log_joint, log_marg = np.empty((2, N)), np.empty((2, N, Z))   # [with self, leave-one-out]
    for i in range(0, N, chunk):
        lp = _log_normal(z[i:i + chunk, None, :], mu[None], logvar[None])   # (c, N, Z)
        log_marg[0, i:i + chunk] = _logsumexp(lp, axis=1) - math.log(N)
        log_joint[0, i:i + chunk] = _logsumexp(lp.sum(-1), axis=1) - math.log(N)
        rows = np.arange(lp.shape[0])
        lp[rows, i + rows] = -np.inf                                        # drop q(z_n | x_n)
        log_marg[1, i:i + chunk] = _logsumexp(lp, axis=1) - math.log(N - 1)
        log_joint[1, i:i + chunk] = _logsumexp(lp.sum(-1), axis=1) - math.log(N - 1)
    t = log_joint - log_marg.sum(2)                                         # (2, N)
    se = t.std(axis=1, ddof=1) / math.sqrt(N)
    return dict(tc=float(t[0].mean()), se=float(se[0]), tc_loo=float(t[1].mean()),
                se_loo=float(se[1]), n=N, joint=float(log_joint[0].mean()),
                marginals=log_marg[0].mean(0))


def gaussian_total_correlation(cov):
    """Closed form for N(m, cov): 1/2 (sum_j log cov_jj - log det cov) in nats."""
    cov = np.asarray(cov, dtype=np.float64)
    return 0.5 * (np.sum(np.log(np.diag(cov))) - np.linalg.slogdet(cov)[1])


def per_latent_kl(mu, logvar):
    """KL(q(z_j|x) || N(0, 1)) averaged over the rows: (Z,), summing to the mean KL (the rate).
    1/2 (mu^2 + expm1(logvar) - logvar), the form of minivae.distributions.kl_standard_normal."""
    mu, logvar = _host(mu, "mu", 2), _host(logvar, "logvar", 2)
    return 0.5 * np.mean(mu * mu + np.expm1(logvar) - logvar, axis=0)


# ------------------------------------------------------------------------------ from a model
def encode_factors(model, factors, kinds=None, size=32, batch=1000):
    """(mu, logvar) as host float64 (N, Z) of the shapes rendered for ``factors`` (a dict as
    minivae.data.shapes.draw_factors returns), encoded by ``model`` in batches."""
    from .backend import to_device
    from .data import shapes
    kinds = shapes.KINDS if kinds is None else kinds
    n = len(np.asarray(factors["shape"]))
    mus, lvs = [], []
    for i in range(0, n, batch):
        part = {k: np.asarray(v)[i:i + batch] for k, v in factors.items()}
        x = shapes.render(part, size, kinds).reshape(len(part["shape"]), -1)
        mu, lv = model.encode(to_device(x, model.xp, model.dtype))
        mus.append(to_host(mu).astype(np.float64))
        lvs.append(to_host(lv).astype(np.float64))
    return np.concatenate(mus), np.concatenate(lvs)


def factor_matrix(factors, levels=None):
    """A factor dict -> ((N, F) float64 array in the order of shapes.FACTORS, discrete (F,)
    booleans): 'shape' and the factors drawn on a grid (``levels``) are levels, the others
    continuous."""
    from .data.shapes import FACTORS
    values = np.stack([np.asarray(factors[k], dtype=np.float64) for k in FACTORS], 1)
    return values, np.array([k == "shape" or k in (levels or {}) for k in FACTORS])
