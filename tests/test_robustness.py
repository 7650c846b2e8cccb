"""Numerical extremes, disk trouble and real signals to a real `python -m minivae train`.

Numerical extremes.  Logits of +-1e4, log-variances of +-100, all-zero and all-one images and a
batch of one give finite losses and gradients, and the gradients have their exact values:
with the decoder's last weights zeroed, every logit is its bias b, so d loss / d b is
mean_b (sigmoid(b) - x) exactly; with the encoder head's log-variance weights zeroed, every
log-variance is its bias c, and d loss / d c is beta (exp(c) - 1) / 2.

The one value that cannot be finite is float32 exp(logvar) for logvar above log(float32 max) =
88.72: KL = (exp(logvar) + ...) / 2 is then genuinely infinite.  The guarantee there is that the
training loop never continues silently: its divergence guard stops the run with a message naming
the log-variance (or, should the model clamp logvar, the loss is finite).

Disk trouble is simulated by making os.replace / os.fsync / the write / mkstemp raise the OSError
a full or read-only disk raises (tests run as root here, where chmod does not stop writes; the
chmod variant runs only for an ordinary user).
"""
import errno
import math
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minivae import cli, distributions as dist, kernels
from minivae.data import Dataset, make_shapes
from minivae.errors import MinivaeError
from minivae.model import VAE
from minivae.rundir import CHECKPOINT, load_run, read_metrics
from minivae.train import Diverged, TrainConfig, Trainer

F32_EXP_MAX = math.log(np.finfo(np.float32).max)            # 88.72...

EXTREME_LOGITS = [1e4, -1e4, 1e3, -1e3, 100.0, -100.0, 30.0, -30.0, 0.0]
extreme_logit = st.sampled_from(EXTREME_LOGITS) | st.floats(-1e4, 1e4)


# ---------------------------------------------------------------------------- distributions
@given(l=extreme_logit, x=st.sampled_from([0.0, 1.0]) | st.floats(0, 1),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_bernoulli_at_extreme_logits(l, x, dtype):
    logits, xs = np.array([[l, -l]], dtype), np.array([[x, 1 - x]], dtype)
    nll = dist.bernoulli_nll(logits, xs)
    g = dist.bernoulli_nll_grad(logits, xs)
    knll, kg = kernels.bernoulli_nll_grad(logits[None], xs, 1.0)     # the training kernel
    for a in (nll, g, knll, kg):
        assert a.dtype == dtype and np.isfinite(a).all()
    # g = sigmoid(l) - x is a difference of two numbers in [0, 1], each within an ulp or two of
    # exact in either implementation: they agree to a few eps absolute (not relative: g cancels)
    assert (np.abs(g) <= 1).all()
    np.testing.assert_allclose(kg[0], g, rtol=0, atol=4 * np.finfo(dtype).eps)
    # exact: -log p = softplus(l) - x l >= 0 for x in {0, 1}; = max(l,0) - x l up to log 2
    if x in (0.0, 1.0):
        assert (nll >= 0).all()
    expect = max(l, 0) - x * l + max(-l, 0) - (1 - x) * (-l)
    assert abs(float(nll[0]) - expect) <= 2 * math.log(2) + 1e-6 * (abs(l) + 1)


@given(c=st.floats(-100, 100), mu=st.floats(-1e3, 1e3), e=st.floats(-5, 5))
def test_gaussian_terms_at_extreme_logvar_float64(c, mu, e):
    m, lv, eps = (np.full((1, 3), v, np.float64) for v in (mu, c, e))
    z, std, kl = kernels.reparam_kl(m, lv, eps[None])
    dmu, dlv = kernels.reparam_kl_backward(np.ones_like(z), eps[None], std, m, lv, 1.0)
    for a in (z, std, kl, dmu, dlv, dist.kl_standard_normal(m, lv),
              *dist.kl_standard_normal_backward(m, lv)):
        assert np.isfinite(a).all()
    assert np.allclose(kl, 1.5 * (mu * mu + math.exp(c) - 1 - c), rtol=1e-12)


@given(c=st.floats(-100, 88), e=st.floats(-5, 5))
def test_gaussian_terms_float32_below_overflow(c, e):
    m, lv, eps = (np.full((1, 1), v, np.float32) for v in (0.5, c, e))
    z, std, kl = kernels.reparam_kl(m, lv, eps[None])
    dmu, dlv = kernels.reparam_kl_backward(np.ones_like(z), eps[None], std, m, lv, 1.0)
    for a in (z, std, kl, dmu, dlv):
        assert a.dtype == np.float32 and np.isfinite(a).all()


def test_float32_exp_overflow_is_where_we_say():
    """The documented limit: above log(float32 max) the KL is genuinely infinite in float32."""
    lv = np.array([[F32_EXP_MAX - 0.01, F32_EXP_MAX + 0.01]], np.float32)
    kl_each = [float(dist.kl_standard_normal(np.zeros((1, 1), np.float32), lv[:, i:i + 1])[0])
               for i in range(2)]
    assert math.isfinite(kl_each[0]) and math.isinf(kl_each[1])


# ---------------------------------------------------------------------------- the whole model
def _pinned_model(dtype, logit, logvar, objective="elbo"):
    """1024-16-2 VAE whose logits all equal `logit` and log-variances all equal `logvar`."""
    m = VAE(1024, (16,), 2, dtype=dtype, seed=0, objective=objective,
            samples=2 if objective == "iwae" else 1)
    p = m.params
    dec_W = [k for k in p if k.startswith("dec.") and k.endswith(".W")][-1]
    dec_b = dec_W[:-1] + "b"
    enc_W = [k for k in p if k.startswith("enc.") and k.endswith(".W")][-1]
    enc_b = enc_W[:-1] + "b"
    p[dec_W][...] = 0
    p[dec_b][...] = logit
    p[enc_W][:, 2:] = 0
    p[enc_b][2:] = logvar
    return m, dec_b, enc_b


IMAGES = {"zeros": lambda B, r: np.zeros((B, 1024)), "ones": lambda B, r: np.ones((B, 1024)),
          "binary": lambda B, r: (r.random((B, 1024)) < 0.3) * 1.0,
          "grey": lambda B, r: r.random((B, 1024))}


@given(logit=st.sampled_from([1e4, -1e4, 0.0]) | st.floats(-1e4, 1e4),
       logvar=st.sampled_from([100.0, -100.0, 0.0]) | st.floats(-100, 100),
       kind=st.sampled_from(sorted(IMAGES)), B=st.integers(1, 3),
       dtype=st.sampled_from(["float32", "float64"]), objective=st.sampled_from(["elbo", "iwae"]),
       seed=st.integers(0, 2 ** 32 - 1))
@settings(max_examples=60)
def test_loss_and_grads_finite_and_exact_at_extremes(logit, logvar, kind, B, dtype, objective,
                                                     seed):
    if dtype == "float32" and logvar > F32_EXP_MAX - 1:
        logvar = F32_EXP_MAX - 1 - (logvar - F32_EXP_MAX) % 10   # see the float32 test below
    rng = np.random.default_rng(seed)
    m, dec_b, enc_b = _pinned_model(dtype, logit, logvar, objective)
    x = IMAGES[kind](B, rng).astype(dtype)
    loss, grads = m.loss_and_grads(x, rng=np.random.default_rng(seed))
    assert math.isfinite(loss)
    assert all(np.isfinite(g).all() and g.dtype == np.dtype(dtype) for g in grads.values())
    if objective == "elbo":
        f = np.float64
        sig = dist.sigmoid(np.array(logit, f))
        expect = (sig - x.astype(f)).mean(axis=0)
        assert np.allclose(grads[dec_b], expect, rtol=1e-5, atol=1e-6)
        # the log-variance the model uses (equal to the bias, unless the model clamps it, in
        # which case the gradient is zero where the clamp is active)
        raw = m.params[enc_b][2:].astype(f)
        used = m.encode(x)[1][0].astype(f)
        kl_grad = np.where(used == raw, np.expm1(used) / 2, 0.0)
        assert np.allclose(grads[enc_b][2:], kl_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_float32_logvar_100_never_trains_on_silently(tmp_path, objective):
    """logvar = +100 in float32: exp overflows, so the loss is infinite (unless the model clamps
    the log-variance); the trainer must stop, naming the log-variance as a likely cause."""
    m, _, _ = _pinned_model("float32", 0.0, 100.0, objective)
    x = np.ones((2, 1024), np.float32)
    loss, grads = m.loss_and_grads(x, rng=np.random.default_rng(0))
    finite = math.isfinite(loss) and all(np.isfinite(g).all() for g in grads.values())
    data = Dataset("ones", np.ones((8, 1024), np.float32), None, None, (32, 32), "none")
    tr = Trainer(m, data, TrainConfig(epochs=1, batch_size=4), str(tmp_path), log=lambda s: None)
    if finite:                                        # a clamped log-variance: trains on
        tr.fit()
        return
    with pytest.raises(Diverged) as e:
        tr.fit()
    assert "log-variance" in str(e.value) and "step 1" in str(e.value)


# ---------------------------------------------------------------------------- disk trouble
def _small_trainer(run_dir, epochs=1):
    imgs, _ = make_shapes(80, seed=0)
    data = Dataset("shapes", imgs.reshape(80, -1), None, None, (32, 32), "dynamic")
    return Trainer(VAE(1024, (8,), 2), data, TrainConfig(epochs=epochs, batch_size=40),
                   str(run_dir), log=lambda s: None)


def _oserror(code):
    def fail(*a, **k):
        raise OSError(code, os.strerror(code))
    return fail


class _FullDisk:
    """A file whose writes fail with ENOSPC once `room` bytes have been written."""

    def __init__(self, f, room):
        self._f, self._room = f, room

    def write(self, b):
        if len(b) > self._room:
            self._f.write(bytes(b[:self._room]))
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(b)
        return self._f.write(b)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


FAULTS = ["replace-ENOSPC", "replace-EROFS", "fsync-EIO", "write-ENOSPC-at-0",
          "write-ENOSPC-midway", "mkstemp-EROFS", "mkstemp-EACCES", "write-KeyboardInterrupt"]


@pytest.mark.parametrize("fault", FAULTS)
def test_a_failed_checkpoint_write_keeps_the_old_one(tmp_path, monkeypatch, fault):
    tr = _small_trainer(tmp_path)
    tr.fit()
    path = tmp_path / CHECKPOINT
    good = path.read_bytes()
    tr.model.buffer.data[:] += np.float32(1)                 # something new to save
    kind, _, code = fault.partition("-")
    if kind == "replace":
        monkeypatch.setattr(os, "replace", _oserror(getattr(errno, code)))
    elif kind == "fsync":
        monkeypatch.setattr(os, "fsync", _oserror(errno.EIO))
    elif kind == "mkstemp":
        monkeypatch.setattr(tempfile, "mkstemp", _oserror(getattr(errno, code)))
    elif fault == "write-KeyboardInterrupt":
        real = os.fdopen

        class Interrupt(_FullDisk):
            def write(self, b):
                raise KeyboardInterrupt
        monkeypatch.setattr(os, "fdopen", lambda fd, mode: Interrupt(real(fd, mode), 0))
    else:
        real = os.fdopen
        room = 0 if fault.endswith("at-0") else len(good) // 2
        monkeypatch.setattr(os, "fdopen", lambda fd, mode: _FullDisk(real(fd, mode), room))
    if fault == "write-KeyboardInterrupt":
        with pytest.raises(KeyboardInterrupt):
            tr.save()
    else:
        with pytest.raises(MinivaeError) as e:
            tr.save()
        msg = str(e.value)
        assert "\n" not in msg and str(path) in msg and "earlier files were left" in msg
        want = {"ENOSPC": "No space left", "EROFS": "Read-only", "EIO": "Input/output",
                "EACCES": "Permission denied"}
        assert any(w in msg for k, w in want.items() if k in fault), msg
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.npz", "metrics.jsonl"]   # no temp file
    load_run(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a chmod 0o500 folder anyway")
def test_read_only_folder(tmp_path):
    tr = _small_trainer(tmp_path)
    tr.fit()
    good = (tmp_path / CHECKPOINT).read_bytes()
    os.chmod(tmp_path, 0o500)
    try:
        with pytest.raises(MinivaeError, match="cannot write"):
            tr.save()
    finally:
        os.chmod(tmp_path, 0o700)
    assert (tmp_path / CHECKPOINT).read_bytes() == good


def test_disk_full_while_appending_metrics(tmp_path, monkeypatch):
    tr = _small_trainer(tmp_path, epochs=2)
    tr.cfg.epochs = 1
    tr.fit()
    good = (tmp_path / CHECKPOINT).read_bytes()
    import builtins
    real_open = builtins.open

    def full_open(p, mode="r", *a, **k):
        if str(p).endswith("metrics.jsonl") and "a" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(p))
        return real_open(p, mode, *a, **k)
    monkeypatch.setattr(builtins, "open", full_open)
    tr.cfg.epochs = 2
    with pytest.raises(MinivaeError, match="metrics.jsonl: No space left"):
        tr.fit()
    monkeypatch.undo()
    assert (tmp_path / CHECKPOINT).read_bytes() == good
    assert len(read_metrics(tmp_path)) == 2


def test_disk_full_during_a_cli_run(tmp_path, monkeypatch, capsys):
    """The third atomic write (config.json, the epoch-0 checkpoint, then epoch 1) hits a full
    disk: exit 2, one line, and the epoch-0 checkpoint still loads."""
    import minivae.data.datasets as datasets
    monkeypatch.setattr(datasets, "SHAPES_TRAIN", 200)
    monkeypatch.setattr(datasets, "SHAPES_TEST", 20)
    real, calls = os.replace, [0]

    def replace(a, b):
        calls[0] += 1
        if calls[0] >= 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(a, b)
    monkeypatch.setattr(os, "replace", replace)
    out = tmp_path / "run"
    rc = cli.main(["train", "--hidden", "8", "--latent-dim", "2", "--epochs", "2",
                   "--batch-size", "100", "--no-progress", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("minivae: error: cannot write")
    monkeypatch.undo()
    assert load_run(out)[1]["epoch"] == 0
    assert not [n for n in os.listdir(out) if n.startswith(".tmp")]


# ---------------------------------------------------------------------------- real signals
def _start(run_dir, *extra):
    argv = [sys.executable, "-m", "minivae", "train", "--hidden", "16", "--latent-dim", "2",
            "--epochs", "1000", "--no-progress", "--out", str(run_dir), *extra]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, timeout=120):
    t0 = time.monotonic()
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise AssertionError(f"exited early: {proc.communicate()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("no checkpoint appeared")
        time.sleep(0.05)


def _finish(proc, timeout=120):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert "Traceback" not in err, err
    return proc.returncode, out, err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_prints_resume_and_exits_130(tmp_path, signum):
    run_dir = tmp_path / "run"
    proc = _start(run_dir, "--batch-size", "256")
    _wait_for(run_dir / CHECKPOINT, proc)
    time.sleep(0.3)                                         # well inside the training steps
    proc.send_signal(signum)
    rc, out, err = _finish(proc)
    assert rc == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"minivae: stopped by {signal.Signals(signum).name}")
    assert last.endswith(f"resume with: minivae train --resume {run_dir}")
    _, meta, _, _ = load_run(run_dir)
    assert meta["global_step"] >= 1
    assert not [n for n in os.listdir(run_dir) if n.startswith(".tmp")]
    if signum == signal.SIGINT:       # the real entry point takes it up (--epochs: no more
        p = subprocess.run(            # steps, to keep this test short; test_train.py resumes)
            [sys.executable, "-m", "minivae", "train", "--resume", str(run_dir),
             "--epochs", str(meta["epoch"]), "--no-progress"],
            capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        assert f"resuming {run_dir} at epoch {meta['epoch'] + 1} step {meta['step'] + 1}" \
            in p.stderr


def test_second_sigint_exits_at_once_and_the_checkpoint_survives(tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(run_dir, "--batch-size", "20000")         # one slow step per epoch
    _wait_for(run_dir / CHECKPOINT, proc)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.02)
    try:
        proc.send_signal(signal.SIGINT)
    except ProcessLookupError:                              # already finished the first one
        pass
    rc, out, err = _finish(proc)
    assert rc == 130, err
    assert "minivae: interrupted" in err or "resume with" in err
    load_run(run_dir)
    assert not [n for n in os.listdir(run_dir) if n.startswith(".tmp")]
