"""Upstream reuse's idle time: an idle connection is closed `upstream.reuseIdleSeconds` after its last
use upstream, and one a sandbox held idle past that is not kept. (A module of its own: a short idle time,
where tests/e2e/test_upstream_reuse.py needs a long one.)"""

from __future__ import annotations

import secrets
import time

import pytest

from gateway.lab.gateway import LabGateway
from tests.e2e.test_upstream_reuse import RULES, fetch, port, reuse_count

IDLE = 2.0


@pytest.fixture(scope="module")
def gateway(lab):
    gw = LabGateway(lab, extra_config={"upstream": {"reuseIdleSeconds": IDLE}})
    gw.start()
    yield gw
    gw.stop()


def test_an_idle_connection_expires(gateway, lab, sandboxes):
    box = sandboxes.up(RULES)
    before = reuse_count(gateway, "expired")
    first = fetch(lab, box, "https://allowed.test/echo")
    time.sleep(IDLE + 1)
    second = fetch(lab, box, "https://allowed.test/echo")
    assert port(second) != port(first)
    assert reuse_count(gateway, "expired") - before >= 1
    established = lab.run_in(lab.origin_ns, ["ss", "-Htn", "state", "established", f"( sport = :443 and dport = :{port(first)} )"])
    assert established.stdout.strip() == ""  # closed, not leaked


def test_the_idle_time_counts_from_the_last_use_upstream(gateway, lab, sandboxes):
    """A sandbox that holds its connection idle past upstream.reuseIdleSeconds and then closes it does
    not leave the upstream connection behind: the origin may be about to close it."""
    box = sandboxes.up(RULES)
    kept = reuse_count(gateway, "kept")
    tag = secrets.token_hex(6)
    r = box.python(f"""
        import os, socket, ssl, time
        ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
        s = ctx.wrap_socket(socket.create_connection(("allowed.test", 443), timeout=5), server_hostname="allowed.test")
        s.sendall(b"GET /echo?t={tag} HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep({IDLE + 0.5})
        s.close()
        print("ok")
    """)
    assert r.stdout.strip() == "ok", r.stderr
    (held,) = lab.wait_records(kind="http", count=1, path=f"/echo?t={tag}")
    time.sleep(0.3)
    assert reuse_count(gateway, "kept") == kept
    after = fetch(lab, box, "https://allowed.test/echo")
    assert port(after) != port(held)
