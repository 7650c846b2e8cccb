"""Shared test configuration: hypothesis profiles (select with HYPOTHESIS_PROFILE=ci)."""
import os

from hypothesis import HealthCheck, settings

# deadline off: the first Numba call compiles, and the machine is shared
settings.register_profile("default", deadline=None, max_examples=40)
settings.register_profile("ci", deadline=None, max_examples=100,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
