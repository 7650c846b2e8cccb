"""The training configuration: TrainConfig, its defaults, its checks and its learning-rate
schedule, and the small type checks the run directory's validation shares with it.

Every field is checked by ``TrainConfig.check`` (a bad one is a one-line MinivaeError), once
when a Trainer is made and again when a checkpoint's saved config is read back (rundir.py).
"""
import math
from dataclasses import dataclass

import numpy as np

from . import schedules
from .errors import MinivaeError
from .optim import OPTIMIZERS


def is_int(v, lo=0):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= lo


MAX_COUNT = 2 ** 63 - 1               # bound of the counters a checkpoint or a metric row holds


def is_count(v):
    return is_int(v) and v <= MAX_COUNT


def is_real(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


LR_SCHEDULES = ("constant", "iwae")


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
    lr_schedule: str = "constant"    # or 'iwae': lr * 10^(-i/7) for 3^i epochs, i = 0..7
    warmup_steps: int = 0            # KL warm-up: beta * min(1, step / warmup_steps)
    capacity: float | None = None    # C_max (nats): the capacity-controlled objective
    capacity_steps: int = 0          # C = capacity * min(1, step / capacity_steps)
    gamma: float = 1000.0            # weight of |KL - C| (Burgess et al. 2018 use 1000)
    sync_every: int = 20             # GPU: read the running sums and finiteness every N steps

    def lr_at(self, epoch):
        """The learning rate of epoch `epoch` (0-based).  'iwae' is the schedule of Burda et al.
        (2016): stage i = 0..7 lasts 3^i epochs at lr * 10^(-i/7), 3,280 epochs in all (the
        last stage's rate continues beyond)."""
        if self.lr_schedule == "constant":
            return self.lr
        i, end = 0, 1
        while epoch >= end and i < 7:
            i += 1
            end += 3 ** i
        return self.lr * 10 ** (-i / 7)

    def check(self):
        """self, after checking every field; a bad one raises a one-line MinivaeError."""
        for name in ("epochs", "batch_size", "eval_batch", "sync_every"):
            v = getattr(self, name)
            lo = 0 if name == "epochs" else 1
            if not is_int(v, lo):
                raise MinivaeError(f"{name.replace('_', '-')} must be a "
                                   f"{'non-negative' if lo == 0 else 'positive'} "
                                   f"integer, got {v!r}")
        if not (is_real(self.lr) and math.isfinite(self.lr) and self.lr > 0):
            raise MinivaeError(f"lr must be a positive finite number, got {self.lr!r}")
        if not (is_real(self.clip) and math.isfinite(self.clip) and self.clip >= 0):
            raise MinivaeError(f"clip must be a finite number >= 0, got {self.clip!r}")
        if not isinstance(self.optimizer, str) or self.optimizer not in OPTIMIZERS:
            raise MinivaeError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, "
                               f"got {self.optimizer!r}")
        if not is_int(self.seed, 0):
            raise MinivaeError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise MinivaeError(f"lr-schedule must be one of {', '.join(LR_SCHEDULES)}, "
                               f"got {self.lr_schedule!r}")
        if self.on_nonfinite not in ("stop", "skip"):
            raise MinivaeError(f"on-nonfinite must be 'stop' or 'skip', got {self.on_nonfinite!r}")
        if not isinstance(self.drop_last, bool):
            raise MinivaeError(f"drop_last must be True or False, got {self.drop_last!r}")
        schedules.check(self.warmup_steps, self.capacity, self.capacity_steps, self.gamma)
        return self
