"""minivae sweep without MPI: one run directory per (beta, seed), a rerun keeps finished runs and
resumes an interrupted one, bad input is one line.  The MPI sweep, and the summary's statistics
over seeds, are in tests/test_parallel.py::test_sweep_spreads_runs_over_ranks."""
import json
import os

import pytest

from minivae import cli
from minivae.rundir import load_run, read_metrics

import mpi_job  # noqa: E402  (its small data set and sweep arguments; importing patches nothing)


@pytest.fixture(autouse=True)
def small_data(monkeypatch):
    monkeypatch.setattr(cli, "_load_data", mpi_job.load_data)


def sweep(out):
    return cli.main(["sweep", "--beta", "1,4", "--seeds", "0", "--out", str(out), "--"]
                    + mpi_job.SWEEP_TRAIN)


def test_sweep_runs_every_pair_resumes_and_continues(tmp_path, capsys):
    # one run started as an interrupted one: 0 of 1 epochs done, its checkpoint in place
    assert cli.main(["train", *mpi_job.SWEEP_TRAIN, "--epochs", "0", "--beta", "4", "--seed",
                     "0", "--out", str(tmp_path / "beta4-seed0"), "--no-progress"]) == 0
    capsys.readouterr()
    assert sweep(tmp_path) == 0
    runs = sorted(d for d in os.listdir(tmp_path) if d.startswith("beta"))
    assert runs == ["beta1-seed0", "beta4-seed0"]
    err = capsys.readouterr().err
    assert f"train --resume {tmp_path / 'beta4-seed0'} --epochs 1" in err   # not restarted
    assert err.count("train --epochs 1") == 1
    rows = json.load(open(tmp_path / "summary.json"))
    assert [r["beta"] for r in rows] == [1.0, 4.0]
    for r in rows:
        run = tmp_path / f"beta{r['beta']:g}-seed0"
        last = read_metrics(run)[-1]
        _, meta, _, _ = load_run(run)
        assert last["epoch"] == 1 and meta["model"]["beta"] == r["beta"]
        assert r["runs"]["0"]["elbo"] == r["elbo"]["mean"] == last["test_elbo"]
        assert r["elbo"]["sd"] == 0.0
    assert "over 1 seed." in open(tmp_path / "summary.md").read()
    # a second sweep keeps the finished runs as they are
    before = {d: os.path.getmtime(tmp_path / d / "checkpoint.npz") for d in runs}
    assert sweep(tmp_path) == 0
    assert before == {d: os.path.getmtime(tmp_path / d / "checkpoint.npz") for d in runs}
    assert capsys.readouterr().err.count("is done") == 2


@pytest.mark.parametrize("argv, message", [
    (["--beta", "1,x", "--seeds", "0"], "--beta must be comma-separated"),
    (["--beta", "1,1", "--seeds", "0"], "lists a value twice"),
    (["--beta", "1", "--seeds", "-1"], "needs values >= 0"),
    (["--beta", "1", "--seeds", "0", "--", "--seed", "3"], "drop them")])
def test_sweep_bad_input_is_one_line(tmp_path, capsys, argv, message):
    assert cli.main(["sweep", "--out", str(tmp_path / "s")] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not os.path.exists(tmp_path / "s")          # nothing made before the check


def test_sweep_bad_train_option_is_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["sweep", "--beta", "1", "--seeds", "0", "--out", str(tmp_path / "s"), "--",
                  "--epochs", "-1"])
    assert e.value.code == 2 and "--epochs" in capsys.readouterr().err
