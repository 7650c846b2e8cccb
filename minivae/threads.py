"""How many threads the CPU's BLAS uses: decided once per process, never where the user decided.

Why.  NumPy's OpenBLAS splits every GEMM over all cores and its threads spin while they wait.
On an idle machine that is the fastest choice.  With other busy processes on the same cores it
collapses: a GEMM split in two waits for whichever half the scheduler has put aside, and the
waiting thread spins its time away (measured on 2 cores with two busy processes beside it: a
784-400-20 step went from 3.4 ms to 45 ms with 2 BLAS threads, to 9 ms with 1).

Policy (``auto``, the default).  When the user has set none of the variables that fix a BLAS
thread count (``USER_VARS``: OPENBLAS_NUM_THREADS, OMP_NUM_THREADS, MKL_NUM_THREADS, ...,
and MINIVAE_THREADS), the first CPU model made (``ensure()``, called by ``minivae.VAE``)
measures how busy the cores were over ``WINDOW_S`` seconds (``/proc/stat``; elsewhere the
1-minute load average) and sets the BLAS thread count, through threadpoolctl, to

    cores                     when the other processes keep less than half a core busy,
    cores - busy (rounded)    otherwise, at least 1.

It is decided once, at start-up, and not changed during the run: OpenBLAS's result for a GEMM
can depend on its thread count in the last bit (its blocking of the inner dimension), so a
thread count that followed the load would make training irreproducible.  For the same reason a
run records its count in its checkpoints and a resumed run goes on with it (``resume``), so
that an interrupted and resumed run still ends bit for bit where an uninterrupted one does,
whatever the load at either start.  Two *separate* runs, one started on an idle machine and one
under load, can differ in the last bits; set OPENBLAS_NUM_THREADS yourself for runs that must
agree bit for bit across such starts.

Whatever the user set is left alone: with any of ``USER_VARS`` in the environment this module
changes nothing (``describe()`` says so).  ``MINIVAE_THREADS=N`` fixes minivae's choice to N
BLAS threads; ``MINIVAE_THREADS=auto`` (or unset) is the policy above.  The Numba kernels are
serial (see ``minivae.kernels.numba_cpu``), so there is no Numba thread count to choose.

Two parts at once (``split_available``, ``single_blas``, ``run_parts``).  Where minivae chose
the thread count, a large evaluation pass (the importance-sampled log p(x) decodes 10,000 rows
at a time) is cut into two fixed halves, each run with a single BLAS thread: on a second
thread when minivae chose two or more, else one after the other.  Each half's GEMMs and
kernels are then the same single-threaded calls either way, so the result does not depend on
the thread count (nor on the load at start-up); the two halves' elementwise kernels run on both
cores instead of one.  The main thread takes the second half itself when the helper thread has
not started it (a helper the scheduler put aside is never waited for).
"""
import os
import queue
import threading
import time
from contextlib import contextmanager

from .errors import MinivaeError

# variables through which a user fixes a BLAS / OpenMP thread count (OpenBLAS reads the first
# three in this order); minivae changes nothing when any is set
USER_VARS = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
             "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS")
WINDOW_S = 0.1          # how long the start-up measurement of the other processes' load takes
BUSY_THRESHOLD = 0.5    # cores kept busy by others above which minivae leaves cores to them

_state = None           # the decision, made once: a dict (see describe())


def _user_setting():
    """{name: value} of the USER_VARS set in the environment (empty values count as unset)."""
    return {k: os.environ[k] for k in USER_VARS if os.environ.get(k, "").strip()}


def _cpu_times():
    """(busy, total) jiffies of all CPUs from /proc/stat, or None where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    v = [int(x) for x in fields[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)             # idle + iowait
    total = sum(v[:8])                                     # guest time is already in user
    return total - idle, total


def _self_jiffies():
    """This process's user + system time in jiffies (all its threads)."""
    t = os.times()
    return (t.user + t.system) * os.sysconf("SC_CLK_TCK")


def others_busy(window_s=WINDOW_S):
    """Cores kept busy by other processes, measured over window_s seconds (this process sleeps
    meanwhile), or the 1-minute load average where /proc/stat is missing."""
    a = _cpu_times()
    if a is None:
        try:
            return float(os.getloadavg()[0]), "loadavg"
        except OSError:
            return 0.0, "none"
    s0 = _self_jiffies()
    t0 = time.perf_counter()
    time.sleep(window_s)
    b = _cpu_times()
    s1 = _self_jiffies()
    dt = time.perf_counter() - t0
    hz = os.sysconf("SC_CLK_TCK")
    busy = (b[0] - a[0]) - (s1 - s0)
    return max(0.0, busy / (hz * dt)), "/proc/stat"


def choose(cores, busy):
    """The policy: BLAS threads for `cores` cores when others keep `busy` cores busy."""
    if busy < BUSY_THRESHOLD:
        return cores
    return max(1, min(cores, int(cores - busy + 0.5)))


def _blas():
    from threadpoolctl import ThreadpoolController
    return ThreadpoolController().select(user_api="blas")


_LIBS = None            # threadpoolctl's BLAS library controllers, found once


def _blas_libs():
    global _LIBS
    if _LIBS is None:
        _LIBS = list(_blas().lib_controllers)
    return _LIBS


def ensure():
    """Apply the policy once per process (later calls return the decision); see the module
    docstring.  Returns describe()."""
    global _state
    if _state is not None:
        return dict(_state)
    user = _user_setting()
    mine = os.environ.get("MINIVAE_THREADS", "").strip().lower()
    cores = os.cpu_count() or 1
    if user:
        _state = dict(policy="user", user_vars=user, blas_threads=None,
                      reason="set by the user; minivae changes nothing")
        return dict(_state)
    if mine and mine != "auto":
        try:
            n = int(mine)
        except ValueError:
            n = 0
        if n < 1:
            raise MinivaeError(f"MINIVAE_THREADS must be a positive integer or 'auto', got "
                               f"{os.environ['MINIVAE_THREADS']!r}")
        _state = dict(policy="fixed", blas_threads=n, reason="MINIVAE_THREADS")
    else:
        busy, source = others_busy()
        n = choose(cores, busy)
        _state = dict(policy="auto", blas_threads=n, cores=cores, others_busy=round(busy, 2),
                      measured_by=source, reason="idle" if n == cores else "cores busy")
    try:
        _blas().limit(limits=n)
    except Exception as e:             # no threadpoolctl, no BLAS it knows: leave BLAS alone
        _state.update(blas_threads=None, reason=f"not applied ({type(e).__name__}: {e})")
    return dict(_state)


def split_available():
    """True where minivae chose the BLAS thread count (policy auto or fixed, applied): only
    then may it run a pass as two single-threaded halves (see the module docstring)."""
    return (_state is not None and _state.get("policy") in ("auto", "fixed")
            and _state.get("blas_threads") is not None)


@contextmanager
def single_blas():
    """One BLAS thread inside the with-block, minivae's count restored after (only where
    split_available(): never over a count the user set)."""
    if not split_available():
        raise RuntimeError("single_blas: the BLAS thread count is not minivae's to change")
    libs = _blas_libs()
    for lib in libs:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib in libs:
            lib.set_num_threads(_state["blas_threads"])


class _Task:
    """A function that either the helper thread or the main thread runs, whichever claims it."""
    __slots__ = ("fn", "claim", "done", "exc")

    def __init__(self, fn):
        self.fn, self.claim, self.done, self.exc = fn, threading.Lock(), threading.Event(), None

    def run(self):
        if self.claim.acquire(blocking=False):
            try:
                self.fn()
            except BaseException as e:          # re-raised by the main thread
                self.exc = e
            finally:
                self.done.set()


class _Helper:
    """One daemon thread taking _Tasks from a queue (blocking, no spinning)."""

    def __init__(self):
        self.pid = os.getpid()
        self.q = queue.SimpleQueue()
        threading.Thread(target=self._loop, name="minivae-helper", daemon=True).start()

    def _loop(self):
        while True:
            self.q.get().run()


_helper = None


def run_parts(first, second):
    """first() and second(), on two threads when minivae chose two or more BLAS threads (the
    main thread runs first, then second too if the helper has not begun it), else in order."""
    global _helper
    if not split_available() or _state["blas_threads"] < 2:
        first()
        second()
        return
    if _helper is None or _helper.pid != os.getpid():      # none yet, or a forked child
        _helper = _Helper()
    task = _Task(second)
    _helper.q.put(task)
    first()
    task.run()                   # ours if the helper has not claimed it
    task.done.wait()
    if task.exc is not None:
        raise task.exc


def describe():
    """The decision (None before ensure()), and the BLAS libraries' thread counts now."""
    out = dict(decision=None if _state is None else dict(_state))
    try:
        out["blas"] = [{k: d.get(k) for k in ("internal_api", "num_threads", "architecture")}
                       for d in _blas().info()]
    except Exception as e:
        out["blas"] = f"unknown ({type(e).__name__})"
    return out


def current():
    """The thread count of the (first) BLAS NumPy loaded, or None where threadpoolctl cannot
    tell: what a checkpoint records."""
    try:
        n = _blas().info()[0]["num_threads"]
    except Exception:
        return None
    return int(n) if isinstance(n, int) and n >= 1 else None


def resume(n):
    """A resumed run's BLAS thread count: the count n its checkpoint recorded, under the auto
    policy (what the user or MINIVAE_THREADS set still wins).  Called before the resumed run's
    first step, so the run keeps one count throughout.  Returns describe()'s decision."""
    global _state
    st = ensure()
    if st["policy"] != "auto" or n is None or n == st.get("blas_threads"):
        return st
    try:
        _blas().limit(limits=n)
    except Exception:                  # could not apply it: the start-up choice stays
        return st
    _state.update(blas_threads=n, reason="resumed with the count its checkpoint recorded")
    return dict(_state)
