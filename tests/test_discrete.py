"""The Bernoulli-latent VAE (``minivae.discrete``), in float64.

Deterministic pieces by central differences (KL, score, relaxed sample, the relaxed objective's
whole gradient, the score estimate as the exact gradient of its surrogate); the exact evaluation
against a brute-force sum written here; the estimators statistically against the exact gradient
of the exact ELBO (central differences of the enumeration over all 2^K states) on a tiny model.
"""
import itertools
import json
import math
import statistics

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minivae.data.datasets as datasets
from minivae import cli, discrete
from minivae import distributions as dist
from minivae.discrete import (DiscreteVAE, all_states, bernoulli_kl, bernoulli_kl_grad,
                              bernoulli_log_prob, bernoulli_score, hard_sample, logistic_noise,
                              relaxed_sample)
from minivae.errors import MinivaeError
from minivae.estimators import leave_one_out_mean
from minivae.gradcheck import check_gradient, check_vjp
from minivae.rundir import load_run

EPS64 = np.finfo(np.float64).eps
seeds = st.integers(0, 2**32 - 1)


def tiny(estimator="score", baseline="none", S=1, K=3, tau=0.5, seed=1, D=5):
    return DiscreteVAE(D, (4,), K, "tanh", dtype="float64", seed=seed, samples=S,
                       estimator=estimator, baseline=baseline, temperature=tau)


# ----------------------------------------------------------------------------- the pieces
@given(B=st.integers(1, 4), K=st.integers(1, 5), seed=seeds)
def test_kl_is_the_sum_over_states_and_its_gradient_matches(B, K, seed):
    rng = np.random.default_rng(seed)
    logits = 3 * rng.standard_normal((B, K))
    p = 1 / (1 + np.exp(-logits))
    direct = np.sum(p * np.log(2 * p) + (1 - p) * np.log(2 * (1 - p)), axis=1)
    assert np.all(np.abs(bernoulli_kl(logits) - direct) <= 1e3 * EPS64 * (1 + np.abs(logits).sum(1)))
    check_vjp(bernoulli_kl, lambda v: v[:, None] * bernoulli_kl_grad(logits), logits, rng)


@given(S=st.integers(1, 3), B=st.integers(1, 3), K=st.integers(1, 4), seed=seeds)
def test_score_is_the_gradient_of_log_q(S, B, K, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((B, K))
    z = (rng.random((S, B, K)) < 0.5).astype(np.float64)
    check_vjp(lambda l: bernoulli_log_prob(z, l),
              lambda v: (v[..., None] * bernoulli_score(z, logits)).sum(0), logits, rng)


@given(S=st.integers(1, 3), B=st.integers(1, 3), K=st.integers(1, 4),
       tau=st.sampled_from([0.3, 1.0, 2.0]), seed=seeds)
def test_relaxed_sample_derivative(S, B, K, tau, seed):
    rng = np.random.default_rng(seed)
    logits, eps = rng.standard_normal((B, K)), logistic_noise(rng, (S, B, K), np.float64)
    _, dy = relaxed_sample(logits, eps, tau)
    check_vjp(lambda l: relaxed_sample(l, eps, tau)[0], lambda v: (v * dy).sum(0), logits, rng)


def test_noise_and_hard_sample_have_the_right_laws():
    """Logistic noise: mean 0, variance pi^2/3 (4th central moment 7 pi^4 / 15); 1[l + eps > 0]
    is Bernoulli(sigmoid(l)): frequencies within 4.5 binomial standard errors."""
    rng = np.random.default_rng(7)
    n = 200_000
    eps = logistic_noise(rng, (n,), np.float64)
    assert eps.dtype == np.float64 and np.isfinite(eps).all()
    var, mu4 = math.pi ** 2 / 3, 7 * math.pi ** 4 / 15
    assert abs(eps.mean()) <= 4.5 * math.sqrt(var / n)
    assert abs(eps.var() - var) <= 4.5 * math.sqrt((mu4 - var ** 2) / n)
    logits = np.array([[-2.0, 0.0, 1.5]])
    z = hard_sample(logits, logistic_noise(rng, (n, 1, 3), np.float64))
    p = 1 / (1 + np.exp(-logits[0]))
    assert np.all(np.abs(z.mean(axis=(0, 1)) - p) <= 4.5 * np.sqrt(p * (1 - p) / n))
    assert logistic_noise(rng, (4,), np.float32).dtype == np.float32


# ----------------------------------------------------------------------------- gradients at fixed noise
@given(S=st.integers(1, 3), B=st.integers(1, 3), tau=st.sampled_from([0.3, 1.0]), seed=seeds)
def test_relaxed_gradient_is_the_exact_gradient_of_the_relaxed_objective(S, B, tau, seed):
    rng = np.random.default_rng(seed)
    model = tiny("relaxed", S=S, tau=tau, seed=seed % 1000)
    x, eps = rng.random((B, 5)), logistic_noise(rng, (S, B, 3), np.float64)
    _, grads = model.loss_and_grads(x, eps)
    flat = np.concatenate([grads[k].ravel() for k in model.params])
    theta0 = model.buffer.data.copy()

    def loss(theta):
        model.buffer.data[...] = theta
        value = model.loss(x, eps)
        model.buffer.data[...] = theta0
        return value

    check_gradient(loss, flat, theta0, rng)


@given(S=st.integers(1, 4), B=st.integers(1, 3), baseline=st.sampled_from(["none", "mean"]),
       seed=seeds)
def test_score_gradient_is_the_exact_gradient_of_its_surrogate(S, B, baseline, seed):
    """z and f - c frozen: the estimate is the gradient of
    1/(S B) sum [nll(x_b|z_sb) - (f_sb - c_sb) log q(z_sb|x_b)] + 1/B sum_b KL_b."""
    S = max(S, 2) if baseline == "mean" else S
    rng = np.random.default_rng(seed)
    model = tiny(baseline=baseline, S=S, seed=seed % 1000)
    x, eps = rng.random((B, 5)), logistic_noise(rng, (S, B, 3), np.float64)
    _, grads = model.loss_and_grads(x, eps)
    flat = np.concatenate([grads[k].ravel() for k in model.params])
    z = hard_sample(model.encode(x), eps)
    f = -model.likelihood.nll(model.decoder_forward(z.reshape(S * B, 3)).reshape(S, B, -1), x)
    centred = f - (leave_one_out_mean(f, axis=0) if baseline == "mean" else 0.0)
    theta0 = model.buffer.data.copy()

    def surrogate(theta):
        model.buffer.data[...] = theta
        logits = model.encode(x)
        out = model.decoder_forward(z.reshape(S * B, 3)).reshape(S, B, -1)
        value = (np.mean(model.likelihood.nll(out, x) - centred * bernoulli_log_prob(z, logits))
                 + np.mean(bernoulli_kl(logits)))
        model.buffer.data[...] = theta0
        return float(value)

    check_gradient(surrogate, flat, theta0, rng)


# ----------------------------------------------------------------------------- exact evaluation
def brute_force(model, x):
    """ELBO and log p(x) per example by a plain loop over the 2^K states."""
    K = model.latent_dim
    logits = model.encode(x)
    p = 1 / (1 + np.exp(-logits))
    rec = np.zeros(len(x))
    joint = []
    for bits in itertools.product([0.0, 1.0], repeat=K):
        z = np.array(bits)
        q = np.prod(np.where(z == 1, p, 1 - p), axis=1)
        logpx_z = -dist.bernoulli_nll(model.decoder_forward(z[None]), x)
        rec += q * logpx_z
        joint.append(logpx_z - K * math.log(2))
    kl = np.sum(p * np.log(2 * p) + (1 - p) * np.log(2 * (1 - p)), axis=1)
    joint = np.array(joint)
    mx = joint.max(0)
    return rec - kl, np.log(np.exp(joint - mx).sum(0)) + mx


@pytest.mark.parametrize("K", [1, 3, 6])
def test_exact_evaluation_equals_the_brute_force_sum(K, rng):
    model = tiny(K=K, seed=3)
    x = rng.random((4, 5))
    ex = model.exact(x, chunk=5)                 # several chunks of states
    elbo, logpx = brute_force(model, x)
    scale = 1e3 * EPS64 * (1 + np.abs(logpx))
    assert np.all(np.abs(ex.elbo - elbo) <= scale) and np.all(np.abs(ex.logpx - logpx) <= scale)
    assert np.all(ex.logpx >= ex.elbo)          # Jensen: the gap is KL(q || p(z|x)) >= 0
    assert all_states(K, np.float64).shape == (2 ** K, K)


def test_importance_sampling_beyond_enumeration_agrees_with_the_exact_values(monkeypatch, rng):
    model = tiny(K=4, seed=2)
    x = rng.random((6, 5))
    exact = model.exact(x)
    monkeypatch.setattr(discrete, "MAX_ENUMERATE", 3)          # K = 4 is now "too big"
    with pytest.raises(MinivaeError, match="importance sampling"):
        model.exact(x)
    res = model.evaluate(x, np.random.default_rng(0), samples=20000)
    assert res["exact"] is False
    # the ELBO's estimate: Monte Carlo over 20,000 draws per example, se from its spread
    assert abs(res["elbo"] - exact.elbo.mean()) <= 4.5 * res["elbo_stderr"] / math.sqrt(20000) * 3
    # log p(x): the IWAE bound with 20,000 samples is within 0.01 nats of log p(x) here
    assert abs(res["logpx"] - exact.logpx.mean()) <= 0.01


# ----------------------------------------------------------------------------- statistical
def exact_gradient(model, x, h=1e-5):
    """d(-mean exact ELBO)/d theta by central differences of the enumeration (float64, error
    ~h^2 |f'''| + eps |f| / h ~ 1e-10), parameter by parameter."""
    theta0 = model.buffer.data.copy()
    g = np.empty_like(theta0)
    for i in range(len(theta0)):
        vals = []
        for step in (h, -h):
            model.buffer.data[...] = theta0
            model.buffer.data[i] += step
            vals.append(-model.exact(x).elbo.mean())
        g[i] = (vals[0] - vals[1]) / (2 * h)
    model.buffer.data[...] = theta0
    return g


def estimator_mean(model, x, calls, copies, seed):
    """Per-call gradients of a batch of `copies` copies of x (iid calls): mean and its se."""
    rng = np.random.default_rng(seed)
    xb = np.tile(x, (copies, 1))
    G = np.empty((calls, model.buffer.size))
    for r in range(calls):
        eps = logistic_noise(rng, (model.samples, len(xb), model.latent_dim), np.float64)
        model.forward_backward(xb, eps)
        G[r] = model.buffer.grad
    return G.mean(0), G.std(0, ddof=1) / math.sqrt(calls)


@pytest.fixture(scope="module")
def tiny_problem():
    rng = np.random.default_rng(11)
    x = rng.random((3, 5))
    return x, exact_gradient(tiny(), x)


def blocks(model):
    return {k: slice(model.buffer.offsets[k], model.buffer.offsets[k] + v.size)
            for k, v in model.params.items()}


@pytest.mark.parametrize("baseline,S", [("none", 4), ("mean", 4)])
def test_score_estimator_is_unbiased_for_the_exact_gradient(tiny_problem, baseline, S):
    """Every parameter, element-wise at a Bonferroni normal tolerance (family-wise false alarm
    1e-4); power: each block's standard error is well below its gradient."""
    x, exact = tiny_problem
    model = tiny(baseline=baseline, S=S)
    mean, se = estimator_mean(model, x, calls=200, copies=1500, seed=5)
    z_tol = statistics.NormalDist().inv_cdf(1 - 1e-4 / (2 * len(mean)))
    for name, sl in blocks(model).items():
        assert np.all(np.abs(mean[sl] - exact[sl]) <= z_tol * se[sl]), (
            name, np.abs((mean[sl] - exact[sl]) / se[sl]).max())
        assert np.linalg.norm(se[sl]) < 0.2 / z_tol * np.linalg.norm(exact[sl]), name


def test_relaxed_estimator_is_biased_and_its_variance_is_lower(tiny_problem):
    """At tau = 1 the relaxation's mean gradient differs from the exact one by far more than its
    standard error (it is the gradient of another objective), and its spread is below the
    score function's with the same samples."""
    x, exact = tiny_problem
    relaxed = tiny("relaxed", S=4, tau=1.0)
    mean, se = estimator_mean(relaxed, x, calls=50, copies=200, seed=6)
    t = np.abs(mean - exact) / se
    assert t.max() > 10, t.max()
    _, se_score = estimator_mean(tiny(baseline="mean", S=4), x, calls=50, copies=200, seed=6)
    assert np.sum(se ** 2) < np.sum(se_score ** 2)


def test_relaxed_objective_tends_to_the_discrete_one_as_tau_falls(rng):
    """E_eps[loss_tau] -> -ELBO (exact) as tau -> 0.  y differs from the hard z only where
    |l + eps| = O(tau), an event of probability O(tau), so the gap is O(tau): significant at
    tau = 1, and at tau = 0.01 within 4.5 standard errors plus 2% of the tau = 1 gap (the
    O(tau) law predicts 1%)."""
    model = tiny("relaxed", S=1, seed=4)
    x = rng.random((2, 5))
    target = -model.exact(x).elbo.mean()
    eps = logistic_noise(rng, (40000, 2, 3), np.float64)
    gap = {}
    for tau in (0.01, 1.0):
        model.temperature = tau
        per = np.array([model.loss(x, eps[i:i + 4000]) for i in range(0, 40000, 4000)])
        gap[tau] = (per.mean() - target, per.std(ddof=1) / math.sqrt(len(per)))
    assert abs(gap[1.0][0]) > 4.5 * gap[1.0][1], gap
    assert abs(gap[0.01][0]) <= 4.5 * gap[0.01][1] + 0.02 * abs(gap[1.0][0]), gap


# ----------------------------------------------------------------------------- the surface
@pytest.mark.parametrize("kw,needle", [
    (dict(estimator="reparam"), "must be one of score, relaxed"),
    (dict(estimator="relaxed", baseline="mean", samples=2), "applies to estimator 'score'"),
    (dict(baseline="mean", samples=1), "needs samples >= 2"),
    (dict(estimator="relaxed", temperature=0.0), "temperature must be"),
    (dict(likelihood="gaussian"), "Bernoulli decoder only"),
])
def test_bad_options_are_one_line_errors(kw, needle):
    with pytest.raises(MinivaeError, match=needle) as e:
        DiscreteVAE(5, (4,), 2, **kw)
    assert "\n" not in str(e.value)


@pytest.fixture
def small_shapes(monkeypatch):
    monkeypatch.setattr(datasets, "SHAPES_TRAIN", 300)
    monkeypatch.setattr(datasets, "SHAPES_TEST", 50)
    monkeypatch.setattr(cli, "_figures", lambda *a: None)


@pytest.mark.parametrize("opts", [["--estimator", "relaxed", "--temperature", "0.7"],
                                  ["--baseline", "mean", "--k", "3"]])
def test_cli_trains_a_bernoulli_latent_vae_and_the_run_loads(opts, small_shapes, tmp_path,
                                                             capsys):
    out = tmp_path / "run"
    small = ["--hidden", "16", "--latent-dim", "4", "--batch-size", "100", "--no-progress"]
    assert cli.main(["train", "--latent", "bernoulli", *small, *opts, "--epochs", "1",
                     "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert summary["exact_logpx"] >= summary["exact_elbo"]
    model, _, _, _ = load_run(out)
    assert isinstance(model, DiscreteVAE)
    assert model.config["estimator"] == ("relaxed" if "relaxed" in opts else "score")
    assert cli.main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert cli.main(["eval", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["exact"] is True and res["logpx"] >= res["elbo_exact"]
    assert cli.main(["sample", str(out), "--n", "4", "--out", str(tmp_path / "s.png")]) == 0


@pytest.mark.parametrize("argv,needle", [
    (["--latent", "bernoulli", "--beta", "2"], "--beta applies to Gaussian latents only"),
    (["--latent", "bernoulli", "--estimator", "reparam"], "must be one of score, relaxed"),
    (["--latent", "bernoulli", "--temperature", "1"], "--temperature applies to --estimator"),
    (["--estimator", "relaxed"], "need --latent bernoulli"),
    (["--latent", "bernoulli", "--capacity", "5"], "--capacity applies to Gaussian latents"),
])
def test_cli_bad_combinations(argv, needle, small_shapes, tmp_path, capsys):
    assert cli.main(["train", *argv, "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
