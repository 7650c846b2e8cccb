"""Convolutions with hand-derived backward passes, lowered to one GEMM per layer (im2col/col2im).

Shapes (NCHW): B batch, C input channels, O output channels, H x W input, Ho x Wo output,
K x K kernel, S stride, P zero padding on every side.  The output size of a convolution is

    Ho = (H + 2P - K) // S + 1                                   (``conv_output_size``)

and a convolution is *exact* when H + 2P - K is divisible by S: then no input row or column is
left out, and the transposed convolution maps Ho back to exactly H.

The lowering.  With xp the zero-padded input (B, C, H + 2P, W + 2P), the convolution is

    y[b, o, i, j] = bias[o] + sum_{c, p, q} W[o, c, p, q] * xp[b, c, S i + p, S j + q]

Collect every window into the column matrix (``im2col``)

    cols[(c, p, q), (b, i, j)] = xp[b, c, S i + p, S j + q]          (C K K, B Ho Wo)

and the convolution is one GEMM, Y = Wm @ cols with Wm = W.reshape(O, C K K) and Y (O, B Ho Wo)
the output with its channel axis first.  The adjoint of im2col is ``col2im``: it adds every
column entry back onto the pixel it was read from, so a pixel read by several windows receives the
sum of their gradients (fan-out).  y is linear in x, W and bias, hence with dY = dy as (O, B Ho Wo):

    dW    = dY @ cols^T      dW[o,c,p,q] = sum_{b,i,j} dy[b,o,i,j] xp[b,c,Si+p,Sj+q]
                             (the correlation of the input with the output gradient)
    dbias = dY.sum(1)        dbias[o]    = sum_{b,i,j} dy[b,o,i,j]
    dx    = crop_P(col2im(Wm^T @ dY))
                             dxp[b,c,h,w] = sum_{o,p,q,i,j: Si+p=h, Sj+q=w} W[o,c,p,q] dy[b,o,i,j]
                             (the transposed convolution of the output gradient with W)

``ConvTranspose2d`` is *defined* as that input-gradient map, so it is the exact adjoint of Conv2d
with the same weights, <Conv(x), y> = <x, ConvT(y)> (bias 0), and each layer's backward is the
other's forward: ConvT's dx is a convolution of dy, its dW the correlation of x with im2col(dy).
Weights use PyTorch's layouts, (O, C, K, K) for Conv2d and (C_in, C_out, K, K) for
ConvTranspose2d, so the PyTorch peer copies them unchanged.

Everything runs on ``xp`` (NumPy or CuPy).  In the reference (``kernels.reference``) im2col is
K*K strided slice copies and col2im K*K strided slice additions (basic slicing only); for NumPy
arrays im2col is one copy from an ``as_strided`` view of all windows and col2im one Numba pass
(the K*K additions took as long as a GEMM); the GEMMs are ``xp.matmul``.  A batch whose column
matrix would exceed ``MAX_COLS`` elements is processed in chunks of whole images (one GEMM per chunk), which bounds
the memory of large evaluations; a training batch of the standard models is a single chunk.
"""
import math

from . import kernels
from .backend import get_array_module
from .errors import MinivaeError
from .layers import Linear, Sequential, activation, mlp_shapes

MAX_COLS = 2 ** 24          # elements of one column matrix (64 MiB of float32) before chunking


def conv_output_size(n, kernel, stride, padding):
    """Ho = (n + 2P - K) // S + 1, or None when the kernel does not fit (n + 2P < K)."""
    span = n + 2 * padding - kernel
    return None if span < 0 else span // stride + 1


def _int(name, v, lo):
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise MinivaeError(f"{name} must be an integer >= {lo}, got {v!r}")
    return v


# ----------------------------------------------------------------------------- the lowering
def im2col(xpad, K, S, Ho, Wo, out=None):
    """cols (C K K, B Ho Wo) of a padded input xpad (B, C, Hp, Wp):
    cols[(c, p, q), (b, i, j)] = xpad[b, c, S i + p, S j + q].  out: a buffer to fill.
    (``kernels.im2col``: for NumPy one copy from a strided view of all windows, else the
    reference's K*K slice copies.)"""
    return kernels.im2col(xpad, K, S, Ho, Wo, out)


def col2im(cols, xpad, K, S, Ho, Wo):
    """The adjoint of im2col, into xpad (B, C, Hp, Wp): zeroed, then every entry of cols
    (C K K, B Ho Wo) is added onto the pixel im2col read it from, so a pixel read by several
    windows receives the sum of their gradients: <im2col(x), c> = <x, col2im(c)>.
    (``kernels.col2im``: one Numba pass for NumPy arrays, the reference's K*K strided additions
    otherwise.)"""
    return kernels.col2im(cols, xpad, K, S, Ho, Wo)


def _chunk(B, per_image):
    """Images per chunk so that a column matrix holds at most MAX_COLS elements (>= 1)."""
    return max(1, min(B, MAX_COLS // max(1, per_image)))


def _correlate(xpad, K, S, Ho, Wo, A=None, out=None, G=None, dW=None, cols=None):
    """For each chunk of images, with c = im2col of the chunk (or the given cols):
    out[:, chunk] = A @ c (a convolution) and dW (+)= G[:, chunk] @ c^T (a weight gradient).
    Returns c when the batch was one chunk (the cache a backward can reuse), else None."""
    xp = get_array_module(xpad)
    B, C = xpad.shape[:2]
    n, m = _chunk(B, C * K * K * Ho * Wo), Ho * Wo
    for b0 in range(0, B, n):
        b1 = min(B, b0 + n)
        c = cols if cols is not None else im2col(xpad[b0:b1], K, S, Ho, Wo)
        if A is not None:
            xp.matmul(A, c, out=out[:, b0 * m:b1 * m])
        if G is not None:
            if b0 == 0:
                xp.matmul(G[:, b0 * m:b1 * m], c.T, out=dW)
            else:
                dW += G[:, b0 * m:b1 * m] @ c.T
    return c if n >= B else None


def _scatter(M, A, K, S, Hi, Wi, xpad):
    """For each chunk of images: xpad[chunk] = col2im(A^T @ M[:, chunk]), M (rows, B Hi Wi):
    the transposed convolution of M with the weights A (rows, C K K)."""
    B, C = xpad.shape[:2]
    n, m = _chunk(B, C * K * K * Hi * Wi), Hi * Wi
    for b0 in range(0, B, n):
        b1 = min(B, b0 + n)
        col2im(A.T @ M[:, b0 * m:b1 * m], xpad[b0:b1], K, S, Hi, Wi)
    return xpad


def _channels_first(x):
    """(B, C, H, W) -> (C, B H W) (a copy): the layout of the GEMMs' outputs and inputs."""
    return x.transpose(1, 0, 2, 3).reshape(x.shape[1], -1)


def _batch_first(M, B, H, W):
    """(C, B H W) -> (B, C, H, W), C-contiguous (the inverse of _channels_first)."""
    xp = get_array_module(M)
    return xp.ascontiguousarray(M.reshape(M.shape[0], B, H, W).transpose(1, 0, 2, 3))


class _ConvBase:
    """Shared bookkeeping: parameter views, geometry checks, a padded scratch buffer."""

    def __init__(self, W, b, dW, db, stride, padding):
        if W.ndim != 4 or W.shape[2] != W.shape[3]:
            raise MinivaeError(f"{type(self).__name__} weights must have shape (., ., K, K), "
                               f"got {tuple(W.shape)}")
        self.W, self.b, self.dW, self.db = W, b, dW, db
        self.kernel = W.shape[2]
        self.stride = _int("stride", stride, 1)
        self.padding = _int("padding", padding, 0)
        if self.padding >= self.kernel:
            raise MinivaeError(f"padding must be smaller than the kernel ({self.kernel}), "
                               f"got {padding}")
        self._cache = None
        self._scratch = {}

    def _buffer(self, name, shape, like):
        """A reusable zero-initialised buffer (its zero border survives: only the interior is
        written by _pad)."""
        buf = self._scratch.get(name)
        if buf is None or buf.shape != shape or buf.dtype != like.dtype:
            buf = self._scratch[name] = get_array_module(like).zeros(shape, like.dtype)
        return buf

    def _pad(self, name, x):
        P = self.padding
        if P == 0:
            return x
        B, C, H, W = x.shape
        xpad = self._buffer(name, (B, C, H + 2 * P, W + 2 * P), x)
        xpad[:, :, P:P + H, P:P + W] = x
        return xpad

    def _crop(self, xpad, H, W):
        P = self.padding
        return xpad if P == 0 else xpad[:, :, P:P + H, P:P + W]

    def _sizes(self, x, channels):
        """(B, H, W, Ho, Wo) of an input x (B, channels, H, W), checked."""
        if x.ndim != 4 or x.shape[1] != channels:
            raise MinivaeError(f"{type(self).__name__} expects input (B, {channels}, H, W), "
                               f"got {tuple(x.shape)}")
        B, _, H, W = x.shape
        return (B, H, W, *self.output_shape(H, W))

    def _take_cache(self):
        cache, self._cache = self._cache, None
        if cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called without a forward")
        return cache

    @staticmethod
    def init(W, b, rng):
        """PyTorch's default for conv layers: W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with
        fan_in = W.shape[1] * K * K (kaiming_uniform with a = sqrt(5) reduces to this bound).
        For ConvTranspose2d, whose weight is (C_in, C_out, K, K), PyTorch's fan_in is therefore
        C_out K K; we follow it.  Drawn W then b, float64 on the host, then cast."""
        xp = get_array_module(W)
        bound = 1.0 / math.sqrt(W.shape[1] * W.shape[2] * W.shape[3])
        W[...] = xp.asarray(rng.uniform(-bound, bound, W.shape).astype(W.dtype))
        b[...] = xp.asarray(rng.uniform(-bound, bound, b.shape).astype(b.dtype))


class Conv2d(_ConvBase):
    """y = conv(x, W) + b      x: (B, C, H, W)   W: (O, C, K, K)   b: (O,)   y: (B, O, Ho, Wo)

        y[b,o,i,j] = b[o] + sum_{c,p,q} W[o,c,p,q] xp[b,c,S i+p,S j+q],  Ho = (H + 2P - K)//S + 1
        (xp: x zero-padded by P on each side).  Lowered: Y = Wm @ cols, cols = im2col(xp).

    Jacobians: dy[b,o,i,j]/dW[o,c,p,q] = xp[b,c,Si+p,Sj+q];  dy[b,o,i,j]/db[o] = 1;
               dy[b,o,i,j]/dxp[b,c,h,w] = W[o,c,h-Si,w-Sj] (0 outside the kernel).
    backward:  dW = dY @ cols^T   (the correlation of the input with the output gradient)
               db = dy summed over (b, i, j)
               dx = crop_P(col2im(Wm^T @ dY))  (the transposed convolution of dy with W)
    The forward caches the column matrix cols (what dW needs; for a batch processed in chunks,
    the padded input instead, and the backward recomputes each chunk's columns).
    ``need_dx=False`` skips dx for a first layer whose input is data.
    """

    def __init__(self, W, b, dW, db, stride=1, padding=0, need_dx=True):
        super().__init__(W, b, dW, db, stride, padding)
        self.need_dx = need_dx

    def output_shape(self, H, W):
        K, S, P = self.kernel, self.stride, self.padding
        Ho, Wo = conv_output_size(H, K, S, P), conv_output_size(W, K, S, P)
        if Ho is None or Wo is None:
            raise MinivaeError(f"Conv2d: a {H}x{W} input padded by {P} is smaller than the "
                               f"{K}x{K} kernel")
        return Ho, Wo

    def forward(self, x):
        """x (B, C, H, W) -> y (B, O, Ho, Wo), a new C-contiguous array."""
        O, C, K, _ = self.W.shape
        B, H, W, Ho, Wo = self._sizes(x, C)
        xp = get_array_module(x)
        xpad = self._pad("x", x)
        Wm = self.W.reshape(O, -1)
        Y = xp.empty((O, B * Ho * Wo), x.dtype)
        cols = _correlate(xpad, K, self.stride, Ho, Wo, A=Wm, out=Y)
        Y += self.b[:, None]
        self._cache = (None if cols is not None else xpad, cols, (H, W))
        return _batch_first(Y, B, Ho, Wo)

    def backward(self, dy):
        """dy (B, O, Ho, Wo) -> dx (B, C, H, W) (None if need_dx is False); writes dW, db."""
        xpad, cols, (H, W) = self._take_cache()
        O, C, K, _ = self.W.shape
        B, _, Ho, Wo = dy.shape
        xp = get_array_module(dy)
        dY = _channels_first(dy)                                   # (O, B Ho Wo)
        if cols is None:       # chunked: recompute each chunk's columns from the padded input
            _correlate(xpad, K, self.stride, Ho, Wo, G=dY, dW=self.dW.reshape(O, -1))
        else:
            xp.matmul(dY, cols.T, out=self.dW.reshape(O, -1))
        dY.sum(axis=1, out=self.db)
        if not self.need_dx:
            return None
        P = self.padding
        dxpad = self._buffer("dx", (B, C, H + 2 * P, W + 2 * P), dy)
        _scatter(dY, self.W.reshape(O, -1), K, self.stride, Ho, Wo, dxpad)
        return xp.ascontiguousarray(self._crop(dxpad, H, W))


class ConvTranspose2d(_ConvBase):
    """y = conv_transpose(x, W) + b   x: (B, C, Hi, Wi)   W: (C, O, K, K)   b: (O,)   y: (B, O, H, W)

        H = (Hi - 1) S - 2P + K + output_padding   (0 <= output_padding < S picks among the H
        that a stride-S Conv2d maps to Hi).  y + b-free part is Conv2d's input gradient:
        y = crop_P(col2im(Wm^T @ X)),  X = x as (C, B Hi Wi),  Wm = W.reshape(C, O K K), i.e.
        yp[b,o,S i+p,S j+q] += W[c,o,p,q] x[b,c,i,j]  summed over (c, i, j, p, q).

    Jacobians: dyp[b,o,Si+p,Sj+q]/dx[b,c,i,j] = W[c,o,p,q];  dyp[b,o,Si+p,Sj+q]/dW[c,o,p,q] =
               x[b,c,i,j];  dy[b,o,h,w]/db[o] = 1.
    backward:  dx = Wm @ im2col(pad_P(dy))     (a Conv2d of dy with W: Conv2d's forward)
               dW = X @ im2col(pad_P(dy))^T    (the correlation of x with the output gradient)
               db = dy summed over (b, h, w)
    The forward caches X (what dW needs); the backward builds im2col(dy) itself.
    """

    def __init__(self, W, b, dW, db, stride=1, padding=0, output_padding=0):
        super().__init__(W, b, dW, db, stride, padding)
        self.output_padding = _int("output_padding", output_padding, 0)
        if self.output_padding >= self.stride:
            raise MinivaeError(f"output_padding must be smaller than the stride ({self.stride}), "
                               f"got {output_padding}")

    def output_shape(self, Hi, Wi):
        K, S, P, op = self.kernel, self.stride, self.padding, self.output_padding
        H, W = (Hi - 1) * S - 2 * P + K + op, (Wi - 1) * S - 2 * P + K + op
        if H < 1 or W < 1:
            raise MinivaeError(f"ConvTranspose2d: a {Hi}x{Wi} input gives an empty output "
                               f"({H}x{W}); use less padding")
        return H, W

    def forward(self, x):
        """x (B, C, Hi, Wi) -> y (B, O, H, W), a new C-contiguous array."""
        C, O, K, _ = self.W.shape
        B, Hi, Wi, H, W = self._sizes(x, C)
        P = self.padding
        X = _channels_first(x)                                     # (C, B Hi Wi)
        ypad = self._buffer("y", (B, O, H + 2 * P, W + 2 * P), x)
        _scatter(X, self.W.reshape(C, -1), K, self.stride, Hi, Wi, ypad)
        self._cache = X
        return self._crop(ypad, H, W) + self.b[:, None, None]

    def backward(self, dy):
        """dy (B, O, H, W) -> dx (B, C, Hi, Wi); writes dW, db."""
        X = self._take_cache()
        C, O, K, _ = self.W.shape
        B = dy.shape[0]
        Hi, Wi = _input_size(dy.shape[2], self), _input_size(dy.shape[3], self)
        xp = get_array_module(dy)
        dypad = self._pad("dy", dy)
        dX = xp.empty((C, B * Hi * Wi), dy.dtype)
        _correlate(dypad, K, self.stride, Hi, Wi, A=self.W.reshape(C, -1), out=dX,
                   G=X, dW=self.dW.reshape(C, -1))
        dy.sum(axis=(0, 2, 3), out=self.db)
        return _batch_first(dX, B, Hi, Wi)


def _input_size(n, layer):
    """The Hi that ConvTranspose2d maps to n (the inverse of its output-size formula)."""
    return (n + 2 * layer.padding - layer.kernel - layer.output_padding) // layer.stride + 1


class Reshape:
    """y = x.reshape(B, *shape)   x: (B, ...)  y: (B, *shape).

    A relabelling of the same numbers in the same (C) order: the Jacobian is the identity on the
    flattened arrays, so backward is dx = dy.reshape(x.shape).  The forward caches x's shape only.
    """

    def __init__(self, shape):
        self.shape = tuple(shape)
        self._in_shape = None

    def forward(self, x):
        self._in_shape = x.shape
        return x.reshape(x.shape[0], *self.shape)

    def backward(self, dy):
        shape, self._in_shape = self._in_shape, None
        if shape is None:
            raise RuntimeError(f"{type(self).__name__}.backward called without a forward")
        return dy.reshape(shape)


class Flatten(Reshape):
    """y = x.reshape(B, -1)   (B, C, H, W) -> (B, C H W); backward dx = dy.reshape(B, C, H, W)."""

    def __init__(self):
        super().__init__((-1,))


# ----------------------------------------------------------------------------- the conv VAE
CONV_KEYS = ("arch", "image_shape", "channels", "kernel", "stride", "padding")
MAX_LAYERS = 16


class ConvNet(Sequential):
    """Layers applied in order, backward in reverse (the chain rule), with the interface of a
    workspace plan (``layers.FusedMLP``): ``backward(dy, db_done)`` and ``out_db``.  out_db is None
    because the last layer's bias is per channel, so a likelihood kernel's per-pixel sum cannot
    stand in for its gradient: db_done is therefore always False here."""

    out_db = None

    def backward(self, dy, db_done=False):
        return super().backward(dy)


def _sizes_that_work(n_layers, K, S, P, around):
    """The first few image sides that pass exactly through n_layers convolutions."""
    good = []
    for n in range(1, min(4 * around + 4 * S ** n_layers, 10 ** 5) + 1):
        if _chain(n, n_layers, K, S, P)[1]:
            good.append(n)
            if len(good) == 6:
                break
    return good


def _chain(n, n_layers, K, S, P):
    """(the sides after each layer, whether every layer is exact)."""
    sides = [n]
    for _ in range(n_layers):
        span = sides[-1] + 2 * P - K
        if span < 0 or span % S:
            return sides, False
        sides.append(span // S + 1)
    return sides, True


class ConvArch:
    """The convolutional encoder and decoder of ``VAE(..., arch='conv')``, mirrored:

        encoder  x (B, D) -> (C0, H, W) -> [Conv2d(K, S, P) -> act] for channels c1..cL
                 -> flatten (cL h w) -> dense hidden... (act) -> 2Z   (mu, logvar)
        decoder  z (N, Z) -> dense ...hidden (act) -> cL h w (act) -> (cL, h, w)
                 -> [ConvTranspose2d(K, S, P) -> act] for c(L-1)..c1 -> ConvTranspose2d
                 -> outputs * C0 channels -> flatten (N, outputs D): the likelihood's parameters
                 (outputs = likelihood.out_features(D) / D: 1, or 2 for a head that predicts a
                 mean and a log-variance per pixel: channels [means | log-variances], so the
                 flattened row is [a | r] as that head reads it)

    Every convolution must be exact ((side + 2P - K) divisible by S), so that the decoder's
    transposed convolutions give back the image size; otherwise a MinivaeError names the sizes
    that work.  padding defaults to (K - S) // 2, which halves a side at K = 4, S = 2.
    Parameters: enc.conv{i}.W (c_{i+1}, c_i, K, K), enc.conv{i}.b, the dense enc.{i}.W/b and
    dec.{i}.W/b (as ``layers.mlp_shapes``), dec.conv{i}.W (c_{L-i}, c_{L-i-1}, K, K), dec.conv{i}.b.
    """

    def __init__(self, image_shape, channels, kernel, stride, padding, hidden, latent_dim,
                 outputs=1):
        shape = tuple(image_shape) if isinstance(image_shape, (list, tuple)) else None
        if shape is None or len(shape) not in (2, 3) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
            raise MinivaeError(f"image_shape must be (H, W) or (C, H, W) of positive integers, "
                               f"got {image_shape!r}")
        self.image = shape if len(shape) == 3 else (1, *shape)
        if not isinstance(channels, (list, tuple)) or not 1 <= len(channels) <= MAX_LAYERS:
            raise MinivaeError(f"channels must list 1 to {MAX_LAYERS} channel counts, one per "
                               f"convolution (e.g. 32,64), got {channels!r}")
        self.channels = tuple(_int("channel count", c, 1) for c in channels)
        self.kernel = _int("kernel", kernel, 1)
        self.stride = _int("stride", stride, 1)
        self.padding = (max(0, (self.kernel - self.stride) // 2) if padding is None
                        else _int("padding", padding, 0))
        if self.padding >= self.kernel:
            raise MinivaeError(f"padding must be smaller than the kernel ({self.kernel}), "
                               f"got {self.padding}")
        self.hidden, self.latent_dim = tuple(hidden), latent_dim
        self.outputs = _int("outputs per value", outputs, 1)
        C, H, W = self.image
        L, K, S, P = len(self.channels), self.kernel, self.stride, self.padding
        rows, ok_h = _chain(H, L, K, S, P)
        cols, ok_w = _chain(W, L, K, S, P)
        if not (ok_h and ok_w):
            side, chain = (H, rows) if not ok_h else (W, cols)
            fits = max(n for n in range(L + 1) if _chain(H, n, K, S, P)[1]
                       and _chain(W, n, K, S, P)[1])
            nxt = chain[-1] + 2 * P - K
            bad = "the kernel no longer fits" if nxt < 0 else f"{nxt / S + 1:g} is not whole"
            raise MinivaeError(
                f"a {H}x{W} image does not pass exactly through {L} convolutions of kernel {K}, "
                f"stride {S}, padding {P} ({' -> '.join(map(str, chain))}, then {bad}); image "
                f"sides that work: {', '.join(map(str, _sizes_that_work(L, K, S, P, side)))} ..."
                + (f"; or use at most {fits} convolution{'s' * (fits > 1)} for {H}x{W}"
                   if fits else ""))
        self.sides = list(zip(rows, cols))                 # (h, w) before each layer, and after
        self.flat = self.channels[-1] * rows[-1] * cols[-1]

    @property
    def data_dim(self):
        return self.image[0] * self.image[1] * self.image[2]

    def _conv_shapes(self, prefix, chans):
        shapes = {}
        for i, (cin, cout) in enumerate(zip(chans[:-1], chans[1:])):
            w = (cout, cin) if prefix == "enc" else (cin, cout)   # PyTorch's two layouts
            shapes[f"{prefix}.conv{i}.W"] = (*w, self.kernel, self.kernel)
            shapes[f"{prefix}.conv{i}.b"] = (cout,)
        return shapes

    def param_shapes(self):
        chans = (self.image[0], *self.channels)
        return {**self._conv_shapes("enc", chans),
                **mlp_shapes("enc", (self.flat, *self.hidden, 2 * self.latent_dim)),
                **mlp_shapes("dec", (self.latent_dim, *self.hidden[::-1], self.flat)),
                **self._conv_shapes("dec", (*self.channels[::-1], self.outputs * self.image[0]))}

    def _views(self, buffer, name):
        return (buffer.params[name + ".W"], buffer.params[name + ".b"],
                buffer.grads[name + ".W"], buffer.grads[name + ".b"])

    def _dense(self, buffer, prefix, sizes, act, last_act):
        out = []
        for i in range(len(sizes) - 1):
            out.append(Linear(*self._views(buffer, f"{prefix}.{i}")))
            if i < len(sizes) - 2 or last_act:
                out.append(activation(act))
        return out

    def encoder(self, buffer, act, need_input_grad=False):
        """A ConvNet over views of ``buffer``: x (B, D) -> (mu, logvar) columns (B, 2Z)."""
        out = [Reshape(self.image)]
        for i in range(len(self.channels)):
            out += [Conv2d(*self._views(buffer, f"enc.conv{i}"), self.stride, self.padding,
                           need_dx=need_input_grad or i > 0), activation(act)]
        out.append(Flatten())
        out += self._dense(buffer, "enc", (self.flat, *self.hidden, 2 * self.latent_dim), act,
                           last_act=False)
        return ConvNet(out)

    def decoder(self, buffer, act):
        """A ConvNet over views of ``buffer``: z (N, Z) -> the likelihood's parameters (N, D)."""
        out = self._dense(buffer, "dec", (self.latent_dim, *self.hidden[::-1], self.flat), act,
                          last_act=True)
        h, w = self.sides[-1]
        out.append(Reshape((self.channels[-1], h, w)))
        L = len(self.channels)
        for i in range(L):
            out.append(ConvTranspose2d(*self._views(buffer, f"dec.conv{i}"), self.stride,
                                       self.padding))
            if i < L - 1:
                out.append(activation(act))
        out.append(Flatten())
        return ConvNet(out)

    def describe(self):
        C, H, W = self.image
        return (f"conv {C}x{H}x{W} [{'-'.join(map(str, self.channels))} k{self.kernel} "
                f"s{self.stride} p{self.padding}]")
