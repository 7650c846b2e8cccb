"""Capacity control and the KL warm-up: the capacity loss against central differences (away from
its kink) and at the kink (where central differences see the subgradient we take), the ramps, and
exact resume of scheduled runs (the schedules read the checkpointed global step).

Gradient checks in float64, as tests/test_model.py: <u, grad> against central differences of the
loss over the whole flat parameter vector with the noise frozen.
"""
import math
import os
import signal

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from minivae import cli, objectives, schedules
from minivae.data import Dataset, make_shapes
from minivae.errors import MinivaeError
from minivae.gradcheck import check_gradient
from minivae.model import VAE
from minivae.train import Interrupted, TrainConfig, Trainer
from minivae.rundir import load_run, read_metrics

seeds = st.integers(0, 2**32 - 1)
EPS64 = np.finfo(np.float64).eps


def capacity_value(model, x, eps, gamma, C):
    """The capacity loss from the model's public per-example terms (an independent path)."""
    t = model.elbo(x, eps=eps)
    return float(np.mean(t.distortion) + gamma * abs(np.mean(t.kl) - C))


def small_model(rng, D, hidden, Z, S, lik, seed):
    model = VAE(D, tuple(hidden), Z, activation="tanh", likelihood=lik, dtype="float64",
                seed=seed, samples=S)
    model.buffer.data[...] += 0.3 * rng.standard_normal(model.buffer.size)
    x = (rng.random((3, D)) < 0.5).astype(np.float64) if lik == "bernoulli" else \
        rng.standard_normal((3, D))
    return model, x


def grads_of(model, x, eps, gamma, C):
    terms = objectives.capacity_loss(model, x, eps, gamma, C)
    return terms, model.buffer.grad.copy()


# ----------------------------------------------------------------------------- the objective
@pytest.mark.parametrize("lik", ["bernoulli", "gaussian"])
@given(D=st.integers(1, 5), hidden=st.lists(st.integers(1, 4), min_size=0, max_size=2),
       Z=st.integers(1, 3), S=st.integers(1, 3), gamma=st.floats(0.1, 1000.0),
       offset=st.floats(-3.0, 3.0), seed=seeds)
def test_capacity_loss_matches_central_differences(lik, D, hidden, Z, S, gamma, offset, seed):
    """C on either side of the batch's KL (offset < 0: KL above C, the penalty pulls it down;
    > 0: below C, it pushes it up).  h u moves KLbar by ~1e-6 * |grad KL|, so |KLbar - C| >
    1e-3 keeps the kink out of the difference."""
    rng = np.random.default_rng(seed)
    model, x = small_model(rng, D, hidden, Z, S, lik, seed)
    eps = rng.standard_normal((S, 3, Z))
    kl = float(np.mean(model.elbo(x, eps=eps).kl))
    C = max(kl + offset, 0.0)
    assume(abs(kl - C) > 1e-3)
    theta0 = model.buffer.data.copy()
    terms, g = grads_of(model, x, eps, gamma, C)
    value = capacity_value(model, x, eps, gamma, C)
    assert abs(float(terms.loss) - value) <= 1e-12 * (1 + abs(value))
    assert abs(float(terms.kl) - kl) <= 1e-12 * (1 + kl)

    def loss_at(theta):
        model.buffer.data[...] = theta
        return capacity_value(model, x, eps, gamma, C)

    try:
        check_gradient(loss_at, g, theta0, rng)
    finally:
        model.buffer.data[...] = theta0


@given(seed=seeds, gamma=st.floats(0.1, 100.0))
def test_capacity_loss_at_the_kink_takes_the_zero_subgradient(seed, gamma):
    """C = KLbar exactly: the gradient is the distortion's alone (the ELBO's with beta 0).  Along
    any u, L(theta + h u) = L0 + h a + gamma h |b| + O(h^2) with a = <u, grad rec>,
    b = <u, grad KLbar>: the central difference sees a (our gradient: the |b| parts cancel), the
    second difference (L+ + L- - 2 L0) / (2h) sees gamma |b| (the kink), up to O(h)."""
    rng = np.random.default_rng(seed)
    model, x = small_model(rng, 4, (3,), 2, 1, "bernoulli", seed)
    eps = rng.standard_normal((1, 3, 2))
    kl = objectives._forward(model, x, eps).kl
    C = float(np.mean(kl))                       # the very value capacity_loss computes
    theta0 = model.buffer.data.copy()
    _, g = grads_of(model, x, eps, gamma, C)
    objectives.elbo_loss(model, x, eps, 0.0)
    g_rec = model.buffer.grad.copy()
    objectives.elbo_loss(model, x, eps, 1.0)
    g_kl = model.buffer.grad.copy() - g_rec
    assert np.allclose(g, g_rec, rtol=0, atol=64 * EPS64 * (1 + np.abs(g_rec).max()))
    assert np.abs(g_kl).max() > 1e-3             # the KL part exists and was dropped

    u = rng.standard_normal(theta0.size)
    h = 1e-4

    def terms_at(theta):                      # (rec, KLbar) along the line, float64
        model.buffer.data[...] = theta
        t = model.elbo(x, eps=eps)
        return float(np.mean(t.distortion)), float(np.mean(t.kl))

    try:
        (rp, kp), (rm, km), (r0, k0) = (terms_at(theta0 + h * u), terms_at(theta0 - h * u),
                                        terms_at(theta0))
    finally:
        model.buffer.data[...] = theta0
    lp, lm, l0 = rp + gamma * abs(kp - C), rm + gamma * abs(km - C), r0 + gamma * abs(k0 - C)
    a, b = float(u @ g_rec), float(u @ g_kl)
    # KLbar(theta +- h u) - C = +-h b + h^2 c / 2 + O(h^3): the kink leaves an O(h) remainder
    # gamma sign(b) h c / 2 in the central difference and h c_rec / 2 in the second one
    c, c_rec = (kp + km - 2 * k0) / h**2, (rp + rm - 2 * r0) / h**2
    assume(abs(b) * h > 10 * abs(c) * h * h)      # the kink is crossed between -h u and h u
    scale = float(np.linalg.norm(u) * (np.linalg.norm(g_rec) + gamma * np.linalg.norm(g_kl)))
    tol = 1e-6 * scale + 64 * EPS64 * (abs(lp) + abs(lm) + abs(l0)) / h
    central = (lp - lm) / (2 * h)
    assert abs(central - (a + gamma * np.sign(b) * h * c / 2)) <= tol
    second = (lp + lm - 2 * l0) / (2 * h)
    assert abs(second - (gamma * abs(b) + h * c_rec / 2)) <= tol


def test_capacity_loss_keeps_float32(rng):
    model = VAE(6, (4,), 2, seed=1)
    x = (rng.random((5, 6)) < 0.5).astype(np.float32)
    eps = rng.standard_normal((1, 5, 2)).astype(np.float32)
    t = objectives.capacity_loss(model, x, eps, 10.0, 0.5)
    assert t.loss.dtype == np.float32 and model.buffer.grad.dtype == np.float32
    assert np.isfinite(model.buffer.grad).all()


def test_forward_backward_routes_the_scheduled_arguments(rng):
    model = VAE(6, (4,), 2, seed=1, beta=2.0, dtype="float64")
    x = (rng.random((5, 6)) < 0.5).astype(np.float64)
    eps = rng.standard_normal((1, 5, 2))
    t = model.forward_backward(x, eps, beta=0.5)
    assert math.isclose(float(t.loss), float(t.distortion + 0.5 * t.kl), rel_tol=1e-14)
    t = model.forward_backward(x, eps, capacity=1.0, gamma=3.0)
    assert math.isclose(float(t.loss), float(t.distortion + 3.0 * abs(t.kl - 1.0)), rel_tol=1e-14)
    t = model.forward_backward(x, eps)
    assert math.isclose(float(t.loss), float(t.distortion + 2.0 * t.kl), rel_tol=1e-14)


# ----------------------------------------------------------------------------- the ramps
@given(steps=st.integers(0, 50), end=st.floats(0, 100), step=st.integers(0, 200))
def test_linear_ramp(steps, end, step):
    v = schedules.linear_ramp(step, steps, end)
    if steps == 0 or step >= steps:
        assert v == end
    else:
        assert v == end * step / steps and 0 <= v <= end


def test_objective_args_follow_the_config():
    cfg = TrainConfig(warmup_steps=4)
    assert [schedules.objective_args(cfg, 2.0, t)["beta"] for t in range(6)] == \
        [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    cfg = TrainConfig(capacity=10.0, capacity_steps=5, gamma=7.0)
    assert [schedules.objective_args(cfg, 1.0, t) for t in (0, 1, 5, 9)] == [
        dict(capacity=0.0, gamma=7.0), dict(capacity=2.0, gamma=7.0),
        dict(capacity=10.0, gamma=7.0), dict(capacity=10.0, gamma=7.0)]
    assert schedules.objective_args(TrainConfig(), 3.0, 10) == {}


@pytest.mark.parametrize("kw,msg", [
    (dict(warmup_steps=-1), "warmup-steps"), (dict(warmup_steps=1.5), "warmup-steps"),
    (dict(capacity=-1.0), "capacity"), (dict(capacity=float("nan")), "capacity"),
    (dict(capacity=1.0, gamma=0.0), "gamma"), (dict(capacity_steps=5), "needs --capacity"),
    (dict(capacity=1.0, warmup_steps=3), "drop one"), (dict(capacity=1.0, capacity_steps=-2),
                                                        "capacity-steps")])
def test_bad_schedule_fields(kw, msg):
    with pytest.raises(MinivaeError, match=msg):
        TrainConfig(**kw).check()


# ----------------------------------------------------------------------------- in the trainer
_images = make_shapes(300, seed=3)[0].reshape(300, -1)


def data():
    return Dataset("shapes", _images[:240], None, _images[240:], (32, 32), "none")


def trainer(run_dir, cfg, **model_kw):
    os.makedirs(run_dir, exist_ok=True)
    return Trainer(VAE(1024, (8,), 2, seed=cfg.seed, **model_kw), data(), cfg, str(run_dir),
                   log=lambda m: None)


def record_args(tr, stop_at=None):
    """Record forward_backward's keyword arguments per step; SIGINT inside step `stop_at`."""
    inner, seen = tr.model.forward_backward, []

    def hooked(x, eps, **kw):
        seen.append(kw)
        if len(seen) == stop_at:
            os.kill(os.getpid(), signal.SIGINT)
        return inner(x, eps, **kw)
    tr.model.forward_backward = hooked
    return seen


def test_warmup_beta_reaches_the_model_step_by_step(tmp_path):
    tr = trainer(tmp_path, TrainConfig(epochs=2, batch_size=64, warmup_steps=6), beta=3.0)
    seen = record_args(tr)
    tr.fit()
    assert [kw["beta"] for kw in seen] == [3.0 * min(1, t / 6) for t in range(8)]
    assert [r.get("beta") for r in read_metrics(tmp_path)] == [0.0, 2.0, 3.0]


@pytest.mark.parametrize("sched", [dict(warmup_steps=7), dict(capacity=4.0, capacity_steps=9,
                                                              gamma=50.0)])
@settings(max_examples=4, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(stop=st.integers(1, 11))
def test_scheduled_run_resumes_bit_for_bit(tmp_path_factory, sched, stop):
    """3 epochs of 4 steps; SIGINT inside global step `stop`, then a resume from the checkpoint
    alone continues the ramp from the saved step: the same parameters, optimiser state, metrics
    and the same scheduled values at every step as an uninterrupted run."""
    cfg = dict(epochs=3, batch_size=64, seed=5, **sched)
    ref = trainer(tmp_path_factory.mktemp("ref"), TrainConfig(**cfg))
    ref_args = record_args(ref)
    ref.fit()
    d = tmp_path_factory.mktemp("run")
    tr = trainer(d, TrainConfig(**cfg))
    first = record_args(tr, stop_at=stop)
    with pytest.raises(Interrupted):
        tr.fit()
    model, meta, opt, extra = load_run(d)
    tr = Trainer(model, data(), TrainConfig(**meta["train"]), str(d), log=lambda m: None)
    tr.restore(meta, opt, extra)
    rest = record_args(tr)
    tr.fit()
    assert first + rest == ref_args
    assert np.array_equal(tr.model.buffer.data, ref.model.buffer.data)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa
    assert strip(read_metrics(d)) == strip(read_metrics(ref.run_dir))


def test_schedules_refused_with_iwae_and_capacity_with_beta(tmp_path):
    with pytest.raises(MinivaeError, match="IWAE"):
        trainer(tmp_path, TrainConfig(warmup_steps=3), objective="iwae", samples=2)
    with pytest.raises(MinivaeError, match="drop --beta"):
        trainer(tmp_path, TrainConfig(capacity=2.0), beta=4.0)
    with pytest.raises(MinivaeError, match="estimator score"):
        trainer(tmp_path, TrainConfig(capacity=2.0), estimator="score")


def test_cli_capacity_run_and_its_errors(tmp_path, capsys, monkeypatch):
    import minivae.data.datasets as datasets
    monkeypatch.setattr(datasets, "SHAPES_TRAIN", 300)     # small data: the options are the point
    monkeypatch.setattr(datasets, "SHAPES_TEST", 50)
    out = tmp_path / "cap"
    assert cli.main(["train", "--capacity", "3", "--capacity-steps", "2", "--gamma", "100",
                     "--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--out", str(out),
                     "--no-progress"]) == 0
    meta = load_run(out)[1]
    assert (meta["train"]["capacity"], meta["train"]["capacity_steps"],
            meta["train"]["gamma"]) == (3.0, 2, 100.0)
    assert read_metrics(out)[-1]["capacity"] == 3.0
    # resume keeps the schedule (and refuses to change it)
    assert cli.main(["train", "--resume", str(out), "--gamma", "5"]) == 2
    assert "drop --gamma" in capsys.readouterr().err
    for argv, msg in ((["--capacity", "-1"], "must be >= 0"),
                      (["--capacity-steps", "5"], "needs --capacity"),
                      (["--capacity", "2", "--beta", "4"], "drop --beta"),
                      (["--warmup-steps", "3", "--objective", "iwae", "--k", "2"], "IWAE")):
        with pytest.raises(SystemExit) if "must be" in msg else _no_raise():
            code = cli.main(["train", *argv, "--out", str(tmp_path / "bad")])
            assert code == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err
        assert not (tmp_path / "bad").exists()


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
