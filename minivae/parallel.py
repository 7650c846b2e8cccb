"""Data-parallel training over MPI (mpi4py): R ranks, one global batch, one all-reduce per step.

    mpiexec -n R minivae train ... --batch-size B        (B: the global batch, split over R)

Install with ``pip install 'minivae[mpi]'`` (the mpi4py and mpich wheels: no system MPI needed).
Design requirements, in the order the code meets them:

* **The same global batch for any R.**  Every rank holds the same generators in the same states
  (data order, binarisation and reparameterisation noise, all seeded from the run's seed) and
  draws the *whole* global batch's data order and noise, exactly as a run without MPI does; rank
  r then keeps the rows ``span(B)`` = [r B // R, (r + 1) B // R) of it.  So an example's noise is
  a function of its position in the global batch and of the step, never of R, and a run on R = 1
  through this path draws what the serial trainer draws (its parameters are bit-for-bit those of
  ``minivae train`` without mpiexec).  The cost is R-fold redundant generation of the noise
  (B x D uniforms for dynamic binarisation, S x B x Z normals): 0.1-1 ms per step at B = 128,
  D = 784; at a large global batch a counter-based generator drawing only the rank's rows
  (Philox: element i of call c is a pure function of (i, c), see philox.py) removes it; see
  docs/parallel.md.
* **One collective per step.**  Rank r computes the mean gradient g_r of its n_r rows, scales it
  by n_r / B, and writes n_r * (loss, distortion, kl) and a stop flag into the four slots that follow
  the gradient in ``ParamBuffer.reduce_buffer``; one in-place ``Allreduce(SUM)`` of that buffer
  leaves sum_r (n_r / B) g_r = the global batch's mean gradient in ``buffer.grad`` (the array the
  optimiser reads) and the batch's sums in the tail, on every rank.  Every rank then takes the
  same clip / finiteness decision and the same optimiser step on the same numbers, so the
  parameters stay identical (checked: ``digest``).
* **Equality with R = 1.**  With exact arithmetic the reduced gradient equals the R = 1 one.  In
  float32 the per-example gradients g_i are computed row by row as in the R = 1 run; only the
  sum over the batch is regrouped: R = 1 sums B terms, R = 2 sums two halves of B/2, scales each
  by 1/2 (exact) and adds them (one rounding).  Each is within gamma_m sum_i |g_i| / B of the
  exact mean (gamma_m = m u / (1 - m u), u = 2^-24, m the longest chain of additions: B, or
  B/2 + 1), so elementwise

        |g(R=2) - g(R=1)| <= (gamma_B + gamma_(B/2+1)) * sum_i |g_i| / B  ~  1.5 B u mean_i |g_i|

  (tests/test_parallel.py checks it on the first step against per-example gradients).  For
  R > 2 the MPI reduction adds R terms in an order of its choosing: gamma_(B/R + R - 1).
* **Held-out evaluation split over ranks**: each evaluation batch is the R = 1 batch with the
  R = 1 noise, rank r evaluates its rows, the float64 sums of distortion and KL are all-reduced.
* **Rank 0 writes** metrics, figures, checkpoints and the log; every rank reads the checkpoint on
  resume (the run directory must be on a shared file system, as it is on a cluster).  Parameters
  and optimiser state are broadcast from rank 0 at the start, and the run's configuration is
  compared across ranks, so a mismatched launch stops at once with the rank that differs.
* **Stopping together.**  A SIGINT / SIGTERM on any rank sets that rank's stop flag, which rides
  in the step's all-reduce: every rank finishes the same step, rank 0 writes one checkpoint, all
  exit.  A rank that raises an error prints it and aborts the job (``MPI_Abort``).  A rank that
  dies is reported by mpiexec, which ends the others (MPICH's default); a rank that hangs, or a
  launcher that does not clean up, is caught by the timeout of every collective (``--mpi-timeout``,
  default 300 s: longer than a first step's Numba compilation and a checkpoint write on a busy
  node): the waiting rank names the collective and the step, and aborts the job.  Collectives
  are non-blocking requests polled from Python (spinning, then with short sleeps), so signals
  are handled while waiting.

NCCL on GPUs (designed, not testable without a GPU): see docs/parallel.md.
"""
import hashlib
import json
import math
import os
import sys
import time

import numpy as np

from .backend import to_device, to_host
from .errors import MinivaeError

DEFAULT_TIMEOUT = 300.0          # seconds any collective may wait for the other ranks
TAIL = 4                         # n*loss, n*distortion, n*kl, stop flag: after the gradient
_LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS",
                  "HYDI_CONTROL_FD")


class RankLost(MinivaeError):
    """A collective waited longer than the timeout: another rank died or hangs."""


class CollectiveError(MinivaeError):
    """An error every rank raises alike (rank 0 alone prints it; no abort needed)."""
    collective = True


def launched_by_mpi(environ=os.environ):
    """True when a process manager (mpiexec, srun with PMI) started this process."""
    return any(k in environ for k in _LAUNCHER_VARS)


def import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise MinivaeError(f"this run was started by mpiexec but mpi4py cannot be imported "
                           f"({e}); install it with: pip install 'minivae[mpi]'") from None
    return MPI


def world(timeout=None):
    """The Comm of this MPI job (COMM_WORLD), or None when not launched by mpiexec."""
    if not launched_by_mpi():
        return None
    MPI = import_mpi()
    return Comm(MPI.COMM_WORLD, timeout)


def _timeout(timeout):
    if timeout is None:
        timeout = os.environ.get("MINIVAE_MPI_TIMEOUT", DEFAULT_TIMEOUT)
    try:
        t = float(timeout)
    except (TypeError, ValueError):
        t = float("nan")
    if not t > 0:
        raise MinivaeError(f"the MPI timeout must be a positive number of seconds, got "
                           f"{timeout!r}")
    return t


class Comm:
    """The collectives of data-parallel training over an mpi4py communicator.

    Every collective is a non-blocking request waited on with a deadline (``timeout`` seconds,
    default $MINIVAE_MPI_TIMEOUT or 300): past it, RankLost names what was awaited."""

    def __init__(self, comm, timeout=None):
        self.MPI = import_mpi()
        self.comm, self.rank, self.size = comm, comm.Get_rank(), comm.Get_size()
        self.timeout = _timeout(timeout)
        self.root = self.rank == 0
        self.where = ""              # what the job is doing, for the timeout's message
        self.waited = 0.0            # seconds spent in all-reduces of the training step

    # ------------------------------------------------------------------ the wait
    def _wait(self, req, what):
        # spin for 2 ms, then poll with sleeps growing to 0.1 ms, and to 1 ms after a second (a
        # rank writing a checkpoint, compiling, or gone); Python runs signal handlers between
        # the Test calls.  Measured on the 2-core machine at load ~9: as fast as the blocking
        # Allreduce of the 0.65 M-float buffer (5-7 ms there), where spinning for 50 ms took
        # twice as long (the spinning rank starves the one it waits for)
        t0 = time.monotonic()
        spin_until, delay = t0 + 0.002, 0.0
        while True:
            try:
                if req.Test():
                    return time.monotonic() - t0
            except self.MPI.Exception as e:
                raise RankLost(f"rank {self.rank}: {what} failed ({e.Get_error_string()}); "
                               f"another rank is gone{self._at()}") from None
            now = time.monotonic()
            if now - t0 > self.timeout:
                raise RankLost(f"rank {self.rank}: no answer from the other ranks for "
                               f"{self.timeout:g} s in {what}{self._at()}: a rank has died or "
                               "hangs (its own output says why); stopping the job "
                               "(--mpi-timeout sets the limit)")
            if now > spin_until:
                time.sleep(delay)
                delay = min(max(2 * delay, 1e-5), 1e-4 if now - t0 < 1 else 1e-3)

    def _at(self):
        return f" ({self.where})" if self.where else ""

    def allreduce(self, buf, what="the all-reduce"):
        """Sum buf (a contiguous host array) over the ranks, in place; returns seconds waited."""
        if self.size == 1:
            return 0.0
        return self._wait(self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM), what)

    def bcast(self, buf, what="a broadcast from rank 0"):
        """Rank 0's contents of buf (a contiguous host array) on every rank, in place."""
        if self.size > 1:
            self._wait(self.comm.Ibcast(buf, root=0), what)
        return buf

    def bcast_json(self, obj, what="a broadcast from rank 0"):
        """Rank 0's JSON-able obj on every rank."""
        data = json.dumps(obj).encode() if self.root else b""
        n = self.bcast(np.array([len(data)], np.int64), what)
        buf = np.frombuffer(data, np.uint8).copy() if self.root else np.empty(int(n[0]), np.uint8)
        return json.loads(self.bcast(buf, what).tobytes().decode())

    def on_root(self, fn, what):
        """fn() run on rank 0 only; its result (JSON) on every rank.  A MinivaeError it raises is
        raised on every rank, so all ranks stop with the same one-line error."""
        out = None
        if self.root:
            try:
                out = {"ok": fn()}
            except MinivaeError as e:
                out = {"error": str(e)}
        out = self.bcast_json(out, what)
        if "error" in out:
            raise CollectiveError(out["error"])
        return out["ok"]

    def same(self, value, what):
        """Raise on every rank unless value (JSON-able) is the same on all ranks."""
        d = np.frombuffer(hashlib.sha256(json.dumps(value, sort_keys=True, default=str)
                                         .encode()).digest(), np.uint8)
        allv = np.empty((self.size, d.size), np.uint8)
        if self.size > 1:
            self._wait(self.comm.Iallgather(d, allv), f"comparing {what}")
        else:
            allv[0] = d
        differ = [r for r in range(self.size) if not np.array_equal(allv[r], allv[0])]
        if differ:
            raise CollectiveError(f"{what} on rank(s) {', '.join(map(str, differ))} differ from rank "
                               "0's; launch every rank with the same command and data")

    def barrier(self, what):
        """Wait for every rank, without a deadline (a sweep's ranks finish their runs at
        different times; a rank that dies is reported by mpiexec)."""
        if self.size > 1:
            timeout, self.timeout = self.timeout, math.inf
            try:
                self._wait(self.comm.Ibarrier(), what)
            finally:
                self.timeout = timeout

    def abort(self, code):
        self.comm.Abort(code)

    # ------------------------------------------------------------------ data parallelism
    def span(self, n):
        """[a, b): this rank's rows of a global batch of n (contiguous, sizes differ by <= 1)."""
        return self.rank * n // self.size, (self.rank + 1) * n // self.size


def digest(arrays):
    """A short hash of host copies of the arrays (to compare the ranks' states)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(to_host(a)).tobytes())
    return h.hexdigest()[:16]


class StepTerms:
    """The global batch's mean loss, distortion and kl after the reduction (host floats)."""
    __slots__ = ("loss", "distortion", "kl")

    def __init__(self, loss, distortion, kl):
        self.loss, self.distortion, self.kl = loss, distortion, kl


class DataParallel:
    """The Trainer's hooks for data parallelism over a Comm (see the module docstring)."""

    def __init__(self, comm, model, cfg):
        self.comm, self.model = comm, model
        if comm.size > 1 and cfg.capacity is not None:
            raise MinivaeError("--capacity weights |batch-mean KL - C|, which is not a sum over "
                               "examples, so it cannot be split over ranks; run it without "
                               "mpiexec (or on one rank)")
        if model.xp is not np:
            raise MinivaeError("data-parallel training over MPI runs on the CPU for now (NCCL "
                               "through CuPy is designed in docs/parallel.md, not built); drop "
                               "--device cuda or mpiexec")
        self.red = model.buffer.reduce_buffer
        self.tail = self.red[model.buffer.size:]
        self.reduce_s = 0.0          # seconds in the step's all-reduce (the benchmark reads it)

    def start(self, trainer):
        """Same configuration everywhere, then rank 0's parameters and optimiser state."""
        c = self.comm
        cfg = {"model": self.model.config, "train": vars(trainer.cfg),
               "n_train": len(trainer.data.train), "dataset": trainer.data.name,
               "epoch": trainer.epoch, "step": trainer.step, "global_step": trainer.global_step}
        c.same(cfg, "the run's configuration, data size and position")
        c.bcast(self.model.buffer.data, "the parameter broadcast")
        for arr in trainer.opt.state()[0].values():
            c.bcast(arr, "the optimiser-state broadcast")

    def step(self, x, eps, kwargs, stop):
        """Forward and backward on this rank's rows of the global batch (x (B, D), eps
        (S, B, Z)), then the one all-reduce.  stop(): whether this rank was signalled (asked
        just before the all-reduce).  -> (StepTerms of the global batch, any rank asked to
        stop)."""
        m, n = self.model, x.shape[0]
        a, b = self.comm.span(n)
        grad, tail, dt = m.buffer.grad, self.tail, m.buffer.grad.dtype.type
        if b > a:
            terms = m.forward_backward(np.ascontiguousarray(x[a:b]),
                                       np.ascontiguousarray(eps[:, a:b]), **kwargs)
            if b - a != n:
                grad *= dt((b - a) / n)           # sum_r (n_r / B) g_r: the global mean
            k = b - a
            tail[:3] = (k * float(terms.loss), k * float(terms.distortion), k * float(terms.kl))
        else:                                     # fewer rows than ranks: this rank adds 0
            grad[...] = 0
            tail[:3] = 0
        tail[3] = 1.0 if stop() else 0.0
        self.reduce_s += self.comm.allreduce(self.red, "the gradient all-reduce")
        loss, distortion, kl = (float(v) / n for v in tail[:3])
        return StepTerms(loss, distortion, kl), bool(tail[3] > 0)

    def evaluate(self, x, rng, batch, samples=1):
        """evaluate() with the examples split over ranks: the R = 1 batches and noise, each rank
        its rows, the float64 sums of distortion and KL all-reduced."""
        m = self.model
        tot = np.zeros(2, np.float64)
        N, S = len(x), samples
        for i in range(0, N, batch):
            nb = min(batch, N - i)
            eps = m.draw_noise(rng, (S, nb, m.latent_dim))     # every rank: the R = 1 draws
            a, b = self.comm.span(nb)
            if b > a:
                t = m.elbo(to_device(x[i + a:i + b], m.xp, m.dtype),
                           eps=np.ascontiguousarray(eps[:, a:b]))
                tot[0] += float(to_host(t.distortion).sum(dtype=np.float64))
                tot[1] += float(to_host(t.kl).sum(dtype=np.float64))
        self.comm.allreduce(tot, "the held-out evaluation's all-reduce")
        distortion, kl = tot / N
        distortion, kl = float(distortion), float(kl)
        return {"loss": distortion + m.beta * kl, "distortion": distortion, "kl": kl,
                "elbo": -(distortion + kl)}

