"""The threading policy (minivae.threads): what the user set is left alone; otherwise the BLAS
thread count follows how busy the cores were at start-up."""
import json
import os
import subprocess
import sys
import time

import pytest

from minivae import threads
from minivae.errors import MinivaeError

threadpoolctl = pytest.importorskip("threadpoolctl")

PROBE = """
import json, numpy, threadpoolctl
before = [d["num_threads"] for d in threadpoolctl.threadpool_info() if d["user_api"] == "blas"]
import minivae
from minivae import threads
minivae.VAE(8, (4,), 2)
after = [d["num_threads"] for d in threadpoolctl.threadpool_info() if d["user_api"] == "blas"]
print(json.dumps(dict(before=before, after=after, decision=threads.describe()["decision"])))
"""


def _probe(env):
    clean = {k: v for k, v in os.environ.items() if k not in threads.USER_VARS + ("MINIVAE_THREADS",)}
    p = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("var", ["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "GOTO_NUM_THREADS",
                                 "NUMBA_NUM_THREADS", "MKL_NUM_THREADS"])
def test_a_thread_count_the_user_set_is_left_alone(var):
    """The user's variable is set to 1; MINIVAE_THREADS asks for a count different from what
    the BLAS starts with, so a policy that ignored the user would show."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 cores to tell the counts apart")
    start = _probe({var: "1", "MINIVAE_THREADS": "auto"})["before"]
    want = "2" if start == [1] else "1"
    r = _probe({var: "1", "MINIVAE_THREADS": want})
    assert r["decision"]["policy"] == "user"
    assert var in r["decision"]["user_vars"]
    assert r["after"] == r["before"] == start        # minivae changed nothing
    assert r["after"] != [int(want)]
    if var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "GOTO_NUM_THREADS"):
        assert r["after"] == [1]                     # OpenBLAS reads these: the user's 1 holds


def test_minivae_threads_fixes_the_count_when_the_user_set_nothing_else():
    r = _probe({"MINIVAE_THREADS": "1"})
    assert r["decision"]["policy"] == "fixed"
    assert r["after"] == [1]


def test_auto_policy_applies_its_choice():
    r = _probe({})
    d = r["decision"]
    assert d["policy"] == "auto"
    assert r["after"] == [d["blas_threads"]]
    assert d["blas_threads"] == threads.choose(os.cpu_count(), d["others_busy"])


def test_a_bad_minivae_threads_is_a_one_line_error(monkeypatch):
    for k in threads.USER_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MINIVAE_THREADS", "two")
    monkeypatch.setattr(threads, "_state", None)
    with pytest.raises(MinivaeError, match="MINIVAE_THREADS must be a positive integer"):
        threads.ensure()


def test_choose():
    assert threads.choose(2, 0.0) == 2
    assert threads.choose(2, 0.4) == 2              # a little background work: keep the cores
    assert threads.choose(2, 1.0) == 1
    assert threads.choose(2, 2.0) == 1              # never fewer than one
    assert threads.choose(8, 3.0) == 5
    assert threads.choose(1, 5.0) == 1


def test_others_busy_sees_a_busy_process():
    """One process spinning beside us keeps at least most of a core busy; measured over the
    same window the policy uses (a little longer, for the 10 ms clock ticks)."""
    p = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy, source = threads.others_busy(0.3)
    finally:
        p.kill()
        p.wait()
    if source != "/proc/stat":
        pytest.skip("no /proc/stat here")
    assert busy >= 0.6


# ----------------------------------------------------------------------------- two halves at once
@pytest.fixture
def minivae_chose(monkeypatch):
    """Pretend minivae chose the BLAS count (policy 'fixed', n threads); the test process's BLAS
    count is restored afterwards."""
    libs = threads._blas_libs()
    saved = [lib.num_threads for lib in libs]

    def choose(n):
        monkeypatch.setattr(threads, "_state", dict(policy="fixed", blas_threads=n))
    yield choose
    for lib, n in zip(libs, saved):
        lib.set_num_threads(n)


@pytest.mark.parametrize("n", [1, 2])
def test_run_parts_runs_both_and_raises_the_helpers_error(minivae_chose, n):
    minivae_chose(n)
    seen = []
    threads.run_parts(lambda: seen.append(threading_name()), lambda: seen.append(threading_name()))
    assert len(seen) == 2 and seen[0] == "MainThread"
    with pytest.raises(ZeroDivisionError):
        threads.run_parts(lambda: None, lambda: 1 / 0)
    threads.run_parts(lambda: None, lambda: None)      # the helper survived its task's error


def threading_name():
    import threading
    return threading.current_thread().name


def test_single_blas_refuses_a_count_the_user_set(monkeypatch):
    monkeypatch.setattr(threads, "_state", dict(policy="user", blas_threads=None))
    assert not threads.split_available()
    with pytest.raises(RuntimeError):
        with threads.single_blas():
            pass


def _iwae_inputs(likelihood="bernoulli", **kw):
    import numpy as np
    from minivae.model import VAE
    model = VAE(30, (16,), 4, likelihood=likelihood, seed=2, **kw)
    rng = np.random.default_rng(5)
    x = (rng.random((8, 30)) < 0.5).astype(np.float32)
    eps = rng.standard_normal((600, 8, 4), dtype=np.float32)          # 4800 rows >= SPLIT_ROWS
    return model, x, eps


@pytest.mark.parametrize("likelihood,kw", [("bernoulli", {}), ("gaussian", {}),
                                           ("gaussian", {"learn_sigma": "per-example"})])
def test_log_weights_in_halves_is_the_same_for_any_thread_count(minivae_chose, likelihood, kw):
    """The halves run with one BLAS thread each: 1 or 2 threads give the same bits, and the
    values agree with the one-pass path (the user's threads) and the reference kernels to
    round-off: |d log w| <= 64 u sum_d |terms| (float32, D = 30 terms of size O(10))."""
    import numpy as np
    from minivae import kernels
    from minivae.objectives import SPLIT_ROWS, log_weights
    model, x, eps = _iwae_inputs(likelihood, **kw)
    assert eps.shape[0] * eps.shape[1] >= SPLIT_ROWS
    minivae_chose(1)
    one = log_weights(model, x, eps)[0].copy()
    minivae_chose(2)
    two = log_weights(model, x, eps)[0].copy()
    np.testing.assert_array_equal(one, two)
    threads._state = dict(policy="user", blas_threads=None)
    whole = log_weights(model, x, eps)[0].copy()
    with kernels.use("reference"):
        ref = log_weights(model, x, eps)[0].copy()
    scale = 64 * np.finfo(np.float32).eps * (np.abs(ref) + 30 * 10)
    assert (np.abs(two - whole) <= scale).all()
    assert (np.abs(two - ref) <= scale).all()
