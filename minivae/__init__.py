"""minivae: variational autoencoders from scratch on plain arrays, every gradient derived by hand.

    >>> import minivae
    >>> model = minivae.VAE(data_dim=784, hidden=(400,), latent_dim=20, seed=0)
    >>> loss, grads = model.loss_and_grads(x)          # x: float32 (B, 784) in [0, 1]

Importing minivae compiles nothing and never imports CuPy.
"""
from .errors import MinivaeError

__version__ = "0.1.0"
__all__ = ["MinivaeError", "__version__"]
