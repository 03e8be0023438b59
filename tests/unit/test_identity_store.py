"""Identity and DNS when the session store cannot vouch for its sessions: every path fails closed.

(The store's own health is tested against a real redis-server in test_redis_store.py; here the
registry's store reports unhealthy and the addons must refuse, with reason session-store-unavailable.)
"""

from __future__ import annotations

from mitmproxy import dns as mdns
from mitmproxy.test import tflow

from gateway.addons.refuse import META
from gateway.sessions.store import MemoryStore

from .helpers import run
from .test_addons import connect_flow, dns_flow, gw, request  # noqa: F401  (gw is a fixture)

REASON = "session-store-unavailable"


class _Flaky(MemoryStore):
    url = "redis://store.test:6379/0"

    def __init__(self):
        self.up = True

    def healthy(self) -> bool:
        return self.up


def _down(gw) -> _Flaky:
    store = gw.registry.store = _Flaky()
    store.up = False
    return store


def test_transparent_connect_is_cut(gw):
    _down(gw)
    client = gw.transparent_client()
    state = gw.conns.get(client.id)
    assert (state.session, state.refused, client.error) == (None, REASON, "session store unavailable")
    assert gw.flow_log("connect")[-1]["reason"] == REASON


def test_proxy_connect_is_503_and_names_no_secret(gw):
    _down(gw)
    flow = connect_flow(gw, auth=gw.credentials())
    gw.identity.http_connect(flow)
    assert flow.response.status_code == 503
    assert "session store unavailable" in flow.response.get_text()
    assert gw.session.token not in flow.response.get_text()
    assert gw.conns.of(flow.client_conn).refused == REASON


def test_request_on_an_open_connection_is_refused_then_allowed_again(gw):
    client = gw.transparent_client()  # connected while the store was fine
    store = _down(gw)
    flow = tflow.tflow(client_conn=client, req=request())
    gw.identity.requestheaders(flow)
    assert flow.response.status_code == 503 and flow.metadata[META]["reason"] == REASON
    store.up = True
    again = tflow.tflow(client_conn=client, req=request())
    gw.identity.requestheaders(again)
    assert again.response is None and again.metadata[META]["session"] is gw.session


def test_request_on_a_connection_of_a_deleted_session_has_no_session(gw):
    client = gw.transparent_client()
    gw.registry.delete(gw.session.id)
    flow = tflow.tflow(client_conn=client, req=request())
    gw.identity.requestheaders(flow)
    assert flow.metadata[META]["session"] is None  # the policy step refuses it (no-session)
    run(gw.http.requestheaders(flow))
    assert flow.response.status_code == 403


def test_dns_is_refused(gw):
    _down(gw)
    flow = dns_flow()
    run(gw.dns.dns_request(flow))
    assert flow.response.response_code == mdns.response_codes.REFUSED
    assert gw.resolver.queries == []
    assert gw.flow_log("dns")[-1]["reason"] == REASON
