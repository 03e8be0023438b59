"""Identity: whose traffic is this?

Transparent connections are mapped to a session by their source address, at
connect time. Explicit-proxy traffic carries the session in its proxy
credentials (`Proxy-Authorization: Basic base64(session-id:token)`), checked
on CONNECT and on every absolute-form request. Traffic that maps to no
session is refused. Every HTTP request re-checks that its session still
exists, and while a shared session store cannot vouch for its sessions every
lookup fails closed with reason `session-store-unavailable`.
"""

from __future__ import annotations

import base64
import binascii

from mitmproxy import connection, http
from mitmproxy.proxy.mode_specs import RegularMode, TransparentMode

from gateway.addons.failclosed import fail_closed, refuse_client, refuse_http
from gateway.addons.refuse import META, refuse
from gateway.log import events
from gateway.sessions.store import SessionStoreUnavailable

STORE_DOWN = SessionStoreUnavailable.reason


def proxy_credentials(flow: http.HTTPFlow) -> tuple[str, str] | None:
    value = flow.request.headers.get("Proxy-Authorization", "")
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        user, sep, token = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, ValueError):  # ValueError: non-ASCII input; UnicodeDecodeError is one too
        return None
    return (user, token) if sep else None


class Identity:
    def __init__(self, registry, conns, audit):
        self.registry = registry
        self.conns = conns
        self.audit = audit

    @fail_closed(refuse_client)
    def client_connected(self, client: connection.Client) -> None:
        if not isinstance(client.proxy_mode, TransparentMode):
            return
        state = self.conns.of(client)
        try:
            state.session, reason = self.registry.by_source(client.peername[0]), "no-session"
        except SessionStoreUnavailable:
            state.session, reason = None, STORE_DOWN
        if state.session is None:
            client.error = reason.replace("-", " ")
            state.refused = reason
            self.audit.emit(events.make_event(
                events.CONNECT, client=events.address(client.peername), decision="deny", reason=reason))

    def client_disconnected(self, client: connection.Client) -> None:
        self.conns.drop(client)

    @fail_closed(refuse_http)
    def http_connect(self, flow: http.HTTPFlow) -> None:
        state = self.conns.of(flow.client_conn)
        state.tunnel = True
        try:
            state.session = self._authenticate(flow)
        except SessionStoreUnavailable:
            state.refused = STORE_DOWN
            return refuse(flow, STORE_DOWN, flow.request.host, status=503)
        if state.session is None:
            state.refused = "proxy-auth-required"
            refuse(flow, "proxy-auth-required", flow.request.host, status=407)

    @fail_closed(refuse_http)
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        state = self.conns.of(flow.client_conn)
        if isinstance(flow.client_conn.proxy_mode, RegularMode) and not state.tunnel:
            # Absolute-form requests through the explicit proxy: every request carries its own credentials.
            state.session = None
            try:
                state.session = self._authenticate(flow)
            except SessionStoreUnavailable:
                refuse(flow, STORE_DOWN, flow.request.host, status=503)
            else:
                if state.session is None:
                    refuse(flow, "proxy-auth-required", flow.request.host, status=407)
        elif state.session is not None and not flow.response:
            # A connection outlives changes: each request checks its session is still there and verifiable.
            try:
                if not self.registry.current(state.session):
                    state.session = None
            except SessionStoreUnavailable:
                refuse(flow, STORE_DOWN, flow.request.host, status=503)
        flow.request.headers.pop("Proxy-Authorization", None)
        flow.metadata.setdefault(META, {})["session"] = state.session

    def _authenticate(self, flow: http.HTTPFlow):
        creds = proxy_credentials(flow)
        return self.registry.authenticate(*creds) if creds else None
