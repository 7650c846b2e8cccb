"""Shared test configuration: hypothesis profiles (HYPOTHESIS_PROFILE=ci, or CI=true), fixtures."""
import json
import os
import subprocess
import sys
from pathlib import Path

# One BLAS thread for the tests: their matrices are tiny, and on a shared 2-core machine
# OpenBLAS's spinning threads made small GEMMs 10-30x slower under load.  Set before NumPy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parent.parent
# the claims' commands and their package import as `derivation`, `claims.harness`, ... (scripts/)
sys.path.insert(0, str(ROOT / "scripts"))

# deadline off: the first Numba call compiles, and the machine is shared.
# print_blob: a failure prints the @reproduce_failure blob, so it can be replayed exactly.
settings.register_profile("default", deadline=None, max_examples=40, print_blob=True)
# ci: derandomized, so a CI run is reproducible (the same examples on every run)
settings.register_profile("ci", deadline=None, max_examples=100, derandomize=True,
                          print_blob=True, suppress_health_check=[HealthCheck.too_slow])
_default_profile = "ci" if os.environ.get("CI", "").lower() == "true" else "default"
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", _default_profile))


@pytest.fixture(scope="module")
def quick_run(request, tmp_path_factory):
    """The claims command a test module names (QUICK_RUN = (script, record), e.g.
    ("derivation.py", "claims.json")) run as a command line with --quick in a fresh process (one
    BLAS thread, as the package sets when run: NumPy is already loaded here, and threadpoolctl
    may not be installed): (the finished process, its --out folder, the record it wrote)."""
    script, record = request.module.QUICK_RUN
    out = tmp_path_factory.mktemp(Path(script).stem)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--quick", "--out",
                           str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert (out / record).is_file(), f"{script} wrote no {record}:\n{proc.stderr[-2000:]}"
    with open(out / record) as f:
        return proc, out, json.load(f)


@pytest.fixture
def rng():
    """A seeded generator, fresh for every test (no global RNG anywhere)."""
    return np.random.default_rng(20240229)


def _real_gpu():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:                      # no CuPy, no driver, no device
        return False


REAL_GPU = _real_gpu()


@pytest.fixture(params=["fake", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not REAL_GPU, reason="needs CuPy and an NVIDIA GPU")])])
def gpu(request):
    """The CuPy module the GPU path runs on: the strict stand-in (tests/fakecupy.py, which runs
    the kernels' CUDA C source on the host) everywhere, and the real CuPy where a GPU exists.

    For the stand-in, ``cupy`` in sys.modules is replaced for the test and minivae's cached
    CuPy handles are cleared before and after, so the library imports it as it would CuPy."""
    import sys
    from minivae import backend, kernels
    saved = {k: sys.modules.get(k) for k in ("cupy", "minivae.kernels.cupy_gpu")}
    saved_handles = (backend._cupy, kernels._cp)

    def clear():
        sys.modules.pop("minivae.kernels.cupy_gpu", None)
        backend._cupy, kernels._cp = None, None

    clear()
    if request.param == "fake":
        import fakecupy
        sys.modules["cupy"] = fakecupy
        fakecupy.reset_counters()
        mod = fakecupy
    else:
        import cupy as mod
    try:
        yield mod
    finally:
        clear()
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
        backend._cupy, kernels._cp = saved_handles
