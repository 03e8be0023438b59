"""Hypothesis profiles for the property tests: `ci` (default, small) and `long` (EGRESSGW_FUZZ=long).

    EGRESSGW_FUZZ=long PYTHONPATH=$PWD .venv/bin/python -m pytest -q tests/fuzz   # thousands of examples each
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

settings.register_profile("ci", max_examples=150, deadline=None, derandomize=False,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("long", max_examples=20_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile("long" if os.environ.get("EGRESSGW_FUZZ") == "long" else "ci")
