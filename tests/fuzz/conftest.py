"""Hypothesis profiles for the fuzz targets, chosen by ``HYPOTHESIS_PROFILE``.

- ``default`` (the default test run): few examples, derandomized so CI sees the same inputs
  every run, no example database; the whole folder takes well under 60 s.
- ``full`` (``scripts/reliability``): 20 times the examples, random, for finding new inputs.

Hypothesis profiles are process-wide: once this folder is collected, other hypothesis tests
in the run take the loaded profile's values for the settings they do not set themselves.
"""

from __future__ import annotations

import os
from datetime import timedelta

from hypothesis import HealthCheck, settings

# A per-example deadline bounds a hang to seconds, not the 120 s pytest-timeout. Every target
# takes well under 10 ms an example; 1 s leaves room for a busy 2-core machine, so a deadline
# miss means a super-linear path, not noise.
DEADLINE = timedelta(seconds=1)

COMMON = settings(database=None, deadline=DEADLINE, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("default", COMMON, max_examples=150, derandomize=True)
settings.register_profile("full", COMMON, max_examples=3000, derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
