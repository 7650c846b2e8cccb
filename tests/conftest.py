"""Shared test configuration: hypothesis profiles (HYPOTHESIS_PROFILE=ci, or CI=true), fixtures."""
import os

# One BLAS thread for the tests: their matrices are tiny, and on a shared 2-core machine
# OpenBLAS's spinning threads made small GEMMs 10-30x slower under load.  Set before NumPy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest
from hypothesis import HealthCheck, settings

# deadline off: the first Numba call compiles, and the machine is shared.
# print_blob: a failure prints the @reproduce_failure blob, so it can be replayed exactly.
settings.register_profile("default", deadline=None, max_examples=40, print_blob=True)
# ci: derandomized, so a CI run is reproducible (the same examples on every run)
settings.register_profile("ci", deadline=None, max_examples=100, derandomize=True,
                          print_blob=True, suppress_health_check=[HealthCheck.too_slow])
_default_profile = "ci" if os.environ.get("CI", "").lower() == "true" else "default"
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", _default_profile))


@pytest.fixture
def rng():
    """A seeded generator, fresh for every test (no global RNG anywhere)."""
    return np.random.default_rng(20240229)
