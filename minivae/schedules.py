"""Schedules of the objective's weights over training steps, for the trainer.

Both are linear ramps in the global step t (the number of optimiser steps already taken, which
every checkpoint holds, so a resumed run continues the ramp exactly where it stopped):

    KL warm-up (beta annealing):   beta_t = beta  * min(1, t / N)      (N = warmup_steps)
    capacity (Burgess et al. 2018): C_t    = C_max * min(1, t / N)      (N = capacity_steps)

N = 0 means no ramp: the end value from the first step.  Warm-up is the usual cure for posterior
collapse (Bowman et al. 2016, Sonderby et al. 2016): with beta near 0 early on the decoder learns
to use z before the KL term can switch units off.  Capacity control instead fixes how many nats
the posterior may carry at each moment (``minivae.objectives.capacity_loss``).
"""
import math

import numpy as np

from .errors import MinivaeError


def linear_ramp(step, steps, end):
    """end * min(1, step / steps) as a float (end * step / steps before the end of the ramp,
    end from step ``steps`` on); steps = 0: end at every step."""
    if step >= steps:
        return float(end)
    return float(end) * step / steps


def _int(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        raise MinivaeError(f"{name} must be an integer >= 0, got {v!r}")


def _real(name, v, strict):
    ok = (not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating))
          and math.isfinite(v) and (v > 0 if strict else v >= 0))
    if not ok:
        raise MinivaeError(f"{name} must be a finite number {'>' if strict else '>='} 0, "
                           f"got {v!r}")


def check(warmup_steps, capacity, capacity_steps, gamma):
    """Check the schedule fields of a TrainConfig (one-line MinivaeErrors, CLI spellings)."""
    _int("warmup-steps", warmup_steps)
    _int("capacity-steps", capacity_steps)
    _real("gamma", gamma, strict=True)
    if capacity is not None:
        _real("capacity", capacity, strict=False)
        if warmup_steps:
            raise MinivaeError("--warmup-steps ramps beta, which --capacity replaces (its KL "
                               "target C ramps instead, over --capacity-steps); drop one")
    elif capacity_steps:
        raise MinivaeError("--capacity-steps needs --capacity C_MAX (the capacity it ramps to)")


def check_model(cfg, model):
    """The schedules of cfg fit this model's objective (else a one-line MinivaeError)."""
    if model.objective == "iwae" and (cfg.capacity is not None or cfg.warmup_steps):
        raise MinivaeError("--capacity and --warmup-steps schedule the ELBO's KL term; the "
                           "IWAE objective has none (use --objective elbo)")
    if cfg.capacity is not None and getattr(model, "estimator", "reparam") != "reparam":
        raise MinivaeError("--capacity is implemented for the reparameterisation gradient only; "
                           "drop --estimator score")
    if cfg.capacity is not None and model.beta != 1.0:
        raise MinivaeError(f"--capacity replaces beta by gamma * |KL - C|; drop --beta "
                           f"{model.beta:g} (held-out losses are reported with beta 1)")


def objective_args(cfg, beta, step):
    """The keyword arguments of VAE.forward_backward at global step ``step`` ({} when the
    objective is the model's own, unscheduled one)."""
    if cfg.capacity is not None:
        return {"capacity": linear_ramp(step, cfg.capacity_steps, cfg.capacity),
                "gamma": float(cfg.gamma)}
    if cfg.warmup_steps:
        return {"beta": linear_ramp(step, cfg.warmup_steps, beta)}
    return {}
