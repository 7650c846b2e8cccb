"""A counter-based generator (Philox4x32-10) whose whole state is two integers: the GPU's noise.

Why counter-based.  A training run must resume exactly where it stopped, on the device it ran on
or on the other one.  CuPy's generators keep per-thread states on the device that CuPy cannot
save and restore; a counter-based generator has no hidden state at all: draw number ``c`` of a
generator with key ``k`` is a pure function ``philox(k, (i, c))`` of the element index ``i``.  So
the state is (key, calls made), saved in a checkpoint as two numbers, and the draws are the
same on the GPU (``kernels/cupy_gpu.py``) and on the CPU (the NumPy code below, the reference).

Philox4x32-10 (Salmon et al. 2011, *Parallel random numbers: as easy as 1, 2, 3*): a 128-bit
counter (c0, c1, c2, c3) and a 64-bit key (k0, k1); ten rounds of

    (c0, c1, c2, c3) <- (hi(M1 c2) ^ c1 ^ k0,  lo(M1 c2),  hi(M0 c0) ^ c3 ^ k1,  lo(M0 c0))
    (k0, k1)         <- (k0 + W0, k1 + W1)            (mod 2^32)

with M0 = 0xD2511F53, M1 = 0xCD9E8D57, W0 = 0x9E3779B9, W1 = 0xBB67AE85; the key is bumped
between rounds, not after the last.  Here element i of call c uses the counter
(lo(i), hi(i), lo(c), hi(c)), so no two draws of one generator share a counter.

From the four 32-bit words r0..r3 of element i:
    uniform [0, 1):  float32  (r0 >> 8) * 2^-24;      float64  ((r0 << 21) ^ (r1 >> 11)) * 2^-53
    normal (Box-Muller, cosine branch):  u1 in (0, 1) from r0 (r1) with +1/2 of the last bit,
                                         u2 in [0, 1) from r2 (r3);  z = sqrt(-2 log u1) cos(2 pi u2)
computed in the output dtype.  Box-Muller uses half of each block; the cost is negligible next to
a training step and keeps every element independent of the others (one element, one thread).
"""
import numpy as np

from .backend import get_array_module
from .errors import MinivaeError

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
_U32 = 0xFFFFFFFF


def philox4x32(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on NumPy uint64 arrays holding 32-bit words (the reference); -> 4 words."""
    c0, c1, c2, c3 = (np.asarray(c, np.uint64) for c in (c0, c1, c2, c3))
    k0, k1 = np.uint64(k0), np.uint64(k1)
    m0, m1, mask = np.uint64(M0), np.uint64(M1), np.uint64(_U32)
    s32 = np.uint64(32)
    for r in range(10):
        p0, p1 = m0 * c0, m1 * c2
        c0, c1, c2, c3 = ((p1 >> s32) ^ c1 ^ k0, p1 & mask, (p0 >> s32) ^ c3 ^ k1, p0 & mask)
        if r < 9:
            k0, k1 = (k0 + np.uint64(W0)) & mask, (k1 + np.uint64(W1)) & mask
    return c0, c1, c2, c3


def _words(key, call, n):
    i = np.arange(n, dtype=np.uint64)
    return philox4x32(i & np.uint64(_U32), i >> np.uint64(32), call & _U32, call >> 32, *key)


def uniform_reference(key, call, n, dtype):
    """n uniforms in [0, 1) of the given dtype: the specification of the GPU kernel."""
    r0, r1, _, _ = _words(key, call, n)
    if np.dtype(dtype) == np.float32:
        return ((r0 >> np.uint64(8)).astype(np.float32) * np.float32(2.0 ** -24))
    return ((((r0 << np.uint64(21)) ^ (r1 >> np.uint64(11))) & np.uint64(2 ** 53 - 1))
            .astype(np.float64) * 2.0 ** -53)


def normal_reference(key, call, n, dtype):
    """n standard normals of the given dtype: the specification of the GPU kernel."""
    r0, r1, r2, r3 = _words(key, call, n)
    if np.dtype(dtype) == np.float32:
        f = np.float32
        u1 = ((r0 >> np.uint64(8)).astype(f) + f(0.5)) * f(2.0 ** -24)
        u2 = (r2 >> np.uint64(8)).astype(f) * f(2.0 ** -24)
        return np.sqrt(f(-2) * np.log(u1)) * np.cos(f(2 * np.pi) * u2)
    b53 = np.uint64(2 ** 53 - 1)
    u1 = ((((r0 << np.uint64(21)) ^ (r1 >> np.uint64(11))) & b53).astype(np.float64) + 0.5) \
        * 2.0 ** -53
    u2 = (((r2 << np.uint64(21)) ^ (r3 >> np.uint64(11))) & b53).astype(np.float64) * 2.0 ** -53
    return np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2)


def _key_of(seed):
    """A 64-bit key (two words) from a seed or list of seeds, through NumPy's SeedSequence."""
    k = np.random.SeedSequence(seed).generate_state(2, np.uint32)
    return int(k[0]), int(k[1])


class Philox:
    """Draws on one array module (NumPy or CuPy) from Philox4x32-10; state = key and calls.

    The part of ``numpy.random.Generator`` minivae uses: ``standard_normal`` and ``random``
    (shape, dtype, out).  ``state`` / ``from_state`` give a JSON-safe dict for checkpoints.
    """
    kind = "philox"

    def __init__(self, seed, xp=np, calls=0):
        self.xp, self.key, self.calls = xp, _key_of(seed), int(calls)

    @property
    def state(self):
        return {"kind": self.kind, "key": list(self.key), "calls": self.calls}

    @classmethod
    def from_state(cls, state, xp=np):
        if not (isinstance(state, dict) and state.get("kind") == cls.kind
                and isinstance(state.get("key"), list) and len(state["key"]) == 2
                and all(isinstance(k, int) and 0 <= k <= _U32 for k in state["key"])
                and isinstance(state.get("calls"), int) and 0 <= state["calls"] < 2 ** 63):
            raise MinivaeError(f"a Philox generator state must be {{kind, key: [two 32-bit "
                               f"words], calls}}, got {state!r}")
        g = cls.__new__(cls)
        g.xp, g.key, g.calls = xp, tuple(state["key"]), state["calls"]
        return g

    def _draw(self, which, shape, dtype, out):
        dt = np.dtype(dtype)
        if dt not in (np.float32, np.float64):
            raise MinivaeError(f"Philox draws float32 or float64, got {dt}")
        if out is not None:
            if out.dtype != dt or get_array_module(out) is not self.xp:
                raise MinivaeError(f"out must be a {dt} array of this generator's module")
            shape = out.shape
        shape = () if shape is None else (shape,) if np.isscalar(shape) else tuple(shape)
        n = int(np.prod(shape, dtype=np.int64))
        call, self.calls = self.calls, self.calls + 1
        if self.xp is np:
            v = (normal_reference if which == "normal" else uniform_reference)(
                self.key, call, n, dt).reshape(shape)
            if out is None:
                return v
            out[...] = v
            return out
        from .kernels import cupy_gpu
        res = self.xp.empty(shape, dt) if out is None or not out.flags.c_contiguous else out
        cupy_gpu.philox(which, self.key, call, res)
        if out is not None and res is not out:
            out[...] = res
            res = out
        return res

    def standard_normal(self, size=None, dtype=np.float64, out=None):
        return self._draw("normal", size, dtype, out)

    def random(self, size=None, dtype=np.float64, out=None):
        return self._draw("uniform", size, dtype, out)

    def __repr__(self):
        dev = "cuda" if self.xp is not np else "cpu"
        return f"Philox(key={self.key}, calls={self.calls}, {dev})"


def rng_state(rng):
    """A JSON-safe state of a NumPy Generator or a Philox, for a checkpoint."""
    if isinstance(rng, Philox):
        return rng.state
    if isinstance(rng, np.random.Generator):
        return rng.bit_generator.state
    raise MinivaeError(f"cannot save the state of a {type(rng).__name__}")


__all__ = ["Philox", "philox4x32", "uniform_reference", "normal_reference", "rng_state"]
