"""Adversarial suite fixtures: one lab and one gateway per module (module scope), sandboxes, the leak
counter, and `attack`: runs one case of a class's table and checks it (see `advcase.run_case`).

The machinery is the end-to-end harness (`gateway.lab.harness`); only the fixtures live here.
"""

from __future__ import annotations

import pytest

from gateway.lab import Lab
from gateway.lab.gateway import LabGateway
from gateway.lab.harness import Sandboxes, leak_counter as install_leak_counter, netns_available

NETNS = netns_available()


def pytest_collection_modifyitems(config, items):
    if NETNS:
        return
    skip = pytest.mark.skip(reason="needs root, ip netns and nftables")
    for item in items:
        if "adversarial" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture(scope="module")
def lab_options() -> dict:
    """Keyword arguments for this module's `Lab` (a module overrides it to add DNS records)."""
    return {}


@pytest.fixture(scope="module")
def gateway_env() -> dict:
    """Environment for this module's gateway (env:// secret sources)."""
    return {}


@pytest.fixture(scope="module")
def lab(lab_options):
    with Lab(**lab_options) as lab:
        yield lab


@pytest.fixture(scope="module")
def gateway(lab, gateway_env):
    gw = LabGateway(lab).start(env=gateway_env)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def sandboxes(gateway, tmp_path_factory):
    boxes = Sandboxes(gateway, tmp_path_factory.mktemp("policies"))
    yield boxes
    boxes.cleanup()


@pytest.fixture(scope="module")
def leak_counter(lab):
    return install_leak_counter(lab)
