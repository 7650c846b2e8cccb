"""minivae.backend: which array module, which dtypes, which generator."""
import importlib.util

import numpy as np
import pytest
from hypothesis import given, strategies as st

from minivae import backend
from minivae.errors import MinivaeError

HAS_CUPY = importlib.util.find_spec("cupy") is not None


def test_get_array_module_of_numpy_arrays_is_numpy():
    assert backend.get_array_module(np.zeros(3)) is np
    assert backend.get_array_module(np.zeros(3, np.float32), np.ones((2, 2))) is np
    assert backend.get_array_module() is np
    assert not backend.is_gpu_array(np.zeros(2))


def test_array_module_cpu_is_numpy(monkeypatch):
    monkeypatch.delenv("MINIVAE_DEVICE", raising=False)
    assert backend.array_module("cpu") is np
    assert backend.array_module(None) is np            # the default device is the CPU


@pytest.mark.skipif(HAS_CUPY, reason="CuPy is installed: the missing-CuPy error cannot happen")
def test_cuda_without_cupy_is_a_one_line_error():
    with pytest.raises(MinivaeError) as e:
        backend.array_module("cuda")
    msg = str(e.value)
    assert "\n" not in msg
    assert "cupy" in msg.lower() and "cuda" in msg.lower()


@pytest.mark.skipif(HAS_CUPY, reason="CuPy is installed: the missing-CuPy error cannot happen")
def test_cuda_from_environment_without_cupy_is_an_error(monkeypatch):
    monkeypatch.setenv("MINIVAE_DEVICE", "cuda")
    with pytest.raises(MinivaeError, match="(?i)cupy"):
        backend.array_module(None)


@pytest.mark.parametrize("device", ["gpu", "CPU", "tpu", ""])
def test_unknown_device_is_rejected(device):
    with pytest.raises(MinivaeError) as e:
        backend.resolve_device(device)
    assert "device" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name,expected", [("float32", np.float32), ("float64", np.float64),
                                           (np.float32, np.float32), (np.float64, np.float64),
                                           (np.dtype("float32"), np.float32)])
def test_resolve_dtype_accepts_float32_and_float64(name, expected):
    assert backend.resolve_dtype(name) is expected


@pytest.mark.parametrize("bad", ["float16", np.float16, "int32", np.int64, int, "complex64",
                                 "bfloat16", "nonsense", None])
def test_resolve_dtype_rejects_everything_else(bad):
    with pytest.raises(MinivaeError) as e:
        backend.resolve_dtype(bad)
    assert "dtype" in str(e.value) and "\n" not in str(e.value)


@given(seed=st.integers(0, 2**63 - 1))
def test_make_rng_is_reproducible_from_its_seed(seed):
    a = backend.make_rng(seed).standard_normal(16)
    b = backend.make_rng(seed).standard_normal(16)
    c = backend.make_rng(seed + 1).standard_normal(16)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert isinstance(backend.make_rng(seed), np.random.Generator)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_standard_normal_has_the_asked_dtype(dtype):
    z = backend.standard_normal(backend.make_rng(0), (3, 4), dtype)
    assert z.dtype == dtype and z.shape == (3, 4)


def test_to_device_and_to_host_on_the_cpu():
    x = np.arange(6.0).reshape(2, 3)
    assert backend.to_device(x, np) is x                         # no copy when nothing changes
    y = backend.to_device(x, np, dtype=np.float32)
    assert y.dtype == np.float32 and np.array_equal(y, x)
    assert backend.to_host(x) is x
    assert backend.to_host(1.5) == 1.5


@pytest.mark.parametrize("bad", [-1, [0, -2], 1.5, "3", True, [1, "x"], np.int64(-7), [], None])
def test_make_rng_rejects_a_bad_seed(bad):
    with pytest.raises(MinivaeError) as e:
        backend.make_rng(bad)
    assert "seed" in str(e.value) and "\n" not in str(e.value)


def test_make_rng_accepts_numpy_integers_and_sequences():
    a = backend.make_rng([np.int64(3), 4]).standard_normal(4)
    assert np.array_equal(a, np.random.default_rng([3, 4]).standard_normal(4))
    assert np.array_equal(backend.make_rng(np.uint32(5)).random(3),
                          np.random.default_rng(5).random(3))


@pytest.mark.parametrize("value", ["refernce", "numba", "fast"])
def test_a_mistyped_kernel_mode_is_a_clear_error(value, tmp_path):
    """MINIVAE_KERNELS=refernce used to mean 'auto' silently.  Now the first kernel call raises,
    and the command line reports it as its one-line error with exit status 2."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, MINIVAE_KERNELS=value)
    code = ("import numpy as np; from minivae import kernels\n"
            "kernels.act_forward('relu', np.zeros((2, 2), np.float32))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("minivae.errors.MinivaeError: MINIVAE_KERNELS") and repr(value) in last
    p = subprocess.run([sys.executable, "-m", "minivae", "train", "--epochs", "1", "--hidden", "4",
                        "--latent-dim", "2", "--out", str(tmp_path / "run"), "--no-progress"],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("minivae: error: MINIVAE_KERNELS")


@pytest.mark.parametrize("value,mode", [("", "auto"), ("auto", "auto"), (" Reference ", "reference")])
def test_kernel_mode_from_the_environment(value, mode):
    import os
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-c", "from minivae import kernels; print(kernels.MODE)"],
                       capture_output=True, text=True, check=True,
                       env=dict(os.environ, MINIVAE_KERNELS=value))
    assert p.stdout.strip() == mode
