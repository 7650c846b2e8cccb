"""The GPU path equals the CPU path: every kernel, the model's steps, the trainer, checkpoints.

Each test takes the ``gpu`` fixture (conftest.py): the strict CuPy stand-in ``fakecupy`` on every
machine (it runs the kernels' own CUDA C source on the host and refuses host/device mixing), and
the real CuPy where an NVIDIA GPU exists (``pytest -m gpu`` selects those).

Tolerances.  float32 has unit round-off u = 2^-24 ~ 6e-8.  An elementwise kernel evaluates the
same formula as the reference with different libm/CUDA math (each a few ulp), so kernels agree to
~8 ulp relative (rtol 1e-6) plus an absolute floor for values that cancel (a sum of D = 784
terms of size ~1: atol ~ D u ~ 5e-5).  A GEMM sums up to 784 products in an order that differs
between OpenBLAS and cuBLAS: relative error ~ sqrt(784) u ~ 2e-6 per layer, so losses through a
few layers agree to 1e-5 relative and gradients to 1e-4 of their largest entry.  float64 tests
use the same formulas with u = 2^-53.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from minivae import kernels
from minivae.errors import MinivaeError
from minivae.kernels import reference
from minivae.evaluation import importance_log_likelihood
from minivae.model import VAE
from minivae.optim import Adam
from minivae.philox import Philox, normal_reference, philox4x32, uniform_reference

ACTS = list(reference.ACTIVATIONS)
SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -3.0, 2.5, 80.0, -80.0])


def host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def close(a, b, rtol, atol):
    np.testing.assert_allclose(host(a), host(b), rtol=rtol, atol=atol, equal_nan=True)


def tol(dt):
    return (1e-6, 5e-5) if np.dtype(dt) == np.float32 else (1e-13, 1e-12)


# ----------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("act", ACTS)
def test_activations_match_reference_with_nan_and_inf(gpu, act, dt):
    rng = np.random.default_rng(1)
    h = np.concatenate([SPECIAL, rng.standard_normal(22) * 4]).astype(dt).reshape(4, 8)
    b = rng.standard_normal(8).astype(dt)
    y_ref = reference.bias_act_forward(act, h, b)
    y = kernels.bias_act_forward(act, gpu.asarray(h), gpu.asarray(b))
    assert type(y).__module__.startswith("cupy")
    close(y, y_ref, *tol(dt))
    close(kernels.act_forward(act, gpu.asarray(h)), reference.act_forward(act, h), *tol(dt))
    dy = rng.standard_normal(h.shape).astype(dt)
    db = gpu.empty(8, dt)
    dx = kernels.act_backward(act, gpu.asarray(dy), gpu.asarray(y_ref), db=db)
    dx_ref = reference.act_backward(act, dy, y_ref)
    close(dx, dx_ref, *tol(dt))
    close(db, dx_ref.sum(axis=0), *tol(dt))


def test_nan_weight_is_not_a_dead_relu_unit(gpu):
    """The divergence guard relies on NaN reaching the loss: ReLU must not map NaN to 0."""
    y = kernels.bias_act_forward("relu", gpu.asarray(np.array([[np.nan, -1.0]], np.float32)),
                                 gpu.zeros(2, np.float32))
    assert np.isnan(host(y)[0, 0]) and host(y)[0, 1] == 0


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_bernoulli_kernels_return_both_outputs(gpu, dt):
    rng = np.random.default_rng(2)
    logits = (rng.standard_normal((2, 6, 50)) * 6).astype(dt)
    logits[0, 0, :10] = SPECIAL
    x = (rng.random((6, 50)) < 0.5).astype(dt)
    nll_r, g_r = reference.bernoulli_nll_grad(logits, x, 0.25)
    db = gpu.empty(50, dt)
    res = kernels.bernoulli_nll_grad(gpu.asarray(logits), gpu.asarray(x), 0.25, db=db)
    assert isinstance(res, tuple) and len(res) == 2
    nll, g = res
    assert nll.shape == (2, 6) and g.shape == logits.shape
    close(nll, nll_r, *tol(dt))
    close(g, g_r, *tol(dt))
    close(db, g_r.reshape(-1, 50).sum(axis=0), *tol(dt))
    close(kernels.bernoulli_nll(gpu.asarray(logits), gpu.asarray(x)), nll_r, *tol(dt))
    # the trainer's form: outputs written into the caller's buffers, the gradient over logits
    L = gpu.asarray(logits)
    out = (gpu.empty((2, 6), dt), L)
    nll2, g2 = kernels.bernoulli_nll_grad(L, gpu.asarray(x), 0.25, out=out)
    assert g2 is L
    close(nll2, nll_r, *tol(dt))
    close(L, g_r, *tol(dt))
    # the decoder's last bias added inside the kernels: logits = h + bias
    bias = (rng.standard_normal(50) * 2).astype(dt)
    h = logits - bias
    nll_rb, g_rb = reference.bernoulli_nll_grad(h, x, 0.25, bias=bias)
    db = gpu.empty(50, dt)
    nll3, g3 = kernels.bernoulli_nll_grad(gpu.asarray(h), gpu.asarray(x), 0.25, db=db,
                                          bias=gpu.asarray(bias))
    close(nll3, nll_rb, *tol(dt))
    close(g3, g_rb, *tol(dt))
    close(db, g_rb.reshape(-1, 50).sum(axis=0), *tol(dt))
    close(kernels.bernoulli_nll(gpu.asarray(h), gpu.asarray(x), bias=gpu.asarray(bias)), nll_rb,
          *tol(dt))


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("sigma_shape", [(), (30,)])
def test_gaussian_kernel_matches_reference(gpu, dt, sigma_shape):
    rng = np.random.default_rng(3)
    mean = rng.standard_normal((3, 5, 30)).astype(dt)
    x = rng.random((5, 30)).astype(dt)
    ls = (rng.standard_normal(sigma_shape) * 0.3).astype(dt)
    ref = reference.gaussian_nll_grad(mean, x, ls, 0.5)
    got = kernels.gaussian_nll_grad(gpu.asarray(mean), gpu.asarray(x), gpu.asarray(ls), 0.5)
    assert len(got) == 3
    for a, b in zip(got, ref):
        close(a, b, *tol(dt))


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_reparam_kl_and_backward_match_reference(gpu, dt):
    rng = np.random.default_rng(4)
    mu, lv = (rng.standard_normal((7, 5)).astype(dt) for _ in range(2))
    eps, dz = (rng.standard_normal((3, 7, 5)).astype(dt) for _ in range(2))
    ref = reference.reparam_kl(mu, lv, eps)
    got = kernels.reparam_kl(*(gpu.asarray(a) for a in (mu, lv, eps)))
    for a, b in zip(got, ref):
        close(a, b, *tol(dt))
    ref_b = reference.reparam_kl_backward(dz, eps, ref[1], mu, lv, 0.7)
    got_b = kernels.reparam_kl_backward(*(gpu.asarray(a) for a in (dz, eps, ref[1], mu, lv)), 0.7)
    for a, b in zip(got_b, ref_b):
        close(a, b, *tol(dt))


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_adam_kernel_matches_reference(gpu, dt):
    rng = np.random.default_rng(5)
    p, g, m = (rng.standard_normal(1000).astype(dt) for _ in range(3))
    v = rng.random(1000).astype(dt)
    ref = [a.copy() for a in (p, m, v)]
    reference.adam_update(ref[0], g, ref[1], ref[2], 1e-3, 0.9, 0.999, 1e-8, 3)
    dev = [gpu.asarray(a) for a in (p, m, v)]
    kernels.adam_update(dev[0], gpu.asarray(g), dev[1], dev[2], 1e-3, 0.9, 0.999, 1e-8, 3)
    for a, b in zip(dev, ref):
        close(a, b, *tol(dt))


def test_mistyped_kernel_mode_raises_on_the_gpu_path(gpu, monkeypatch):
    monkeypatch.setattr(kernels, "MODE", "refrence")
    with pytest.raises(MinivaeError, match="MINIVAE_KERNELS must be one of"):
        kernels.bias_add(gpu.zeros((2, 3), np.float32), gpu.zeros(3, np.float32))
    with pytest.raises(MinivaeError, match="MINIVAE_KERNELS must be one of"):
        kernels.bias_add(np.zeros((2, 3), np.float32), np.zeros(3, np.float32))


# ----------------------------------------------------------------------------- Philox
def test_philox_known_answers():
    """Random123's known-answer vectors for Philox4x32-10 (kat_vectors)."""
    def words(*a):
        return [int(w) for w in philox4x32(*a)]
    assert words(0, 0, 0, 0, 0, 0) == [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
    assert words(*[0xffffffff] * 6) == [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
    assert words(0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0) == \
        [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_philox_device_draws_equal_the_reference(gpu, dt):
    g = Philox([7, 2], gpu)
    u = host(g.random((3, 1000), dtype=dt))
    np.testing.assert_array_equal(u.ravel(), uniform_reference(g.key, 0, 3000, dt))  # exact
    z = host(g.standard_normal((2000,), dtype=dt))
    # sqrt(-2 log u1) cos(2 pi u2): a few ulp of each function, |z| < 6
    np.testing.assert_allclose(z, normal_reference(g.key, 1, 2000, dt), rtol=0,
                               atol=5e-6 if dt == np.float32 else 1e-13)
    out = gpu.empty((4, 5), dt)
    assert g.standard_normal(out=out, dtype=dt) is out and g.calls == 3


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_philox_draws_have_the_right_distribution(dt):
    """Moments of 10^6 draws within 4 standard errors (a false alarm once in ~16,000 runs)."""
    n = 1_000_000
    z = normal_reference((12345, 678), 5, n, dt).astype(np.float64)
    u = uniform_reference((12345, 678), 6, n, dt).astype(np.float64)
    assert abs(z.mean()) < 4 / np.sqrt(n)
    assert abs(z.var() - 1) < 4 * np.sqrt(2 / n)
    assert abs(np.mean(z ** 4) - 3) < 4 * np.sqrt(96 / n)
    assert abs(u.mean() - 0.5) < 4 * np.sqrt(1 / 12 / n)
    assert 0 <= u.min() and u.max() < 1
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 4 / np.sqrt(n)


def test_philox_state_round_trip_continues_the_stream():
    a = Philox(3)
    a.standard_normal(10)
    b = Philox.from_state(json.loads(json.dumps(a.state)))
    np.testing.assert_array_equal(a.standard_normal(5), b.standard_normal(5))
    with pytest.raises(MinivaeError):
        Philox.from_state({"kind": "philox", "key": [1], "calls": 0})


# ----------------------------------------------------------------------------- host / device
def test_stand_in_is_strict(gpu):
    if not gpu.__name__ == "fakecupy":
        pytest.skip("checks the stand-in itself")
    a = gpu.zeros(3, np.float32)
    with pytest.raises(TypeError):
        a + np.ones(3, np.float32)
    with pytest.raises(TypeError):
        np.asarray(a)
    with pytest.raises(TypeError):
        gpu.exp(np.ones(3))


def _pair(gpu, **kw):
    kw = dict(dict(hidden=(32,), latent_dim=6, activation="relu", seed=5), **kw)
    cpu = VAE(64, device="cpu", **kw)
    dev = VAE(64, device="cuda", **kw)
    np.testing.assert_array_equal(host(dev.buffer.data), cpu.buffer.data)
    return cpu, dev


def _batch(n=16, d=64, seed=1):
    return (np.random.default_rng(seed).random((n, d)) < 0.4).astype(np.float32)


CONFIGS = [dict(activation=a) for a in ACTS] + [
    dict(likelihood="gaussian", sigma=0.5), dict(likelihood="gaussian", learn_sigma="shared"),
    dict(likelihood="gaussian", learn_sigma="per-dim"),
    dict(likelihood="gaussian", gaussian_mean="sigmoid", learn_sigma="shared"),
    dict(likelihood="gaussian", learn_sigma="per-example"),
    dict(likelihood="gaussian", learn_sigma="per-example", gaussian_mean="sigmoid",
         objective="iwae", samples=3),
    dict(samples=3), dict(objective="iwae", samples=5), dict(dtype="float64")]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_training_step_matches_cpu(gpu, cfg):
    cpu, dev = _pair(gpu, **cfg)
    x = _batch()
    eps = np.random.default_rng(2).standard_normal((cpu.samples, 16, 6)).astype(cpu.dtype)
    t_cpu = cpu.forward_backward(cpu.check_data(x), eps)
    t_dev = dev.forward_backward(dev.check_data(gpu.asarray(x)), gpu.asarray(eps))
    f64 = cpu.dtype == np.float64
    np.testing.assert_allclose(float(t_dev.loss), float(t_cpu.loss), rtol=1e-12 if f64 else 1e-5)
    g_cpu, g_dev = cpu.buffer.grad, host(dev.buffer.grad)
    assert np.max(np.abs(g_dev - g_cpu)) <= (1e-11 if f64 else 1e-4) * np.max(np.abs(g_cpu))
    o_cpu, o_dev = Adam(cpu.buffer), Adam(dev.buffer)
    o_cpu.step()
    o_dev.step()
    # Adam moves each parameter by about lr = 1e-3; a gradient entry near 0 may flip its step's
    # sign between devices only where |g| ~ its round-off, which moves that entry by < 2 lr
    d = np.abs(host(dev.buffer.data) - cpu.buffer.data)
    assert np.mean(d > 1e-6) < 1e-3 and np.max(d) <= 2e-3


def test_numpy_generator_works_with_a_cuda_model(gpu):
    """The README's Python example with MINIVAE_DEVICE=cuda: noise from a NumPy generator."""
    cpu, dev = _pair(gpu)
    x = _batch()
    l_cpu, g_cpu = cpu.loss_and_grads(x, rng=np.random.default_rng(0))
    l_dev, g_dev = dev.loss_and_grads(gpu.asarray(x), rng=np.random.default_rng(0))
    np.testing.assert_allclose(l_dev, l_cpu, rtol=1e-5)
    for k in g_cpu:
        assert np.max(np.abs(host(g_dev[k]) - g_cpu[k])) <= 1e-4 * np.max(np.abs(g_cpu[k])) + 1e-7
    np.testing.assert_allclose(dev.loss(x, rng=np.random.default_rng(0)), l_cpu, rtol=1e-5)
    t = dev.elbo(x, rng=np.random.default_rng(0))
    close(t.elbo, cpu.elbo(x, rng=np.random.default_rng(0)).elbo, 1e-5, 1e-3)
    assert host(dev.sample(4, np.random.default_rng(1))).shape == (4, 64)


def test_importance_sampled_log_px_matches_cpu(gpu):
    cpu, dev = _pair(gpu)
    x = _batch(10)
    est_cpu = importance_log_likelihood(cpu, x, 40, np.random.default_rng(2), rows=100)
    est_dev = importance_log_likelihood(dev, gpu.asarray(x), 40, np.random.default_rng(2),
                                        rows=100)
    np.testing.assert_allclose(est_dev, est_cpu, rtol=1e-5)


# ----------------------------------------------------------------------------- the CUDA install
def test_broken_cupy_is_a_one_line_error(gpu, monkeypatch):
    """A CuPy that counts a device but cannot compile (no NVRTC) fails at the probe, not later."""
    if gpu.__name__ != "fakecupy":
        pytest.skip("breaks the stand-in on purpose")
    from minivae import backend

    class NoNVRTC:
        def __init__(self, *a, **k):
            raise ImportError("libnvrtc.so.12: cannot open shared object file")
    monkeypatch.setattr(gpu, "ElementwiseKernel", NoNVRTC)
    with pytest.raises(MinivaeError, match=r"cannot compile and run a kernel.*libnvrtc.*"
                                           r"minivae\[cuda12\]") as e:
        backend.array_module("cuda")
    assert "\n" not in str(e.value)


def test_cli_reports_a_broken_cuda_install_in_one_line(tmp_path):
    """Through the real command line: a CuPy whose kernels cannot compile -> exit 2, one line."""
    fake = tmp_path / "site"
    fake.mkdir()
    (fake / "cupy.py").write_text(
        "from fakecupy import *\nimport fakecupy as _f\n__version__ = _f.__version__\n"
        "ndarray = _f.ndarray\ncuda = _f.cuda\n"
        "class ElementwiseKernel:\n    def __init__(self, *a, **k):\n"
        "        raise RuntimeError('nvrtc: error: failed to open libnvrtc-builtins.so.12')\n")
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake), tests,
                                                       os.path.dirname(tests)]))
    r = subprocess.run([sys.executable, "-m", "minivae", "train", "--device", "cuda", "--epochs",
                        "1", "--out", str(tmp_path / "run")], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minivae: error:") and "libnvrtc" in lines[0]
    assert "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- the trainer
def _shapes(n_train=256):
    from minivae.data import Dataset, make_shapes
    img, _ = make_shapes(n_train + 64, seed=0)
    img = img.reshape(len(img), -1).astype(np.float32)
    test = (np.random.default_rng(5).random((64, 1024), np.float32) < img[n_train:]).astype(
        np.float32)
    return Dataset("shapes", img[:n_train], None, test, (32, 32), "dynamic")


def _trainer(run_dir, device, epochs=2, seed=1, **cfg):
    from minivae.train import TrainConfig, Trainer
    os.makedirs(run_dir, exist_ok=True)
    model = VAE(1024, (16,), 3, seed=seed, device=device)
    return Trainer(model, _shapes(), TrainConfig(epochs=epochs, batch_size=32, seed=seed, **cfg),
                   str(run_dir), log=lambda m: None)


def _resumed(run_dir, device, epochs=None):
    from minivae.train import TrainConfig, Trainer
    from minivae.rundir import load_run
    model, meta, opt, extra = load_run(run_dir, device)
    cfg = TrainConfig(**meta["train"])
    if epochs is not None:
        cfg.epochs = epochs
    tr = Trainer(model, _shapes(), cfg, str(run_dir), log=lambda m: None)
    tr.restore(meta, opt, extra)
    return tr


def test_gpu_training_reads_back_once_per_sync_window(gpu, tmp_path):
    """8 steps an epoch with sync_every 4: per epoch 2 reads of the running sums, the held-out
    evaluation's one read, the checkpoint's parameter/optimiser copies; the data uploaded once."""
    if gpu.__name__ != "fakecupy":
        pytest.skip("counts the stand-in's transfers")
    tr = _trainer(tmp_path / "r", "cuda", epochs=1, sync_every=4)
    tr.fit()                                  # epoch 0 (evaluation + save), then epoch 1
    gpu.reset_counters()
    tr.cfg.epochs = 2
    forward = tr.model.forward_backward
    seen = []

    def counting(x, eps):
        seen.append(gpu.SYNCS[0])
        return forward(x, eps)
    tr.model.forward_backward = counting
    tr.fit()
    assert len(seen) == 8
    in_steps = seen[-1] - seen[0]               # reads during steps 1..7
    assert in_steps == 1, f"{in_steps} host reads in 7 steps (one sync window at step 4)"
    # after the epoch: the last window's read, 1 evaluation read, the save's finiteness check
    # and its copies of params, m, v (and of the epoch's permutation, a host array)
    assert gpu.SYNCS[0] - seen[-1] <= 8
    assert gpu.UPLOADS[0] <= 2                  # the epoch's permutation (and nothing per step)


def test_gpu_nonfinite_step_stops_without_saving(gpu, tmp_path):
    from minivae.train import Diverged
    from minivae.rundir import load_run
    tr = _trainer(tmp_path / "r", "cuda", epochs=1, sync_every=3)
    tr.fit()
    good = host(load_run(tmp_path / "r", "cpu")[0].buffer.data)
    tr.cfg.epochs = 2
    forward = tr.model.forward_backward

    def poisoned(x, eps):
        t = forward(x, eps)
        if tr.step == 4:
            tr.model.buffer.grad[0] = np.nan
        return t
    tr.model.forward_backward = poisoned
    with pytest.raises(Diverged, match="between global steps 12 and 14"):
        tr.fit()
    np.testing.assert_array_equal(host(load_run(tmp_path / "r", "cpu")[0].buffer.data), good)


@pytest.mark.parametrize("clip", [0.0, 5.0])
def test_gpu_run_matches_cpu_run_in_float32(gpu, tmp_path, clip):
    """A GPU run and a CPU run of one seed draw different noise (Philox vs PCG64), so compare
    them on one step's arithmetic instead: the CPU run resumed from the GPU run's checkpoint
    continues the GPU's own Philox streams, so both end equal within float32 round-off."""
    import shutil
    a = _trainer(tmp_path / "a", "cuda", epochs=1, clip=clip)
    a.fit()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    b = _resumed(tmp_path / "b", "cpu", epochs=2)          # continues on the CPU ...
    assert isinstance(b.noise_rng, Philox) and b.noise_rng.xp is np
    a.cfg.epochs = 2
    a.fit()                                                # ... and on the GPU
    b.fit()
    pa, pb = host(a.model.buffer.data), b.model.buffer.data
    # 8 Adam steps of ~1e-3 each; round-off differences of the gradient move a step by far less
    assert np.max(np.abs(pa - pb)) <= 1e-4
    from minivae.rundir import read_metrics
    ra, rb = read_metrics(tmp_path / "a")[-1], read_metrics(tmp_path / "b")[-1]
    assert ra["epoch"] == rb["epoch"] == 2
    for k in ("train_loss", "test_loss", "test_kl"):
        assert ra[k] == pytest.approx(rb[k], rel=1e-5)


def test_gpu_resume_continues_the_noise_stream(gpu, tmp_path):
    """An interrupted GPU run resumed ends where the uninterrupted one does."""
    ref = _trainer(tmp_path / "ref", "cuda", epochs=2)
    ref.fit()
    tr = _trainer(tmp_path / "i", "cuda", epochs=2)
    forward = tr.model.forward_backward

    def stop_at_step_11(x, eps):
        if tr.global_step == 10:
            tr._stop_signal = 2                # SIGINT arrives during global step 11
        return forward(x, eps)
    tr.model.forward_backward = stop_at_step_11
    from minivae.train import Interrupted
    from minivae.rundir import read_metrics
    with pytest.raises(Interrupted):
        tr.fit()
    tr = _resumed(tmp_path / "i", "cuda")
    assert isinstance(tr.noise_rng, Philox) and tr.noise_rng.calls == 11
    tr.fit()
    np.testing.assert_allclose(host(tr.model.buffer.data), host(ref.model.buffer.data),
                               rtol=0, atol=1e-6)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in read_metrics(tmp_path / "i")]
    want = [{k: v for k, v in r.items() if k != "seconds"} for r in read_metrics(tmp_path / "ref")]
    assert len(strip) == len(want)
    for s, w in zip(strip, want):
        assert s.keys() == w.keys()
        for k in s:
            assert s[k] == pytest.approx(w[k], rel=1e-5, abs=1e-6)


def test_cpu_run_resumes_on_the_gpu(gpu, tmp_path):
    """A CPU run (PCG64 generators) resumed on the GPU keeps its host generators."""
    ref = _trainer(tmp_path / "ref", "cpu", epochs=2)
    ref.fit()
    _trainer(tmp_path / "c", "cpu", epochs=1).fit()
    tr = _resumed(tmp_path / "c", "cuda", epochs=2)
    assert isinstance(tr.noise_rng, np.random.Generator) and tr.model.xp is gpu
    tr.fit()
    assert np.max(np.abs(host(tr.model.buffer.data) - ref.model.buffer.data)) <= 1e-4


def test_gpu_checkpoint_loads_on_the_cpu_through_the_cli(gpu, tmp_path, capsys):
    from minivae import cli
    tr = _trainer(tmp_path / "r", "cuda", epochs=1)
    tr.fit()
    with open(tmp_path / "r" / "config.json", "w") as f:   # what `minivae train` writes first
        json.dump({}, f)
    from minivae.rundir import load_run
    model, meta, _, _ = load_run(tmp_path / "r", "cpu")
    assert model.xp is np and meta["noise_rng"]["kind"] == "philox"
    np.testing.assert_array_equal(model.buffer.data, host(tr.model.buffer.data))


# ----------------------------------------------------------------------------- newer model paths
NEWER = [dict(likelihood="gaussian", learn_sigma="per-example", gaussian_mean="sigmoid"),
         dict(estimator="score", samples=4, baseline="mean"),
         dict(arch="conv", image_shape=(8, 8), channels=(4, 8), kernel=4, stride=2, hidden=(16,))]


@pytest.mark.parametrize("cfg", NEWER, ids=["gaussian-per-example", "score", "conv"])
def test_newer_model_paths_match_cpu(gpu, cfg):
    """The per-example Gaussian decoder, the score-function estimator and the conv VAE run on
    the GPU path too, and one step equals the CPU's within float32 round-off (as above)."""
    cpu, dev = _pair(gpu, **cfg)
    x = _batch()
    eps = np.random.default_rng(2).standard_normal((cpu.samples, 16, 6)).astype(np.float32)
    t_cpu = cpu.forward_backward(cpu.check_data(x), eps)
    t_dev = dev.forward_backward(dev.check_data(gpu.asarray(x)), gpu.asarray(eps))
    np.testing.assert_allclose(float(t_dev.loss), float(t_cpu.loss), rtol=1e-5)
    g_cpu, g_dev = cpu.buffer.grad, host(dev.buffer.grad)
    assert np.max(np.abs(g_dev - g_cpu)) <= 1e-4 * np.max(np.abs(g_cpu))


def test_capacity_objective_matches_cpu(gpu):
    cpu, dev = _pair(gpu)
    x = _batch()
    eps = np.random.default_rng(2).standard_normal((1, 16, 6)).astype(np.float32)
    t_cpu = cpu.forward_backward(cpu.check_data(x), eps, capacity=3.0, gamma=50.0)
    t_dev = dev.forward_backward(dev.check_data(gpu.asarray(x)), gpu.asarray(eps),
                                 capacity=3.0, gamma=50.0)
    np.testing.assert_allclose(float(t_dev.loss), float(t_cpu.loss), rtol=1e-5)
    assert np.max(np.abs(host(dev.buffer.grad) - cpu.buffer.grad)) <= \
        1e-4 * np.max(np.abs(cpu.buffer.grad))


@pytest.mark.parametrize("estimator", ["score", "relaxed"])
def test_bernoulli_latent_vae_matches_cpu(gpu, estimator, tmp_path):
    """The discrete-latent VAE's step on the GPU path equals the CPU's, and it trains there
    (its logistic noise drawn from the device's Philox)."""
    from minivae.discrete import DiscreteVAE
    kw = dict(hidden=(16,), latent_dim=5, seed=3, samples=3, estimator=estimator)
    cpu, dev = DiscreteVAE(64, device="cpu", **kw), DiscreteVAE(64, device="cuda", **kw)
    x = _batch()
    u = np.random.default_rng(4).random((3, 16, 5))
    eps = np.log(u / (1 - u)).astype(np.float32)           # logistic noise
    t_cpu = cpu.forward_backward(cpu.check_data(x), eps)
    t_dev = dev.forward_backward(dev.check_data(gpu.asarray(x)), gpu.asarray(eps))
    np.testing.assert_allclose(float(t_dev.loss), float(t_cpu.loss), rtol=1e-5)
    assert np.max(np.abs(host(dev.buffer.grad) - cpu.buffer.grad)) <= \
        1e-4 * np.max(np.abs(cpu.buffer.grad))
    from minivae.train import TrainConfig, Trainer
    os.makedirs(tmp_path / "r")
    model = DiscreteVAE(1024, device="cuda", **kw)
    rows = Trainer(model, _shapes(64), TrainConfig(epochs=1, batch_size=32), str(tmp_path / "r"),
                   log=lambda m: None).fit()
    assert np.isfinite(rows[-1]["train_loss"]) and np.isfinite(rows[-1]["test_elbo"])
