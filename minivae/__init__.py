"""minivae: variational autoencoders from scratch on plain arrays, every gradient derived by hand.

    >>> import numpy as np, minivae
    >>> model = minivae.VAE(data_dim=784, hidden=(400,), latent_dim=20, seed=0)
    >>> x = (np.random.default_rng(0).random((8, 784)) < 0.5).astype(np.float32)
    >>> loss, grads = model.loss_and_grads(x, rng=np.random.default_rng(1))

Modules, one purpose each (the README's layout lists them in dependency order): backend
(numpy | cupy, dtypes, generators), distributions (the formulas), kernels (fused CPU/GPU kernels
beside their reference), params (one flat buffer), layers, conv, decoders (p(x|z)), estimators
(score function vs reparameterisation), objectives (ELBO, capacity, IWAE), model (VAE), discrete,
optim, gradcheck, linear_gaussian (exact ground truth), evaluation (held-out ELBO,
importance-sampled log p(x)), data, metrics (disentanglement), schedules, config (TrainConfig),
checkpoint, rundir (the run directory's files and lock), train (the loop), parallel, plots, sweep,
cli.

Importing minivae compiles nothing and never imports CuPy.
"""
from . import gradcheck
from .errors import MinivaeError
from .gradcheck import check_gradient, check_vjp
from .model import ELBO, VAE

__version__ = "0.2.0"
__all__ = ["VAE", "ELBO", "MinivaeError", "gradcheck", "check_vjp", "check_gradient",
           "__version__"]
