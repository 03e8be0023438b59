"""gateway.addons.upstreamreuse: what a client connection's requests record, per proxy mode."""

from __future__ import annotations

import pytest
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import tflow

from gateway.addons.refuse import META
from gateway.addons.upstreamreuse import UpstreamReuse
from gateway.connstate import ConnTable
from gateway.upstream_pool import IdlePool


def _flow(mode: str, host: str = "allowed.test", secrets=()):
    flow = tflow.tflow()
    flow.client_conn.proxy_mode = ProxyMode.parse(mode)
    flow.response = None
    flow.metadata[META] = {"host": host, "decision": "allow", "secrets": list(secrets)}
    return flow


@pytest.mark.parametrize("mode,tunnel,noted", [
    ("transparent", False, True),
    ("regular", True, True),  # inside a CONNECT tunnel
    ("regular", False, False),  # an absolute-form request through the explicit proxy: never takes part
])
def test_which_requests_count_toward_a_connections_key(mode, tunnel, noted):
    conns = ConnTable()
    addon = UpstreamReuse(conns, IdlePool(5))
    flow = _flow(mode, secrets=["OPENAI_API_KEY@headers"])
    conns.of(flow.client_conn).tunnel = tunnel
    addon.client_connected(flow.client_conn)
    addon.request(flow)
    seen = addon._clients[flow.client_conn.id]
    assert (seen.last_host, seen.last_credentials) == (
        ("allowed.test", frozenset({"OPENAI_API_KEY"})) if noted else (None, frozenset()))


def test_a_connect_starts_the_record_afresh():
    conns = ConnTable()
    addon = UpstreamReuse(conns, IdlePool(5))
    flow = _flow("regular", host="other.test", secrets=["GITHUB_TOKEN@headers"])
    conns.of(flow.client_conn).tunnel = True
    addon.client_connected(flow.client_conn)
    addon.request(flow)
    addon.http_connect(flow)  # what came before the tunnel is not what goes through it
    seen = addon._clients[flow.client_conn.id]
    assert (seen.last_host, seen.hosts, seen.credentials) == (None, set(), set())


def test_a_hook_that_finishes_after_the_client_left_records_nothing():
    addon = UpstreamReuse(ConnTable(), IdlePool(5))
    flow = _flow("transparent")
    addon.client_connected(flow.client_conn)
    addon.client_disconnected(flow.client_conn)
    addon.request(flow)
    assert addon._clients == {}
