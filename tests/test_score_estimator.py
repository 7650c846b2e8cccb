"""The encoder's gradient by the score function (``VAE(..., estimator="score")``,
``minivae.objectives.score_elbo_loss``), in float64.

Deterministic parts by central differences: the Gaussian score, and the whole estimate as the
exact gradient of its surrogate (the signal and the samples frozen).  The estimator itself
statistically: over many noise draws its mean equals the reparameterised gradient of the same
model at the same parameters, block by block, within standard errors.
"""
import json
import statistics

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minivae.data.datasets as datasets
from minivae import cli
from minivae import distributions as dist
from minivae.errors import MinivaeError
from minivae.estimators import leave_one_out_mean
from minivae.gradcheck import check_gradient, check_vjp
from minivae.model import VAE
from minivae.rundir import load_run

EPS64 = np.finfo(np.float64).eps
seeds = st.integers(0, 2**32 - 1)


def tiny(estimator="score", baseline="none", S=1, beta=1.0, seed=1, D=5, H=(4,), Z=2, **kw):
    return VAE(D, H, Z, "tanh", beta=beta, dtype="float64", seed=seed, samples=S,
               estimator=estimator, baseline=baseline, **kw)


def binary(rng, B, D):
    return (rng.random((B, D)) < 0.5).astype(np.float64)


# ----------------------------------------------------------------------------- deterministic
@given(S=st.integers(1, 3), B=st.integers(1, 4), Z=st.integers(1, 4), seed=seeds)
def test_gaussian_score_is_the_gradient_of_the_log_density(S, B, Z, seed):
    """d log q(z)/d(mu, logvar) at fixed z = (eps / std, (eps^2 - 1) / 2)."""
    rng = np.random.default_rng(seed)
    mu, logvar = rng.standard_normal((B, Z)), rng.standard_normal((B, Z))
    eps = rng.standard_normal((S, B, Z))
    z, std = dist.reparameterize(mu, logvar, eps)
    s_mu, s_lv = dist.gaussian_score(eps, std)
    check_vjp(lambda m, lv: dist.gaussian_log_prob(z, m, lv),
              lambda v: ((v[..., None] * s_mu).sum(0), (v[..., None] * s_lv).sum(0)),
              (mu, logvar), rng)


def test_leave_one_out_mean_along_an_axis(rng):
    f = rng.standard_normal((5, 3))
    c = leave_one_out_mean(f, axis=0)
    for i in range(5):
        np.testing.assert_allclose(c[i], np.delete(f, i, axis=0).mean(0), rtol=0, atol=8 * EPS64)
    with pytest.raises(MinivaeError, match="at least 2"):
        leave_one_out_mean(f[:1], axis=0)


@given(S=st.integers(1, 4), B=st.integers(1, 3), Z=st.integers(1, 3),
       beta=st.sampled_from([1.0, 0.5, 3.0]), baseline=st.sampled_from(["none", "mean"]),
       seed=seeds)
def test_score_gradient_is_the_exact_gradient_of_its_surrogate(S, B, Z, beta, baseline, seed):
    """With z and the centred signal f - c frozen at the current parameters, the estimate is the
    exact gradient of  F = 1/(S B) sum_sb [nll(x_b | z_sb) - (f_sb - c_sb) log q(z_sb | x_b)].
    f and c are recomputed here from the public pieces (log-densities with their log 2 pi)."""
    if baseline == "mean" and S < 2:
        S = 2
    rng = np.random.default_rng(seed)
    model = tiny(baseline=baseline, S=S, beta=beta, Z=Z, seed=seed % 1000)
    x, eps = binary(rng, B, 5), rng.standard_normal((S, B, Z))
    _, grads = model.loss_and_grads(x, eps)
    flat = np.concatenate([grads[k].ravel() for k in model.params])

    mu, logvar = model.encode(x)
    z, _ = dist.reparameterize(mu, logvar, eps)
    nll = model.likelihood.nll(model.decoder_forward(z.reshape(S * B, Z)).reshape(S, B, -1), x)
    f = -nll + beta * (dist.standard_normal_log_prob(z) - dist.gaussian_log_prob(z, mu, logvar))
    c = leave_one_out_mean(f, axis=0) if baseline == "mean" else 0.0
    centred = f - c
    theta0 = model.buffer.data.copy()

    def surrogate(theta):
        model.buffer.data[...] = theta
        m, lv = model.encode(x)
        out = model.decoder_forward(z.reshape(S * B, Z)).reshape(S, B, -1)
        value = np.mean(model.likelihood.nll(out, x) - centred * dist.gaussian_log_prob(z, m, lv))
        model.buffer.data[...] = theta0
        return float(value)

    check_gradient(surrogate, flat, theta0, rng)


@given(S=st.integers(1, 3), B=st.integers(1, 3), seed=seeds)
def test_decoder_gradient_and_loss_equal_reparam_at_the_same_noise(S, B, seed):
    """The decoder's gradient needs no path through z: identical to the reparameterised one."""
    rng = np.random.default_rng(seed)
    sf, rp = tiny(S=S), tiny("reparam", S=S)
    x, eps = binary(rng, B, 5), rng.standard_normal((S, B, 2))
    loss_sf, g_sf = sf.loss_and_grads(x, eps)
    loss_rp, g_rp = rp.loss_and_grads(x, eps)
    assert abs(loss_sf - loss_rp) <= 64 * EPS64 * abs(loss_rp)
    for name in g_sf:
        if name.startswith("dec."):
            scale = np.abs(g_rp[name]) + np.abs(g_rp[name]).max()
            assert np.all(np.abs(g_sf[name] - g_rp[name]) <= 64 * EPS64 * scale), name


# ----------------------------------------------------------------------------- statistical
def mean_difference(baseline, S, beta=1.0, calls=200, copies=1000, seed=0):
    """Per call: the score-function and reparameterised gradients of one batch of `copies`
    copies of the same 3 examples at common noise (each call's gradient is already an average
    over 3 * copies independent draws; calls are iid).  Returns {block: (mean difference,
    its standard error, the reparameterised gradient's mean)}."""
    sf, rp = tiny(baseline=baseline, S=S, beta=beta), tiny("reparam", S=S, beta=beta)
    rng = np.random.default_rng(seed)
    x = np.tile(rng.random((3, 5)), (copies, 1))         # grey: no input column is all 0
    d = np.empty((calls, sf.buffer.size))
    g = np.empty((calls, sf.buffer.size))
    for r in range(calls):
        eps = rng.standard_normal((S, len(x), 2))
        sf.forward_backward(x, eps)
        rp.forward_backward(x, eps)
        d[r], g[r] = sf.buffer.grad - rp.buffer.grad, rp.buffer.grad
    out = {}
    for name, view in sf.grads.items():
        o, n = sf.buffer.offsets[name], view.size
        block = d[:, o:o + n]
        out[name] = (block.mean(0), block.std(0, ddof=1) / np.sqrt(calls), g[:, o:o + n].mean(0))
    return out


@pytest.mark.parametrize("baseline,S,beta", [("none", 1, 1.0), ("mean", 4, 1.0),
                                             ("none", 2, 2.5)])
def test_score_mean_equals_the_reparameterised_gradient_in_every_block(baseline, S, beta):
    """Both are unbiased for the same ELBO gradient, so mean(score - reparam) = 0 for every
    parameter: checked element-wise at a Bonferroni-corrected normal tolerance (family-wise
    false alarm 1e-4 over the encoder's elements).  The decoder's blocks are equal draw by draw
    (common noise), so their difference is round-off.  Power: every encoder block's standard
    error is well below its gradient, so a bias of a fifth of the gradient would show."""
    res = mean_difference(baseline, S, beta)
    enc = [k for k in res if k.startswith("enc.")]
    P = sum(res[k][0].size for k in enc)
    z_tol = statistics.NormalDist().inv_cdf(1 - 1e-4 / (2 * P))
    for name, (m, se, g) in res.items():
        if name.startswith("dec."):
            assert np.all(np.abs(m) <= 1e3 * EPS64 * (np.abs(g) + np.abs(g).max())), name
            continue
        assert np.all(se > 0), name
        assert np.all(np.abs(m) <= z_tol * se), (name, np.abs(m / se).max(), z_tol)
        assert np.linalg.norm(se) < 0.2 / z_tol * np.linalg.norm(g), (name, se, g)


def test_leave_one_out_baseline_lowers_the_variance():
    """The baseline's purpose, measured: per-call spread of the encoder gradient with S = 4."""
    spread = {}
    for baseline in ("none", "mean"):
        res = mean_difference(baseline, 4, calls=40, copies=200)
        spread[baseline] = sum(float(np.sum(se ** 2)) for k, (_, se, _) in res.items()
                               if k.startswith("enc."))
    assert spread["mean"] < 0.25 * spread["none"], spread


# ----------------------------------------------------------------------------- the surface
@pytest.mark.parametrize("kw,needle", [
    (dict(estimator="pathwise"), "estimator must be one of reparam, score"),
    (dict(estimator="score", baseline="loo"), "baseline must be one of none, mean"),
    (dict(estimator="score", baseline="mean", samples=1), "needs samples >= 2"),
    (dict(estimator="reparam", baseline="mean", samples=2), "applies to estimator 'score'"),
    (dict(estimator="score", objective="iwae", samples=2), "objective 'elbo' only"),
])
def test_bad_estimator_options_are_one_line_errors(kw, needle):
    with pytest.raises(MinivaeError, match=needle) as e:
        VAE(5, (4,), 2, **kw)
    assert "\n" not in str(e.value)


def test_cli_trains_with_the_score_function_and_the_run_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(datasets, "SHAPES_TRAIN", 300)
    monkeypatch.setattr(datasets, "SHAPES_TEST", 50)
    monkeypatch.setattr(cli, "_figures", lambda *a: None)
    out = tmp_path / "run"
    assert cli.main(["train", "--hidden", "16", "--latent-dim", "2", "--batch-size", "100",
                     "--no-progress", "--epochs", "1", "--estimator", "score", "--baseline",
                     "mean", "--k", "3", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["model"]["estimator"], config["model"]["baseline"]) == ("score", "mean")
    model, meta, _, _ = load_run(out)
    assert (model.estimator, model.baseline, model.samples) == ("score", "mean", 3)
    assert "score-function gradient, leave-one-out baseline" in repr(model)
    assert cli.main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert cli.main(["train", "--estimator", "score", "--baseline", "mean", "--out",
                     str(tmp_path / "bad"), "--no-progress"]) == 2
    assert "needs samples >= 2" in capsys.readouterr().err
