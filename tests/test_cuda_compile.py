"""Every CUDA kernel source in minivae compiles with NVRTC, for float and double, without a GPU.

NVRTC (NVIDIA's runtime compiler, the one CuPy uses) is a plain library: it compiles CUDA C to
PTX for a named architecture with no GPU and no driver.  The test extra installs it from the
``nvidia-cuda-nvrtc-cu12`` wheel (about 90 MB); without it this module is skipped, saying so.
The sources are the kernels exactly as ``minivae/kernels/cupy_gpu.py`` defines them, wrapped as
CuPy wraps them (tests/fakecupy.py: inputs by value, outputs by reference, the index i), and
compiled for compute capability 9.0 (H100/H200) and 7.0 (the oldest CuPy 14 supports).
"""
import ctypes
import ctypes.util
import glob
import os
import sys

import pytest


def _libnvrtc():
    try:
        import nvidia.cuda_nvrtc as pkg
        roots = list(pkg.__path__)
    except ImportError:
        roots = []
    for root in roots:
        for name in sorted(glob.glob(os.path.join(root, "lib", "libnvrtc.so*"))):
            if "builtins" not in name and ".alt." not in name:
                return ctypes.CDLL(name)

    found = ctypes.util.find_library("nvrtc")
    return ctypes.CDLL(found) if found else None


try:
    NVRTC = _libnvrtc()
except OSError:
    NVRTC = None
pytestmark = pytest.mark.skipif(
    NVRTC is None, reason="NVRTC not installed: pip install '.[test]' on Linux brings it")


def nvrtc_compile(src, name, arch):
    """PTX of src, or AssertionError with NVRTC's log."""
    prog = ctypes.c_void_p()
    assert NVRTC.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), name.encode(), 0,
                                    None, None) == 0
    opts = [f"--gpu-architecture=compute_{arch}".encode(), b"--std=c++17"]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    res = NVRTC.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    NVRTC.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    NVRTC.nvrtcGetProgramLog(prog, log)
    NVRTC.nvrtcDestroyProgram(ctypes.byref(prog))
    assert res == 0, f"NVRTC cannot compile {name} for compute_{arch}:\n{log.value.decode()}\n{src}"


def _kernels():
    """The kernels cupy_gpu.py defines, recorded by the stand-in as the module is imported."""
    here = os.path.dirname(__file__)
    sys.path.insert(0, here)
    import fakecupy
    saved = {k: sys.modules.get(k) for k in ("cupy", "minivae.kernels.cupy_gpu")}
    sys.modules["cupy"] = fakecupy
    sys.modules.pop("minivae.kernels.cupy_gpu", None)
    before = len(fakecupy.KERNELS)
    try:
        import minivae.kernels.cupy_gpu  # noqa: F401
        made = fakecupy.KERNELS[before:]
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return made


KERNELS = _kernels() if NVRTC is not None else []


def test_every_kernel_is_collected():
    names = {k.name for k in KERNELS}
    assert {"minivae_bernoulli", "minivae_adam", "minivae_fwd_relu", "minivae_bwd_elu",
            "minivae_philox_normal", "minivae_kl"} <= names
    assert len(KERNELS) >= 20


@pytest.mark.parametrize("arch", ["90", "70"])
@pytest.mark.parametrize("T", ["float", "double"])
@pytest.mark.parametrize("k", KERNELS, ids=lambda k: k.name)
def test_kernel_compiles_for_the_gpu(k, T, arch):
    nvrtc_compile(k.source(T, device=True), k.name + ".cu", arch)


def test_a_broken_kernel_does_not_compile():
    """The check can fail: an undeclared name is an NVRTC error."""
    from fakecupy import ElementwiseKernel
    bad = ElementwiseKernel("T x", "T y", "y = undeclared(x);", "minivae_bad")
    with pytest.raises(AssertionError, match="undeclared"):
        nvrtc_compile(bad.source("float", device=True), "bad.cu", "90")
