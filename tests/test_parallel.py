"""Data-parallel training over MPI: `mpiexec -n 2` runs of tests/mpi_job.py, compared here.

The claims (minivae/parallel.py's docstring):
  * R = 1 through the MPI path draws and computes what the serial trainer does: bit-for-bit.
  * R = 2 regroups each step's batch sum into two halves and nothing else: its run equals, bit for
    bit, a serial run whose gradient is sum_r (n_r / B) g_r computed in one process; and at every
    step that gradient is within the float32 summation bound
        |g(R=2) - g(R=1)| <= (gamma_B + gamma_(B/2+1)) * sum_i |g_i| / B
    of the R = 1 gradient at the same parameters (per-example gradients g_i computed here).
  * every rank ends with the same parameters; rank 1 writes nothing; a SIGTERM to rank 1 alone
    stops both ranks after the same step with one checkpoint, which resumes exactly on 2 ranks
    and on 1; a rank that fails, hangs or dies ends the job with an error instead of a hang.
Skipped, with the reason, when mpi4py or mpiexec is absent (`pip install '.[mpi]'`).
"""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

mpi4py = pytest.importorskip("mpi4py", reason="mpi4py is not installed: pip install '.[mpi]' "
                             "runs the MPI tests")
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep
                       + os.environ.get("PATH", ""))
if MPIEXEC is None:
    pytest.skip("mpiexec is not on PATH (pip install '.[mpi]' brings MPICH's)",
                allow_module_level=True)

sys.path.insert(0, os.path.dirname(__file__))
import mpi_job  # noqa: E402  (its data and arguments; importing it patches nothing)

from minivae import cli  # noqa: E402
from minivae.model import VAE  # noqa: E402
from minivae.rundir import load_run, read_metrics# noqa: E402

_FB = VAE.forward_backward          # the real one (Halves patches the class)
JOB = os.path.join(os.path.dirname(__file__), "mpi_job.py")
U = 2.0 ** -24


def gamma(m):
    return m * U / (1 - m * U)


def mpirun(scenario, out, timeout=120):
    env = {k: v for k, v in os.environ.items() if k != "MINIVAE_MPI_TIMEOUT"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(os.path.dirname(
        os.path.abspath(cli.__file__))), env.get("PYTHONPATH")]))
    t0 = time.monotonic()
    p = subprocess.run([MPIEXEC, "-n", "2", sys.executable, JOB, scenario, str(out)],
                       capture_output=True, text=True, timeout=timeout, env=env)
    return p, time.monotonic() - t0


class Halves:
    """VAE.forward_backward replaced by the R-rank reduction computed in one process, with the
    summation bound against the R = 1 gradient checked at every step."""

    def __init__(self, monkeypatch, ranks=2, use=True):
        self.ranks, self.use, self.ratios = ranks, use, []
        fb = _FB
        outer = self

        def patched(model, x, eps, **kw):
            n, R, grad = len(x), outer.ranks, model.buffer.grad
            dt = grad.dtype.type
            acc = np.zeros_like(grad)
            for r in range(R):
                a, b = r * n // R, (r + 1) * n // R
                fb(model, np.ascontiguousarray(x[a:b]), np.ascontiguousarray(eps[:, a:b]), **kw)
                if b - a != n:
                    grad *= dt((b - a) / n)
                acc += grad                        # 0 + g_0 exactly, then g_0 + g_1: MPI's sum
            abs_sum = np.zeros(grad.shape, np.float64)
            for i in range(n):
                fb(model, x[i:i + 1], eps[:, i:i + 1], **kw)
                abs_sum += np.abs(grad)
            terms = fb(model, x, eps, **kw)        # R = 1
            bound = (gamma(n) + gamma(n // R + R - 1)) * abs_sum / n
            diff = np.abs(acc.astype(np.float64) - grad)
            assert np.all(diff <= bound), f"{np.sum(diff > bound)} elements beyond the bound"
            outer.ratios.append(float(np.max(diff / np.where(bound > 0, bound, np.inf))))
            if outer.use:
                grad[...] = acc
            return terms
        monkeypatch.setattr(VAE, "forward_backward", patched)


def params(run):
    model, meta, opt, _ = load_run(run)
    return model.buffer.data, opt, meta


@pytest.fixture(autouse=True)
def small_data(monkeypatch):
    monkeypatch.setattr(cli, "_load_data", mpi_job.load_data)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("mpi-train")
    p, _ = mpirun("train", out)
    assert p.returncode == 0, p.stderr[-3000:]
    return out, p


def test_two_ranks_train_and_only_rank0_writes(trained):
    out, p = trained
    r = [json.load(open(out / f"rank{k}.json")) for k in (0, 1)]
    assert r[0]["rc"] == r[1]["rc"] == 0
    assert r[0]["digest"] == r[1]["digest"]            # identical parameters and Adam state
    assert r[1]["writes"] == []
    wrote = {os.path.basename(w) for w in r[0]["writes"]}
    assert {"checkpoint.npz", "metrics.jsonl", "config.json", "loss.png", "samples.png",
            "reconstructions.png"} <= wrote
    rows = read_metrics(out / "r2")
    assert [row["epoch"] for row in rows] == [0, 1, 2]    # written once, not once per rank
    assert rows[-1]["step"] == 20
    two = p.stderr.split("on 1 MPI rank ")[0]           # before rank 0's own R = 1 run
    assert two.count("epoch 2, train loss") == 1          # rank 0 logs, rank 1 does not


def test_one_rank_through_mpi_equals_serial(trained, tmp_path):
    out, _ = trained
    assert cli.main(mpi_job.ARGV + ["--out", str(tmp_path / "serial")]) == 0
    a, oa, _ = params(out / "r1m")
    b, ob, _ = params(tmp_path / "serial")
    assert np.array_equal(a, b) and all(np.array_equal(oa[k], ob[k]) for k in oa)


def test_two_ranks_equal_one_within_summation_roundoff(trained, tmp_path, monkeypatch):
    out, _ = trained
    halves = Halves(monkeypatch)
    assert cli.main(mpi_job.ARGV + ["--out", str(tmp_path / "sim")]) == 0
    assert len(halves.ratios) == 20 and max(halves.ratios) <= 1
    a, oa, _ = params(out / "r2")
    b, ob, _ = params(tmp_path / "sim")
    assert np.array_equal(a, b) and all(np.array_equal(oa[k], ob[k]) for k in oa)
    one, _, _ = params(out / "r1m")
    assert 0 < np.max(np.abs(a - one)) < 1e-6    # reported: the regrouping is visible, tiny


def test_first_step_gradient_bound(trained):
    out, _ = trained
    g = np.load(out / "grad.npz")
    m = VAE(1024, (16,), 2, seed=0)
    m.forward_backward(g["x"], g["eps"])
    g1 = m.buffer.grad.astype(np.float64)
    abs_sum = np.zeros_like(g1)
    for i in range(32):
        m.forward_backward(g["x"][i:i + 1], g["eps"][:, i:i + 1])
        abs_sum += np.abs(m.buffer.grad)
    bound = (gamma(32) + gamma(17)) * abs_sum / 32
    diff = np.abs(g["grad"] - g1)
    assert np.all(diff <= bound) and np.any(diff > 0)


def test_sigterm_to_one_rank_and_resume_on_two_and_one(trained, tmp_path, monkeypatch):
    out, _ = trained
    p, _ = mpirun("resume", tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    stops = [json.load(open(tmp_path / f"stop{k}.json")) for k in (0, 1)]
    assert [s["rc"] for s in stops] == [130, 130]
    assert [s["global_step"] for s in stops] == [13, 13]   # both ranks ended the same step
    assert "stopped by a signal to another rank at epoch 2 step 3" in p.stderr
    _, _, meta = params(tmp_path / "at-stop")
    assert (meta["epoch"], meta["step"], meta["global_step"]) == (1, 3, 13)
    final, oa, _ = params(out / "r2")
    resumed2, ob, _ = params(tmp_path / "run")
    assert np.array_equal(final, resumed2) and all(np.array_equal(oa[k], ob[k]) for k in oa)
    # on one rank: with the two-rank grouping simulated it is the two-rank run bit for bit
    # (the state continued exactly); as a plain R = 1 run, within the bound at every step
    for use in (True, False):
        run = tmp_path / f"one-{use}"
        shutil.copytree(tmp_path / "at-stop", run)
        halves = Halves(monkeypatch, use=use)
        assert cli.main(["train", "--resume", str(run), "--no-progress"]) == 0
        assert len(halves.ratios) == 7
        got, _, _ = params(run)
        assert np.array_equal(got, final) == use
        assert np.max(np.abs(got - final)) < 1e-6


@pytest.mark.parametrize("scenario, message", [
    ("error", "rank 1: RuntimeError: injected failure on rank 1; ending all 2 ranks"),
    ("hang", "rank 0: no answer from the other ranks for 3 s in the gradient all-reduce"),
    ("die", None)])
def test_a_failing_rank_ends_the_job(tmp_path, scenario, message):
    p, seconds = mpirun(scenario, tmp_path, timeout=90)
    assert p.returncode != 0
    assert seconds < 60                       # not the 300 s default timeout, not a hang
    if message:
        assert message in p.stderr, p.stderr[-2000:]
    _, _, meta = params(tmp_path / "run")     # the last checkpoint is whole: end of epoch 0
    assert (meta["epoch"], meta["step"]) == (0, 0)


def test_sweep_spreads_runs_over_ranks(tmp_path):
    p, _ = mpirun("sweep", tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    w = [json.load(open(tmp_path / f"sweep{k}.json")) for k in (0, 1)]
    dirs = [{os.path.relpath(f, tmp_path / "sweep").split(os.sep)[0] for f in r["writes"]}
            - {n for n in map(os.path.basename, r["writes"]) if n.startswith(".tmp-")}
            for r in w]                             # (atomic writes' temporaries left out)
    # run i of the grid (beta-major) on rank i mod 2; rank 0 alone writes the summary
    assert dirs[0] == {"beta1-seed0", "beta4-seed0", "summary.json", "summary.md",
                       "summary.png"}
    assert dirs[1] == {"beta1-seed1", "beta4-seed1"}
    rows = json.load(open(tmp_path / "sweep" / "summary.json"))
    assert [r["beta"] for r in rows] == [1.0, 4.0]
    for r in rows:                       # the summary's numbers are the runs' own
        v = []
        for seed in (0, 1):
            last = read_metrics(tmp_path / "sweep" / f"beta{r['beta']:g}-seed{seed}")[-1]
            assert last["epoch"] == 1 and r["runs"][str(seed)]["elbo"] == last["test_elbo"]
            v.append(last["test_elbo"])
        assert r["elbo"]["mean"] == pytest.approx(np.mean(v), rel=1e-12)
        assert r["elbo"]["sd"] == pytest.approx(np.std(v, ddof=1), rel=1e-12) and v[0] != v[1]
    assert "over 2 seeds" in open(tmp_path / "sweep" / "summary.md").read()
    # a run of the sweep is the run trained alone
    assert cli.main(["train", *mpi_job.SWEEP_TRAIN, "--beta", "4", "--seed", "1", "--out",
                     str(tmp_path / "alone"), "--no-progress"]) == 0
    a, _, _ = params(tmp_path / "sweep" / "beta4-seed1")
    b, _, _ = params(tmp_path / "alone")
    assert np.array_equal(a, b)
    assert rows[1]["runs"]["1"]["elbo"] == read_metrics(tmp_path / "alone")[-1]["test_elbo"]
