"""Fixtures for the lab's own tests.

Tests marked ``netns`` need root and working ``ip netns``; they are skipped
otherwise. They share one session-wide :class:`Lab` (starting one takes ~0.5 s).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# the repository root, in case the package isn't installed in the venv
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from gateway.lab import Lab  # noqa: E402

_netns_ok: bool | None = None


def netns_available() -> bool:
    global _netns_ok
    if _netns_ok is None:
        _netns_ok = False
        if os.geteuid() == 0:
            name = f"eglprobe{os.getpid()}"
            try:
                add = subprocess.run(["ip", "netns", "add", name], capture_output=True)
                if add.returncode == 0:
                    _netns_ok = True
                    subprocess.run(["ip", "netns", "del", name], capture_output=True)
            except OSError:
                pass
    return _netns_ok


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs root and working `ip netns`")
    for item in items:
        if item.get_closest_marker("netns") and not netns_available():
            item.add_marker(skip)


@pytest.fixture(scope="session")
def lab():
    if not netns_available():
        pytest.skip("needs root and working `ip netns`")
    with Lab() as the_lab:
        yield the_lab
