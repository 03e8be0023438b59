"""Shared paths for the policy tests; makes the repository importable without installing it."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

POLICIES = ROOT / "policies"
TESTDATA = Path(__file__).resolve().parent / "testdata"
