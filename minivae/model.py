"""The VAE: encoder -> (mu, logvar) -> z = mu + std * eps -> decoder -> p(x|z).

    encoder   MLP  D -> H1 -> ... -> 2Z   (one linear head; its columns are mu then logvar)
    decoder   MLP  Z -> ... -> H1 -> D'   (the likelihood's parameters: logits, means, or means and
                                          log-variances; D' = likelihood.out_features(D))

All parameters live in one ParamBuffer (``model.buffer``): ``model.params`` and ``model.grads`` are
name -> view mappings into its flat ``data`` and ``grad`` arrays.  The objective functions in
``objectives.py`` drive the forward and backward passes defined here.
"""
import math
from collections import namedtuple

import numpy as np

from . import distributions as dist
from . import objectives
from . import threads
from .backend import array_module, resolve_device, resolve_dtype
from .conv import ConvArch, Conv2d, ConvTranspose2d
from .errors import MinivaeError
from .layers import ACTIVATIONS, build_mlp, FusedMLP, Linear, mlp_shapes
from .decoders import SIGMA_MIN, make_likelihood
from .params import ParamBuffer

ELBO = namedtuple("ELBO", "elbo distortion kl")
ELBO.__doc__ = """Per-example terms (B,), in nats: elbo = -(distortion + kl), distortion =
-E_q[log p(x|z)] (a Monte Carlo estimate; the same sign as objectives.Terms.distortion and the
metrics' *_distortion), kl = KL(q(z|x) || N(0, I)) (closed form)."""


ESTIMATORS = ("reparam", "score")


def _finite_number(name, value, low, strict=False):
    """A real number (Python or NumPy scalar) >= low (> low when strict), as a float."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
          and math.isfinite(value) and (value > low if strict else value >= low))
    if not ok:
        raise MinivaeError(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, "
                           f"got {value!r}")
    return float(value)


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise MinivaeError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class StepBuffers:
    """z (S, B, Z), std (B, Z), kl (B,), nll (S, B), dout (S, B, D): the gradient of the decoder's
    output (its own buffer: written over the logits in place, the aliasing would keep the fused
    kernel from vectorising, 4x slower), and dhead (B, 2Z): the encoder head's gradient, whose
    column halves receive dmu and dlogvar directly (no concatenation).  The two gradient buffers
    are made on first use, so a forward-only evaluation (the importance-sampled log p(x) decodes
    up to 10,000 samples at once) never holds them."""

    def __init__(self, xp, dtype, S, B, Z, D):
        self.xp, self.dtype, self.S, self.B, self.Z, self.D = xp, dtype, S, B, Z, D
        self.z = xp.empty((S, B, Z), dtype)
        self.std = xp.empty((B, Z), dtype)
        self.kl = xp.empty(B, dtype)
        self.nll = xp.empty((S, B), dtype)
        self._dout = self._dhead = None

    @property
    def dout(self):
        if self._dout is None:
            self._dout = self.xp.empty((self.S, self.B, self.D), self.dtype)
        return self._dout

    @property
    def dhead(self):
        if self._dhead is None:
            self._dhead = self.xp.empty((self.B, 2 * self.Z), self.dtype)
        return self._dhead


class VAE:
    """A VAE with MLP encoder and decoder, trained by hand-derived gradients.

    data_dim      D, the flattened input size
    hidden        encoder hidden widths, e.g. (400,) or (200, 200); the decoder mirrors them
    latent_dim    Z
    activation    relu, leaky_relu, tanh, sigmoid, softplus or elu
    likelihood    'bernoulli' (logits; data in [0, 1]) or 'gaussian' (means)
    sigma, learn_sigma   Gaussian only: sigma's value (the initial one when learned), and 'fixed',
                  'shared', 'per-dim' (one sigma per pixel for the whole dataset) or 'per-example'
                  (Kingma & Welling's decoder: a mean and a log-variance per example and pixel)
    gaussian_mean   Gaussian only: 'identity' or 'sigmoid' (means in (0, 1), for data in [0, 1])
    sigma_min     'per-example' only: the floor on sigma (default 1/256; see minivae.decoders)
    beta          weight of the KL term (1: the ELBO; > 1: a beta-VAE)
    objective     'elbo' or 'iwae';  samples: S Monte Carlo samples (the K of IWAE)
    estimator     the encoder's gradient: 'reparam' (through z = mu + std eps) or 'score' (the
                  score function, objectives.score_elbo_loss; objective 'elbo' only)
    baseline      the score function's control variate: 'none' or 'mean' (leave-one-out over the
                  S samples of each example; samples >= 2)
    dtype         float32 (training) or float64 (checks);  device: 'cpu' or 'cuda'
    seed          seeds the initialisation (PyTorch's nn.Linear rule, drawn in layer order)
    arch          'mlp', or 'conv': convolutional encoder, transposed-convolutional decoder
                  (``minivae.conv.ConvArch``), with image_shape (H, W) or (C, H, W), channels
                  per convolution (e.g. (32, 64)), kernel, stride and padding (None: (K - S) // 2);
                  hidden are then the dense widths between the convolutions and the latent
    """

    def __init__(self, data_dim, hidden=(400,), latent_dim=20, activation="relu",
                 likelihood="bernoulli", beta=1.0, dtype="float32", seed=0, device=None,
                 sigma=1.0, learn_sigma="fixed", objective="elbo", samples=1,
                 estimator="reparam", baseline="none", gaussian_mean="identity",
                 sigma_min=SIGMA_MIN, arch="mlp", image_shape=None, channels=(32, 64), kernel=4,
                 stride=2, padding=None):
        data_dim = _positive_int("data_dim", data_dim)
        latent_dim = _positive_int("latent_dim", latent_dim)
        if isinstance(hidden, (int, np.integer)):
            hidden = (hidden,)
        hidden = tuple(_positive_int("hidden size", h) for h in hidden)
        if activation not in ACTIVATIONS:
            raise MinivaeError(f"activation must be one of {', '.join(ACTIVATIONS)}, "
                               f"got {activation!r}")
        beta = _finite_number("beta", beta, low=0.0)
        sigma = _finite_number("sigma", sigma, low=0.0, strict=True)
        sigma_min = _finite_number("sigma_min", sigma_min, low=0.0)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise MinivaeError(f"seed must be an integer >= 0, got {seed!r}")
        if objective not in objectives.OBJECTIVES:
            raise MinivaeError(f"objective must be one of {', '.join(objectives.OBJECTIVES)}, "
                               f"got {objective!r}")
        if objective == "iwae" and beta != 1.0:
            raise MinivaeError(f"beta must be 1 with objective 'iwae' (the IWAE bound has no KL "
                               f"term to weight), got {beta!r}; use objective 'elbo' for a beta-VAE")
        samples = _positive_int("samples", samples)
        if estimator not in ESTIMATORS:
            raise MinivaeError(f"estimator must be one of {', '.join(ESTIMATORS)}, "
                               f"got {estimator!r}")
        if baseline not in objectives.BASELINES:
            raise MinivaeError(f"baseline must be one of {', '.join(objectives.BASELINES)}, "
                               f"got {baseline!r}")
        if estimator == "score" and objective != "elbo":
            raise MinivaeError(f"estimator 'score' is implemented for objective 'elbo' only, got "
                               f"{objective!r}; use estimator 'reparam' for the IWAE bound")
        if baseline != "none" and estimator != "score":
            raise MinivaeError(f"baseline {baseline!r} applies to estimator 'score' only (the "
                               "reparameterised gradient has no learning signal to centre)")
        if baseline == "mean" and samples < 2:
            raise MinivaeError("baseline 'mean' (leave-one-out) needs samples >= 2 per example, "
                               f"got {samples}; raise samples (--k) or use baseline 'none'")
        self.config = dict(data_dim=data_dim, hidden=list(hidden), latent_dim=latent_dim,
                           activation=activation, likelihood=likelihood, beta=float(beta),
                           dtype=resolve_dtype(dtype).__name__, seed=int(seed),
                           device=resolve_device(device), sigma=float(sigma),
                           learn_sigma=learn_sigma, objective=objective,
                           samples=samples, estimator=estimator, baseline=baseline,
                           gaussian_mean=gaussian_mean, sigma_min=sigma_min)
        if arch not in ("mlp", "conv"):
            raise MinivaeError(f"arch must be 'mlp' or 'conv', got {arch!r}")
        self.dtype = resolve_dtype(dtype)
        self.xp = array_module(self.config["device"])
        if self.xp is np:
            threads.ensure()        # the BLAS thread count, once per process (minivae.threads)
        self.likelihood = make_likelihood(likelihood, sigma, learn_sigma, gaussian_mean,
                                          sigma_min)
        self.data_dim, self.latent_dim, self.hidden = data_dim, latent_dim, hidden
        self.beta, self.objective, self.samples = float(beta), objective, self.config["samples"]
        self.estimator, self.baseline = estimator, baseline

        self.out_dim = self.likelihood.out_features(data_dim)
        enc_sizes, dec_sizes = self._layout(data_dim, hidden, latent_dim, self.out_dim)
        self._sizes = enc_sizes, dec_sizes
        self.conv = None
        if arch == "conv":
            self.conv = ConvArch(image_shape, channels, kernel, stride, padding, hidden,
                                 latent_dim, outputs=self.out_dim // data_dim)
            if self.conv.data_dim != data_dim:
                raise MinivaeError(f"image_shape {tuple(image_shape)} holds {self.conv.data_dim} "
                                   f"values, but data_dim is {data_dim}")
            self.config.update(arch="conv", image_shape=list(self.conv.image),
                               channels=list(self.conv.channels), kernel=self.conv.kernel,
                               stride=self.conv.stride, padding=self.conv.padding)
        net_shapes = (self.conv.param_shapes() if self.conv else
                      {**mlp_shapes("enc", enc_sizes), **mlp_shapes("dec", dec_sizes)})
        shapes = {**net_shapes, **self.likelihood.param_shapes(data_dim)}
        self.buffer = ParamBuffer(shapes, xp=self.xp, dtype=self.dtype)
        self.encoder, self.decoder = self._networks()
        self.likelihood.bind(self.buffer)
        self._workspaces = {}       # (what, sizes) -> FusedMLP or StepBuffers, reused step to step
        self.reset_parameters(seed)

    def _layout(self, data_dim, hidden, latent_dim, out_dim):
        """The encoder's and decoder's layer widths: D -> H.. -> 2Z (mu, logvar), Z -> ..H -> the
        likelihood's out_dim outputs."""
        return (data_dim, *hidden, 2 * latent_dim), (latent_dim, *hidden[::-1], out_dim)

    def draw_noise(self, rng, shape=None, out=None):
        """The noise of a step (S, B, Z): standard normal draws from rng, into out when given."""
        if out is not None:
            return rng.standard_normal(out=out, dtype=self.dtype)
        return rng.standard_normal(shape, dtype=self.dtype)

    # ------------------------------------------------------------------ parameters
    @property
    def params(self):
        """name -> view of the flat parameter buffer (writing to a view changes the model)."""
        return self.buffer.params

    @property
    def grads(self):
        """name -> view of the flat gradient buffer (overwritten by every backward pass)."""
        return self.buffer.grads

    def _networks(self):
        """A fresh (encoder, decoder) over views of the flat buffer: the public pair, and one
        per workspace for the convolutional model (each keeps its own forward cache)."""
        act = self.config["activation"]
        if self.conv is not None:
            return self.conv.encoder(self.buffer, act), self.conv.decoder(self.buffer, act)
        enc_sizes, dec_sizes = self._sizes
        return (build_mlp(self.buffer, "enc", enc_sizes, act, need_input_grad=False),
                build_mlp(self.buffer, "dec", dec_sizes, act))

    def reset_parameters(self, seed):
        """PyTorch's default initialisation, drawn layer by layer in forward order (encoder,
        then decoder), W then b, on the host: the same start on every device."""
        rng = np.random.default_rng(seed)
        for layer in (*self.encoder.layers, *self.decoder.layers):
            if isinstance(layer, (Linear, Conv2d, ConvTranspose2d)):
                type(layer).init(layer.W, layer.b, rng)
        if hasattr(self.likelihood, "init"):
            self.likelihood.init()
        if hasattr(self.likelihood, "init_output_bias"):
            last = [layer for layer in self.decoder.layers if hasattr(layer, "b")][-1]
            self.likelihood.init_output_bias(last.b)      # (2D,), or per channel (2C,) for conv

    # ------------------------------------------------------------------ passes
    def encoder_forward(self, x):
        """x (B, D) -> mu, logvar (B, Z): views of the head's output columns."""
        h = self.encoder.forward(x)
        return h[:, :self.latent_dim], h[:, self.latent_dim:]

    def encoder_backward(self, dmu, dlogvar):
        self.encoder.backward(self.xp.concatenate((dmu, dlogvar), axis=1))

    def decoder_forward(self, z):
        """z (N, Z) -> the likelihood's parameters (N, D')."""
        return self.decoder.forward(z)

    def decoder_backward(self, dout):
        """dout (N, D') -> dz (N, Z), writing the decoder's parameter gradients."""
        return self.decoder.backward(dout)

    # ------------------------------------------------------------------ workspaces
    MAX_WORKSPACES = 8          # distinct (kind, size) entries kept, oldest dropped first

    def _workspace(self, key, make):
        ws = self._workspaces.get(key)
        if ws is None:
            if len(self._workspaces) >= self.MAX_WORKSPACES:
                self._workspaces.pop(next(iter(self._workspaces)))
            ws = self._workspaces[key] = make()
        return ws

    def _plan(self, which, n):
        """The FusedMLP of the encoder ('enc') or decoder ('dec') for n rows, made once per n
        (a full batch and the last short batch each get their own, neither reallocated)."""
        if self.conv is not None:
            return self._workspace((which, n), lambda: self._networks()[which == "dec"])
        return self._workspace((which, n), lambda: FusedMLP(
            self.encoder if which == "enc" else self.decoder, n))

    def _step_buffers(self, S, B):
        """Buffers of one step's latent quantities for S samples of a batch of B."""
        return self._workspace(("step", S, B), lambda: StepBuffers(self.xp, self.dtype, S, B,
                                                                   self.latent_dim,
                                                                   self.out_dim))

    # ------------------------------------------------------------------ checks at the boundary
    def check_data(self, x, name="x"):
        """x as an array of this model's module and dtype, after checking shape and values."""
        xp = self.xp
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise MinivaeError(f"{name} must be an array of shape (B, {self.data_dim}), "
                               f"got {type(x).__name__}")
        if x.ndim != 2 or x.shape[1] != self.data_dim or x.shape[0] < 1:
            raise MinivaeError(f"{name} must have shape (B, {self.data_dim}) with B >= 1, "
                               f"got {tuple(x.shape)}")
        if x.dtype.kind not in "fiub":
            raise MinivaeError(f"{name} must hold real numbers, got dtype {x.dtype}")
        x = xp.asarray(x, dtype=self.dtype)
        if not bool(xp.isfinite(x).all()):
            raise MinivaeError(f"{name} holds NaN or infinite values; clean the data first")
        if self.likelihood.needs_unit_interval and not bool(((x >= 0) & (x <= 1)).all()):
            raise MinivaeError(f"{name} has values outside [0, 1], which a Bernoulli likelihood "
                               "cannot model; rescale the data or use likelihood='gaussian'")
        return x

    def _noise(self, B, eps, rng, samples=None):
        S = self.samples if samples is None else _positive_int("samples", samples)
        shape = (S, B, self.latent_dim)
        if eps is None:
            if rng is None:
                raise MinivaeError("pass eps (noise of shape (S, B, Z)) or rng (a Generator)")
            # a NumPy generator with a CUDA model: draw on the host, then move to the device
            return self.xp.asarray(rng.standard_normal(shape, dtype=self.dtype))
        if not hasattr(eps, "ndim"):
            raise MinivaeError(f"eps must be an array of shape (S, {B}, {self.latent_dim}), got "
                               f"{type(eps).__name__}")
        if eps.ndim == 2:
            eps = eps[None]
        if eps.ndim != 3 or eps.shape[1:] != shape[1:]:
            raise MinivaeError(f"eps must have shape (S, {B}, {self.latent_dim}) or "
                               f"({B}, {self.latent_dim}), got {tuple(eps.shape)}")
        return self.xp.asarray(eps, dtype=self.dtype)

    # ------------------------------------------------------------------ public surface
    def forward_backward(self, x, eps, beta=None, capacity=None, gamma=None):
        """One pass of the configured objective; gradients land in ``self.buffer.grad``.

        beta: this step's KL weight in place of the model's (a warm-up schedule); capacity and
        gamma: the capacity-controlled loss (``objectives.capacity_loss``) instead of the ELBO.
        No input checks (the trainer checks its data once); returns 0-d device arrays.
        """
        if self.objective == "iwae":
            return objectives.iwae_loss(self, x, eps)
        beta = self.beta if beta is None else beta
        if capacity is not None:
            return objectives.capacity_loss(self, x, eps, gamma, capacity)
        if self.estimator == "score":
            return objectives.score_elbo_loss(self, x, eps, beta, self.baseline)
        return objectives.elbo_loss(self, x, eps, beta)

    def loss_and_grads(self, x, eps=None, rng=None):
        """(loss in nats per example, {name: gradient copy}).  With eps given it is deterministic.

        x: (B, D); eps: (S, B, Z) or (B, Z) standard-normal noise, else drawn from rng.
        """
        x = self.check_data(x)
        eps = self._noise(x.shape[0], eps, rng)
        terms = self.forward_backward(x, eps)
        return float(terms.loss), {k: g.copy() for k, g in self.grads.items()}

    def loss(self, x, eps=None, rng=None):
        """The objective alone (no gradients written), for finite differences and evaluation."""
        x = self.check_data(x)
        eps = self._noise(x.shape[0], eps, rng)
        if self.objective == "iwae":
            logw, _ = objectives.log_weights(self, x, eps)
            return float(-self.xp.mean(objectives.logmeanexp(logw, axis=0)))
        t = self.elbo(x, eps=eps)
        return float(self.xp.mean(t.distortion + self.beta * t.kl))

    def encode(self, x):
        """(mu, logvar) of q(z|x), each (B, Z)."""
        return self.encoder_forward(self.check_data(x))

    def decode(self, z):
        """The mean of p(x|z) (probabilities for a Bernoulli), (N, D), for z (N, Z)."""
        z = self.xp.asarray(z, dtype=self.dtype)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise MinivaeError(f"z must have shape (N, {self.latent_dim}), got {tuple(z.shape)}")
        return self.likelihood.mean(self.decoder_forward(z))

    def reconstruct(self, x):
        """decode(mu(x)): the mean reconstruction through the posterior mean."""
        mu, _ = self.encode(x)
        return self.likelihood.mean(self.decoder_forward(mu))

    def sample(self, n, rng):
        """n draws of the mean of p(x|z), z ~ N(0, I): (n, D)."""
        n = _positive_int("n", n)
        if not callable(getattr(rng, "standard_normal", None)):
            raise MinivaeError(f"sample needs rng, a seeded Generator (minivae.backend.make_rng), "
                               f"got {type(rng).__name__}")
        z = self.xp.asarray(rng.standard_normal((n, self.latent_dim), dtype=self.dtype))
        return self.decode(z)

    def elbo(self, x, eps=None, rng=None, samples=None):
        """Per-example ELBO terms (B,), with S samples for the distortion -E_q log p(x|z)."""
        x = self.check_data(x)
        eps = self._noise(x.shape[0], eps, rng, samples)
        S, B, Z = eps.shape
        mu, logvar = self.encoder_forward(x)
        z, _ = dist.reparameterize(mu, logvar, eps)
        out = self.decoder_forward(z.reshape(S * B, Z)).reshape(S, B, -1)
        distortion = self.likelihood.nll(out, x).mean(axis=0)
        kl = dist.kl_standard_normal(mu, logvar)
        return ELBO(-(distortion + kl), distortion, kl)

    def num_params(self):
        return self.buffer.size

    def __repr__(self):
        c = self.config
        sizes = "-".join(map(str, [c["data_dim"], *c["hidden"], c["latent_dim"]]))
        if self.conv is not None:
            sizes = f"{self.conv.describe()} " + "-".join(map(str, [*c["hidden"],
                                                                     c["latent_dim"]]))
        objective = (f"iwae K={c['samples']}" if c["objective"] == "iwae" else
                     f"beta={c['beta']}" + (f", S={c['samples']}" if c["samples"] > 1 else ""))
        if c["estimator"] == "score":
            objective += ", score-function gradient" + (
                ", leave-one-out baseline" if c["baseline"] == "mean" else "")
        return (f"VAE({sizes}, {c['activation']}, {c['likelihood']}, {objective}, {c['dtype']}, "
                f"{c['device']}, {self.num_params()} parameters)")
