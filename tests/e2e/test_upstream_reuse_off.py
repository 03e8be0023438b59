"""`upstream.reuseIdleSeconds: 0` turns upstream connection reuse off: every sandbox connection gets
an upstream connection of its own, as with bare mitmproxy. (A module of its own: one gateway per lab.)"""

from __future__ import annotations

import pytest

from gateway.lab.gateway import LabGateway
from tests.e2e.test_upstream_reuse import RULES, fetch, port, reuse_count


@pytest.fixture(scope="module")
def gateway(lab):
    gw = LabGateway(lab, extra_config={"upstream": {"reuseIdleSeconds": 0}})
    gw.start()
    yield gw
    gw.stop()


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_reuse_can_be_turned_off(gateway, lab, sandboxes, scheme):
    box = sandboxes.up(RULES)
    recs = [fetch(lab, box, f"{scheme}://allowed.test/echo") for _ in range(3)]
    assert len({port(r) for r in recs}) == 3
    assert reuse_count(gateway, "kept") == reuse_count(gateway, "reused") == 0
