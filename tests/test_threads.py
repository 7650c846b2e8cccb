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
