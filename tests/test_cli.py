"""The command line at its edges: every bad input ends in exit status 2 and one line on stderr
(argparse's usage error, or ``minivae: error: ...``), never a traceback.

Most cases run ``minivae.cli.main`` in this process (an escaping exception fails the test, as a
traceback would); a few run ``python -m minivae`` in a subprocess to check the real entry point.
The training cases use 300 built-in shapes images so that a bad option found after the data is
loaded costs little.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import minivae.data.datasets as datasets
from minivae import cli
from minivae.data import Dataset
from minivae.model import VAE
from minivae.train import TrainConfig, Trainer
from minivae.rundir import load_run

SMALL = ["--hidden", "16", "--latent-dim", "2", "--batch-size", "100", "--no-progress"]


@pytest.fixture(autouse=True)
def small_shapes(monkeypatch):
    monkeypatch.setattr(datasets, "SHAPES_TRAIN", 300)
    monkeypatch.setattr(datasets, "SHAPES_TEST", 50)
    monkeypatch.setattr(cli, "_figures", lambda *a: None)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished one-epoch run made by `minivae train` (PNG figures included)."""
    d = tmp_path_factory.mktemp("cli") / "run"
    mp = pytest.MonkeyPatch()
    mp.setattr(datasets, "SHAPES_TRAIN", 300)
    mp.setattr(datasets, "SHAPES_TEST", 50)
    try:
        assert cli.main(["train", *SMALL, "--epochs", "1", "--out", str(d)]) == 0
    finally:
        mp.undo()
    return d


def run(argv, capsys):
    """(exit status, stdout, stderr) of cli.main(argv); any other exception propagates."""
    try:
        rc = cli.main(argv)
    except SystemExit as e:                     # argparse's usage errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_clean_error(rc, err, *needles):
    assert rc == 2, (rc, err)
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    last = lines[-1]
    assert last.startswith("minivae: error: ") or (
        "error: " in last and any(ln.startswith("usage:") for ln in lines)), err
    for n in needles:
        assert n in last, (n, last)
    return last


# ---------------------------------------------------------------------------- bad inputs, by kind
# (1) rejected by the argument parser: usage line + "error:"
PARSER = [
    [], ["fit"], ["--version-please"],
    ["train", "--frobnicate"], ["train", "--epochs"],
    ["train", "--epochs", "-1"], ["train", "--epochs", "abc"], ["train", "--epochs", "1.5"],
    ["train", "--batch-size", "0"], ["train", "--batch-size", "-5"],
    ["train", "--lr", "nan"], ["train", "--lr", "0"], ["train", "--lr", "-1e-3"],
    ["train", "--lr", "fast"],
    ["train", "--hidden", "0"], ["train", "--hidden", "abc"], ["train", "--hidden", ""],
    ["train", "--hidden", "16,-1"], ["train", "--hidden", "16,,x"],
    ["train", "--latent-dim", "0"], ["train", "--latent-dim", "2.5"],
    ["train", "--beta", "-1"], ["train", "--beta", "nan"],
    ["train", "--activation", "swish"], ["train", "--likelihood", "poisson"],
    ["train", "--optimizer", "lbfgs"], ["train", "--dtype", "int8"],
    ["train", "--device", "tpu"], ["train", "--on-nonfinite", "ignore"],
    ["train", "--k", "0"], ["train", "--sigma", "0"], ["train", "--clip", "-1"],
    ["train", "--valid-size", "-1"], ["train", "--iwae", "-1"], ["train", "--iwae-n", "0"],
    ["train", "--preset", "huge"], ["train", "--seed", "x"],
    ["eval"], ["eval", "RUN", "--iwae", "-1"], ["eval", "RUN", "--iwae", "abc"],
    ["eval", "RUN", "--n", "0"], ["eval", "RUN", "--rows", "0"], ["eval", "RUN", "--split", "foo"],
    ["sample"], ["sample", "RUN", "--n", "0"], ["sample", "RUN", "--n", "-3"],
    ["sample", "RUN", "--seed", "1.5"],
]


@pytest.mark.parametrize("argv", PARSER, ids=[" ".join(a) or "(none)" for a in PARSER])
def test_parser_rejects(argv, capsys):
    rc, out, err = run(argv, capsys)
    assert_clean_error(rc, err)
    assert any(ln.startswith("usage:") for ln in err.splitlines())


# (2) well-formed options with values the library refuses: one "minivae: error:" line naming it
LIBRARY = [
    (["--lr", "inf"], "lr"), (["--beta", "inf"], "beta"),
    (["--likelihood", "gaussian", "--sigma", "inf"], "sigma"), (["--clip", "inf"], "clip"),
    (["--dataset", "foo"], "dataset"), (["--binarize", "foo"], "binarize"),
    (["--seed", "-1"], "seed"), (["--binarize", "dynamic", "--likelihood", "gaussian",
                                   "--epochs", "0"], None),
    # a sigma below float32's normal range passes every check; the divergence guard stops it
    (["--likelihood", "gaussian", "--learn-sigma", "shared", "--sigma", "1e-40"], "non-finite"),
]


@pytest.mark.parametrize("opts,name", LIBRARY, ids=[" ".join(o) for o, _ in LIBRARY])
def test_library_rejects(opts, name, tmp_path, capsys):
    rc, out, err = run(["train", *SMALL, "--epochs", "1", *opts, "--out", str(tmp_path / "r")],
                       capsys)
    if name is None:          # (a valid combination: Gaussian on binarised data trains fine)
        assert rc == 0, err
        return
    assert_clean_error(rc, err, name)
    if name != "non-finite":                  # refused before the run directory was made
        assert not (tmp_path / "r").exists() or os.listdir(tmp_path / "r") == []


def test_device_cuda_without_cupy(tmp_path, capsys):
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed here")
    except ImportError:
        pass
    rc, _, err = run(["train", *SMALL, "--device", "cuda", "--out", str(tmp_path / "r")], capsys)
    assert_clean_error(rc, err, "CuPy")
    rc, _, err = run(["sample", str(tmp_path), "--device", "cuda"], capsys)
    assert_clean_error(rc, err)


def test_bad_device_in_the_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MINIVAE_DEVICE", "gpu0")
    rc, _, err = run(["train", *SMALL, "--out", str(tmp_path / "r")], capsys)
    assert_clean_error(rc, err, "device")


@pytest.mark.skipif(open("/proc/sys/vm/overcommit_memory").read().strip() == "1",
                    reason="with overcommit 'always' a huge allocation may succeed and then be "
                           "killed instead of raising MemoryError")
@pytest.mark.parametrize("opts", [["--hidden", "1000000000"], ["--latent-dim", "100000000000"],
                                  ["--valid-size", "100000000000"]])
def test_sizes_beyond_memory(opts, tmp_path, capsys):
    rc, _, err = run(["train", "--no-progress", "--epochs", "1", *opts,
                      "--out", str(tmp_path / "r")], capsys)
    assert_clean_error(rc, err, "memory")


# (3) files and folders: run directories and checkpoints
def test_existing_out_is_never_overwritten(run_dir, capsys):
    before = {n: (run_dir / n).stat().st_mtime_ns for n in os.listdir(run_dir)}
    rc, _, err = run(["train", *SMALL, "--out", str(run_dir)], capsys)
    assert_clean_error(rc, err, "already exists", "--resume")
    assert {n: (run_dir / n).stat().st_mtime_ns for n in os.listdir(run_dir)} == before


@pytest.mark.parametrize("what", ["file", "under-a-file"])
def test_out_that_cannot_be_a_folder(what, tmp_path, capsys):
    f = tmp_path / "f"
    f.write_text("x")
    out = f if what == "file" else f / "sub"
    rc, _, err = run(["train", *SMALL, "--out", str(out)], capsys)
    assert_clean_error(rc, err, str(out))
    assert f.read_text() == "x"


def _bad_runs(tmp_path, run_dir):
    """name -> a run directory or checkpoint path that cannot be used."""
    tmp_path.mkdir()
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a checkpoint at all")
    raw = (run_dir / "checkpoint.npz").read_bytes()
    truncated = tmp_path / "trunc" / "checkpoint.npz"
    truncated.parent.mkdir()
    truncated.write_bytes(raw[:len(raw) // 2])
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    return {"missing-dir": tmp_path / "missing", "empty-dir": empty_dir, "garbage": garbage,
            "truncated": truncated.parent, "a-text-file": tmp_path / "garbage.npz"}


@pytest.mark.parametrize("cmd", ["resume", "eval", "sample"])
def test_unusable_runs(cmd, tmp_path, run_dir, capsys):
    for name, path in _bad_runs(tmp_path / cmd, run_dir).items():
        argv = {"resume": ["train", "--resume", str(path), "--no-progress"],
                "eval": ["eval", str(path), "--no-progress"],
                "sample": ["sample", str(path)]}[cmd]
        rc, _, err = run(argv, capsys)
        assert_clean_error(rc, err, str(path) if name != "empty-dir" else "checkpoint")


def test_resume_of_a_run_made_in_python_without_dataset_args(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = Dataset("shapes", rng.random((50, 1024), dtype=np.float32), None, None, (32, 32),
                   "none")
    Trainer(VAE(1024, (4,), 2), data, TrainConfig(epochs=1, batch_size=25), str(tmp_path),
            log=lambda m: None).fit()
    rc, _, err = run(["train", "--resume", str(tmp_path), "--no-progress"], capsys)
    assert_clean_error(rc, err, "resume")


def test_eval_split_the_run_lacks(run_dir, capsys):
    rc, _, err = run(["eval", str(run_dir), "--split", "valid"], capsys)
    assert_clean_error(rc, err, "valid")


def test_sample_out_in_a_missing_folder_and_too_many(run_dir, tmp_path, capsys):
    out = tmp_path / "no" / "such" / "x.png"
    rc, _, err = run(["sample", str(run_dir), "--out", str(out)], capsys)
    assert_clean_error(rc, err, str(out.parent))
    rc, _, err = run(["sample", str(run_dir), "--n", "100000000"], capsys)
    assert_clean_error(rc, err, "--n")


# ---------------------------------------------------------------------------- the good path
def test_train_eval_sample_work(run_dir, tmp_path, capsys):
    rc, out, err = run(["eval", str(run_dir), "--json", "--iwae", "4", "--n", "10",
                        "--no-progress"], capsys)
    assert rc == 0 and '"logpx"' in out, err
    rc, out, err = run(["eval", str(run_dir), "--iwae", "0", "--no-progress"], capsys)  # 0: off
    assert rc == 0 and "ELBO" in out, err
    png = tmp_path / "s.png"
    rc, out, err = run(["sample", str(run_dir), "--n", "4", "--out", str(png)], capsys)
    assert rc == 0 and png.stat().st_size > 0, err
    assert load_run(run_dir)[1]["epoch"] == 1


# ---------------------------------------------------------------------------- the real entry point
SUBPROCESS = [["train", "--frobnicate"], ["train", "--lr", "nan"], ["train", "--dataset", "foo"],
              ["eval", "/nonexistent/run"], ["sample", "/etc/hostname"]]


@pytest.mark.parametrize("argv", SUBPROCESS, ids=[" ".join(a) for a in SUBPROCESS])
def test_python_dash_m_minivae(argv, tmp_path):
    p = subprocess.run([sys.executable, "-m", "minivae", *argv], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert_clean_error(p.returncode, p.stderr)
    assert p.stdout == ""


# ---------------------------------------------------------------------------- review fixes
def _gpu_checkpoint(run_dir, dest):
    """A copy of run_dir's checkpoint whose meta says it was trained on device 'cuda'."""
    from minivae import checkpoint
    params, meta, opt, extra = checkpoint.load(str(run_dir / "checkpoint.npz"))
    meta = dict(meta, model=dict(meta["model"], device="cuda"))
    meta.pop("format_version", None)
    dest.mkdir()
    checkpoint.save(str(dest / "checkpoint.npz"), params, meta, opt, extra)
    return dest


def test_gpu_checkpoint_loads_on_the_cpu(run_dir, tmp_path, capsys):
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed here: a 'cuda' checkpoint loads anyway")
    except ImportError:
        pass
    gpu = _gpu_checkpoint(run_dir, tmp_path / "gpu")
    model, meta, _, _ = load_run(gpu, device="cpu")
    assert model.config["device"] == "cpu" and meta["model"]["device"] == "cuda"
    np.testing.assert_array_equal(model.buffer.data, load_run(run_dir)[0].buffer.data)
    rc, out, err = run(["eval", str(gpu), "--device", "cpu", "--no-progress"], capsys)
    assert rc == 0 and "ELBO" in out, err
    rc, out, err = run(["sample", str(gpu), "--device", "cpu", "--n", "4",
                        "--out", str(tmp_path / "s.png")], capsys)
    assert rc == 0, err
    rc, _, err = run(["eval", str(gpu), "--no-progress"], capsys)    # its own device: no CuPy
    assert_clean_error(rc, err, "CuPy")


@pytest.mark.parametrize("cmd", ["train", "eval", "sample"])
def test_negative_seed_is_a_clean_error(cmd, run_dir, tmp_path, capsys):
    argv = {"train": ["train", *SMALL, "--out", str(tmp_path / "r")],
            "eval": ["eval", str(run_dir), "--no-progress"],
            "sample": ["sample", str(run_dir), "--out", str(tmp_path / "s.png")]}[cmd]
    rc, _, err = run([*argv, "--seed", "-1"], capsys)
    assert_clean_error(rc, err, "seed")


def test_parameter_count_beyond_the_bound_is_a_clean_error(tmp_path, capsys):
    rc, _, err = run(["train", "--no-progress", "--epochs", "1", "--hidden",
                      "99999999999999999999", "--out", str(tmp_path / "r")], capsys)
    last = assert_clean_error(rc, err, "parameter")
    assert "99999999999999999999" in last and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["grid", "grid.jpg", "grid.png.txt"])
def test_sample_out_must_be_a_png(run_dir, tmp_path, capsys, name):
    out = tmp_path / name
    rc, _, err = run(["sample", str(run_dir), "--n", "4", "--out", str(out)], capsys)
    assert_clean_error(rc, err, "--out", ".png")
    assert os.listdir(tmp_path) == []
