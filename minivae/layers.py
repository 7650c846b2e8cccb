"""Layers with hand-derived backward passes.

Every layer has ``forward(x) -> y`` and ``backward(dy) -> dx``.  The forward caches exactly what
the backward needs (the input for Linear, the *output* for every activation, since each of their
derivatives is cheapest as a function of y), and the backward releases the cache, so a second
backward without a forward fails loudly.  Parameter gradients are *written* (not accumulated) into
views of the model's flat gradient buffer (see ``params.py``): each parameter is used once per
step, so there is nothing to accumulate and nothing to zero.

Shapes: B batch, Din/Dout feature sizes.  Weights are stored (Din, Dout) so that y = x @ W + b.
"""
import math

from . import kernels
from .backend import get_array_module
from .errors import MinivaeError


class Linear:
    """y = x @ W + b                         x: (B, Din)  W: (Din, Dout)  b: (Dout,)  y: (B, Dout)

    backward:  dx = dy @ W.T    (B, Dout) @ (Dout, Din)
               dW = x.T @ dy    (Din, B) @ (B, Dout)
               db = dy.sum(0)
    since y_bj = sum_i x_bi W_ij + b_j gives dy_bj/dx_bi = W_ij, dy_bj/dW_ij = x_bi, dy_bj/db_j = 1.

    W, b, dW, db are views given by the owner (a ParamBuffer); the layer never allocates them.
    ``need_dx=False`` skips dx for a first layer whose input is data (saves one GEMM).
    """

    def __init__(self, W, b, dW, db, need_dx=True):
        self.W, self.b, self.dW, self.db = W, b, dW, db
        self.need_dx = need_dx
        self._x = None

    def forward(self, x):
        self._x = x
        return x @ self.W + self.b

    def backward(self, dy):
        x, self._x = self._x, None
        if x is None:
            raise RuntimeError("Linear.backward called without a forward")
        xp = get_array_module(dy)
        xp.matmul(x.T, dy, out=self.dW)
        dy.sum(axis=0, out=self.db)
        return dy @ self.W.T if self.need_dx else None

    @staticmethod
    def init(W, b, rng):
        """PyTorch's nn.Linear rule: W, b ~ U(-1/sqrt(Din), 1/sqrt(Din)), drawn W then b.

        Drawn in float64 on the host and cast, so a given seed gives the same start on every
        device and in the PyTorch peer of ../shared/bench (which draws in exactly this order).
        """
        xp = get_array_module(W)
        bound = 1.0 / math.sqrt(W.shape[0])
        W[...] = xp.asarray(rng.uniform(-bound, bound, W.shape).astype(W.dtype))
        b[...] = xp.asarray(rng.uniform(-bound, bound, b.shape).astype(b.dtype))


class Activation:
    """y = f(x) elementwise; backward dx = dy * f'(x), with f'(x) written as g(y).

    Subclasses name the function (``name``, used by the fused kernels in ``minivae.kernels``) and
    document f and g.  Caching y rather than x is what lets a fused kernel do bias + activation in
    one pass forward and one pass backward.
    """

    name = None

    def __init__(self):
        self._y = None

    def forward(self, x):
        y = kernels.act_forward(self.name, x)
        self._y = y
        return y

    def backward(self, dy):
        y, self._y = self._y, None
        if y is None:
            raise RuntimeError(f"{type(self).__name__}.backward called without a forward")
        return kernels.act_backward(self.name, dy, y)


class ReLU(Activation):
    """y = max(x, 0);  dx = dy * [y > 0]   (the kink at x = 0 gets derivative 0)."""
    name = "relu"


class LeakyReLU(Activation):
    """y = x if x > 0 else a*x (a = 0.01);  dx = dy * (1 if y > 0 else a)   (y > 0 iff x > 0)."""
    name = "leaky_relu"


class Tanh(Activation):
    """y = tanh(x);  dx = dy * (1 - y^2)."""
    name = "tanh"


class Sigmoid(Activation):
    """y = 1 / (1 + exp(-x)) (evaluated with exp(-|x|), never overflowing);  dx = dy * y * (1 - y)."""
    name = "sigmoid"


class Softplus(Activation):
    """y = log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|));  dx = dy * sigmoid(x) = dy * (-expm1(-y)).

    From y: exp(-y) = 1 / (1 + e^x) = 1 - sigmoid(x), so sigmoid(x) = -expm1(-y), accurate even
    where y is tiny (x very negative).
    """
    name = "softplus"


class ELU(Activation):
    """y = x if x > 0 else a*(exp(x) - 1) (a = 1);  dx = dy * (1 if y > 0 else y + a),

    since for x <= 0, dy/dx = a*exp(x) = y + a.
    """
    name = "elu"


ACTIVATIONS = {cls.name: cls for cls in (ReLU, LeakyReLU, Tanh, Sigmoid, Softplus, ELU)}


def activation(name):
    """An activation layer from its name: relu, leaky_relu, tanh, sigmoid, softplus, elu."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise MinivaeError(f"activation must be one of {', '.join(ACTIVATIONS)}, "
                           f"got {name!r}") from None


class Sequential:
    """Layers applied in order; backward runs them in reverse (the chain rule)."""

    def __init__(self, layers):
        self.layers = list(layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
            if dy is None:             # a first layer whose input is data: nothing further back
                return None
        return dy


class FusedMLP:
    """The forward and backward of a Sequential [Linear, act, Linear, act, ..., Linear] for N rows,
    in preallocated buffers and fused kernels: the same math as the layers, without allocating.

        forward    h_i = f(h_{i-1} @ W_i + b_i)   GEMM into h_i, then bias + f in place (one pass)
                   (the last layer: h = h_{i-1} @ W + b, no activation)
        backward   given g_i = dL/d(h_{i-1} @ W_i + b_i):
                   dW_i = h_{i-1}^T g_i,  db_i = sum over rows of g_i,  dx_i = g_i @ W_i^T,
                   g_{i-1} = dx_i * f'(h_{i-1})   (one pass that also sums db_{i-1})

    The forward cache (x and the h_i) lives here, not in the layers, so using the layers (the
    model's public encode/decode/elbo) between the forward and the backward of a training step
    cannot disturb it.  The buffers belong to the plan: the caller reads the output before the
    next forward.  Parameter gradients are written into the layers' views of the flat gradient.
    """

    def __init__(self, seq, n):
        self.linears = [layer for layer in seq.layers if isinstance(layer, Linear)]
        self.acts = [layer.name for layer in seq.layers if isinstance(layer, Activation)]
        W = self.linears[0].W
        self.xp = get_array_module(W)
        self.n, self.dtype = n, W.dtype
        self.h = [self.xp.empty((n, L.W.shape[1]), W.dtype) for L in self.linears]
        # the GEMM's output before bias + activation, and the backward's dx before the
        # activation's derivative: kept apart from h and g because a Numba kernel whose input
        # and output are the same array cannot be vectorised (measured 6x slower in place)
        self.pre = [self.xp.empty((n, L.W.shape[1]), W.dtype) for L in self.linears[:-1]]
        self.out_db = self.linears[-1].db           # a likelihood kernel may write it (db_done)
        self.dx = [None] * len(self.linears)        # input-gradient buffers, made on first use
        self.g = [None] * len(self.linears)
        self._x = None

    @property
    def last_bias(self):
        """The last layer's bias b (Dout,), for a consumer that adds it itself (forward with
        add_last_bias=False)."""
        return self.linears[-1].b

    def forward(self, x, add_last_bias=True):
        """x (N, Din) -> the last layer's output (N, Dout), a buffer of this plan.
        add_last_bias=False: the last layer's h @ W without its bias (the Bernoulli likelihood's
        kernel adds last_bias as it reads the logits, saving a pass over the output)."""
        xp, last = self.xp, len(self.linears) - 1
        self._x = x
        inp = x
        for i, L in enumerate(self.linears):
            h = self.h[i]
            if i < last:
                xp.matmul(inp, L.W, out=self.pre[i])
                kernels.bias_act_forward(self.acts[i], self.pre[i], L.b, out=h)
            else:
                xp.matmul(inp, L.W, out=h)
                if add_last_bias:
                    kernels.bias_add(h, L.b, out=h)
            inp = h
        return inp

    def forward_rows(self, x, lo, hi, add_last_bias=True):
        """Rows lo:hi of forward(x) (every layer's rows lo:hi into this plan's buffers), so that
        disjoint row ranges can be computed apart, e.g. on two threads; the forward cache is x,
        as after forward.  Returns the last layer's buffer (all N rows)."""
        xp, last = self.xp, len(self.linears) - 1
        self._x = x
        inp = x[lo:hi]
        for i, L in enumerate(self.linears):
            h = self.h[i][lo:hi]
            if i < last:
                pre = self.pre[i][lo:hi]
                xp.matmul(inp, L.W, out=pre)
                kernels.bias_act_forward(self.acts[i], pre, L.b, out=h)
            else:
                xp.matmul(inp, L.W, out=h)
                if add_last_bias:
                    kernels.bias_add(h, L.b, out=h)
            inp = h
        return self.h[last]

    def backward(self, dy, db_done=False):
        """dy (N, Dout): gradient of the last output -> dx (N, Din) (None for a first layer that
        needs none).  db_done: the last layer's bias gradient was already written (fused into
        the likelihood kernel)."""
        x, self._x = self._x, None
        if x is None:
            raise RuntimeError("FusedMLP.backward called without a forward")
        xp = self.xp
        for i in range(len(self.linears) - 1, -1, -1):
            L = self.linears[i]
            inp = x if i == 0 else self.h[i - 1]
            xp.matmul(inp.T, dy, out=L.dW)
            if not db_done:
                dy.sum(axis=0, out=L.db)
            if i == 0 and not L.need_dx:
                return None
            if self.dx[i] is None:
                self.dx[i] = xp.empty((self.n, L.W.shape[0]), self.dtype)
                self.g[i] = xp.empty((self.n, L.W.shape[0]), self.dtype) if i > 0 else None
            dx = self.dx[i]
            xp.matmul(dy, L.W.T, out=dx)
            if i == 0:
                return dx
            # the activation's backward, fused with the previous layer's bias gradient
            kernels.act_backward(self.acts[i - 1], dx, self.h[i - 1], out=self.g[i],
                                 db=self.linears[i - 1].db)
            dy, db_done = self.g[i], True
        return None


def mlp_shapes(prefix, sizes):
    """Parameter shapes of an MLP with layer widths ``sizes`` = (Din, H1, ..., Dout).

    Names are ``{prefix}.{i}.W`` (Din_i, Dout_i) and ``{prefix}.{i}.b`` (Dout_i,).
    """
    shapes = {}
    for i, (din, dout) in enumerate(zip(sizes[:-1], sizes[1:])):
        shapes[f"{prefix}.{i}.W"] = (din, dout)
        shapes[f"{prefix}.{i}.b"] = (dout,)
    return shapes


def build_mlp(buffer, prefix, sizes, act, need_input_grad=True):
    """Linear -> act -> ... -> Linear over views of ``buffer`` (a ParamBuffer holding
    ``mlp_shapes(prefix, sizes)``).  The last layer has no activation (its outputs are the
    parameters of a distribution).  ``need_input_grad=False`` skips the first layer's dx.
    """
    layers = []
    n = len(sizes) - 1
    for i in range(n):
        W, b = f"{prefix}.{i}.W", f"{prefix}.{i}.b"
        layers.append(Linear(buffer.params[W], buffer.params[b], buffer.grads[W],
                             buffer.grads[b], need_dx=need_input_grad or i > 0))
        if i < n - 1:
            layers.append(activation(act))
    return Sequential(layers)
