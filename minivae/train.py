"""The training loop: data order, noise, optimiser steps, evaluation, logging and checkpoints.

A run directory holds
    config.json        the resolved model and training configuration
    metrics.jsonl      one JSON object per epoch (epoch 0: before training): train and held-out
                       loss, reconstruction term and KL, wall time
    checkpoint.npz     the latest checkpoint (atomic; see checkpoint.py)
    *.png              figures (plots.py)

Randomness: one host generator (``data_rng``) orders the data and draws the dynamic
binarisation; one generator of the model's array module (``noise_rng``) draws the
reparameterisation noise.  Both states are checkpointed, with the epoch's permutation and the
step, so that on the CPU an interrupted and resumed run ends bit-for-bit where an uninterrupted
run does.  The library core prints nothing: progress goes through the ``log`` callback and an
optional tqdm bar.
"""
import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass

import numpy as np

from . import checkpoint
from .backend import make_rng, to_device, to_host
from .errors import MinivaeError
from .model import VAE
from .optim import clip_grad_norm, make_optimizer

CHECKPOINT = "checkpoint.npz"


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    seed: int = 0
    clip: float = 0.0                # max gradient norm; 0 disables clipping
    on_nonfinite: str = "stop"       # 'stop' or 'skip' the batch
    drop_last: bool = False
    eval_batch: int = 1000

    def check(self):
        for name in ("epochs", "batch_size", "eval_batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "epochs" else 1):
                raise MinivaeError(f"{name.replace('_', '-')} must be a "
                                   f"{'non-negative' if name == 'epochs' else 'positive'} "
                                   f"integer, got {v!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise MinivaeError(f"lr must be a positive number, got {self.lr!r}")
        if not (math.isfinite(self.clip) and self.clip >= 0):
            raise MinivaeError(f"clip must be a number >= 0, got {self.clip!r}")
        if self.on_nonfinite not in ("stop", "skip"):
            raise MinivaeError(f"on-nonfinite must be 'stop' or 'skip', got {self.on_nonfinite!r}")
        return self


class Diverged(MinivaeError):
    """The loss or the gradient became NaN or infinite."""


class Interrupted(Exception):
    """Training stopped on SIGINT or SIGTERM after saving a checkpoint."""


def evaluate(model, x, rng, batch=1000, samples=1):
    """Held-out means over x (N, D), in nats per example: loss (-ELBO with the model's beta),
    rec (-E_q log p(x|z)), kl and elbo.  Noise from rng; batched to bound memory."""
    xp = model.xp
    tot = {"rec": 0.0, "kl": 0.0}
    for i in range(0, len(x), batch):
        xb = to_device(x[i:i + batch], xp, model.dtype)
        t = model.elbo(xb, rng=rng, samples=samples)
        tot["rec"] += float(-xp.sum(t.rec))
        tot["kl"] += float(xp.sum(t.kl))
    n = len(x)
    rec, kl = tot["rec"] / n, tot["kl"] / n
    return {"loss": rec + model.beta * kl, "rec": rec, "kl": kl, "elbo": -(rec + kl)}


class Trainer:
    """Trains a VAE on a Dataset (see minivae.data) and keeps a run directory up to date."""

    def __init__(self, model, data, config, run_dir, log=print, progress=False,
                 dataset_args=None):
        self.model, self.data, self.cfg = model, data, config.check()
        self.dataset_args = dict(dataset_args or {})   # how to load the data again on resume
        self.run_dir, self.log, self.progress = run_dir, log, progress
        self.opt = make_optimizer(config.optimizer, model.buffer, config.lr)
        self.data_rng = np.random.default_rng([config.seed, 1])
        self.noise_rng = make_rng([config.seed, 2], model.xp)
        self.epoch, self.step, self.perm = 0, 0, None
        self.global_step = 0
        self._stop_signal = None
        self._check_data()

    def _check_data(self):
        d, m = self.data, self.model
        for split in ("train", "valid", "test"):
            x = getattr(d, split)
            if x is not None:
                m.check_data(x[:0] if len(x) == 0 else x, name=f"{d.name} {split} data")
        if len(d.train) == 0:
            raise MinivaeError(f"dataset {d.name} has no training images")

    # ---------------------------------------------------------------- checkpoints
    def _meta(self):
        arrays, scalars = self.opt.state()
        return dict(model=self.model.config, train=asdict(self.cfg), dataset=self.data.name,
                    binarize=self.data.binarize, dataset_args=self.dataset_args,
                    image_shape=list(self.data.image_shape), epoch=self.epoch, step=self.step,
                    global_step=self.global_step, opt=scalars,
                    data_rng=self.data_rng.bit_generator.state,
                    noise_rng=(self.noise_rng.bit_generator.state
                               if isinstance(self.noise_rng, np.random.Generator) else None))

    def save(self):
        arrays, _ = self.opt.state()
        extra = {"perm": self.perm} if self.perm is not None else {}
        checkpoint.save(os.path.join(self.run_dir, CHECKPOINT), self.model.buffer.data,
                        self._meta(), arrays, extra)

    def restore(self, meta, opt_arrays, extra):
        _, opt_scalars = self.opt.state()
        self.opt.load_state({k: to_device(v, self.model.xp) for k, v in opt_arrays.items()},
                            meta["opt"])
        self.epoch, self.step = int(meta["epoch"]), int(meta["step"])
        self.global_step = int(meta.get("global_step", 0))
        self.data_rng.bit_generator.state = meta["data_rng"]
        if meta.get("noise_rng") is not None and isinstance(self.noise_rng, np.random.Generator):
            self.noise_rng.bit_generator.state = meta["noise_rng"]
        self.perm = extra.get("perm")

    # ---------------------------------------------------------------- metrics
    def _append_metrics(self, row):
        with open(os.path.join(self.run_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def heldout(self):
        """{split: evaluate(...)} on the held-out splits, with fixed noise (repeatable)."""
        out = {}
        for split in ("valid", "test"):
            x = getattr(self.data, split)
            if x is not None and len(x):
                rng = make_rng([self.cfg.seed, 3], self.model.xp)
                out[split] = evaluate(self.model, x, rng, self.cfg.eval_batch)
        return out

    def _row(self, epoch, train, seconds):
        row = {"epoch": epoch, "step": self.global_step, "seconds": round(seconds, 3)}
        if train is not None:
            row.update({f"train_{k}": v for k, v in train.items()})
        for split, m in self.heldout().items():
            row.update({f"{split}_{k}": v for k, v in m.items()})
        return row

    # ---------------------------------------------------------------- signals
    def _on_signal(self, signum, frame):
        if self._stop_signal is not None:          # the second one: leave at once
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        self._stop_signal = signum

    # ---------------------------------------------------------------- the loop
    def fit(self):
        """Train until cfg.epochs; returns the list of metric rows written."""
        model, cfg, xp = self.model, self.cfg, self.model.xp
        rows = []
        if self.epoch == 0 and self.step == 0 and self.perm is None:
            rows.append(self._row(0, None, 0.0))
            self._append_metrics(rows[-1])
            self.log(_describe(rows[-1]))
            self.save()
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while self.epoch < cfg.epochs:
                rows.append(self._run_epoch())
                self.log(_describe(rows[-1]))
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        return rows

    def _run_epoch(self):
        model, cfg, data, xp = self.model, self.cfg, self.data, self.model.xp
        N, bs = len(data.train), cfg.batch_size
        if self.perm is None:
            self.perm = self.data_rng.permutation(N)
            self.step = 0
        steps = N // bs if cfg.drop_last else -(-N // bs)
        if steps == 0:
            raise MinivaeError(f"batch-size {bs} is larger than the {N} training images with "
                               "drop_last; lower --batch-size")
        dynamic = data.binarize == "dynamic"
        S, Z = model.samples, model.latent_dim
        sums = np.zeros(3)
        t0 = time.perf_counter()
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=steps, initial=self.step, desc=f"epoch {self.epoch + 1}",
                       leave=False, unit="step", dynamic_ncols=True)
        n_done = 0
        try:
            while self.step < steps:
                idx = self.perm[self.step * bs:(self.step + 1) * bs]
                xb = data.train[idx]
                if dynamic:
                    xb = (self.data_rng.random(xb.shape, dtype=np.float32) < xb).astype(np.float32)
                xb = to_device(xb, xp, model.dtype)
                eps = self.noise_rng.standard_normal((S, len(idx), Z), dtype=model.dtype)
                terms = model.forward_backward(xb, eps)
                g = model.buffer.grad
                gnorm2 = float(xp.dot(g, g))
                loss = float(terms.loss)
                if not (math.isfinite(loss) and math.isfinite(gnorm2)):
                    what = "loss" if not math.isfinite(loss) else "gradient"
                    msg = (f"non-finite {what} at epoch {self.epoch + 1} step {self.step + 1}: "
                           f"lower --lr (now {cfg.lr:g}), set --clip, or check the data; "
                           "large log-variances overflow exp(logvar)")
                    if cfg.on_nonfinite == "stop":
                        raise Diverged(msg + f"; the last good checkpoint is in {self.run_dir}")
                    self.log("skipped batch: " + msg)
                else:
                    if cfg.clip > 0 and gnorm2 > cfg.clip ** 2:
                        g *= g.dtype.type(cfg.clip / math.sqrt(gnorm2))
                    self.opt.step()
                    sums += (len(idx) * loss, len(idx) * float(terms.rec),
                             len(idx) * float(terms.kl))
                    n_done += len(idx)
                self.step += 1
                self.global_step += 1
                if bar is not None:
                    bar.update(1)
                    if self.step % 20 == 0:
                        bar.set_postfix(loss=f"{loss:.2f}")
                if self._stop_signal is not None:
                    self.save()
                    raise Interrupted(f"stopped by signal {self._stop_signal} at epoch "
                                      f"{self.epoch + 1} step {self.step}; checkpoint saved")
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - t0
        self.epoch += 1
        self.perm, self.step = None, 0
        n = max(n_done, 1)
        train = {"loss": sums[0] / n, "rec": sums[1] / n, "kl": sums[2] / n}
        row = self._row(self.epoch, train, seconds)
        self._append_metrics(row)
        self.save()
        return row


def _describe(row):
    parts = [f"epoch {row['epoch']}"]
    if "train_loss" in row:
        parts.append(f"train loss {row['train_loss']:.3f} ({row['seconds']:.1f} s)")
    for split in ("valid", "test"):
        if f"{split}_elbo" in row:
            parts.append(f"{split} ELBO {row[f'{split}_elbo']:.3f} "
                         f"(rec {row[f'{split}_rec']:.3f}, KL {row[f'{split}_kl']:.3f})")
    return ", ".join(parts)


def load_run(path):
    """(model, meta, opt_arrays, extra) from a run directory or a checkpoint file."""
    path = os.fspath(path)
    ck = os.path.join(path, CHECKPOINT) if os.path.isdir(path) else path
    params, meta, opt, extra = checkpoint.load(ck)
    try:
        model = VAE(**meta["model"])
    except (KeyError, TypeError) as e:
        raise MinivaeError(f"{ck}: its model config is incomplete ({e}); the file is damaged "
                           "or from another program") from None
    checkpoint.check_against(ck, params, opt, model)
    model.buffer.data[...] = to_device(params, model.xp)
    return model, meta, opt, extra


def read_metrics(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
