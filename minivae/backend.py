"""Which array module computes: NumPy on the CPU, CuPy on an NVIDIA GPU.

Design requirements (kept deliberately small):

* Library code never imports CuPy.  It asks ``get_array_module(x)`` for the module that owns
  its inputs (``xp`` style), so one code path serves both devices.
* Importing minivae without CuPy installed works.  Asking for ``cuda`` without CuPy (or without a
  GPU) raises a one-line ``MinivaeError`` that says what to install.
* Randomness is explicit: every random draw takes a ``numpy.random.Generator`` (or CuPy's), made
  here from a seed.  There is no global RNG anywhere in the package.
* float32 for training, float64 for checks: ``resolve_dtype`` accepts only those two.

The device can also be chosen with the environment variable ``MINIVAE_DEVICE`` (``cpu`` or
``cuda``) wherever the caller passes ``device=None``.
"""
import os

import numpy as np

from .errors import MinivaeError

DEVICES = ("cpu", "cuda")
DTYPES = {"float32": np.float32, "float64": np.float64}

_cupy = None


def _import_cupy():
    global _cupy
    if _cupy is None:
        try:
            import cupy
        except ImportError:
            raise MinivaeError(
                "device 'cuda' needs CuPy, which is not installed: "
                "pip install 'minivae[cuda12]' (or [cuda13]), or use --device cpu") from None
        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise MinivaeError("device 'cuda': CuPy found no NVIDIA GPU; use --device cpu")
        except cupy.cuda.runtime.CUDARuntimeError as e:
            raise MinivaeError(f"device 'cuda': CUDA is not usable here ({e}); "
                               "use --device cpu") from None
        _probe(cupy)
        _cupy = cupy
    return _cupy


def _probe(cupy):
    """Compile and launch one tiny kernel and one GEMM: a CuPy without its CUDA libraries
    (NVRTC, cuBLAS, the headers) passes the device count and fails only at the first kernel."""
    try:
        k = cupy.ElementwiseKernel("T x", "T y", "y = x + (T)1;", "minivae_probe")
        y = k(cupy.zeros(4, dtype=np.float32))
        ok = float((y @ y).sum()) == 4.0
    except Exception as e:                   # CompileException, ImportError of a library, ...
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise MinivaeError(
            f"device 'cuda': CuPy {getattr(cupy, '__version__', '?')} cannot compile and run a "
            f"kernel ({type(e).__name__}: {first}); install CuPy with its CUDA libraries: "
            "pip install 'minivae[cuda12]' (or [cuda13] for a CUDA 13 driver)") from None
    if not ok:
        raise MinivaeError("device 'cuda': a test kernel gave a wrong result; the CUDA "
                           "installation is broken (check the driver with nvidia-smi)")


def resolve_device(device=None):
    """'cpu' or 'cuda'; None reads MINIVAE_DEVICE (default 'cpu')."""
    if device is None:
        device = os.environ.get("MINIVAE_DEVICE", "cpu") or "cpu"
    if device not in DEVICES:
        raise MinivaeError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    return device


def array_module(device=None):
    """The array module for a device name: numpy for 'cpu', cupy for 'cuda'."""
    return _import_cupy() if resolve_device(device) == "cuda" else np


def get_array_module(*arrays):
    """numpy, unless one of the arrays is a CuPy array (checked without importing CuPy)."""
    for a in arrays:
        if type(a).__module__.split(".")[0] == "cupy":
            return _import_cupy()
    return np


def is_gpu_array(x):
    return type(x).__module__.split(".")[0] == "cupy"


def resolve_dtype(dtype):
    """np.float32 or np.float64 from a name or a dtype; anything else is an error."""
    try:
        dt = None if dtype is None else np.dtype(dtype)
    except (TypeError, ValueError):
        dt = None
    if dt is None or dt.type not in (np.float32, np.float64):
        raise MinivaeError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt.type


def _seed_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and v >= 0


def make_rng(seed, xp=np):
    """A seeded generator for the array module xp: NumPy's PCG64 on the CPU, Philox4x32-10 on
    the GPU (minivae.philox: counter-based, so its state is two numbers a checkpoint saves).

    seed: an integer >= 0, or a non-empty list/tuple of them (e.g. [seed, 3])."""
    ok = _seed_int(seed) or (isinstance(seed, (list, tuple)) and len(seed) > 0
                             and all(_seed_int(v) for v in seed))
    if not ok:
        raise MinivaeError(f"seed must be an integer >= 0 (or a list of them), got {seed!r}")
    if xp is np:
        return np.random.default_rng(seed)
    from .philox import Philox
    return Philox(seed, xp)


def to_device(x, xp, dtype=None):
    """x as an array of module xp (no copy when it already is one and the dtype matches)."""
    if xp is np:
        x = to_host(x)
        return x if dtype is None else np.asarray(x, dtype=dtype)
    return xp.asarray(x, dtype=dtype)


def to_host(x):
    """A NumPy array (copied from the GPU when needed); Python scalars pass through."""
    if is_gpu_array(x):
        return x.get()
    return x if np.isscalar(x) else np.asarray(x)


def standard_normal(rng, shape, dtype):
    """N(0, 1) draws of the given dtype from a NumPy or CuPy generator."""
    return rng.standard_normal(shape, dtype=dtype)
