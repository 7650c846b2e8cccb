"""The training loop: data -> step -> evaluate -> save, epoch after epoch (Trainer._run_epoch).

The Trainer keeps a run directory up to date; the directory's files, their format and their
validation are rundir.py's, the held-out evaluation is evaluation.py's.

Randomness: one host generator (``data_rng``, PCG64) orders the data.  A run started on the
CPU draws the dynamic binarisation from it too and its reparameterisation noise from a second
PCG64 (``noise_rng``); a run started on the GPU draws both on the device from Philox4x32-10
generators (``bin_rng``, ``noise_rng``; see philox.py), so no batch or noise crosses the bus.
Every state is checkpointed, with the epoch's permutation and the step, so an interrupted and
resumed run ends where an uninterrupted run does (bit-for-bit on the CPU, within float32
round-off on the GPU), and a run resumed on the other device keeps its generators: their draws
are the same on both (a host generator's draws are copied to the device, a Philox draws where it
is).

The GPU path does not wait on the device inside a step: the running sums of the loss terms and
a "some step was not finite" flag stay on the device and are read every ``sync_every`` steps
(and at the end of an epoch, and before a checkpoint).  A non-finite step is therefore seen up to
``sync_every - 1`` steps late; the run then stops without saving, so the last checkpoint is the
last good one.  ``on_nonfinite='skip'`` needs the answer before the update, so it checks every
step, as the CPU path always does.  The library core prints nothing: progress goes through the
``log`` callback and an optional tqdm bar.
"""
import contextlib
import json
import math
import os
import signal
import threading
import time
from dataclasses import asdict

import numpy as np

from . import checkpoint, rundir, schedules, threads
from .backend import get_array_module, make_rng, to_device, to_host
from .config import TrainConfig
from .errors import MinivaeError
from .evaluation import evaluate
from .model import VAE
from .optim import clip_grad_norm, make_optimizer
from .philox import Philox, rng_state

__all__ = ["TrainConfig", "Trainer", "Diverged", "Interrupted", "check_dataset"]


def check_dataset(model, d):
    """Raise a one-line MinivaeError unless every split of the Dataset d suits the model."""
    for split in ("train", "valid", "test"):
        x = getattr(d, split, None)
        if x is not None:
            model.check_data(x[:0] if len(x) == 0 else x, name=f"{d.name} {split} data")
    if d.train is None or len(d.train) == 0:
        raise MinivaeError(f"dataset {d.name} has no training images")


class Diverged(MinivaeError):
    """The loss or the gradient became NaN or infinite."""


class Interrupted(Exception):
    """Training stopped on SIGINT or SIGTERM after saving a checkpoint."""


class Trainer:
    """Trains a VAE on a Dataset (see minivae.data) and keeps a run directory up to date.

    fit() installs SIGINT/SIGTERM handlers (in the main thread): the first signal lets the
    current step finish, writes a checkpoint and raises Interrupted; a second one raises
    KeyboardInterrupt at once (the last checkpoint stays as it was: writes are atomic).
    A NaN or infinite loss or gradient raises Diverged (cfg.on_nonfinite 'stop') with the last
    good checkpoint left in place, or skips the batch ('skip').  Diverged is raised too, with the
    last good checkpoint kept, when an epoch skipped every batch, when a held-out ELBO is not
    finite, and when the optimiser's state is not (see save).
    """

    writer, par = True, None      # this process writes the run directory; no data parallelism

    def __init__(self, model, data, config, run_dir, log=print, progress=False,
                 dataset_args=None, comm=None):
        if not isinstance(config, TrainConfig):
            raise MinivaeError(f"config must be a TrainConfig, got {type(config).__name__}")
        if not isinstance(model, VAE):
            raise MinivaeError(f"model must be a minivae VAE, got {type(model).__name__}")
        if not os.path.isdir(run_dir):
            raise MinivaeError(f"run directory {run_dir} does not exist; create it first")
        self.model, self.data, self.cfg = model, data, config.check()
        self.dataset_args = dict(dataset_args or {})   # how to load the data again on resume
        self.run_dir, self.log, self.progress = run_dir, log, progress
        # data parallelism over MPI (parallel.py): comm a parallel.Comm; rank 0 alone writes
        self.par = None
        if comm is not None:
            from .parallel import DataParallel
            self.par = DataParallel(comm, model, config)
        self.writer = comm is None or comm.root
        if not self.writer:
            self.log, self.progress = (lambda msg: None), False
        self.opt = make_optimizer(config.optimizer, model.buffer, config.lr)
        self.data_rng = np.random.default_rng([config.seed, 1])
        self.noise_rng = make_rng([config.seed, 2], model.xp)
        # GPU runs binarise on the device; CPU runs draw the binarisation from data_rng
        self.bin_rng = Philox([config.seed, 1], model.xp) if model.xp is not np else None
        self._device_data = {}                # split -> the split's images on the model's device
        self.epoch, self.step, self.perm = 0, 0, None
        self.global_step = 0
        self._stop_signal = None
        self._restored = False
        self._saved_at = None                 # (epoch, step) of the last checkpoint written
        # the BLAS thread count the CPU step runs with, recorded in every checkpoint: GEMM
        # results depend on it in the last bits, so a resumed run goes on with it (threads.py)
        self.blas_threads = threads.current() if model.xp is np else None
        self._reset_epoch_totals()
        self._check_data()
        schedules.check_model(config, model)

    def _reset_epoch_totals(self):
        # running sums of the epoch's train loss, distortion and kl (weighted by batch size), the
        # images they cover, batches skipped and seconds spent: checkpointed mid-epoch so a
        # resumed epoch reports what an uninterrupted one would
        self._sums, self._n_done, self._skipped, self._seconds = np.zeros(3), 0, 0, 0.0

    def _check_data(self):
        check_dataset(self.model, self.data)

    # ---------------------------------------------------------------- checkpoints
    def _meta(self):
        _, scalars = self.opt.state()
        return dict(model=self.model.config, train=asdict(self.cfg), dataset=self.data.name,
                    binarize=self.data.binarize, dataset_args=self.dataset_args,
                    image_shape=list(self.data.image_shape), epoch=self.epoch, step=self.step,
                    global_step=self.global_step, opt=dict(scalars, lr=self.opt.lr),
                    blas_threads=self.blas_threads,
                    data_rng=self.data_rng.bit_generator.state,
                    noise_rng=rng_state(self.noise_rng),
                    bin_rng=None if self.bin_rng is None else self.bin_rng.state,
                    epoch_totals=dict(sums=[float(s) for s in self._sums], n=self._n_done,
                                      skipped=self._skipped, seconds=self._seconds))

    def save(self):
        """Write the checkpoint (atomically); see _checked."""
        self._checked()()

    def _checked(self):
        """A function writing the checkpoint of the current state, after checking that
        everything in it would load back: the parameters and the optimiser's state finite, the
        meta record and every array passing the loader's own checks (the meta after a JSON
        round trip, as the loader reads it).  Otherwise raises Diverged (non-finite values) or
        MinivaeError, and the last checkpoint stays as it was."""
        xp = self.model.xp
        arrays, _ = self.opt.state()
        when = (f"by the end of epoch {self.epoch}" if self.step == 0 else
                f"by epoch {self.epoch + 1} step {self.step}")
        named = [("parameters", self.model.buffer.data)] + [
            (f"optimiser state {k}", a) for k, a in arrays.items()]
        finite = [xp.isfinite(a).all() for _, a in named]
        if not bool(xp.stack(finite).all()):       # one device read for all of them
            bad = [name for (name, _), ok in zip(named, finite) if not bool(ok)]
            raise Diverged(f"{' and '.join(bad)} became NaN or infinite {when} (global "
                           f"step {self.global_step}), so no checkpoint was written: "
                           f"{_CAUSES.format(lr=self.opt.lr)}; {self._last_good()}")
        extra = {"perm": self.perm} if self.perm is not None else {}
        path = os.path.join(self.run_dir, rundir.CHECKPOINT)
        meta = self._meta()
        try:
            rundir.check_loadable(path, json.loads(json.dumps(meta)), self.model.buffer.data,
                            arrays, extra)
        except (MinivaeError, ValueError) as e:       # ValueError: a NaN json.dumps refuses
            raise MinivaeError(f"the checkpoint {when} would not load back ({e}), so it was not "
                               f"written; {self._last_good()}") from None
        return lambda: self._write(path, meta, arrays, extra)

    def _write(self, path, meta, arrays, extra):
        if self.writer:                       # data-parallel: rank 0 writes the one checkpoint
            checkpoint.save(path, self.model.buffer.data, meta, arrays, extra)
        self._saved_at = (self.epoch, self.step)

    def _log_and_save(self, row):
        """An epoch's end: check the checkpoint would load back, then append the metric row,
        then write the checkpoint (a crash between the two leaves a row that resume trims)."""
        write = self._checked()
        self._append_metrics(row)
        write()

    def _last_good(self):
        if self._saved_at is None:
            return "no checkpoint was written"
        e, s = self._saved_at
        where = f"the end of epoch {e}" if s == 0 else f"epoch {e + 1} step {s}"
        return (f"the last good checkpoint ({where}) is in {self.run_dir}; resume it with "
                f"minivae train --resume {self.run_dir}")

    def restore(self, meta, opt_arrays, extra):
        """Continue from a checkpoint (as load_run returns it) of a run with this config."""
        where = f"checkpoint of {self.run_dir}"
        rundir.check_meta(where, meta)
        _, opt_scalars = self.opt.state()
        want = set(self.opt.state()[0])
        if set(opt_arrays) != want:
            raise MinivaeError(f"{where}: optimiser state {sorted(opt_arrays)} does not match "
                               f"optimizer {self.cfg.optimizer!r} (needs {sorted(want)})")
        epoch, step = int(meta["epoch"]), int(meta["step"])
        perm = extra.get("perm")
        N = len(self.data.train)
        if perm is not None:
            perm = np.asarray(perm)
            if perm.shape != (N,) or perm.dtype.kind not in "iu" or not np.array_equal(
                    np.sort(perm), np.arange(N)):
                raise MinivaeError(f"{where}: its data order is not a permutation of the {N} "
                                   "training images; the data changed since the run started")
            if step > self._steps_per_epoch():
                raise MinivaeError(f"{where}: step {step} is beyond the epoch's "
                                   f"{self._steps_per_epoch()} steps; the batch size or the "
                                   "data changed since the run started")
        elif step != 0:
            raise MinivaeError(f"{where}: step {step} without the epoch's data order; the "
                               "file is damaged")
        self.opt.load_state({k: to_device(v, self.model.xp) for k, v in opt_arrays.items()},
                            meta["opt"])
        if "lr" in meta["opt"]:
            self.opt.lr = float(meta["opt"]["lr"])
        self.epoch, self.step, self.perm = epoch, step, perm
        self.global_step = int(meta.get("global_step", 0))
        if self.model.xp is np and meta.get("blas_threads") is not None:
            threads.resume(int(meta["blas_threads"]))
            self.blas_threads = threads.current()
        self.data_rng.bit_generator.state = meta["data_rng"]
        self._restore_generators(meta)
        tot = meta.get("epoch_totals")
        self._reset_epoch_totals()
        if tot is not None and perm is not None:
            self._sums[:] = tot["sums"]
            self._n_done, self._skipped = int(tot["n"]), int(tot["skipped"])
            self._seconds = float(tot["seconds"])
        self._restored = True
        self._saved_at = (epoch, step)
        with self._lock():
            self._trim_metrics()

    def _restore_generators(self, meta):
        """The noise and binarisation generators of the checkpoint, on this model's device.

        A run keeps the kind of generator it started with, whichever device resumes it: a CPU
        run's PCG64 draws on the host (copied to a GPU), a GPU run's Philox draws where it is.
        A checkpoint of a GPU run written before generator states were saved (noise_rng None)
        restarts the device noise from its seed."""
        xp, seed = self.model.xp, self.cfg.seed
        noise, binar = meta.get("noise_rng"), meta.get("bin_rng")
        if isinstance(noise, dict) and noise.get("kind") == Philox.kind:
            self.noise_rng = Philox.from_state(noise, xp)
            self.bin_rng = (Philox.from_state(binar, xp) if binar is not None
                            else Philox([seed, 1], xp))
        elif noise is not None:
            self.noise_rng = np.random.default_rng([seed, 2])
            self.noise_rng.bit_generator.state = noise
            self.bin_rng = None

    def _on_device(self, split):
        """The split's images on the model's device, uploaded once and kept (when they fit in
        half of the free device memory; else None and batches are copied one by one)."""
        xp = self.model.xp
        if xp is np:
            return getattr(self.data, split)
        if split not in self._device_data:
            x = getattr(self.data, split)
            free = _free_device_bytes(xp)
            self._device_data[split] = (xp.asarray(x) if x is not None and len(x)
                                        and x.nbytes <= free // 2 else None)
        return self._device_data[split]

    def _trim_metrics(self):
        """Drop metric rows written after the checkpoint (a crash between the two writes)."""
        if self.writer:                       # data-parallel: rank 0 owns the files
            rundir.trim_metrics(self.run_dir, self.epoch)

    # ---------------------------------------------------------------- metrics
    def _append_metrics(self, row):
        if self.writer:
            rundir.append_metrics(self.run_dir, row)

    def heldout(self):
        """{split: evaluate(...)} on the held-out splits, with fixed noise (repeatable)."""
        out = {}
        for split in ("valid", "test"):
            x = getattr(self.data, split)
            if x is not None and len(x):
                # the run's kind of generator, so a resumed run evaluates with the same noise
                # on either device
                rng = (Philox([self.cfg.seed, 3], self.model.xp)
                       if isinstance(self.noise_rng, Philox) else np.random.default_rng(
                           [self.cfg.seed, 3]))
                xd = self._on_device(split)
                ev = (self.par.evaluate if self.par is not None else
                      lambda *a: evaluate(self.model, *a))
                out[split] = ev(x if xd is None else xd, rng, self.cfg.eval_batch)
        return out

    def _row(self, epoch, train, seconds):
        row = {"epoch": epoch, "step": self.global_step, "seconds": round(seconds, 3)}
        row.update(schedules.objective_args(self.cfg, self.model.beta, self.global_step))
        if train is not None:
            row.update({f"train_{k}": v for k, v in train.items()})
        for split, m in self.heldout().items():
            if not math.isfinite(m["elbo"]):       # a model no checkpoint should keep
                when = "before training" if epoch == 0 else f"after epoch {epoch}"
                raise Diverged(f"the held-out {split} ELBO is non-finite ({m['elbo']}) {when}, so "
                               f"this state was not saved: {_CAUSES.format(lr=self.opt.lr)}; "
                               f"{self._last_good()}")
            row.update({f"{split}_{k}": v for k, v in m.items()})
        return row

    # ---------------------------------------------------------------- signals
    def _on_signal(self, signum, frame):
        if self._stop_signal is not None:          # the second one: leave at once
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        self._stop_signal = signum

    def _interrupted(self):
        name = ("a signal to another rank" if self._stop_signal == "remote" else
                signal.Signals(self._stop_signal).name)
        return Interrupted(f"stopped by {name} at epoch {self.epoch + 1} step {self.step}; "
                           f"checkpoint saved in {self.run_dir}")

    # ---------------------------------------------------------------- the loop
    def fit(self):
        """Train until cfg.epochs; returns the list of metric rows written.

        Raises Interrupted after a SIGINT/SIGTERM (checkpoint written), Diverged on a
        non-finite loss or gradient (cfg.on_nonfinite 'stop'; the last good checkpoint kept).
        Holds the run directory's lock throughout (rundir.RunDirBusy if another process has it).
        """
        with self._lock():
            return self._fit()

    def _lock(self):
        """The run directory's lock; under data parallelism rank 0 alone holds it."""
        return rundir.lock(self.run_dir, self.log) if self.writer else contextlib.nullcontext()

    def _fit(self):
        self.cfg.check()
        rows = []
        old = {}
        if threading.current_thread() is threading.main_thread():
            old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            if self.par is not None:
                self.par.start(self)
            if self.epoch == 0 and self.step == 0 and self.perm is None and not self._restored:
                rows.append(self._row(0, None, 0.0))
                self.log(_describe(rows[-1]))
                self._log_and_save(rows[-1])
            while self.epoch < self.cfg.epochs:
                rows.append(self._run_epoch())
                self.log(_describe(rows[-1]))
            if self._stop_signal is not None:     # a signal during the last evaluation
                raise self._interrupted()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        return rows

    def _steps_per_epoch(self):
        N, bs = len(self.data.train), self.cfg.batch_size
        return N // bs if self.cfg.drop_last else -(-N // bs)

    def _run_epoch(self):
        """One epoch, read top to bottom: data -> step (batch after batch) -> evaluate -> save.
        A signal stops it after the current step with a checkpoint (Interrupted)."""
        steps = self._start_epoch()
        t0 = time.perf_counter() - self._seconds
        bar = self._progress_bar(steps)
        batches = _Batches(self, self.data.binarize == "dynamic")
        pending = _Pending(self.model.xp) if self._sums_on_device() else None
        N, bs = len(self.data.train), self.cfg.batch_size
        try:
            while self.step < steps:
                n = min(bs, N - self.step * bs)
                xb, eps = batches.next(self.step * bs, n)                     # data
                stopping = self._step(xb, eps, n, pending)                    # step
                self.step += 1
                self.global_step += 1
                if pending is not None and (stopping or self.step == steps
                                            or pending.steps >= self.cfg.sync_every):
                    self._settle(pending)
                self._show_progress(bar)
                if stopping:
                    self._seconds = time.perf_counter() - t0
                    self.save()
                    raise self._interrupted()
        finally:
            if bar is not None:
                bar.close()
        return self._end_epoch(steps, time.perf_counter() - t0)              # evaluate, save

    def _start_epoch(self):
        """The epoch's number of steps; a fresh epoch (not a resumed one) draws its data order,
        clears its running sums and sets its learning rate."""
        N, bs = len(self.data.train), self.cfg.batch_size
        steps = self._steps_per_epoch()
        if steps == 0:
            raise MinivaeError(f"batch-size {bs} is larger than the {N} training images with "
                               "drop_last; lower --batch-size")
        if self.perm is None:
            self.perm = self.data_rng.permutation(N)
            self.step = 0
            self._reset_epoch_totals()
            self.opt.lr = self.cfg.lr_at(self.epoch)
        return steps

    def _sums_on_device(self):
        """Whether the loss terms stay on the device between syncs (GPU, no per-step decision:
        on_nonfinite 'stop', and not data-parallel, whose step reduces on the host)."""
        return self.model.xp is not np and self.cfg.on_nonfinite == "stop" and self.par is None

    def _step(self, xb, eps, n, pending):
        """One optimiser step on the batch (n images); returns whether to stop after it."""
        kwargs = schedules.objective_args(self.cfg, self.model.beta, self.global_step)
        if self.par is not None:          # data-parallel: the ranks agree on the step and on stopping
            self.par.comm.where = (f"epoch {self.epoch + 1} step {self.step + 1}, "
                                   f"global step {self.global_step + 1}")
            terms, stop = self.par.step(xb, eps, kwargs, lambda: self._stop_signal is not None)
            self._host_step(n, terms)
            if stop and self._stop_signal is None:
                self._stop_signal = "remote"
            # a signal that reached this rank after the step's all-reduce waits for the next
            return stop
        terms = self.model.forward_backward(xb, eps, **kwargs)
        if pending is None:
            self._host_step(n, terms)
        else:                             # no host read inside the step: see _settle
            pending.add(n, terms, self.model.buffer.grad)
            if self.cfg.clip > 0:
                clip_grad_norm(self.model.buffer.grad, self.cfg.clip, sync=False)
            self.opt.step()
        return self._stop_signal is not None

    def _end_epoch(self, steps, seconds):
        """The epoch's metric row (train means, held-out evaluation), logged and checkpointed."""
        if self._n_done == 0:            # every batch skipped: no step was taken this epoch
            raise Diverged(f"every one of the {steps} batches of epoch {self.epoch + 1} had a "
                           f"non-finite loss or gradient and was skipped, so the run made no "
                           f"progress: {_CAUSES.format(lr=self.opt.lr)}; {self._last_good()}")
        self.epoch += 1
        self.perm, self.step = None, 0
        n = self._n_done
        train = {"loss": self._sums[0] / n, "distortion": self._sums[1] / n,
                 "kl": self._sums[2] / n}
        if self._skipped:
            train["skipped"] = self._skipped
        self._reset_epoch_totals()
        row = self._row(self.epoch, train, seconds)
        self._log_and_save(row)
        return row

    def _progress_bar(self, steps):
        if not self.progress:
            return None
        from tqdm import tqdm
        return tqdm(total=steps, initial=self.step, desc=f"epoch {self.epoch + 1}", leave=False,
                    unit="step", dynamic_ncols=True)

    def _show_progress(self, bar):
        if bar is not None:
            bar.update(1)
            if self.step % 20 == 0 and self._n_done:    # the epoch's running mean
                bar.set_postfix(loss=f"{self._sums[0] / self._n_done:.2f}")

    def _host_step(self, n, terms):
        """Check the step on the host, then update (or skip, or stop): the CPU path, and the
        GPU path with on_nonfinite='skip'."""
        xp, cfg = self.model.xp, self.cfg
        loss = float(terms.loss)
        g = self.model.buffer.grad
        gnorm2 = float(xp.dot(g, g))
        finite_g = math.isfinite(gnorm2) or bool(xp.isfinite(g).all())  # dot can overflow
        if math.isfinite(loss) and finite_g:
            if cfg.clip > 0:
                clip_grad_norm(g, cfg.clip, sq_norm=gnorm2)
            self.opt.step()
            self._sums += (n * loss, n * float(terms.distortion), n * float(terms.kl))
            self._n_done += n
        else:
            self._nonfinite(loss)

    def _settle(self, pending):
        """Read the device's running sums and flag (one transfer); stop if a step was not finite."""
        k = pending.steps
        sums, bad, n = pending.read()
        if bad:
            self._nonfinite(math.nan, steps=(self.global_step - k, self.global_step))
        self._sums += sums
        self._n_done += n

    def _nonfinite(self, loss, steps=None):
        """A NaN/inf loss or gradient at the current step: stop, or skip the batch."""
        what = "loss" if not math.isfinite(loss) else "gradient"
        if steps is None:
            msg = (f"non-finite {what} at epoch {self.epoch + 1} step {self.step + 1} "
                   f"(global step {self.global_step + 1}): {_CAUSES.format(lr=self.opt.lr)}")
        else:   # seen at a device read: somewhere in global steps first+1 .. last
            msg = (f"non-finite loss or gradient in epoch {self.epoch + 1}, between global steps "
                   f"{steps[0] + 1} and {steps[1]} (read every --sync-every steps): "
                   f"{_CAUSES.format(lr=self.opt.lr)}")
        if self.cfg.on_nonfinite == "skip":
            if bool(self.model.xp.isfinite(self.model.buffer.data).all()):
                self._skipped += 1
                self.log("skipped batch: " + msg)
                return
            msg += " (the parameters themselves are no longer finite, so skipping cannot help)"
        raise Diverged(f"{msg}; {self._last_good()}")


class _Batches:
    """The training batches of one epoch, with their noise, on the model's device.

    CPU: gathered into reused host buffers and binarised with data_rng (the draws of
    data.binarize_batch), noise from noise_rng.  GPU: gathered from the training set resident
    on the device (uploaded once), binarised there with bin_rng, noise drawn there.  A host
    generator on a GPU (a CPU run resumed there) or a training set too large for the device
    work too, at the cost of one copy per array per step."""

    def __init__(self, trainer, dynamic):
        t, m = trainer, trainer.model
        self.t, self.m, self.xp, self.dynamic = t, m, m.xp, dynamic
        self.train = t._on_device("train")
        self.resident = self.train is not None
        if not self.resident:
            self.train = t.data.train
        self.perm = self.xp.asarray(t.perm) if self.resident and self.xp is not np else t.perm
        self.bin_rng = t.bin_rng if t.bin_rng is not None else t.data_rng
        self.buffers = {}       # batch size -> reused arrays: the loop allocates nothing

    def _buf(self, n):
        if n not in self.buffers:
            m, D, dt = self.m, self.t.data.train.shape[1], self.t.data.train.dtype
            xm = get_array_module(self.train)
            um = getattr(self.bin_rng, "xp", np)
            em = getattr(self.t.noise_rng, "xp", np)
            self.buffers[n] = (xm.empty((n, D), dt), um.empty((n, D), np.float32),
                               em.empty((m.samples, n, m.latent_dim), m.dtype))
        return self.buffers[n]

    def next(self, start, n):
        x, u, eps = self._buf(n)
        xm = get_array_module(x)
        if xm is np:
            # mode="clip" writes out= directly (1.5x faster than "raise", which buffers); the
            # permutation's indices are always in range, so clipping changes nothing
            np.take(self.train, self.perm[start:start + n], axis=0, out=x, mode="clip")
        else:
            xm.take(self.train, self.perm[start:start + n], axis=0, out=x)
        if self.dynamic:        # x ~ Bernoulli(x): a uniform u < x, as data.binarize_batch
            self.bin_rng.random(out=u, dtype=np.float32)
            if xm is not get_array_module(u):         # one side on the host: move it over
                x, u = to_device(x, self.xp), to_device(u, self.xp)
                xm = self.xp
            xm.less(u, x, out=x)
        self.m.draw_noise(self.t.noise_rng, out=eps)
        return to_device(x, self.xp, self.m.dtype), to_device(eps, self.xp, self.m.dtype)


class _Pending:
    """Running sums (n * loss, n * distortion, n * kl) and a not-finite count, kept on the device."""

    def __init__(self, xp):
        self.xp, self.acc = xp, xp.zeros(4, dtype=np.float64)
        self.steps, self.n = 0, 0

    def add(self, n, terms, grad):
        xp = self.xp
        ok = xp.isfinite(terms.loss) & xp.isfinite(grad).all()
        self.acc += xp.stack((terms.loss * n, terms.distortion * n, terms.kl * n,
                              (~ok).astype(terms.loss.dtype)))
        self.steps, self.n = self.steps + 1, self.n + n

    def read(self):
        """(sums (3,), any step not finite, images covered); resets.  The one host read."""
        v = to_host(self.acc)
        out = (v[:3], bool(v[3] > 0), self.n)
        self.acc[...] = 0
        self.steps, self.n = 0, 0
        return out


def _free_device_bytes(xp):
    try:
        return int(xp.cuda.Device().mem_info[0])
    except Exception:           # a device module without memory queries: do not upload
        return 0


_CAUSES = ("lower the learning rate (now {lr:g}) or set --clip; a log-variance beyond the "
           "float range (exp(logvar) overflows above ~88 in float32) or bad data can also do it")


def _describe(row):
    parts = [f"epoch {row['epoch']}"]
    if "train_loss" in row:
        parts.append(f"train loss {row['train_loss']:.3f} ({row['seconds']:.1f} s)")
        if row.get("train_skipped"):
            parts.append(f"{row['train_skipped']} batches skipped")
    for split in ("valid", "test"):
        if f"{split}_elbo" in row:
            parts.append(f"{split} ELBO {row[f'{split}_elbo']:.3f} "
                         f"(distortion {row[f'{split}_distortion']:.3f}, "
                         f"KL {row[f'{split}_kl']:.3f})")
    return ", ".join(parts) + " (nats per example)"
