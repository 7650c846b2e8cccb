"""A strict stand-in for CuPy on a machine without a GPU: the GPU path's code, run on the CPU.

Why it exists.  ``minivae/kernels/cupy_gpu.py`` and every ``xp``-generic line above it run on
CuPy arrays only on a machine with an NVIDIA GPU; CI has none, which is how a kernel returning a
tuple where one array was expected broke every GPU training step unnoticed.  This module is
imported *as* ``cupy`` (the ``fake_cupy`` fixture puts it in ``sys.modules``), so the library
takes exactly the code path it takes on a GPU, and it is strict wherever CuPy is strict:

* ``ndarray`` is not a NumPy array.  Mixing it with a NumPy array in an operation, a function or
  an ``out=`` raises TypeError, as CuPy does; ``numpy.asarray(device_array)`` raises too
  ("Implicit conversion to a NumPy array is not allowed").  Crossing devices is explicit:
  ``asarray`` (host -> device) and ``.get()`` / ``asnumpy`` (device -> host).
* Every read of a device value on the host (``.get()``, ``float()``, ``bool()``, ``int()``,
  ``.item()``, ``.tolist()``) is counted in ``SYNCS``, and every upload in ``UPLOADS``, so a test
  can assert how often a training step waits on the device.
* ``ElementwiseKernel`` and ``ReductionKernel`` run the kernel's **own CUDA C source**: the body is
  wrapped the way CuPy wraps it (inputs by value, outputs by reference, the element index ``i``),
  compiled for the host by the C++ compiler, and called through ctypes.  A wrong formula, a NaN
  lost in a ternary or a kernel with two outputs returning a tuple behaves here as on the GPU.
  Each kernel made is recorded in ``KERNELS``, so a test can also compile every source with NVRTC.

Only names real CuPy has are offered: ``tests/cupy_api.json`` lists CuPy 14.2's public module
functions and ndarray methods (read from the installed package), and anything else raises
AttributeError here as it would there, so a NumPy-only function in the GPU path fails in CI.

What it cannot show: CUDA-only behaviour (memory, streams, cuBLAS's summation order, timing).
The real-GPU run (``pytest -m gpu`` on a machine with one) covers those.
"""
import ctypes
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import types

import numpy as _np

__version__ = "0.0-fake"
SYNCS = [0]          # device -> host reads
UPLOADS = [0]        # host -> device copies
KERNELS = []         # every ElementwiseKernel / ReductionKernel made: the sources NVRTC compiles


with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "cupy_api.json")) as _f:
    API = json.load(_f)
_MODULE_API, _NDARRAY_API = set(API["module"]), set(API["ndarray"])


def reset_counters():
    SYNCS[0] = UPLOADS[0] = 0


# ----------------------------------------------------------------------------- arrays
def _strict(v, where):
    """Unwrap device arrays; refuse host arrays (CuPy: 'Unsupported type numpy.ndarray')."""
    if isinstance(v, ndarray):
        return v._a
    if isinstance(v, _np.ndarray):
        raise TypeError(f"Unsupported type {type(v)} in {where}: a NumPy array mixed with "
                        "CuPy arrays (move it with cupy.asarray first)")
    if isinstance(v, (list, tuple)):
        return type(v)(_strict(u, where) for u in v)
    return v


def _wrap(r):
    if isinstance(r, _np.ndarray):
        return ndarray(r)
    if isinstance(r, tuple):
        return tuple(_wrap(u) for u in r)
    if isinstance(r, list):
        return [_wrap(u) for u in r]
    if isinstance(r, _np.generic):     # CuPy reductions return 0-d device arrays, not scalars
        return ndarray(_np.asarray(r))
    return r


def _device_fn(f, name):
    def call(*args, **kwargs):
        a = _strict(args, name)
        kw = {k: _strict(v, name) for k, v in kwargs.items()}
        return _wrap(f(*a, **kw))
    call.__name__ = name
    return call


class ndarray:
    """A device array: NumPy storage behind an interface that refuses silent host mixing."""
    __module__ = "cupy"
    __array_priority__ = 1000

    def __init__(self, a):
        self._a = a

    # host crossings (counted)
    def get(self, stream=None, out=None):
        SYNCS[0] += 1
        return self._a.copy()

    def item(self):
        SYNCS[0] += 1
        return self._a.item()

    def tolist(self):
        SYNCS[0] += 1
        return self._a.tolist()

    def __float__(self):
        SYNCS[0] += 1
        return float(self._a)

    def __int__(self):
        SYNCS[0] += 1
        return int(self._a)

    def __index__(self):
        SYNCS[0] += 1
        return self._a.__index__()

    def __bool__(self):
        SYNCS[0] += 1
        return bool(self._a)

    def __array__(self, *a, **k):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        a = _strict(inputs, f"numpy.{ufunc.__name__}")
        kw = {k: _strict(v, f"numpy.{ufunc.__name__}") for k, v in kwargs.items()}
        return _wrap(getattr(ufunc, method)(*a, **kw))

    def __array_function__(self, func, types_, args, kwargs):
        return _wrap(func(*_strict(args, func.__name__),
                          **{k: _strict(v, func.__name__) for k, v in kwargs.items()}))

    # plain attributes
    shape = property(lambda s: s._a.shape)
    dtype = property(lambda s: s._a.dtype)
    ndim = property(lambda s: s._a.ndim)
    size = property(lambda s: s._a.size)
    nbytes = property(lambda s: s._a.nbytes)
    itemsize = property(lambda s: s._a.itemsize)
    strides = property(lambda s: s._a.strides)
    flags = property(lambda s: s._a.flags)
    T = property(lambda s: ndarray(s._a.T))

    def __len__(self):
        return len(self._a)

    def __repr__(self):
        return f"fakecupy.ndarray({self._a!r})"

    def __getitem__(self, k):
        if isinstance(k, _np.ndarray) or (isinstance(k, tuple) and any(isinstance(u, _np.ndarray)
                                                                       for u in k)):
            UPLOADS[0] += 1                       # CuPy uploads a host index array
            k = k if isinstance(k, _np.ndarray) else k
            return _wrap(self._a[k])
        return _wrap(self._a[_strict(k, "__getitem__")])

    def __setitem__(self, k, v):
        if isinstance(v, _np.ndarray):
            UPLOADS[0] += 1                       # CuPy copies a host value to the device
        else:
            v = _strict(v, "__setitem__")
        self._a[_strict(k, "__setitem__")] = v

    def __getattr__(self, name):                  # methods: reshape, sum, astype, ...
        if name.startswith("__"):                 # no __array_interface__: numpy must not see in
            raise AttributeError(name)
        if name not in _NDARRAY_API:
            raise AttributeError(f"cupy.ndarray has no attribute {name!r} (CuPy {API['cupy_version']})")
        attr = getattr(self._a, name)
        return _device_fn(attr, f"ndarray.{name}") if callable(attr) else attr

    def __iter__(self):
        return (ndarray(_np.asarray(r)) for r in self._a)


def _binop(name):
    def op(self, other):
        return _wrap(getattr(self._a, name)(_strict(other, name)))
    op.__name__ = name
    return op


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or",
              "xor", "lt", "le", "gt", "ge", "eq", "ne", "lshift", "rshift"):
    for _fmt in ("__{}__", "__r{}__", "__i{}__"):
        _n = _fmt.format(_name)
        if hasattr(_np.ndarray, _n):
            setattr(ndarray, _n, _binop(_n))
for _n in ("__neg__", "__pos__", "__abs__", "__invert__"):
    setattr(ndarray, _n, (lambda n: lambda self: _wrap(getattr(self._a, n)()))(_n))
ndarray.__hash__ = None


def asarray(a, dtype=None, order=None):
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == dtype else ndarray(a._a.astype(dtype))
    UPLOADS[0] += isinstance(a, _np.ndarray)
    return ndarray(_np.array(a, dtype=dtype, order=order or "K"))


array = asarray


def asnumpy(a, stream=None):
    return a.get() if isinstance(a, ndarray) else _np.asarray(a)


def get_array_module(*args):
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else _np


def __getattr__(name):                            # cupy.exp, cupy.empty, cupy.float32, ...
    if name.startswith("__"):
        raise AttributeError(name)
    if name in ("random", "fft", "linalg", "fuse", "RawKernel", "RawModule"):
        raise AttributeError(f"fakecupy has no {name}: minivae is not expected to use it")
    if name not in _MODULE_API:
        raise AttributeError(f"module 'cupy' has no attribute {name!r} (CuPy {API['cupy_version']})")
    v = getattr(_np, name)
    return _device_fn(v, name) if callable(v) and not isinstance(v, type) else v


# cupy.lib.stride_tricks: as_strided exists in CuPy (views over device memory)
lib = types.SimpleNamespace(stride_tricks=types.SimpleNamespace(**{
    n: _device_fn(getattr(_np.lib.stride_tricks, n), n) for n in API["lib.stride_tricks"]}))


# ----------------------------------------------------------------------------- cuda
class CUDARuntimeError(RuntimeError):
    pass


class _Device:
    def __init__(self, i=0):
        self.id = i
        self.compute_capability = "90"

    @property
    def mem_info(self):
        return (16 << 30, 16 << 30)

    def synchronize(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


cuda = types.SimpleNamespace(
    runtime=types.SimpleNamespace(getDeviceCount=lambda: 1, CUDARuntimeError=CUDARuntimeError,
                                  runtimeGetVersion=lambda: 12090),
    Device=_Device,
    get_current_stream=lambda: types.SimpleNamespace(synchronize=lambda: None),
    CUDARuntimeError=CUDARuntimeError,
)


# ----------------------------------------------------------------------------- kernels
_CTYPE = {"float32": "float", "float64": "double", "int32": "int", "uint32": "unsigned int",
          "int64": "long long", "uint64": "unsigned long long", "bool": "bool"}
_DTYPE = {"float": _np.float32, "double": _np.float64, "int": _np.int32,
          "unsigned int": _np.uint32, "long long": _np.int64, "unsigned long long": _np.uint64,
          "bool": _np.bool_}


def _parse(params):
    """'T x, float32 s' -> [(type, name)]; raw arrays are not supported (minivae uses none)."""
    out = []
    for p in (q.strip() for q in params.split(",") if q.strip()):
        t, n = p.split()
        if t == "raw":
            raise NotImplementedError("raw parameters are not supported by fakecupy")
        out.append((t, n))
    return out


def _ctype(t, T):
    return T if t == "T" else _CTYPE[t]


def _input_loads(params, T, index):
    """(C parameters, loads) for the inputs: each read by value at element `index`, as CuPy does."""
    args, loads = [], []
    for t, n in params:
        c = _ctype(t, T)
        args.append(f"const {c}* _raw_{n}")
        loads.append(f"const {c} {n} = _raw_{n}[{index}];")
    return args, loads


_BUILD = os.path.join(tempfile.gettempdir(), f"minivae-fakecupy-{os.getuid()}")
_LIBS = {}


def _compile_host(src):
    """Compile C++ source for the host (cached by its hash) and return the loaded library."""
    h = hashlib.sha256(src.encode()).hexdigest()[:20]
    if h in _LIBS:
        return _LIBS[h]
    os.makedirs(_BUILD, exist_ok=True)
    so = os.path.join(_BUILD, f"k{h}.so")
    if not os.path.exists(so):
        cpp = os.path.join(_BUILD, f"k{h}.cpp")
        with open(cpp, "w") as f:
            f.write(src)
        tmp = f"{so}.{os.getpid()}.tmp"
        r = subprocess.run([os.environ.get("CXX", "c++"), "-O1", "-shared", "-fPIC", "-o", tmp, cpp],
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"kernel source does not compile:\n{r.stderr}\n{src}")
        os.replace(tmp, so)
    _LIBS[h] = ctypes.CDLL(so)
    return _LIBS[h]


_PRELUDE = "#include <cmath>\n#include <cstddef>\nusing namespace std;\n"


def _resolve_T(params, args):
    for (t, _), a in zip(params, args):
        if t == "T" and isinstance(a, ndarray):
            return a.dtype
    for (t, _), a in zip(params, args):
        if t == "T" and isinstance(a, (float, _np.floating)):
            return _np.dtype(_np.float64)
    raise TypeError("cannot determine type T from the arguments")


def _ptrs(arrs):
    return [ctypes.c_void_p(a.ctypes.data) for a in arrs]


class ElementwiseKernel:
    """CuPy's ElementwiseKernel, run on the CPU from the same CUDA C body (see module doc)."""

    def __init__(self, in_params, out_params, operation, name="kernel", **kwargs):
        self.in_params, self.out_params = _parse(in_params), _parse(out_params)
        self.operation, self.name = operation, name
        self.nin, self.nout = len(self.in_params), len(self.out_params)
        KERNELS.append(self)

    def source(self, T, device=False):
        """The kernel as CuPy would wrap it: inputs by value, outputs by reference, index i."""
        args, loads = _input_loads(self.in_params, T, "i")
        for t, n in self.out_params:
            c = _ctype(t, T)
            args.append(f"{c}* _raw_{n}")
            loads.append(f"{c} &{n} = _raw_{n}[i];")
        loop = ("for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < _n; "
                "i += (long long)blockDim.x * gridDim.x)" if device else
                "for (long long i = 0; i < _n; ++i)")
        head = ("extern \"C\" __global__ void" if device else "extern \"C\" void")
        return (f"typedef {T} T;\n{head} {self.name}({', '.join(args)}, long long _n) {{\n"
                f"  {loop} {{\n    {' '.join(loads)}\n    {self.operation}\n  }}\n}}\n")

    def __call__(self, *args, size=None, **kwargs):
        if len(args) not in (self.nin, self.nin + self.nout):
            raise TypeError(f"Wrong number of arguments for {self.name!r}")
        for a in args:
            if isinstance(a, _np.ndarray):
                raise TypeError(f"Unsupported type {type(a)} passed to kernel {self.name!r}")
        params = self.in_params + self.out_params[:len(args) - self.nin]
        Tdt = _resolve_T(params, args)
        T = _CTYPE[_np.dtype(Tdt).name]
        dts = [_np.dtype(Tdt) if t == "T" else _np.dtype(_DTYPE[_CTYPE[t]]) for t, _ in
               self.in_params + self.out_params]
        for (t, n), a, dt in zip(params, args, dts):
            if isinstance(a, ndarray) and t == "T" and a.dtype != dt:
                raise TypeError(f"Type is mismatched. {n} {a.dtype} {dt}")
        shape = _np.broadcast_shapes(*[a.shape for a in args if isinstance(a, ndarray)]) \
            if any(isinstance(a, ndarray) for a in args) else (size,)
        ins = [_np.ascontiguousarray(_np.broadcast_to(
            _np.asarray(a._a if isinstance(a, ndarray) else a, dtype=dt), shape))
            for a, dt in zip(args[:self.nin], dts)]
        outs, given = [], list(args[self.nin:])
        for k, dt in enumerate(dts[self.nin:]):
            if k < len(given):
                o = given[k]
                if o.shape != shape:
                    raise ValueError(f"Out shape is mismatched in {self.name!r}")
                outs.append(o)
            else:
                outs.append(ndarray(_np.empty(shape, dt)))
        work = [o._a if o._a.flags.c_contiguous else _np.ascontiguousarray(o._a) for o in outs]
        lib = _compile_host(_PRELUDE + self.source(T))
        fn = getattr(lib, self.name)
        fn(*_ptrs(ins), *_ptrs(work), ctypes.c_longlong(int(_np.prod(shape))))
        for o, w in zip(outs, work):
            if w is not o._a:
                o._a[...] = w
        return outs[0] if self.nout == 1 else tuple(outs)


class ReductionKernel:
    """CuPy's ReductionKernel (map, reduce with a and b, post-map with a), same CUDA C source."""

    def __init__(self, in_params, out_params, map_expr, reduce_expr, post_map_expr, identity,
                 name="reduce_kernel", reduce_type=None, **kwargs):
        self.in_params, self.out_params = _parse(in_params), _parse(out_params)
        if len(self.out_params) != 1:
            raise NotImplementedError("fakecupy reductions have one output")
        self.map_expr, self.reduce_expr, self.post_map_expr = map_expr, reduce_expr, post_map_expr
        self.identity, self.name, self.reduce_type = identity, name, reduce_type
        self.nin = len(self.in_params)
        KERNELS.append(self)

    def source(self, T, device=False):
        args, loads = _input_loads(self.in_params, T, "_j")
        (ot, on), = self.out_params
        oc = _ctype(ot, T)
        rt = self.reduce_type or oc
        row = ("for (long long _m = blockIdx.x * (long long)blockDim.x + threadIdx.x; _m < _M; "
               "_m += (long long)blockDim.x * gridDim.x)" if device else
               "for (long long _m = 0; _m < _M; ++_m)")
        head = ("extern \"C\" __global__ void" if device else "extern \"C\" void")
        return (f"typedef {T} T;\ntypedef {rt} type_reduce;\n"
                f"{head} {self.name}({', '.join(args)}, {oc}* _raw_{on}, long long _M, "
                f"long long _R) {{\n  {row} {{\n"
                f"    type_reduce _acc = (type_reduce)({self.identity});\n"
                f"    for (long long _r = 0; _r < _R; ++_r) {{\n      long long _j = _m * _R + _r;\n"
                f"      {' '.join(loads)}\n      type_reduce _in = (type_reduce)({self.map_expr});\n"
                f"      type_reduce a = _acc, b = _in;\n      _acc = ({self.reduce_expr});\n    }}\n"
                f"    {oc} &{on} = _raw_{on}[_m];\n    type_reduce a = _acc;\n"
                f"    {self.post_map_expr};\n  }}\n}}\n")

    def __call__(self, *args, out=None, axis=None, keepdims=False, **kwargs):
        if len(args) != self.nin:
            raise TypeError(f"Wrong number of arguments for {self.name!r}")
        for a in args:
            if isinstance(a, _np.ndarray):
                raise TypeError(f"Unsupported type {type(a)} passed to kernel {self.name!r}")
        if out is not None and not isinstance(out, ndarray):
            raise TypeError(f"Unsupported type {type(out)} for out= of {self.name!r}")
        Tdt = _np.dtype(_resolve_T(self.in_params, args))
        T = _CTYPE[Tdt.name]
        dts = [Tdt if t == "T" else _np.dtype(_DTYPE[_CTYPE[t]]) for t, _ in self.in_params]
        shape = _np.broadcast_shapes(*[a.shape for a in args if isinstance(a, ndarray)])
        nd = len(shape)
        axes = tuple(range(nd)) if axis is None else tuple(
            ax % nd for ax in ((axis,) if isinstance(axis, int) else axis))
        keep = [d for d in range(nd) if d not in axes]
        oshape = tuple(shape[d] for d in keep)
        M, R = int(_np.prod(oshape)), int(_np.prod([shape[d] for d in axes]))
        ins = [_np.ascontiguousarray(_np.transpose(_np.broadcast_to(
            _np.asarray(a._a if isinstance(a, ndarray) else a, dtype=dt), shape), keep + list(axes)))
            for a, dt in zip(args, dts)]
        (ot, _), = self.out_params
        odt = Tdt if ot == "T" else _np.dtype(_DTYPE[_CTYPE[ot]])
        res = _np.empty(oshape, odt)
        lib = _compile_host(_PRELUDE + self.source(T))
        getattr(lib, self.name)(*_ptrs(ins), ctypes.c_void_p(res.ctypes.data),
                                ctypes.c_longlong(M), ctypes.c_longlong(R))
        if keepdims:
            res = res.reshape([1 if d in axes else shape[d] for d in range(nd)])
        if out is None:
            return ndarray(res)
        if out.shape != res.shape:
            raise ValueError(f"Out shape is mismatched in {self.name!r}")
        out._a[...] = res
        return out
