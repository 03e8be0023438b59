"""gateway/addons/timeouts.py: which deadline each hook arms or clears, and what expiry logs.

Real mitmproxy test flows and connections, a real flow log; the clock is the argument of `_expire`.
"""

from __future__ import annotations

import time

import pytest
from mitmproxy.test import tflow

from gateway.addons.timeouts import BODY, HEADERS, ORIGIN, Timeouts
from gateway.audit import Audit
from gateway.connstate import ConnTable
from gateway.log import reader
from gateway.log.writer import FlowLog


@pytest.fixture
def addon(tmp_path):
    log = tmp_path / "flows.jsonl"
    t = Timeouts(ConnTable(), Audit(FlowLog(log)), headers=3, body=5, origin=7)
    t.log = log
    return t


def records(addon):
    return [r.event for r in reader.iter_records([addon.log])] if addon.log.exists() else []


def test_a_new_connection_must_send_a_head_in_time(addon):
    client = tflow.tclient_conn()
    addon.client_connected(client)
    now = time.monotonic()
    addon._expire(now + 2)
    assert records(addon) == []
    addon._expire(now + 3.5)
    [event] = records(addon)
    assert event["event"] == "connect" and event["reason"] == "timeout-request-headers"
    assert event["decision"] == "deny"


@pytest.mark.parametrize("hooks, at, expired", [
    # (hooks called in order, seconds later, which deadline has fired or None)
    (("requestheaders",), 4.9, None),
    (("requestheaders",), 5.1, BODY),
    (("requestheaders", "request"), 6.9, None),
    (("requestheaders", "request"), 7.1, ORIGIN),
    (("requestheaders", "request", "responseheaders"), 60, None),
    (("requestheaders", "request", "responseheaders", "response"), 2.9, None),
    (("requestheaders", "request", "responseheaders", "response"), 3.1, HEADERS),  # idle keep-alive
    (("requestheaders", "request", "error"), 3.1, HEADERS),
])
def test_deadlines(addon, hooks, at, expired):
    flow = tflow.tflow()
    flow.response = None
    addon.client_connected(flow.client_conn)
    for hook in hooks:
        if hook == "responseheaders":
            flow.response = tflow.tresp()
        getattr(addon, hook)(flow)
    addon._expire(time.monotonic() + at)
    reasons = [e["reason"] for e in records(addon)]
    assert reasons == ([] if expired is None else [f"timeout-{expired}"])


@pytest.mark.parametrize("exempt", ["tcp_start", "websocket_start"])
def test_tcp_and_websocket_have_only_the_idle_timeout(addon, exempt):
    flow = tflow.ttcpflow() if exempt == "tcp_start" else tflow.twebsocketflow()
    addon.client_connected(flow.client_conn)
    getattr(addon, exempt)(flow)
    addon._expire(time.monotonic() + 3600)
    assert records(addon) == []


def test_a_closed_connection_is_forgotten(addon):
    client = tflow.tclient_conn()
    addon.client_connected(client)
    addon.client_disconnected(client)
    addon._expire(time.monotonic() + 3600)
    assert records(addon) == [] and not addon._conn_deadline and not addon._inflight


def test_dns_clients_are_not_timed(addon):
    from mitmproxy.proxy.mode_specs import ProxyMode

    client = tflow.tclient_conn()
    client.transport_protocol = "udp"
    client.proxy_mode = ProxyMode.parse("dns@15353")
    addon.client_connected(client)
    addon._expire(time.monotonic() + 3600)
    assert records(addon) == []
