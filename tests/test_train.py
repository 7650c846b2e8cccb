"""The training loop: exact resume, interrupts, the divergence guard, and checks at its edges.

Resume equality is bit-for-bit (np.array_equal on the flat parameter buffer, the optimiser state
and every metric except wall time): on the CPU a run interrupted anywhere and resumed from its
checkpoint replays the same data order, binarisation noise and reparameterisation noise.
Interrupts are real signals sent to this process from inside a training step, so the handler,
the "finish the step, then save" logic and the checkpoint are exercised as in a Ctrl-C.
"""
import json
import os
import signal
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minivae.data.datasets as datasets
from minivae import cli
from minivae.data import Dataset, make_shapes
from minivae.errors import MinivaeError
from minivae.model import VAE
from minivae.rundir import CHECKPOINT, load_run, read_metrics
from minivae.train import Diverged, Interrupted, TrainConfig, Trainer
from minivae.evaluation import evaluate

_images, _ = make_shapes(360, seed=0)
_images = _images.reshape(360, -1)


def shapes_data(binarize="dynamic"):
    """300 training and 60 test images of the built-in shapes, 32x32 (D = 1024)."""
    test = _images[300:]
    if binarize == "dynamic":
        test = (np.random.default_rng(5).random(test.shape, np.float32) < test).astype(np.float32)
    return Dataset("shapes", _images[:300], None, test, (32, 32), binarize)


def new_trainer(run_dir, cfg, binarize="dynamic", **model_kw):
    os.makedirs(run_dir, exist_ok=True)
    model = VAE(1024, (16,), 2, seed=cfg.seed, **model_kw)
    return Trainer(model, shapes_data(binarize), cfg, str(run_dir), log=lambda m: None)


def resumed_trainer(run_dir, binarize="dynamic", epochs=None):
    model, meta, opt, extra = load_run(run_dir)
    cfg = TrainConfig(**meta["train"])
    if epochs is not None:
        cfg.epochs = epochs
    tr = Trainer(model, shapes_data(binarize), cfg, str(run_dir), log=lambda m: None)
    tr.restore(meta, opt, extra)
    return tr


def signal_at(trainer, steps, signum=signal.SIGINT, times=1):
    """Send `signum` to this process (`times` times) inside the forward pass of the given global
    steps (1-based), as a Ctrl-C arriving mid-step would."""
    inner = trainer.model.forward_backward
    count = [trainer.global_step]

    def hooked(x, eps):
        count[0] += 1
        if count[0] in steps:
            assert signal.getsignal(signum) == trainer._on_signal
            for _ in range(times):
                os.kill(os.getpid(), signum)
        return inner(x, eps)
    trainer.model.forward_backward = hooked


def strip(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def assert_same_state(a, b):
    assert np.array_equal(a.model.buffer.data, b.model.buffer.data)
    sa, sb = a.opt.state(), b.opt.state()
    assert sa[1] == sb[1] and all(np.array_equal(sa[0][k], sb[0][k]) for k in sa[0])
    assert a.data_rng.bit_generator.state == b.data_rng.bit_generator.state
    assert a.noise_rng.bit_generator.state == b.noise_rng.bit_generator.state
    assert (a.epoch, a.step, a.global_step) == (b.epoch, b.step, b.global_step)


_reference = {}


def uninterrupted(tmp_path_factory, key, cfg, binarize, model_kw):
    if key not in _reference:
        d = tmp_path_factory.mktemp("ref")
        tr = new_trainer(d, cfg, binarize, **model_kw)
        tr.fit()
        _reference[key] = (tr, read_metrics(d))
    return _reference[key]


# ------------------------------------------------------------------------------------ resume
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(stops=st.lists(st.integers(1, 15), min_size=1, max_size=3, unique=True),
       binarize=st.sampled_from(["dynamic", "none"]),
       variant=st.sampled_from(["adam", "sgd", "iwae", "clip", "drop_last", "skip"]))
def test_interrupted_and_resumed_run_is_bit_for_bit_equal(tmp_path_factory, stops, binarize,
                                                          variant):
    """3 epochs of 5 steps (300 images, batch 64, the last batch short); SIGINT at 1-3 random
    global steps, each followed by a resume from the checkpoint alone."""
    cfg = dict(epochs=3, batch_size=64, seed=7)
    model_kw = {}
    if variant == "sgd":
        cfg["optimizer"] = "sgd"
    elif variant == "iwae":
        model_kw = dict(objective="iwae", samples=3)
    elif variant == "clip":
        cfg["clip"] = 5.0
    elif variant == "drop_last":
        cfg["drop_last"] = True
    elif variant == "skip":
        cfg["on_nonfinite"] = "skip"
    key = (binarize, variant)
    ref, ref_rows = uninterrupted(tmp_path_factory, key, TrainConfig(**cfg), binarize, model_kw)
    total = ref.global_step
    stops = sorted(s for s in stops if s <= total)

    d = tmp_path_factory.mktemp("run")
    tr = new_trainer(d, TrainConfig(**cfg), binarize, **model_kw)
    for s in stops:
        signal_at(tr, {s})
        with pytest.raises(Interrupted, match="SIGINT"):
            tr.fit()
        assert tr.global_step == s                       # the step finished, then it stopped
        tr = resumed_trainer(d, binarize)                # a fresh process would do just this
        assert tr.global_step == s
    tr.fit()
    assert_same_state(tr, ref)
    assert strip(read_metrics(d)) == strip(ref_rows)


def test_resume_at_an_epoch_boundary_and_extend(tmp_path):
    ref = new_trainer(tmp_path / "ref", TrainConfig(epochs=3, batch_size=64, seed=1))
    ref.fit()
    tr = new_trainer(tmp_path / "b", TrainConfig(epochs=1, batch_size=64, seed=1))
    tr.fit()
    tr = resumed_trainer(tmp_path / "b", epochs=2)        # --resume --epochs 2
    assert (tr.epoch, tr.step, tr.perm) == (1, 0, None)
    tr.fit()
    tr = resumed_trainer(tmp_path / "b", epochs=3)
    tr.fit()
    assert_same_state(tr, ref)
    assert strip(read_metrics(tmp_path / "b")) == strip(read_metrics(tmp_path / "ref"))


def test_interrupt_at_the_last_step_of_an_epoch(tmp_path):
    ref = new_trainer(tmp_path / "ref", TrainConfig(epochs=2, batch_size=64, seed=2))
    ref.fit()
    tr = new_trainer(tmp_path / "i", TrainConfig(epochs=2, batch_size=64, seed=2))
    signal_at(tr, {5})                                    # step 5 of 5
    with pytest.raises(Interrupted):
        tr.fit()
    _, meta, _, extra = load_run(tmp_path / "i")
    assert (meta["epoch"], meta["step"]) == (0, 5) and "perm" in extra
    tr = resumed_trainer(tmp_path / "i")
    tr.fit()
    assert_same_state(tr, ref)
    assert strip(read_metrics(tmp_path / "i")) == strip(read_metrics(tmp_path / "ref"))


def _train_argv(out, *extra):
    return ["train", "--hidden", "16", "--latent-dim", "2", "--batch-size", "64",
            "--binarize", "dynamic", "--seed", "3", "--no-progress", "--out", str(out), *extra]


# `python -c THREADS_CLI BUSY args...`: the CLI on 300 shapes with the threading policy's
# measurement of the other processes replaced by BUSY cores (so the test decides the "load")
THREADS_CLI = ("import sys, minivae.threads as t; busy = float(sys.argv[1]); "
               "t.others_busy = lambda window_s=0.1: (busy, 'test'); "
               "import minivae.data.datasets as d; d.SHAPES_TRAIN, d.SHAPES_TEST = 300, 50; "
               "from minivae import cli; cli._figures = lambda *a: None; "
               "sys.exit(cli.main(sys.argv[2:]))")


def test_a_run_resumed_under_another_load_keeps_its_blas_thread_count(tmp_path):
    """The threading policy picks 1 BLAS thread on 2 cores when one is busy and 2 when idle, and
    OpenBLAS's float32 GEMM rounds differently with 1 and 2 threads at these shapes.  A run
    started busy and resumed idle records its count in the checkpoint and goes on with it: it
    ends bit for bit where the uninterrupted busy run ends.  The same resume forced to 2
    threads (MINIVAE_THREADS, the user's choice, wins) does not, which shows the check can fail."""
    import subprocess
    import sys
    from minivae import threads
    if (os.cpu_count() or 1) != 2:
        pytest.skip("the policy's two counts (1 busy, 2 idle) are those of a 2-core machine")
    env = {k: v for k, v in os.environ.items()
           if k not in threads.USER_VARS + ("MINIVAE_THREADS",)}

    def cli_run(busy, *argv, **extra):
        p = subprocess.run([sys.executable, "-c", THREADS_CLI, str(busy), *argv],
                           env={**env, **extra}, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr

    # 784 inputs, as MNIST: OpenBLAS rounds (128, 784) @ (784, 400) differently on 1 and 2
    # threads (it does not at the shapes' 1024 inputs)
    x = np.random.default_rng(0).random((300, 784)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    small = ["--dataset", str(tmp_path / "x.npy"), "--hidden", "400", "--latent-dim", "4",
             "--batch-size", "128", "--no-progress"]
    cli_run(1.0, "train", *small, "--epochs", "2", "--out", str(tmp_path / "a"))
    for name, extra in (("b", {}), ("c", {"MINIVAE_THREADS": "2"})):
        cli_run(1.0, "train", *small, "--epochs", "1", "--out", str(tmp_path / name))
        cli_run(0.0, "train", "--resume", str(tmp_path / name), "--epochs", "2", **extra)
    a, b, c = (load_run(tmp_path / n) for n in "abc")
    assert a[1]["blas_threads"] == b[1]["blas_threads"] == 1 and c[1]["blas_threads"] == 2
    assert np.array_equal(a[0].buffer.data, b[0].buffer.data)
    assert not np.array_equal(a[0].buffer.data, c[0].buffer.data)


def test_resume_via_cli_after_sigint_mid_epoch_is_bit_for_bit(tmp_path, monkeypatch, capsys):
    """`minivae train` (shapes, --binarize dynamic) stopped by SIGINT in epoch 2, then
    `minivae train --resume RUN_DIR`, ends bit-for-bit where the uninterrupted run does.
    Also resumes at an epoch boundary (--epochs 1, then --resume --epochs 2)."""
    monkeypatch.setattr(datasets, "SHAPES_TRAIN", 640)    # 10 steps per epoch
    monkeypatch.setattr(datasets, "SHAPES_TEST", 100)
    monkeypatch.setattr(cli, "_figures", lambda *a: None)  # PNGs are not the point here
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert cli.main(_train_argv(a, "--epochs", "2")) == 0

    calls = [0]
    inner = VAE.forward_backward

    def hooked(self, x, eps):
        calls[0] += 1
        if calls[0] == 13:                                # epoch 2, step 3
            os.kill(os.getpid(), signal.SIGINT)
        return inner(self, x, eps)
    monkeypatch.setattr(VAE, "forward_backward", hooked)
    capsys.readouterr()
    assert cli.main(_train_argv(b, "--epochs", "2")) == 130
    err = capsys.readouterr().err
    assert f"minivae train --resume {b}" in err and "SIGINT" in err
    assert load_run(b)[1]["global_step"] == 13
    monkeypatch.setattr(VAE, "forward_backward", inner)
    assert cli.main(["train", "--resume", str(b), "--no-progress"]) == 0

    assert cli.main(_train_argv(c, "--epochs", "1")) == 0
    assert cli.main(["train", "--resume", str(c), "--epochs", "2", "--no-progress"]) == 0

    ref = load_run(a)
    for run in (b, c):
        got = load_run(run)
        assert np.array_equal(got[0].buffer.data, ref[0].buffer.data)
        assert all(np.array_equal(got[2][k], ref[2][k]) for k in ref[2])
        assert got[1]["data_rng"] == ref[1]["data_rng"]
        assert strip(read_metrics(run)) == strip(read_metrics(a))


# ------------------------------------------------------------------------------------ signals
def test_sigterm_and_handlers_restored(tmp_path):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    tr = new_trainer(tmp_path, TrainConfig(epochs=2, batch_size=64))
    signal_at(tr, {3}, signal.SIGTERM)
    with pytest.raises(Interrupted, match="SIGTERM.*step 3"):
        tr.fit()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert load_run(tmp_path)[1]["step"] == 3


def test_second_sigint_leaves_at_once_and_keeps_the_last_checkpoint(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    tr = new_trainer(tmp_path, TrainConfig(epochs=3, batch_size=64))
    tr.fit.__func__                                        # (a plain method)
    tr.cfg.epochs = 1
    tr.fit()                                               # a checkpoint at the end of epoch 1
    with open(tmp_path / CHECKPOINT, "rb") as f:
        good = f.read()
    tr.cfg.epochs = 3
    signal_at(tr, {7}, times=2)                            # two Ctrl-C inside one step
    with pytest.raises(KeyboardInterrupt):
        tr.fit()
    assert tr.global_step == 6                             # step 7 never finished
    with open(tmp_path / CHECKPOINT, "rb") as f:
        assert f.read() == good
    assert signal.getsignal(signal.SIGINT) == before
    assert [n for n in os.listdir(tmp_path) if n.startswith(".tmp")] == []
    load_run(tmp_path)


def test_a_signal_during_the_final_evaluation_still_stops(tmp_path):
    tr = new_trainer(tmp_path, TrainConfig(epochs=1, batch_size=64))
    inner, calls = tr.heldout, [0]

    def hooked():
        calls[0] += 1
        if calls[0] == 2:                                  # after the last epoch's steps
            os.kill(os.getpid(), signal.SIGINT)
        return inner()
    tr.heldout = hooked
    with pytest.raises(Interrupted):
        tr.fit()
    assert load_run(tmp_path)[1]["epoch"] == 1             # the finished run was saved


def test_fit_in_a_worker_thread_installs_no_handlers(tmp_path):
    tr = new_trainer(tmp_path, TrainConfig(epochs=1, batch_size=128))
    errors = []
    t = threading.Thread(target=lambda: errors.append(_try(tr.fit)))
    t.start()
    t.join()
    assert errors == [None] and tr.epoch == 1


def _try(f):
    try:
        f()
    except Exception as e:          # noqa: BLE001  (reported to the main thread)
        return e
    return None


# ------------------------------------------------------------------------------------ divergence
def test_huge_learning_rate_stops_naming_step_and_cause(tmp_path):
    tr = new_trainer(tmp_path, TrainConfig(epochs=2, batch_size=64, lr=1e30))
    start = tr.model.buffer.data.copy()
    with pytest.raises(Diverged) as e:
        tr.fit()
    msg = str(e.value)
    assert "\n" not in msg
    assert "non-finite" in msg and "epoch 1 step 2" in msg
    assert "learning rate (now 1e+30)" in msg and "log-variance" in msg
    assert f"--resume {tmp_path}" in msg and "end of epoch 0" in msg
    model = load_run(tmp_path)[0]                          # the last good checkpoint
    assert np.array_equal(model.buffer.data, start)
    assert len(read_metrics(tmp_path)) == 1


def _corrupt(trainer, plan):
    """plan: {global step (1-based): 'loss' | 'grad' | 'params' | 'bigGrad'}."""
    inner, count = trainer.model.forward_backward, [trainer.global_step]
    model = trainer.model

    def hooked(x, eps):
        count[0] += 1
        what = plan.get(count[0])
        if what == "params":                               # the last logit's bias
            model.params[[k for k in model.params if k.startswith("dec.")][-1]][-1] = np.nan
        elif what == "hidden-params":                      # a first-layer weight (behind ReLU)
            model.params["enc.0.W"][0, 0] = np.nan
        terms = inner(x, eps)
        if what == "loss":
            terms = terms._replace(loss=terms.loss * np.float32(np.nan))
        elif what == "grad":
            model.buffer.grad[-1] = np.inf
        elif what == "bigGrad":
            model.buffer.grad[:] = np.float32(1e20)        # finite; its squared norm overflows
        return terms
    trainer.model.forward_backward = hooked


@pytest.mark.parametrize("what", ["loss", "grad"])
def test_stop_on_nonfinite(tmp_path, what):
    tr = new_trainer(tmp_path, TrainConfig(epochs=2, batch_size=64))
    _corrupt(tr, {8: what})
    with pytest.raises(Diverged, match=f"non-finite {'loss' if what == 'loss' else 'gradient'} at "
                                       "epoch 2 step 3 .global step 8."):
        tr.fit()
    _, meta, _, _ = load_run(tmp_path)
    assert (meta["epoch"], meta["step"]) == (1, 0)       # the end of epoch 1, kept


def test_skip_on_nonfinite(tmp_path):
    logs = []
    tr = new_trainer(tmp_path, TrainConfig(epochs=2, batch_size=64, on_nonfinite="skip"))
    tr.log = logs.append
    _corrupt(tr, {2: "loss", 4: "grad", 7: "grad"})
    before = [None]
    inner_step = tr.opt.step
    steps = []
    tr.opt.step = lambda: (steps.append(tr.global_step + 1), inner_step())
    tr.fit()
    assert steps == [1, 3, 5, 6, 8, 9, 10]              # no optimiser step on 2, 4, 7
    rows = read_metrics(tmp_path)
    assert [r.get("train_skipped", 0) for r in rows[1:]] == [2, 1]
    assert sum("skipped batch" in m for m in logs) == 3
    assert np.isfinite(tr.model.buffer.data).all()
    assert before == [None]


def test_skip_cannot_rescue_nonfinite_parameters(tmp_path):
    tr = new_trainer(tmp_path, TrainConfig(epochs=2, batch_size=64, on_nonfinite="skip"))
    _corrupt(tr, {3: "params"})
    with pytest.raises(Diverged, match="parameters themselves"):
        tr.fit()
    assert np.isfinite(load_run(tmp_path)[0].buffer.data).all()


def test_nonfinite_parameters_are_never_saved(tmp_path):
    """A NaN weight whose effect an activation may hide: whether the loss shows it or not, the
    run stops and the checkpoint on disk stays finite."""
    tr = new_trainer(tmp_path, TrainConfig(epochs=2, batch_size=64, on_nonfinite="skip"))
    _corrupt(tr, {3: "hidden-params"})
    with pytest.raises(Diverged, match="NaN or infinite|parameters themselves"):
        tr.fit()
    assert np.isfinite(load_run(tmp_path)[0].buffer.data).all()


def test_a_huge_finite_gradient_is_not_divergence(tmp_path):
    """||g||^2 overflows float32 though every g_i is finite: clipping still works."""
    tr = new_trainer(tmp_path, TrainConfig(epochs=1, batch_size=64, clip=1.0, optimizer="sgd"))
    _corrupt(tr, {2: "bigGrad"})
    norms = []
    inner_step = tr.opt.step
    tr.opt.step = lambda: (norms.append(float(np.linalg.norm(tr.model.buffer.grad.astype(
        np.float64)))), inner_step())
    tr.fit()
    assert len(norms) == 5 and abs(norms[1] - 1.0) < 1e-3   # clipped to the bound, not skipped
    assert np.isfinite(tr.model.buffer.data).all()


def test_save_never_overwrites_a_good_checkpoint_with_nonfinite_parameters(tmp_path):
    tr = new_trainer(tmp_path, TrainConfig(epochs=1, batch_size=128))
    tr.fit()
    good = (tmp_path / CHECKPOINT).read_bytes()
    tr.model.buffer.data[0] = np.inf
    with pytest.raises(Diverged, match="parameters became NaN or infinite"):
        tr.save()
    assert (tmp_path / CHECKPOINT).read_bytes() == good


# ------------------------------------------------------------------------------------ metrics
def test_metrics_torn_line_and_trim_on_restore(tmp_path):
    tr = new_trainer(tmp_path, TrainConfig(epochs=1, batch_size=128))
    tr.fit()
    path = tmp_path / "metrics.jsonl"
    rows = read_metrics(tmp_path)
    with open(path, "a") as f:                            # written after the checkpoint, then
        f.write(json.dumps({"epoch": 2, "step": 99}) + "\n" + '{"epoch": 3, "st')   # a crash
    assert len(read_metrics(tmp_path)) == len(rows) + 1   # the torn last line is ignored
    resumed_trainer(tmp_path, epochs=1)
    assert read_metrics(tmp_path) == rows                 # rows past the checkpoint dropped
    assert path.read_bytes().endswith(b"\n")


def test_metrics_damaged_in_the_middle(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 0}\nnot json\n{"epoch": 1}\n')
    with pytest.raises(MinivaeError, match="line 2"):
        read_metrics(tmp_path)


# ------------------------------------------------------------------------------------ edges
BAD_CONFIGS = [("epochs", -1), ("epochs", 1.5), ("epochs", True), ("batch_size", 0),
               ("batch_size", "64"), ("lr", float("nan")), ("lr", float("inf")), ("lr", 0),
               ("lr", "1e-3"), ("clip", -1.0), ("clip", float("nan")), ("optimizer", "lbfgs"),
               ("seed", -1), ("seed", 1.0), ("on_nonfinite", "ignore"), ("drop_last", "yes"),
               ("eval_batch", 0)]


@pytest.mark.parametrize("name,value", BAD_CONFIGS)
def test_train_config_names_the_bad_field(name, value):
    with pytest.raises(MinivaeError) as e:
        TrainConfig(**{name: value}).check()
    msg = str(e.value)
    assert name.replace("_", "-") in msg or name in msg
    assert repr(value) in msg and "\n" not in msg


def test_trainer_checks_its_arguments(tmp_path):
    model = VAE(1024, (16,), 2)
    with pytest.raises(MinivaeError, match="does not exist"):
        Trainer(model, shapes_data(), TrainConfig(), str(tmp_path / "missing"))
    with pytest.raises(MinivaeError, match="TrainConfig"):
        Trainer(model, shapes_data(), {"epochs": 1}, str(tmp_path))
    bad = shapes_data()
    bad.train = bad.train.copy()
    bad.train[3, 7] = np.nan
    with pytest.raises(MinivaeError, match="NaN"):
        Trainer(model, bad, TrainConfig(), str(tmp_path))
    with pytest.raises(MinivaeError, match="batch-size 500 is larger"):
        Trainer(model, shapes_data(), TrainConfig(batch_size=500, drop_last=True),
                str(tmp_path), log=lambda m: None).fit()


def test_evaluate_checks_its_arguments():
    model = VAE(1024, (16,), 2)
    from minivae.backend import make_rng
    with pytest.raises(MinivaeError, match="batch"):
        evaluate(model, _images[:4], make_rng(0), batch=0)
    with pytest.raises(MinivaeError, match="at least one"):
        evaluate(model, _images[:0], make_rng(0))


def test_restore_refuses_a_checkpoint_that_does_not_fit(tmp_path):
    tr = new_trainer(tmp_path, TrainConfig(epochs=1, batch_size=64))
    signal_at(tr, {2})
    with pytest.raises(Interrupted):
        tr.fit()
    model, meta, opt, extra = load_run(tmp_path)
    fewer = shapes_data()
    fewer.train = fewer.train[:200]                       # the data changed since
    t2 = Trainer(model, fewer, TrainConfig(**meta["train"]), str(tmp_path))
    with pytest.raises(MinivaeError, match="permutation"):
        t2.restore(meta, opt, extra)
    t3 = Trainer(model, shapes_data(), TrainConfig(**dict(meta["train"], optimizer="sgd")),
                 str(tmp_path))
    with pytest.raises(MinivaeError, match="optimiser state"):
        t3.restore(meta, opt, extra)
    t4 = Trainer(model, shapes_data(), TrainConfig(**dict(meta["train"], batch_size=300)),
                 str(tmp_path))
    with pytest.raises(MinivaeError, match="beyond the epoch"):
        t4.restore(meta, opt, extra)


def test_linear_gaussian_model_without_hidden_layers_round_trips(tmp_path):
    """hidden=() (the linear-Gaussian VAE) trains, and its checkpoint loads and resumes."""
    model = VAE(1024, (), 2, likelihood="gaussian")
    tr = Trainer(model, shapes_data("none"), TrainConfig(epochs=1, batch_size=100),
                 str(tmp_path), log=lambda m: None)
    tr.fit()
    loaded, meta, _, _ = load_run(tmp_path)
    assert meta["model"]["hidden"] == [] and loaded.hidden == ()
    assert np.array_equal(loaded.buffer.data, model.buffer.data)
    again = resumed_trainer(tmp_path, binarize="none", epochs=2)
    again.fit()
    assert again.epoch == 2


def test_the_trainer_clips_with_optim_clip_grad_norm(tmp_path, monkeypatch):
    """One clipping implementation: the trainer calls optim.clip_grad_norm once per step."""
    import minivae.train as train_mod
    from minivae.optim import clip_grad_norm
    calls = []
    monkeypatch.setattr(train_mod, "clip_grad_norm",
                        lambda g, m, **kw: calls.append(m) or clip_grad_norm(g, m, **kw))
    new_trainer(tmp_path, TrainConfig(epochs=1, batch_size=64, clip=0.5)).fit()
    assert calls == [0.5] * 5


def test_progress_bar_shows_the_running_mean_loss(tmp_path, monkeypatch):
    """The bar's postfix is the epoch's running mean of the training loss, not the last batch's."""
    import tqdm as tqdm_mod
    postfixes = []

    class Bar:
        def __init__(self, *a, **kw):
            pass

        def update(self, n):
            pass

        def set_postfix(self, **kw):
            postfixes.append(kw["loss"])

        def close(self):
            pass

    monkeypatch.setattr(tqdm_mod, "tqdm", Bar)
    tr = new_trainer(tmp_path, TrainConfig(epochs=1, batch_size=10))
    tr.progress = True
    losses, inner = [], tr.model.forward_backward

    def hooked(*a, **kw):
        terms = inner(*a, **kw)
        losses.append(float(terms.loss))
        return terms
    tr.model.forward_backward = hooked
    tr.fit()
    assert len(losses) == 30
    assert postfixes == [f"{np.mean(losses[:20]):.2f}"]
