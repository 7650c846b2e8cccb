"""Fused kernels for the hot elementwise chains, dispatched by array type.

    reference.py   plain xp: the specification (always available, used by the tests)

``MINIVAE_KERNELS=reference`` selects the reference everywhere (for study and debugging).
"""
import os

from . import reference
from .reference import ACTIVATIONS  # noqa: F401  (the activation names)

MODE = os.environ.get("MINIVAE_KERNELS", "auto")

act_forward = reference.act_forward
act_backward = reference.act_backward
bias_act_forward = reference.bias_act_forward
reparam_kl = reference.reparam_kl
reparam_kl_backward = reference.reparam_kl_backward
bernoulli_nll_grad = reference.bernoulli_nll_grad
gaussian_nll_grad = reference.gaussian_nll_grad
adam_update = reference.adam_update
