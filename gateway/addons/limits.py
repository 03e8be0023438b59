"""Per-session limits: connections, request rate and size, WebSocket messages, DNS and TLS rates.

Placed right after identity, so a session over its limits is refused before
any policy work, certificate or upstream connection. Each refusal names its
limit (`limit-<name>`), is logged like any other refusal and counted in
`egressgw_limit_refusals_total`; the bookkeeping is per session
(`gateway.limits.Limiter`), so one session's flood leaves the others alone.
Request bodies are counted as they stream by `LimitsBody`, placed after the
detection addon (which owns the body stream): a body over `bodyBytes` is cut.
HTTP/2 streams the sandbox resets while the gateway still serves them are counted
at the frame (`gateway.h2guard`, installed while the addon runs): past
`streamResetsPerSecond` the connection is closed before more of it is read. The
small pieces of a request body (chunks of a chunked HTTP/1 body, HTTP/2 DATA frames) are
counted as they are parsed (`gateway.h1guard`, `gateway.h2guard`): one past `bodyChunks`,
nothing more of the connection is read.
"""

from __future__ import annotations

import logging

from mitmproxy import connection, http, tls
from mitmproxy import dns as mdns
from mitmproxy.net.dns import response_codes
from mitmproxy.proxy.mode_specs import TransparentMode

from gateway import h1guard, h2guard, metrics
from gateway import limits as lim
from gateway.addons.failclosed import fail_closed, refuse_client, refuse_dns, refuse_http, refuse_tls
from gateway.addons.refuse import META, close_flow, refuse
from gateway.detect.dnstunnel import unchecked_name
from gateway.log import events
from gateway.log.writer import LogWriteError
from gateway.policy.model import Limits as PolicyLimits
from gateway.sessions.store import SessionStoreUnavailable

logger = logging.getLogger("egressgw")

FLOOD_REFUSALS = 64  # rate refusals in a row on one connection before it is closed
_STATUS = {lim.REQUESTS: 429, lim.HEADER_COUNT: 431, lim.HEADER_BYTES: 431, lim.URL: 414, lim.BODY: 413}


def _refuse_ws(self, flow: http.HTTPFlow) -> None:
    if flow.websocket and flow.websocket.messages:
        flow.websocket.messages[-1].drop()


DEFAULTS = PolicyLimits()  # a policy's limits when it sets none


def _unidentified(client) -> str:
    """The limiter key of a connection without a session (its own bucket, dropped when it closes)."""
    return f"connection {client.id}"


def count(name: str) -> None:
    metrics.LIMIT_REFUSALS.labels(name).inc()


class Limits:
    def __init__(self, registry, conns, audit, limiter: lim.Limiter | None = None):
        self.registry = registry
        self.conns = conns
        self.audit = audit
        self.limiter = limiter if limiter is not None else lim.Limiter()  # an empty one is falsy (__len__)
        self._counted: dict[str, str] = {}  # client connection id -> session id it counts against
        self._flooding: dict[str, int] = {}  # client connection id -> rate refusals in a row
        registry.subscribe(self._session_changed)

    def _session_changed(self, what: str, session) -> None:
        if what == "deleted":
            self.limiter.forget(session.id)

    def running(self) -> None:
        h1guard.install(self._body_chunks, self._response_head_bytes)
        h2guard.install(self._stream_reset, self._body_chunks)

    def done(self) -> None:
        h1guard.uninstall(self._body_chunks)
        h2guard.uninstall(self._stream_reset)

    # -- connections ----------------------------------------------------------------------------
    @fail_closed(refuse_client)
    def client_connected(self, client: connection.Client) -> None:
        if not isinstance(client.proxy_mode, TransparentMode):
            return  # explicit proxy: counted at CONNECT, once the credentials name the session
        state = self.conns.of(client)
        if state.session is None or state.refused:
            return
        if not self._open(client, state.session):
            state.refused = lim.reason(lim.CONNECTIONS)
            client.error = "limit connections"
            self._emit_connect(client, state.session, None, None)

    @fail_closed(refuse_http)
    def http_connect(self, flow: http.HTTPFlow) -> None:
        state = self.conns.of(flow.client_conn)
        if flow.response or state.session is None or flow.client_conn.id in self._counted:
            return
        if not self._open(flow.client_conn, state.session):
            state.refused = lim.reason(lim.CONNECTIONS)
            refuse(flow, state.refused, flow.request.host, status=429, session=state.session)
            self._emit_connect(flow.client_conn, state.session, flow.request.host, flow.request.port)

    def _open(self, client, session) -> bool:
        if self.limiter.open(session.id, session.policy.limits.connections):
            self._counted[client.id] = session.id
            return True
        count(lim.CONNECTIONS)
        return False

    def client_disconnected(self, client: connection.Client) -> None:
        self._flooding.pop(client.id, None)
        self.limiter.forget(_unidentified(client))
        sid = self._counted.pop(client.id, None)
        if sid is not None:
            self.limiter.close(sid)

    def _emit_connect(self, client, session, host, port, name: str = lim.CONNECTIONS, detail: str | None = None) -> None:
        """A connection refused or closed for limit `name`: one `connect` event."""
        try:
            self.audit.emit(events.make_event(
                events.CONNECT, session=session.id, client=events.address(client.peername), dest_host=host,
                dest_port=port, decision="deny", reason=lim.reason(name), detail=detail))
        except LogWriteError:
            pass  # refused either way

    # -- chunked HTTP/1 bodies (asked by gateway.h1guard, inside mitmproxy's HTTP/1 layer) -------
    def _body_chunks(self, client: connection.Client) -> int:
        """How many small pieces one request body of this connection may arrive in (`bodyChunks`).
        The guards stop parsing one past it: `LimitsBody` cuts the body and logs the refusal."""
        return self._guard_limit(client, "body_chunks")

    def _response_head_bytes(self, client: connection.Client) -> int:
        """How many bytes an origin's HTTP/1 response head may take before it is complete: room for
        `headerBytes` of names and values (the bound `responseheaders` applies to the whole head)
        however they are written (a 1-byte name with an empty value is 1 counted byte in 5: ': ' and
        CRLF), plus a status line."""
        return 5 * self._guard_limit(client, "header_bytes") + 8192

    def _guard_limit(self, client: connection.Client, name: str) -> int:
        """A limit the guards ask for inside mitmproxy's layers. A transparent connection's session is
        known from its source; through the explicit proxy a request's session comes from its own
        credentials, decided after a guard first asks, so there a guard gets the largest of any
        session's (the addon's own hooks still apply the request's)."""
        state = self.conns.get(client.id)
        session = state.session if state else None
        if session is not None and isinstance(client.proxy_mode, TransparentMode):
            return getattr(session.policy.limits, name)
        return max((getattr(s.policy.limits, name) for s in self.registry.list()), default=getattr(DEFAULTS, name))

    def error(self, flow: http.HTTPFlow) -> None:
        """A request a guard stopped is a refusal in the flow log (logged by HttpAudit, after this
        addon), not an error of an allowed request: mid-body, `limit-body-chunks`; an origin's head
        too large while it arrived, `limit-response-header-bytes`. A body guard's request may end with
        another error first (the connection's close cancels its upstream dial if that is still under
        way): on a connection a guard closed, a request whose body had not ended is the refused one."""
        info = flow.metadata.get(META)
        if flow.error is None or info is None or info.get("logged"):
            return
        msg = flow.error.msg
        if msg == lim.RESPONSE_HEAD_CLOSED:
            count(lim.RESPONSE_HEADER_BYTES)
            info.update(decision="deny", reason=lim.reason(lim.RESPONSE_HEADER_BYTES), detail=msg)
            return
        if msg != lim.BODY_CHUNKS_CLOSED and not (
                lim.body_chunks_closed(flow.client_conn) and not flow.request.timestamp_end
                and msg != h2guard.BODY_CHUNKS_OTHERS):
            return
        count(lim.BODY_CHUNKS)
        info.update(decision="deny", reason=lim.reason(lim.BODY_CHUNKS), detail=lim.BODY_CHUNKS_CLOSED)

    # -- HTTP/2 stream resets (asked by gateway.h2guard, inside mitmproxy's HTTP/2 layer) -------
    def _stream_reset(self, client: connection.Client) -> bool:
        """One more stream reset by the sandbox while the gateway still serves it: allowed?

        False closes the connection (GOAWAY ENHANCE_YOUR_CALM); it is logged and counted here. A
        connection without a session (none reaches HTTP/2 today) gets the default rate, on its own."""
        state = self.conns.get(client.id)
        session = state.session if state else None
        if session is None:
            allowed = self.limiter.rate(_unidentified(client), lim.STREAM_RESETS,
                                        DEFAULTS.stream_resets_per_second)
        else:
            allowed = self.limiter.rate(session.id, lim.STREAM_RESETS, session.policy.limits.stream_resets_per_second)
        if allowed:
            return True
        count(lim.STREAM_RESETS)
        if session is not None:
            self._emit_connect(client, session, state.host, state.port, lim.STREAM_RESETS,
                               "HTTP/2 streams reset while still served, past streamResetsPerSecond: "
                               "connection closed (GOAWAY ENHANCE_YOUR_CALM)")
        return False

    # -- TLS ------------------------------------------------------------------------------------
    @fail_closed(refuse_tls)
    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        client = data.context.client
        state = self.conns.of(client)
        if state.refused or state.session is None:
            return  # the TLS gate refuses (and logs) these
        session = state.session
        if self.limiter.rate(session.id, lim.TLS, session.policy.limits.tls_per_second):
            return
        count(lim.TLS)
        state.refused = lim.reason(lim.TLS)
        data.ignore_connection = True  # no certificate; the dial guard refuses the upstream side
        address = data.context.server.address
        try:
            self.audit.emit(events.make_event(
                events.TLS, session=session.id, client=events.address(client.peername),
                sni=data.client_hello.sni, dest_port=address[1] if address else None,
                decision="deny", reason=state.refused))
        except LogWriteError:
            pass

    # -- HTTP -----------------------------------------------------------------------------------
    @fail_closed(refuse_http)
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response:
            return
        session = flow.metadata.get(META, {}).get("session")
        if session is None:
            return  # the policy addon refuses it
        limits = session.policy.limits
        name = None
        if not self.limiter.rate(session.id, lim.REQUESTS, limits.requests_per_second):
            name = lim.REQUESTS
        else:
            req = flow.request
            fields = req.headers.fields
            length = req.headers.get("content-length")
            name = lim.over_size(
                limits, header_count=len(fields), header_bytes=sum(len(k) + len(v) for k, v in fields),
                url_bytes=len(req.data.path),
                body_bytes=int(length) if length and length.isdigit() else None)
        if name is None:
            self._flooding.pop(flow.client_conn.id, None)
            return
        count(name)
        if name == lim.REQUESTS:
            # A flood on one connection (HTTP/2 streams, pipelining) costs the event loop per request,
            # refused or not: after FLOOD_REFUSALS refusals in a row the connection is closed.
            cid = flow.client_conn.id
            self._flooding[cid] = self._flooding.get(cid, 0) + 1
            if self._flooding[cid] > FLOOD_REFUSALS:
                close_flow(flow)
        info = flow.metadata.setdefault(META, {})
        info.setdefault("port", flow.request.port)
        info.setdefault("path", flow.request.path[:256])
        host = flow.request.host_header or flow.request.host
        status = _STATUS[name]
        refuse(flow, lim.reason(name), host, status=status, keep_alive=name == lim.REQUESTS)
        if status == 429:
            flow.response.headers["Retry-After"] = "1"

    @fail_closed(refuse_http)
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """An origin's response head over `headerBytes` (the same bound as requests) never reaches the sandbox."""
        info = flow.metadata.get(META)
        if info is None or info.get("session") is None or flow.response is None:
            return
        size = sum(len(k) + len(v) for k, v in flow.response.headers.fields)
        if size <= info["session"].policy.limits.header_bytes:
            return
        count(lim.RESPONSE_HEADER_BYTES)
        info.update(decision="deny", reason=lim.reason(lim.RESPONSE_HEADER_BYTES), logged=True,
                    detail=f"response head of {size} bytes from the origin")
        from gateway.addons.auditor import HttpAudit

        try:
            self.audit.emit(HttpAudit._event(flow, info))
        except LogWriteError:
            pass
        close_flow(flow)  # the head is held here: nothing of it reaches the sandbox

    @fail_closed(_refuse_ws)
    def websocket_message(self, flow: http.HTTPFlow) -> None:
        info = flow.metadata.get(META)
        if info is None or info.get("session") is None or flow.websocket is None:
            return
        message = flow.websocket.messages[-1]
        session = info["session"]
        if not message.from_client or len(message.content) <= session.policy.limits.websocket_message_bytes:
            return
        count(lim.WEBSOCKET_MESSAGE)
        message.drop()
        try:
            self.audit.emit(events.make_event(
                events.HTTP, session=session.id, dest_host=info.get("host"), dest_port=info.get("port"),
                method="WEBSOCKET", client=events.address(flow.client_conn.peername), decision="deny",
                rule=info.get("rule"), reason=lim.reason(lim.WEBSOCKET_MESSAGE),
                detail=f"websocket message of {len(message.content)} bytes from the sandbox"))
        except LogWriteError:
            pass
        close_flow(flow)

    # -- DNS ------------------------------------------------------------------------------------
    @fail_closed(refuse_dns)
    def dns_request(self, flow: mdns.DNSFlow) -> None:
        if flow.response:
            return
        try:
            session = self.registry.by_source(flow.client_conn.peername[0])
        except SessionStoreUnavailable:
            return  # the DNS gate refuses (and logs) it
        if session is None or self.limiter.rate(session.id, lim.DNS, session.policy.limits.dns_per_second):
            return
        count(lim.DNS)
        flow.response = flow.request.fail(response_codes.REFUSED)
        q = flow.request.question if flow.request.questions else None
        try:
            self.audit.emit(events.make_event(
                events.DNS, session=session.id, client=events.address(flow.client_conn.peername),
                dns_qname=unchecked_name(q.name) if q else None, dns_rcode="REFUSED", decision="deny",
                reason=lim.reason(lim.DNS)))
        except LogWriteError:
            pass


class LimitsBody:
    """Counts a request body as it streams (after detection set up the stream) and cuts it past `bodyBytes`."""

    def __init__(self, audit):
        self.audit = audit

    @fail_closed(refuse_http)
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        info = flow.metadata.get(META)
        if flow.response or info is None or info.get("session") is None:
            return
        req = flow.request
        if not req.stream:  # False: mitmproxy buffers it
            if "content-length" in req.headers:
                return  # a known length, checked against bodyBytes already; buffered by mitmproxy
            if "transfer-encoding" not in req.headers and (
                    req.http_version.startswith("HTTP/1") or req.method in ("GET", "HEAD", "OPTIONS", "TRACE")):
                return  # no body
        limits = info["session"].policy.limits
        req.stream = _Counted(self, flow, info, req.stream, limits.body_bytes, limits.body_chunks)

    def _cut(self, flow: http.HTTPFlow, info: dict, name: str = lim.BODY) -> None:
        count(name)
        info.update(decision="deny", reason=lim.reason(name), logged=True)
        from gateway.addons.auditor import HttpAudit

        try:
            self.audit.emit(HttpAudit._event(flow, info))
        except LogWriteError:
            pass
        close_flow(flow)


class _Counted:
    def __init__(self, addon: LimitsBody, flow: http.HTTPFlow, info: dict, inner, limit: int, chunks: int):
        self.addon, self.flow, self.info, self.inner, self.limit = addon, flow, info, inner, limit
        self.chunks_left = chunks
        self.seen = 0
        self.dead = False

    def __call__(self, chunk: bytes):
        # Never hand mitmproxy b"" for a chunk in the middle of a body: to a chunked HTTP/1 origin it
        # writes a zero-size chunk, which ENDS the body there (the rest would parse as a new request).
        # An empty list sends nothing.
        if self.dead:
            return []
        self.seen += len(chunk)
        if 0 < len(chunk) < lim.SMALL_CHUNK:
            self.chunks_left -= 1
        if self.seen > self.limit or self.chunks_left < 0:
            self.dead = True
            self.addon._cut(self.flow, self.info, lim.BODY if self.seen > self.limit else lim.BODY_CHUNKS)
            return []
        out = self.inner(chunk) if callable(self.inner) else chunk
        return [] if out == b"" else out
