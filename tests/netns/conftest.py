"""Fixtures for the netns tests: a private gateway namespace per test.

Everything runs inside namespaces the test creates (t-gw-*, t-or-*, and the
sandboxes' egw-t<tag>-*), and finalizers remove them even when a test fails.
Helpers live in netns_testlib.py (a unique module name, so it cannot clash
with other test directories).
"""

from __future__ import annotations

import os
import secrets
import shutil

import pytest

from netns_testlib import (ORIGIN_ADDR, ORIGIN_G, Gateway, add_netns, del_netns,
                           netns_unavailable)


@pytest.fixture
def gw(tmp_path):
    """A gateway namespace G with lo up, a private state dir and sandbox-name prefix."""
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    from netns import naming
    tag = secrets.token_hex(3)
    g = Gateway(f"t-gw-{tag}", str(tmp_path / "state"), f"t{tag}")
    add_netns(g.name)
    try:
        yield g
    finally:
        import netns
        for sb in netns.list_sandboxes(g.state_dir):
            try:
                g.call(netns.down, sb.name, state_dir=g.state_dir)
            except Exception:  # noqa: BLE001 - best effort; the rest below still runs
                pass
        # Whatever is left with our prefix (crash tests leave things on purpose).
        ours = naming.NETNS_PREFIX + g.prefix
        if os.path.isdir(naming.NETNS_RUN_DIR):
            for n in os.listdir(naming.NETNS_RUN_DIR):
                if n.startswith(ours):
                    del_netns(n)
        if os.path.isdir(naming.ETC_NETNS_DIR):
            for n in os.listdir(naming.ETC_NETNS_DIR):
                if n.startswith(ours):
                    shutil.rmtree(os.path.join(naming.ETC_NETNS_DIR, n), ignore_errors=True)
        del_netns(g.name)   # takes the host-side veths with it


@pytest.fixture
def origin(gw):
    """A fake 'internet' namespace routed from G (which forwards), to prove nothing is forwarded."""
    name = f"t-or-{gw.prefix[1:]}"
    ns = add_netns(name)
    try:
        gw.sh(["ip", "link", "add", "gwo0", "type", "veth", "peer", "name", "or0", "netns", name])
        gw.sh(["ip", "addr", "add", f"{ORIGIN_G}/30", "dev", "gwo0"])
        gw.sh(["ip", "link", "set", "gwo0", "up"])
        ns.sh(["ip", "addr", "add", f"{ORIGIN_ADDR}/30", "dev", "or0"])
        ns.sh(["ip", "link", "set", "or0", "up"])
        ns.sh(["ip", "route", "add", "default", "via", ORIGIN_G])
        gw.sh(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        yield ns
    finally:
        del_netns(name)


@pytest.fixture
def listeners():
    """Collects listeners so they are closed even if the test fails."""
    made: list = []
    yield made
    for lst in made:
        lst.close()
