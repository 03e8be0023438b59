"""End-to-end fixtures: a real lab (origin + DNS namespaces), a real gateway, real sandboxes.

Each test module gets its own lab and gateway (module scope): a module that
stops its gateway cannot disturb another. Tests need root and `ip netns`;
without them they are skipped, and the rest of the suite still runs.
"""

from __future__ import annotations

import pytest

from gateway.lab import Lab
from gateway.lab.gateway import LabGateway
from gateway.lab.harness import Box, Sandboxes, netns_available, policy_text  # noqa: F401 (tests import them from here)
from gateway.lab.harness import leak_counter as install_leak_counter

pytestmark = pytest.mark.netns


NETNS = netns_available()


def pytest_collection_modifyitems(config, items):
    if NETNS:
        return
    skip = pytest.mark.skip(reason="needs root, ip netns and nftables")
    for item in items:
        if "e2e" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture(scope="module")
def lab():
    with Lab() as lab:
        yield lab


@pytest.fixture(scope="module")
def gateway(lab):
    gw = LabGateway(lab).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def sandboxes(gateway, tmp_path_factory):
    boxes = Sandboxes(gateway, tmp_path_factory.mktemp("policies"))
    yield boxes
    boxes.cleanup()


@pytest.fixture(scope="module")
def leak_counter(lab):
    """Counts packets reaching the origin namespace from anywhere but the gateway's own address."""
    return install_leak_counter(lab)
