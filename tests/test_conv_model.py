"""The convolutional VAE (arch='conv'): its gradient against finite differences block by block
(float64), its geometry errors, its initialisation order, checkpoints, `minivae train --arch conv`,
and a short training run against the dense model of similar parameter count on shapes."""
import json

import numpy as np
import pytest

import minivae.data.datasets as datasets
from minivae import cli
from minivae.data.shapes import make_shapes
from minivae.errors import MinivaeError
from minivae.gradcheck import check_gradient
from minivae.model import VAE
from minivae.optim import Adam
from minivae.rundir import load_run


def small_conv(dtype="float64", **kw):
    opts = dict(hidden=(6,), latent_dim=3, arch="conv", image_shape=(8, 8), channels=(3, 4),
                kernel=4, stride=2, dtype=dtype, seed=1)
    opts.update(kw)
    return VAE(int(np.prod(opts["image_shape"])), **opts)


CASES = [dict(activation="tanh"), dict(activation="softplus", samples=2),
         dict(activation="tanh", objective="iwae", samples=3),
         dict(activation="tanh", likelihood="gaussian", learn_sigma="per-dim"),
         dict(activation="tanh", likelihood="gaussian", learn_sigma="per-example"),
         dict(activation="tanh", channels=(2, 3, 2), image_shape=(2, 9, 9), kernel=3, stride=2,
              padding=1, hidden=())]


@pytest.mark.parametrize("opts", CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_loss_and_grads_match_finite_differences_for_every_parameter(opts, rng):
    """Every named parameter block separately, along a random direction (float64): a wrong
    gradient in one small block (a bias) cannot hide behind the large ones."""
    model = small_conv(**opts)
    D = model.data_dim
    x = (rng.random((5, D)) < 0.5).astype(np.float64)
    if model.config["likelihood"] == "gaussian":
        x = rng.standard_normal((5, D))
    eps = rng.standard_normal((model.samples, 5, model.latent_dim))
    _, grads = model.loss_and_grads(x, eps)
    assert set(grads) == set(model.params)
    for name, view in model.params.items():
        start = view.copy()

        def loss(theta, view=view):
            view[...] = theta
            return model.loss(x, eps)
        check_gradient(loss, grads[name], start, rng)
        view[...] = start


def test_training_step_and_public_loss_agree(rng):
    """The workspace plans (one network per batch size) and the public layers give one loss."""
    model = small_conv(activation="relu")
    x = (rng.random((7, 64)) < 0.5).astype(np.float64)
    eps = rng.standard_normal((1, 7, 3))
    fb = float(model.forward_backward(x, eps).loss)
    assert abs(fb - model.loss(x, eps)) <= 1e-12 * abs(fb)
    assert model.encode(x)[0].shape == (7, 3) and model.decode(eps[0]).shape == (7, 64)


def test_float32_model_keeps_float32(rng):
    model = small_conv(dtype="float32")
    x = (rng.random((4, 64)) < 0.5).astype(np.float32)
    model.forward_backward(x, rng.standard_normal((1, 4, 3), dtype=np.float32))
    assert model.buffer.grad.dtype == np.float32 and model.sample(3, rng).dtype == np.float32


@pytest.mark.parametrize("side, channels, needle", [
    (28, (32, 32, 32, 32), "28 -> 14 -> 7, then 3.5 is not whole); image sides that work: "
                           "16, 32, 48, 64, 80, 96 ...; or use at most 2 convolutions"),
    (30, (8, 8), "30 -> 15, then 7.5 is not whole"),
    (4, (8, 8, 8), "4 -> 2 -> 1, then the kernel no longer fits")])
def test_sizes_the_strides_do_not_divide_name_the_sizes_that_work(side, channels, needle):
    with pytest.raises(MinivaeError) as e:
        VAE(side * side, (16,), 2, arch="conv", image_shape=(side, side), channels=channels)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("kw, needle", [
    (dict(image_shape=(8, 8), data_dim=65), "holds 64 values, but data_dim is 65"),
    (dict(image_shape=None), "image_shape must be (H, W) or (C, H, W)"),
    (dict(channels=()), "channels must list 1 to 16"),
    (dict(kernel=0), "kernel must be an integer >= 1"),
    (dict(padding=4), "padding must be smaller than the kernel"),
    (dict(arch="cnn"), "arch must be 'mlp' or 'conv'")])
def test_bad_conv_options_are_one_line_errors(kw, needle):
    opts = dict(data_dim=64, hidden=(4,), latent_dim=2, arch="conv", image_shape=(8, 8),
                channels=(2,))
    opts.update(kw)
    with pytest.raises(MinivaeError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        VAE(**opts)


def test_sizes_that_work_pass_through(rng):
    """28x28 with two stride-2 layers, 32x32 and 64x64 with four, 3 channels, a 16x24 image."""
    for shape, ch in [((28, 28), (4, 4)), ((32, 32), (2,) * 4), ((3, 16, 24), (2, 2, 2))]:
        m = VAE(int(np.prod(shape)), (4,), 2, arch="conv", image_shape=shape, channels=ch)
        x = rng.random((2, m.data_dim)).astype(np.float32)
        assert m.reconstruct(x).shape == x.shape


def test_initialisation_is_pytorch_default_in_layer_order():
    """W then b of every layer in forward order, each U(+-1/sqrt(fan_in)): the peer's draws."""
    model = small_conv(dtype="float32")
    r = np.random.default_rng(1)
    for name, view in model.params.items():          # the buffer is laid out in forward order
        if view.ndim == 4:
            fan_in = view.shape[1] * view.shape[2] * view.shape[3]
        elif name.endswith(".W"):
            fan_in = view.shape[0]
        # a bias uses its layer's fan_in (the W just before it)
        bound = 1 / np.sqrt(fan_in)
        np.testing.assert_array_equal(view, r.uniform(-bound, bound, view.shape).astype(np.float32))


@pytest.fixture
def few_shapes(monkeypatch):
    monkeypatch.setattr(datasets, "SHAPES_TRAIN", 200)
    monkeypatch.setattr(datasets, "SHAPES_TEST", 50)
    monkeypatch.setattr(cli, "_figures", lambda *a: None)


CONV = ["--arch", "conv", "--channels", "4,8", "--hidden", "16", "--latent-dim", "2",
        "--batch-size", "100", "--no-progress", "--epochs", "1"]


def test_cli_train_arch_conv_writes_a_run_that_loads_evaluates_and_resumes(few_shapes, tmp_path,
                                                                           capsys):
    run = tmp_path / "run"
    assert cli.main(["train", *CONV, "--out", str(run)]) == 0
    cfg = json.loads((run / "config.json").read_text())["model"]
    assert (cfg["arch"], cfg["channels"], cfg["image_shape"], cfg["padding"]) == \
        ("conv", [4, 8], [1, 32, 32], 1)
    model, meta, _, _ = load_run(run)
    assert model.conv is not None and meta["epoch"] == 1
    assert cli.main(["eval", str(run), "--iwae", "3", "--n", "5", "--no-progress"]) == 0
    assert cli.main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    assert load_run(run)[1]["epoch"] == 2
    capsys.readouterr()


@pytest.mark.parametrize("argv, needle", [
    (["--arch", "conv", "--channels", "8,8,8,8,8,8"], "image sides that work: 64, 128"),
    (["--kernel", "3"], "--kernel apply only to --arch conv"),
    (["--arch", "conv", "--channels", "4,x"], "--channels must be comma-separated integers")])
def test_cli_conv_errors_are_one_line(argv, needle, few_shapes, tmp_path, capsys):
    try:
        rc = cli.main(["train", "--no-progress", "--epochs", "1", *argv,
                       "--out", str(tmp_path / "r")])
    except SystemExit as e:                    # argparse's usage errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_preset_conv_burgess_is_the_papers_architecture(few_shapes, tmp_path, capsys):
    run = tmp_path / "b"
    assert cli.main(["train", "--preset", "conv-burgess", "--epochs", "0", "--no-progress",
                     "--out", str(run)]) == 0
    cfg = json.loads((run / "config.json").read_text())["model"]
    assert (cfg["channels"], cfg["kernel"], cfg["stride"], cfg["hidden"], cfg["latent_dim"]) == \
        ([32, 32, 32, 32], 4, 2, [256, 256], 10)
    capsys.readouterr()


@pytest.mark.slow
def test_conv_beats_the_dense_model_of_similar_size_on_shapes():
    """400 Adam steps (batch 64) on built-in shapes: the conv VAE (8, 16 channels, dense 64;
    138,549 parameters) against the MLP 1024-66-10 (138,324).  Verdict on 1,000 held-out
    images: the mean paired difference of the one-sample ELBO exceeds 3 standard errors."""
    xtr = make_shapes(10000, seed=0)[0].reshape(10000, -1).astype(np.float32)
    xte = make_shapes(1000, seed=1)[0].reshape(1000, -1).astype(np.float32)

    def held_out_elbo(model, steps=400, B=64):
        opt, rng = Adam(model.buffer, lr=1e-3), np.random.default_rng(0)
        for _ in range(steps):
            xb = xtr[rng.integers(0, len(xtr), B)]
            model.forward_backward(xb, rng.standard_normal((1, B, 10), dtype=np.float32))
            opt.step()
        return model.elbo(xte, rng=np.random.default_rng(5)).elbo.astype(np.float64)

    conv = VAE(1024, (64,), 10, arch="conv", image_shape=(32, 32), channels=(8, 16), seed=0)
    dense = VAE(1024, (66,), 10, seed=0)
    assert abs(conv.num_params() - dense.num_params()) < 0.01 * dense.num_params()
    diff = held_out_elbo(conv) - held_out_elbo(dense)
    se = diff.std(ddof=1) / np.sqrt(len(diff))
    assert diff.mean() > 3 * se, (diff.mean(), se)


@pytest.mark.parametrize("cfg", [dict(), dict(dtype="float64"),
                                 dict(likelihood="gaussian", learn_sigma="per-example")])
def test_conv_training_step_on_the_gpu_path_matches_cpu(gpu, cfg):
    """The same step on the CuPy path (the strict stand-in everywhere, a real GPU with -m gpu):
    the reference lowering on device arrays.  Tolerances as tests/test_gpu.py's (float32: a GEMM
    sums up to C K K products in another order, 1e-5 relative on the loss, 1e-4 of the largest
    gradient entry; float64: the same with u = 2^-53)."""
    kw = dict(dict(hidden=(8,), latent_dim=3, arch="conv", image_shape=(8, 8), channels=(3, 4),
                   seed=5), **cfg)
    cpu, dev = VAE(64, device="cpu", **kw), VAE(64, device="cuda", **kw)
    x = (np.random.default_rng(1).random((6, 64)) < 0.4).astype(np.float32)
    eps = np.random.default_rng(2).standard_normal((1, 6, 3)).astype(cpu.dtype)
    t_cpu = cpu.forward_backward(cpu.check_data(x), eps)
    t_dev = dev.forward_backward(dev.check_data(gpu.asarray(x)), gpu.asarray(eps))
    f64 = cpu.dtype == np.float64
    np.testing.assert_allclose(float(t_dev.loss), float(t_cpu.loss), rtol=1e-12 if f64 else 1e-5)
    g_dev = dev.buffer.grad.get()
    assert np.max(np.abs(g_dev - cpu.buffer.grad)) <= (1e-11 if f64 else 1e-4) * np.max(
        np.abs(cpu.buffer.grad))
