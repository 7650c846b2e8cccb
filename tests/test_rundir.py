"""A run that goes wrong, or a run directory that is damaged, loses nothing (issue 10).

Each case uses the real mechanism: two real `minivae train` processes for the lock, a real SIGKILL
during a checkpoint write for the stale temporaries, a real FIFO for "only regular files are
read".  Subprocesses run the CLI on 300 built-in shapes images (``SMALL_CLI`` below shrinks the
dataset before ``cli.main``), so that each costs about a second of CPU.
"""
import contextlib
import io
import json
import os
import pathlib
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minivae.data.datasets as datasets
from minivae import checkpoint, cli, rundir
from minivae.errors import MinivaeError
from minivae.rundir import CHECKPOINT, load_run

SMALL = ["--hidden", "16", "--latent-dim", "2", "--batch-size", "100", "--no-progress"]

# `python -c SMALL_CLI args...`: the real entry point on a small shapes dataset, no figures
SMALL_CLI = ("import sys; import minivae.data.datasets as d; "
             "d.SHAPES_TRAIN, d.SHAPES_TEST = 300, 50; from minivae import cli; "
             "cli._figures = lambda *a: None; sys.exit(cli.main(sys.argv[1:]))")


@pytest.fixture(autouse=True)
def small_shapes(monkeypatch):
    monkeypatch.setattr(datasets, "SHAPES_TRAIN", 300)
    monkeypatch.setattr(datasets, "SHAPES_TEST", 50)
    monkeypatch.setattr(cli, "_figures", lambda *a: None)


def run(argv, capsys):
    """(exit status, stdout, stderr) of cli.main(argv) in this process."""
    try:
        rc = cli.main(argv)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc, err, *needles):
    """The last stderr line of a clean exit-2 error, after checking it names each needle."""
    assert rc == 2, (rc, err)
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("minivae: error: "), err
    for n in needles:
        assert n in last, (n, last)
    return last


def cli_process(*argv, **kw):
    return subprocess.Popen([sys.executable, "-c", SMALL_CLI, *map(str, argv)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def finish(proc, timeout=120):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"still running after {timeout} s (a hang): {err[-2000:]}")
    assert "Traceback" not in err, err
    return proc.returncode, out, err


def snapshot(folder):
    """{name: (mode, bytes)} of every file in folder (to show that nothing was touched)."""
    out = {}
    for name in sorted(os.listdir(folder)):
        p = os.path.join(folder, name)
        st = os.lstat(p)
        out[name] = (st.st_mode, open(p, "rb").read() if stat.S_ISREG(st.st_mode) else None)
    return out


# ---------------------------------------------------------------------------- 6: --resume ""
def test_resume_with_an_empty_string_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for value in ("", "  "):
        rc, out, err = run(["train", "--resume", value, *SMALL[-1:]], capsys)
        one_line_error(rc, err, "--resume needs a run directory", "unset shell variable")
    assert os.listdir(tmp_path) == []                       # no run was started here


# ---------------------------------------------------------------------------- 7: the umask
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_users_umask(tmp_path, capsys, umask, mode):
    old = os.umask(umask)
    try:
        rc, _, err = run(["train", *SMALL, "--epochs", "1", "--out", str(tmp_path / "r")], capsys)
    finally:
        os.umask(old)
    assert rc == 0, err
    for name in ("checkpoint.npz", "config.json", "metrics.jsonl"):
        assert stat.S_IMODE(os.stat(tmp_path / "r" / name).st_mode) == mode, name


def test_a_replaced_checkpoint_keeps_its_permissions(tmp_path, capsys):
    d = tmp_path / "r"
    assert run(["train", *SMALL, "--epochs", "1", "--out", str(d)], capsys)[0] == 0
    os.chmod(d / CHECKPOINT, 0o640)
    rc, _, err = run(["train", "--resume", str(d), "--epochs", "2", "--no-progress"], capsys)
    assert rc == 0, err
    assert load_run(d)[1]["epoch"] == 2
    assert stat.S_IMODE(os.stat(d / CHECKPOINT).st_mode) == 0o640


# ---------------------------------------------------------------------------- 2: the lock
def wait_for(pred, proc, what, timeout=120):
    t0 = time.monotonic()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"exited before {what}: {proc.communicate()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"no {what} after {timeout} s")
        time.sleep(0.01)


def epochs_of(run_dir):
    return [json.loads(line)["epoch"] for line in open(run_dir / "metrics.jsonl")]


def test_a_second_run_into_a_live_run_directory_touches_nothing(tmp_path):
    """Two real processes: while A trains, B (a fresh run with another seed) and C (--resume)
    each stop with one line naming A's pid, exit 2, and A's files are as A wrote them."""
    d = tmp_path / "run"
    a = cli_process("train", *SMALL, "--epochs", "100000", "--out", d)
    try:
        wait_for(lambda: (d / CHECKPOINT).exists(), a, "first checkpoint")
        config = (d / "config.json").read_bytes()
        for argv in (["--seed", "7", "--epochs", "1", "--out", d], ["--resume", d]):
            b = cli_process("train", *argv, *SMALL[-1:])
            rc, _, err = finish(b)
            last = one_line_error(rc, err, f"run directory {d} is in use by process {a.pid}")
            assert len(err.strip().splitlines()) == 1, err
            assert a.poll() is None, "A stopped"
        assert (d / "config.json").read_bytes() == config
    finally:
        a.send_signal(signal.SIGINT)
    rc, _, err = finish(a)
    assert rc == 130, err
    _, meta, _, _ = load_run(d)
    assert meta["train"]["seed"] == 0 and json.loads(config)["train"]["seed"] == 0
    assert epochs_of(d) == list(range(len(epochs_of(d))))      # one run's rows, in order
    assert not (d / rundir.LOCK).exists()                        # released on SIGINT


# SMALL_CLI whose processes, once past the creation of their run directory (and, where there is
# one, its lock), wait until the file $GO exists, after writing $GO.<pid>: so that every run that
# got that far writes at the same moment, as racing users' runs can
RACE_CLI = SMALL_CLI.replace("sys.exit(", (
    "import os, time; from minivae.train import Trainer; check = Trainer._check_data\n"
    "def wait_then_check(self):\n"
    "    go = os.environ['GO']; open(go + '.' + str(os.getpid()), 'w').close()\n"
    "    while not os.path.exists(go): time.sleep(0.001)\n"
    "    return check(self)\n"
    "Trainer._check_data = wait_then_check\nsys.exit("))


def test_concurrent_fresh_runs_into_one_directory_one_wins(tmp_path):
    """Three runs with different seeds reach one new --out at the same moment: exactly one
    trains; the others end with one line, exit 2; config.json, the checkpoint and the metrics
    are the winner's alone."""
    d, go = tmp_path / "run", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", RACE_CLI, "train", *SMALL, "--epochs", "2",
                               "--seed", str(s), "--out", str(d)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=dict(os.environ, GO=str(go)))
             for s in (1, 2, 3)]
    for p in procs:                   # each waits at the barrier, or has stopped before it
        t0 = time.monotonic()
        while not os.path.exists(f"{go}.{p.pid}") and p.poll() is None:
            assert time.monotonic() - t0 < 120, "no process reached the barrier"
            time.sleep(0.01)
    go.touch()
    results = [finish(p) for p in procs]
    winners = [s for s, (rc, _, _) in zip((1, 2, 3), results) if rc == 0]
    assert len(winners) == 1, [r[::2] for r in results]
    for rc, out, err in results:
        if rc != 0:
            one_line_error(rc, err, f"run directory {d}")
            assert len(err.strip().splitlines()) == 1, err
    seed = winners[0]
    assert json.loads((d / "config.json").read_text())["train"]["seed"] == seed
    assert load_run(d)[1]["train"]["seed"] == seed
    assert epochs_of(d) == [0, 1, 2]
    assert sorted(os.listdir(d)) == ["checkpoint.npz", "config.json", "metrics.jsonl"]
    assert not os.path.exists(tmp_path / "runs")


def test_the_lock_is_released_when_a_run_fails(tmp_path):
    """An error inside fit (here: a full disk while appending the metrics) releases the lock:
    the file is gone and the next fit takes it."""
    from minivae.data import Dataset, make_shapes
    from minivae.model import VAE
    from minivae.train import TrainConfig, Trainer
    imgs, _ = make_shapes(40, seed=0)
    data = Dataset("shapes", imgs.reshape(40, -1), None, None, (32, 32), "none")
    tr = Trainer(VAE(1024, (8,), 2), data, TrainConfig(epochs=1, batch_size=20), str(tmp_path),
                 log=lambda s: None)
    calls = []

    def fail(row):
        calls.append(row)
        assert (tmp_path / rundir.LOCK).exists()               # held during the run
        raise MinivaeError("disk full")
    tr._append_metrics = fail
    with pytest.raises(MinivaeError, match="disk full"):
        tr.fit()
    assert calls and not (tmp_path / rundir.LOCK).exists() and not rundir._held
    del tr._append_metrics
    tr.fit()
    assert not (tmp_path / rundir.LOCK).exists()


def test_a_held_lock_refuses_another_process_and_is_reentrant(tmp_path):
    log = []
    with rundir.lock(tmp_path, log.append):
        with rundir.lock(tmp_path):                               # the same process: counted
            pass
        assert (tmp_path / rundir.LOCK).exists()
        code = ("import sys; from minivae import rundir; from minivae.errors import MinivaeError\n"
                "try:\n  rundir.lock(sys.argv[1]).__enter__()\n"
                "except rundir.RunDirBusy as e:\n  print(e); sys.exit(3)\n")
        p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 3 and f"in use by process {os.getpid()}" in p.stdout, p
    assert not (tmp_path / rundir.LOCK).exists() and log == []


# ---------------------------------------------------------------------------- 3: temporaries
def test_sigkill_during_a_write_leaves_a_stale_lock_and_temporaries_that_resume_removes(tmp_path):
    """A real SIGKILL while the checkpoint's temporary file is being written (a 1000-wide
    model: a 25 MB checkpoint) leaves the lock file and the temporary behind; --resume reports
    the stale lock of the dead pid, removes the temporary and continues from the checkpoint."""
    d = tmp_path / "run"
    big = ["--hidden", "1000", "--latent-dim", "2", "--batch-size", "300", "--no-progress"]
    argv = ["train", *big, "--epochs", "100000", "--out", d]

    def temporaries():
        return [n for n in os.listdir(d) if n.startswith(".tmp-")]
    for attempt in range(8):
        p = cli_process(*argv)
        wait_for(lambda: (d / CHECKPOINT).exists(), p, "first checkpoint")
        wait_for(lambda: temporaries(), p, "a checkpoint write", timeout=300)
        p.send_signal(signal.SIGKILL)
        p.communicate()
        left = temporaries()
        if left:
            break
        argv = ["train", "--resume", d, "--epochs", "100000", "--no-progress"]
    assert left, "no SIGKILL landed inside a write in 8 tries"
    assert all(rundir.TEMPORARY.match(n) for n in left), left
    assert json.loads((d / rundir.LOCK).read_text())["pid"] == p.pid    # the dead one's
    epoch = load_run(d)[1]["epoch"]                   # the last checkpoint is whole
    rc, _, err = finish(cli_process("train", "--resume", d, "--epochs", epoch + 1,
                                    "--no-progress"))
    assert rc == 0, err
    assert f"the lock of process {p.pid}" in err and "was stale" in err, err
    assert "removed 1 temporary file" in err and "left by an interrupted write" in err, err
    assert load_run(d)[1]["epoch"] == epoch + 1
    assert temporaries() == [] and not (d / rundir.LOCK).exists()


def test_clean_temporaries_removes_only_atomic_write_leftovers(tmp_path):
    keep = ["checkpoint.npz", ".tmp-notours.txt", ".tmp-abcdefghnotes.npz", "tmp-abcdefghconfig.json",
            ".tmp-abc_efghcheckpoint.npz.bak"]
    gone = [".tmp-abc_efghcheckpoint.npz", ".tmp-12345678metrics.jsonl",
            ".tmp-zzzzzzzzconfig.json"]
    for n in keep + gone:
        (tmp_path / n).write_bytes(b"x" * 10)
    (tmp_path / ".tmp-dir12345checkpoint.npz").mkdir()          # not a regular file: kept
    os.symlink(tmp_path / "checkpoint.npz", tmp_path / ".tmp-link1234checkpoint.npz")
    log = []
    assert rundir.clean_temporaries(tmp_path, log.append) == sorted(gone)
    assert sorted(os.listdir(tmp_path)) == sorted(keep + [".tmp-dir12345checkpoint.npz",
                                                          ".tmp-link1234checkpoint.npz"])
    assert log == [f"{tmp_path}: removed 3 temporary files (0.0 MB) left by an interrupted write"]


# ---------------------------------------------------------------------------- 1: unloadable
def test_optimiser_state_overflow_keeps_the_last_loadable_checkpoint(tmp_path, capsys):
    """sigma = 1e-10: the gradients are finite but their squares overflow Adam's v.  The run
    ends non-zero naming it, and the epoch-0 checkpoint (not one holding v = inf) is there for
    eval, sample and --resume."""
    d = tmp_path / "gs"
    rc, _, err = run(["train", *SMALL, "--likelihood", "gaussian", "--sigma", "1e-10",
                      "--epochs", "1", "--out", str(d)], capsys)
    one_line_error(rc, err, "optimiser state v became NaN or infinite by the end of epoch 1",
                   "the last good checkpoint (the end of epoch 0)")
    assert load_run(d)[1]["epoch"] == 0
    assert run(["eval", str(d)], capsys)[0] == 0
    assert epochs_of(d) == [0]


def test_a_nan_heldout_elbo_is_a_failed_run(tmp_path, capsys):
    """--lr 1e6 --on-nonfinite skip: the first epoch's steps are finite but leave a model whose
    test ELBO is NaN; that is no success: exit 2, and the epoch-0 checkpoint stays."""
    d = tmp_path / "lr"
    rc, _, err = run(["train", *SMALL, "--lr", "1000000", "--on-nonfinite", "skip",
                      "--epochs", "2", "--out", str(d)], capsys)
    one_line_error(rc, err, "the held-out test ELBO is non-finite (nan) after epoch 1", "was not saved",
                   "(the end of epoch 0)")
    assert load_run(d)[1]["epoch"] == 0 and epochs_of(d) == [0]


def test_an_epoch_that_skipped_every_batch_is_a_failed_run(tmp_path):
    """sigma = 1e-20: 1/sigma^2 overflows float32, every loss is infinite, every batch is
    skipped (no held-out split to catch it).  Before: 'success' with a train loss of 0."""
    from minivae.data import Dataset, make_shapes
    from minivae.model import VAE
    from minivae.train import Diverged, TrainConfig, Trainer
    imgs, _ = make_shapes(40, seed=0)
    data = Dataset("shapes", imgs.reshape(40, -1), None, None, (32, 32), "none")
    model = VAE(1024, (8,), 2, likelihood="gaussian", sigma=1e-20)
    tr = Trainer(model, data, TrainConfig(epochs=2, batch_size=20, on_nonfinite="skip"),
                 str(tmp_path), log=lambda s: None)
    with pytest.raises(Diverged, match="every one of the 2 batches of epoch 1 had a non-finite"):
        tr.fit()
    assert load_run(tmp_path)[1]["epoch"] == 0 and epochs_of(tmp_path) == [0]


def test_a_checkpoint_that_would_not_load_back_is_not_written(tmp_path):
    """A meta record the loader would refuse (here a dataset record a Python caller gave
    malformed) stops the save before the file is touched."""
    from minivae.data import Dataset, make_shapes
    from minivae.model import VAE
    from minivae.train import TrainConfig, Trainer
    imgs, _ = make_shapes(40, seed=0)
    data = Dataset("shapes", imgs.reshape(40, -1), None, None, (32, 32), "none")
    tr = Trainer(VAE(1024, (8,), 2), data, TrainConfig(epochs=1, batch_size=20), str(tmp_path),
                 log=lambda s: None, dataset_args={"binarize": 3})
    with pytest.raises(MinivaeError, match="would not load back .*dataset record is malformed"):
        tr.fit()
    assert not (tmp_path / CHECKPOINT).exists()


# ---------------------------------------------------------------------------- 4: damaged files
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished one-epoch run made by `minivae train` (copied before each damage)."""
    d = tmp_path_factory.mktemp("finished") / "run"
    mp = pytest.MonkeyPatch()
    mp.setattr(datasets, "SHAPES_TRAIN", 300)
    mp.setattr(datasets, "SHAPES_TEST", 50)
    mp.setattr(cli, "_figures", lambda *a: None)
    try:
        assert cli.main(["train", *SMALL, "--epochs", "1", "--out", str(d)]) == 0
    finally:
        mp.undo()
    return d


def copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


def rewrite_meta(path, key, value):
    """Write the checkpoint at path again with meta[key] (dotted) set to value."""
    params, meta, opt, extra = checkpoint.load(path)
    d = meta
    for k in key.split(".")[:-1]:
        d = d[k]
    d[key.split(".")[-1]] = value
    arrays = {"params": params, **{f"opt.{k}": a for k, a in opt.items()},
              **{f"extra.{k}": a for k, a in extra.items()}, "meta": np.array(json.dumps(meta))}
    with open(path, "wb") as f:
        np.savez(f, **arrays)


BAD_ROWS = [('{"epoch": "abc"}', "epoch must be an integer >= 0, got abc"),
            ('{"epoch": null}', "epoch must be an integer >= 0, got None"),
            ('{"epoch": true}', "epoch must be an integer >= 0, got True"),
            ('{"epoch": -1}', "epoch must be an integer >= 0, got -1"),
            ('{"step": 3}', "epoch must be an integer >= 0, got None"),
            ('{"epoch": 1e400}', "epoch must be an integer >= 0, got inf"),
            ('{"epoch": 1, "train_loss": "low"}', "train_loss must be a number, got low"),
            ('{"epoch": 1, "test_elbo": [1]}', "test_elbo must be a number, got [1]"),
            ('[1, 2]', "is not a JSON object")]


@pytest.mark.parametrize("line, needle", BAD_ROWS, ids=[r for r, _ in BAD_ROWS])
def test_a_damaged_metrics_row_is_one_line_on_resume(tmp_path, capsys, finished, line, needle):
    d = copy_run(finished, tmp_path / "run")
    with open(d / "metrics.jsonl", "a") as f:
        f.write(line + "\n" + json.dumps({"epoch": 1}) + "\n")
    before = snapshot(d)
    rc, _, err = run(["train", "--resume", str(d), "--epochs", "2", "--no-progress"], capsys)
    one_line_error(rc, err, f"{d / 'metrics.jsonl'}: line 3", needle)
    assert snapshot(d) == before                                  # nothing rewritten


@pytest.mark.parametrize("name, command", [("metrics.jsonl", "resume"),
                                           ("checkpoint.npz", "resume"),
                                           ("checkpoint.npz", "eval"),
                                           ("checkpoint.npz", "sample")])
def test_a_fifo_in_the_run_directory_is_refused_not_waited_on(tmp_path, finished, name, command):
    """A real FIFO with no writer: reading it would block forever; the real entry point must
    refuse it (exit 2, one line) within the timeout."""
    d = copy_run(finished, tmp_path / "run")
    os.unlink(d / name)
    os.mkfifo(d / name)
    argv = {"resume": ["train", "--resume", d, "--epochs", "2", "--no-progress"],
            "eval": ["eval", d], "sample": ["sample", d]}[command]
    rc, _, err = finish(cli_process(*argv), timeout=60)
    one_line_error(rc, err, f"{d / name} is a FIFO, not a regular file")


def test_a_folder_in_place_of_metrics_is_refused(tmp_path, capsys, finished):
    d = copy_run(finished, tmp_path / "run")
    os.unlink(d / "metrics.jsonl")
    os.mkdir(d / "metrics.jsonl")
    rc, _, err = run(["train", "--resume", str(d), "--epochs", "2", "--no-progress"], capsys)
    one_line_error(rc, err, "metrics.jsonl is a folder, not a regular file")


BAD_META = [("opt.t", 10 ** 400, "opt.t (the optimiser's step count) must be an integer in "
             "[0, 2^63), got 1000000000"),
            ("opt.t", 2 ** 63, "opt.t (the optimiser's step count) must be an integer in "
             "[0, 2^63), got 9223372036854775808"),
            ("opt.t", "many", "its optimiser record"),
            ("epoch", 10 ** 400, "epoch must be an integer in [0, 2^63)"),
            ("global_step", 2 ** 64, "global_step must be an integer in [0, 2^63)"),
            ("epoch_totals.n", 10 ** 30, "epoch totals are malformed"),
            ("image_shape", [1024], "image_shape [1024] is not [height, width]"),
            ("image_shape", [4, 16, 16], "image_shape [4, 16, 16] is not [height, width]"),
            ("image_shape", [1] * 71 + [32, 32], "image_shape [1, 1, 1"),
            ("image_shape", [32, 16, 2], "is not [height, width]"),
            ("blas_threads", 0, "blas_threads must be a thread count in [1, 4096] or null"),
            ("blas_threads", "2", "blas_threads must be a thread count"),
            ("blas_threads", 10 ** 6, "blas_threads must be a thread count")]


@pytest.mark.parametrize("command", ["resume", "sample", "eval"])
@pytest.mark.parametrize("key, value, needle", BAD_META,
                         ids=[f"{k}={str(v)[:10]}" for k, v, _ in BAD_META])
def test_damaged_checkpoint_meta_is_one_line(tmp_path, capsys, finished, command, key, value,
                                              needle):
    d = copy_run(finished, tmp_path / "run")
    rewrite_meta(d / CHECKPOINT, key, value)
    before = snapshot(d)
    argv = {"resume": ["train", "--resume", str(d), "--epochs", "3", "--no-progress"],
            "sample": ["sample", str(d)], "eval": ["eval", str(d)]}[command]
    rc, _, err = run(argv, capsys)
    one_line_error(rc, err, f"{d / CHECKPOINT}: ", needle)
    assert snapshot(d) == before


def test_a_drawable_shape_still_samples(tmp_path, capsys, finished):
    """The check refuses what cannot be drawn, not a shape with a channel axis: [16, 64, 1]."""
    d = copy_run(finished, tmp_path / "run")
    rewrite_meta(d / CHECKPOINT, "image_shape", [16, 64, 1])
    rc, out, err = run(["sample", str(d), "--n", "4"], capsys)
    assert rc == 0, err



def test_a_run_of_an_older_version_resumes_under_the_new_metric_names(tmp_path, capsys, finished):
    """Runs written before the distortion had one name wrote it as {split}_rec (the same value,
    -E_q log p(x|z)): they read, resume, plot and summarise under {split}_distortion, the old
    rows keeping their values, and a trimmed file is rewritten under the new names."""
    from minivae.plots import save_loss_curves
    from minivae.rundir import read_metrics
    from minivae.sweep import final_metrics
    d = copy_run(finished, tmp_path / "run")
    new = read_metrics(d)
    text = (d / "metrics.jsonl").read_text()
    assert "_distortion" in text and "_rec" not in text
    (d / "metrics.jsonl").write_text(text.replace("_distortion", "_rec"))      # an old run's file
    assert read_metrics(d) == new
    assert final_metrics(d)[2]["distortion"] == new[-1]["test_distortion"]
    assert "distortion" in save_loss_curves(str(tmp_path / "loss.png"), read_metrics(d))
    rc, out, err = run(["train", "--resume", str(d), "--epochs", "2", *SMALL[-1:]], capsys)
    assert rc == 0, err
    rows = read_metrics(d)
    assert [r["epoch"] for r in rows] == [0, 1, 2] and rows[:2] == new
    assert all(r["test_distortion"] > 0 and "test_rec" not in r for r in rows)
    with open(d / "metrics.jsonl", "a") as f:        # a row after the checkpoint: trimmed
        f.write(json.dumps({**{k.replace("_distortion", "_rec"): v for k, v in rows[-1].items()},
                            "epoch": 3}) + "\n")
    rc, out, err = run(["train", "--resume", str(d), "--epochs", "2", *SMALL[-1:]], capsys)
    assert rc == 0, err
    assert "_rec" not in (d / "metrics.jsonl").read_text() and read_metrics(d) == rows



OLD_RUN = pathlib.Path(__file__).parent / "data" / "run-v0.1.0"
# what `minivae eval RUN --json` printed for it with the version that wrote it (0.1.0, commit
# 9447f27): rounded to 4 decimals; its "rec" is today's "distortion"
OLD_EVAL = {"loss": 726.3034, "rec": 726.2505, "kl": 0.0529, "elbo": -726.3034}


def test_a_run_directory_written_by_version_0_1_0_loads_evaluates_and_resumes(tmp_path, capsys):
    """tests/data/run-v0.1.0: a one-epoch run (300 shapes, 1024-8-2) as version 0.1.0 wrote it,
    metrics under the old name *_rec.  It evaluates to what 0.1.0 printed, within the printed
    rounding (5e-5) plus float32 round-off of a sum of D = 1024 terms (about sqrt(D) eps32 =
    2e-6 relative; allowed 8 times that), and resumes for a second epoch."""
    d = copy_run(OLD_RUN, tmp_path / "run")
    rc, out, err = run(["eval", str(d), "--json"], capsys)
    assert rc == 0, err
    res = json.loads(out.strip().splitlines()[0])
    for new_key, old_key in (("loss", "loss"), ("distortion", "rec"), ("kl", "kl"),
                             ("elbo", "elbo")):
        tol = 5e-5 + 8 * 2e-6 * abs(OLD_EVAL[old_key])
        assert abs(res[new_key] - OLD_EVAL[old_key]) <= tol, (new_key, res[new_key])
    rc, out, err = run(["train", "--resume", str(d), "--epochs", "2", "--no-progress"], capsys)
    assert rc == 0, err
    from minivae.rundir import read_metrics
    rows = read_metrics(d)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert all("test_distortion" in r and "test_rec" not in r for r in rows)
    assert rows[2]["test_elbo"] > rows[0]["test_elbo"]


# ---------------------------------------------------------------------------- 5: memory
@pytest.mark.parametrize("argv, part", [(["--hidden", "1000000", "--batch-size", "100000"],
                                         "workspace"),
                                        (["--valid-size", "1000000000"], "data")])
def test_a_run_beyond_any_machine_is_refused_before_allocating(tmp_path, argv, part):
    """The real entry point, sizes no machine has (petabytes of workspace, 4 TB of images):
    one line naming the estimate and what is available, exit 2, within seconds and without a
    run directory.  (Before: they allocated until the kernel killed the run, exit 137.)"""
    d = tmp_path / "run"
    rc, _, err = finish(cli_process("train", *argv, "--out", d), timeout=120)
    last = one_line_error(rc, err, "this run needs about", "GB is available", part,
                          "--no-memory-check")
    assert len(err.strip().splitlines()) == 1, err
    assert not d.exists()


def test_the_estimate_against_the_machine(tmp_path, capsys, monkeypatch):
    """With 300 MB free (memory.available patched), a 4000-wide model (8.3 M parameters: 200 MB
    of parameters, gradients, Adam state and a checkpoint copy, and a 4000-wide workspace) is
    refused; --no-memory-check runs it."""
    from minivae import memory
    monkeypatch.setattr(memory, "available", lambda: 300_000_000)
    argv = ["train", "--hidden", "4000", "--latent-dim", "2", "--batch-size", "100",
            "--no-progress", "--epochs", "0"]
    rc, _, err = run([*argv, "--out", str(tmp_path / "a")], capsys)
    one_line_error(rc, err, "this run needs about 238 MB of memory (workspace 72 MB, "
                   "parameters 66 MB, optimiser 66 MB, checkpoint 33 MB; and ~268 MB for Python "
                   "and its libraries) but 300 MB is available")
    assert not (tmp_path / "a").exists()
    rc, _, err = run([*argv, "--no-memory-check", "--out", str(tmp_path / "b")], capsys)
    assert rc == 0, err


def test_the_parameter_count_of_the_estimate_is_the_models():
    """memory.estimate counts parameters from the sizes alone; it must agree with the VAE."""
    from minivae import memory
    from minivae.model import VAE
    for D, H, Z in [(1024, (16,), 2), (784, (200, 100), 50), (12, (), 3)]:
        P = VAE(D, H, Z).num_params()
        parts = memory.estimate(D, H, Z, 4, "adam", 1, 1, eval_batch=1)
        assert parts["parameters"] == 2 * P * 4 and parts["optimiser"] == 2 * P * 4
        assert memory.estimate(D, H, Z, 8, "sgd")["optimiser"] == P * 8


def test_available_memory_is_read():
    from minivae import memory
    have = memory.available()
    assert have is None or 0 < have < 1 << 50
    if os.path.exists("/proc/meminfo"):
        assert have is not None


# ---------------------------------------------------------------------------- fuzzing
FUZZ = settings(deadline=None, max_examples=40,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
numbers = st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=True, allow_infinity=True)
json_values = st.recursive(st.none() | st.booleans() | numbers | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                           max_leaves=8)
good_rows = st.fixed_dictionaries({"epoch": st.integers(0, 5)},
                                  optional={"step": st.integers(0, 100), "train_loss": numbers,
                                            "test_elbo": numbers, "seconds": numbers})
rows_text = st.one_of(good_rows.map(json.dumps),
                      st.dictionaries(st.sampled_from(["epoch", "step", "test_elbo", "x"]),
                                      json_values, max_size=4).map(json.dumps),
                      json_values.map(json.dumps), st.text(max_size=30))


@FUZZ
@given(lines=st.lists(rows_text, max_size=8), newline=st.booleans(),
       junk=st.binary(max_size=16), epoch=st.integers(0, 5))
def test_fuzz_metrics_file(tmp_path, lines, newline, junk, epoch):
    """Any metrics.jsonl: read_metrics and the resume's trim return rows of integer epochs and
    numbers, or raise a one-line MinivaeError naming the file; the trim keeps every row up to
    the checkpoint's epoch and drops only the later ones."""
    from minivae.train import Trainer
    from minivae.rundir import read_metrics
    d = pathlib.Path(tempfile.mkdtemp(dir=tmp_path))
    raw = ("\n".join(lines) + ("\n" if newline else "")).encode() + junk
    (d / "metrics.jsonl").write_bytes(raw)
    try:
        rows = read_metrics(d)
    except MinivaeError as e:
        assert "\n" not in str(e) and str(d / "metrics.jsonl") in str(e)
        return
    for r in rows:
        assert isinstance(r["epoch"], int) and not isinstance(r["epoch"], bool)
        assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in r.values())
    trainer = object.__new__(Trainer)             # the trim reads only run_dir and epoch
    trainer.run_dir, trainer.epoch = str(d), epoch
    trainer._trim_metrics()
    assert ([json.dumps(r) for r in read_metrics(d)]          # json: NaN equals NaN
            == [json.dumps(r) for r in rows if r["epoch"] <= epoch])
    assert not [n for n in os.listdir(d) if n.startswith(".tmp-")]


ENTRY_KINDS = ["good", "missing", "truncated", "garbage", "folder", "fifo", "dangling-link",
               "link-to-good"]


def make_entry(path, kind, good, cut, junk):
    if kind == "missing":
        return
    if kind == "good":
        path.write_bytes(good)
    elif kind == "truncated":
        path.write_bytes(good[:cut % (len(good) + 1)])
    elif kind == "garbage":
        path.write_bytes(junk)
    elif kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dangling-link":
        os.symlink(path.parent / "nowhere", path)
    elif kind == "link-to-good":
        target = path.parent / f"real-{path.name}"
        target.write_bytes(good)
        os.symlink(target, path)


class Alarm(Exception):
    pass


@FUZZ
@given(kinds=st.fixed_dictionaries({n: st.sampled_from(ENTRY_KINDS) for n in
                                    ("checkpoint.npz", "metrics.jsonl", "config.json",
                                     rundir.LOCK, ".tmp-abcd1234checkpoint.npz")}),
       cut=st.integers(0, 10 ** 6), junk=st.binary(max_size=64),
       command=st.sampled_from(["resume", "eval"]))
def test_fuzz_run_directory(tmp_path, finished, kinds, cut, junk, command):
    """A run directory whose every entry is good, missing, cut short, garbage, a folder, a
    FIFO or a link: resume and eval end with exit 0 or one line and exit 2, within seconds
    (an alarm turns a hang into a failure), and a checkpoint that was good is still good."""
    d = pathlib.Path(tempfile.mkdtemp(dir=tmp_path))
    for name, kind in kinds.items():
        good = (finished / name).read_bytes() if (finished / name).exists() else b"{}"
        make_entry(d / name, kind, good, cut, junk)
    ck_before = (d / CHECKPOINT).read_bytes() if kinds[CHECKPOINT] == "good" else None
    argv = {"resume": ["train", "--resume", str(d), "--epochs", "1", "--no-progress"],
            "eval": ["eval", str(d)]}[command]

    def alarm(*a):
        raise Alarm
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(60)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = cli.main(argv)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    err = err.getvalue()
    assert rc in (0, 2), (rc, err)
    assert "Traceback" not in err
    if rc == 2:
        assert err.strip().splitlines()[-1].startswith("minivae: error: "), err
    if ck_before is not None:
        assert (d / CHECKPOINT).read_bytes() == ck_before
    if command == "resume" and kinds[rundir.LOCK] in ("good", "missing", "truncated",
                                                      "garbage", "link-to-good"):
        assert not os.path.lexists(d / rundir.LOCK) or rc == 2
    assert not rundir._held


def test_on_a_gpu_the_model_is_checked_against_the_devices_free_memory(tmp_path, capsys, gpu):
    """--device cuda: parameters, optimiser state and workspace live on the device, so they are
    compared with its free memory (the stand-in reports 16 GB; a real GPU its own): a 10,000
    batch through a 10^6-wide layer needs ~370 GB there and is refused before anything is made."""
    free = gpu.cuda.Device().mem_info[0]
    rc, _, err = run(["train", "--device", "cuda", "--hidden", "1000000", "--batch-size",
                      "10000", "--no-progress", "--out", str(tmp_path / "g")], capsys)
    one_line_error(rc, err, "of GPU memory (workspace ", f"but {free / 1e9:.1f} GB is available")
    assert not (tmp_path / "g").exists()


def test_a_file_system_without_locks_warns_and_goes_on(tmp_path, monkeypatch):
    """flock failing with ENOLCK (some network file systems): a warning line, and the run is
    not refused."""
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
    monkeypatch.setattr(fcntl, "flock", no_locks)
    log = []
    with rundir.lock(tmp_path, log.append):
        assert (tmp_path / rundir.LOCK).exists()
    assert len(log) == 1 and "cannot lock it" in log[0] and "not prevented" in log[0]
    assert not (tmp_path / rundir.LOCK).exists()
