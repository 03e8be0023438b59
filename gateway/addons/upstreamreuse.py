"""Upstream connections outlive the client connection that opened them, for the same session only.

mitmproxy ties every upstream connection to the client connection that opened it: a sandbox that
opens a new connection per request makes the gateway dial and shake hands with the origin each time.
This addon keeps an upstream connection when its client leaves it idle, and hands it to a later
client connection of the same session that needs exactly the same upstream (`upstream_pool.Key`:
session and policy revision, vetted address, TLS or not, host, credentials substituted).

Only HTTP/1.1 upstreams of HTTP/1 clients are kept (transparent mode, or a CONNECT tunnel of the
explicit proxy), and only when nothing is in flight: no request or response open, nothing buffered in
the HTTP parser, the socket or TLS, the reader parked in `read()`, no informational (1xx) answer seen.
HTTP/2, WebSockets, the explicit proxy's absolute-form requests and raw TCP never take part. A kept connection the first client's layers still
touch is closed. A connection that is stale when wanted means a fresh dial; one the origin closes
at the very moment it is reused fails that request with a 502 (as in any HTTP client's pool; hence
the short `upstream.reuseIdleSeconds`, counted from the connection's last use).

The mitmproxy internals this relies on are in gateway/upstreamseams.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field

from mitmproxy import connection, ctx, http, tls
from mitmproxy.proxy import server_hooks
from mitmproxy.proxy.mode_specs import RegularMode, TransparentMode

from gateway import upstreamseams as seams
from gateway.addons.refuse import META
from gateway.upstream_pool import Idle, IdlePool, Key

logger = logging.getLogger("egressgw.upstream")
KEEP_ALIVE_MARGIN = 0.5  # seconds taken off an origin's `Keep-Alive: timeout=N`: its close must not race our reuse


def keep_alive_timeout(value: str) -> float | None:
    """An origin's `Keep-Alive: timeout=N` (RFC 2068 19.7.1), less a margin; None without one."""
    for param in value.split(","):
        name, _, number = param.strip().partition("=")
        if name.strip().lower() == "timeout":
            try:
                return max(0.0, float(number.strip().strip('"')) - KEEP_ALIVE_MARGIN)
            except ValueError:
                return 0.0  # unreadable: do not keep
    return None


@dataclass
class _Client:
    """What one client connection's requests carried: the key its upstream connection is kept under."""

    hosts: set[str] = field(default_factory=set)
    credentials: set[str] = field(default_factory=set)
    last_host: str | None = None
    last_credentials: frozenset[str] = frozenset()
    servers: set[str] = field(default_factory=set)  # ids of the upstream connections tracked for it


@dataclass
class _Upstream:
    """One upstream connection a client connection dialled or adopted."""

    client: str
    key: Key
    session: object  # the Session it was dialled for: a kept connection of a session gone or changed is closed
    last_used: float = field(default_factory=time.monotonic)
    keep_alive: float | None = None  # the origin's own idle limit (`Keep-Alive: timeout=N`), if it sent one
    reusable: bool = True  # False once an informational (1xx) answer came: the final one may still be due
    taken: Idle | None = None  # the pool entry taken for it, until mitmproxy has it (and its TLS object)


class UpstreamReuse:
    def __init__(self, conns, pool: IdlePool, registry=None):
        self.conns = conns
        self.pool = pool
        self.registry = registry
        self._clients: dict[str, _Client] = {}
        self._upstreams: dict[str, _Upstream] = {}  # server.id ->
        self._loop: asyncio.AbstractEventLoop | None = None
        if registry is not None:
            registry.subscribe(self._session_changed)

    def running(self) -> None:
        if self.pool.enabled:
            self._loop = asyncio.get_running_loop()
            seams.install()

    def done(self) -> None:
        seams.uninstall()
        self._loop = None
        self.pool.clear()

    def _session_changed(self, what: str, session) -> None:
        loop = self._loop
        if what != "created" and loop is not None:  # deleted, policy replaced, canaries added
            try:
                loop.call_soon_threadsafe(self.pool.flush, session.id)
            except RuntimeError:  # the loop closed: the pool was cleared with it
                pass

    # -- what a client connection's requests carried ----------------------------------------------
    def client_connected(self, client: connection.Client) -> None:
        if self.pool.enabled and self._eligible(client):
            self._clients[client.id] = _Client()

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.client_conn.id in self._clients:  # what comes before a tunnel is not what goes through it
            self._clients[flow.client_conn.id] = _Client()

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.request.stream:  # Credentials substituted in its requestheaders: the dial follows now
            self._note(flow)

    def request(self, flow: http.HTTPFlow) -> None:
        if not flow.request.stream:  # a streamed one was noted at requestheaders
            self._note(flow)

    def _note(self, flow: http.HTTPFlow) -> None:
        seen = self._clients.get(flow.client_conn.id)  # None once the client left (a hook that finished late)
        info = flow.metadata.get(META)
        if seen is None or info is None or flow.response is not None:  # refused: nothing goes upstream
            return
        if isinstance(flow.client_conn.proxy_mode, RegularMode):
            state = self.conns.get(flow.client_conn.id)
            if state is None or not state.tunnel:  # an absolute-form request: it never takes part
                return
        names = frozenset(s.partition("@")[0] for s in info.get("secrets", ()))
        seen.last_host, seen.last_credentials = info.get("host"), names
        seen.hosts.add(info.get("host"))
        seen.credentials.update(names)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        up = self._upstreams.get(flow.server_conn.id)
        if up is not None and flow.response is not None and 100 <= flow.response.status_code < 200:
            # mitmproxy takes a 1xx as a whole exchange: the final answer may still be on its way
            up.reusable = False

    def response(self, flow: http.HTTPFlow) -> None:
        up = self._upstreams.get(flow.server_conn.id)
        if up is not None and flow.response is not None \
                and (flow.metadata.get(META) or {}).get("decision") in ("allow", "report"):
            up.last_used = time.monotonic()  # an answer from upstream
            up.keep_alive = keep_alive_timeout(flow.response.headers.get("keep-alive", ""))

    # -- adopt ----------------------------------------------------------------------------------
    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        server, client = data.server, data.client
        seen = self._clients.get(client.id)
        if server.error or seen is None or not seen.last_host or not self._eligible(client) \
                or server.transport_protocol != "tcp" or server.via is not None:
            return
        state = self.conns.get(client.id)
        address = tuple(server.address)
        if state is None or state.session is None or state.refused or address not in state.vetted:
            return  # (the dial gate refuses these too: this does not rely on it)
        if isinstance(client.proxy_mode, RegularMode) and not state.tunnel:
            return  # the explicit proxy takes part inside a CONNECT tunnel only (one host per connection)
        if server.tls and server.sni != seen.last_host:
            return
        key = Key(state.session.id, state.session.rev, address, bool(server.tls), seen.last_host,
                  seen.last_credentials)
        up = self._upstreams[server.id] = _Upstream(client.id, key, state.session)
        seen.servers.add(server.id)
        entry = self.pool.take(key)
        if entry is not None:
            up.taken = entry
            seams.adopt(entry)  # answers mitmproxy's dial, next, in this same task

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        up = self._upstreams.get(data.server.id)
        entry = up.taken if up is not None else None
        if entry is None:
            return
        if not entry.adopted:  # closed or noisy at the last moment: mitmproxy dialled afresh
            up.taken = None
            self.pool.count("stale")
            return
        self.pool.count("reused")
        if entry.tls is None:
            up.taken = None

    def tls_start_server(self, data: tls.TlsData) -> None:
        up = self._upstreams.get(data.conn.id)
        entry = up.taken if up is not None else None
        if entry is not None:
            up.taken = None
            if entry.adopted and entry.tls is not None:
                data.ssl_conn = seams.hand_over_tls(entry)  # established: the handshake step finishes at once

    def server_connect_error(self, data: server_hooks.ServerConnectionHookData) -> None:
        up = self._forget(data.server.id)
        seams.forget_adoption()
        if up is not None and up.taken is not None and not up.taken.adopted:
            up.taken.close()  # a later addon refused the dial: nobody took it

    def server_disconnected(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._forget(data.server.id)

    def _forget(self, server_id: str) -> _Upstream | None:
        up = self._upstreams.pop(server_id, None)
        if up is not None and (seen := self._clients.get(up.client)) is not None:
            seen.servers.discard(server_id)
        return up

    # -- keep -----------------------------------------------------------------------------------
    def client_disconnected(self, client: connection.Client) -> None:
        seen = self._clients.pop(client.id, None)
        if seen is None:
            return
        ups = {sid: up for sid in seen.servers if (up := self._upstreams.pop(sid, None)) is not None}
        for up in ups.values():
            if up.taken is not None and not up.taken.adopted:  # taken, but its dial never came
                up.taken.close()
        if len(seen.hosts) != 1 or not ups:
            return
        proxyserver = ctx.master.addons.get("proxyserver")
        handler = proxyserver.connections.get(client.id) if proxyserver else None
        if handler is None:
            return
        credentials = frozenset(seen.credentials)
        for conn, io in list(handler.transports.items()):
            up = ups.get(conn.id) if conn is not client else None
            if up is None or not up.reusable or up.key.host not in seen.hosts:
                continue
            key = dataclasses.replace(up.key, credentials=credentials)
            try:
                self._keep(handler, conn, io, key, up)
            except Exception:  # noqa: BLE001 - keeping is an optimisation: on any surprise the connection just closes
                logger.exception("upstream connection not kept")

    def _keep(self, handler, server: connection.Server, io, key: Key, up: _Upstream) -> None:
        limit = self.pool.idle_seconds if up.keep_alive is None else min(self.pool.idle_seconds, up.keep_alive)
        if time.monotonic() - up.last_used >= limit:
            return
        taken = seams.detach(handler, server, io, lambda r, w, t: Idle(key, r, w, t, since=up.last_used, limit=limit))
        if taken is not None:
            entry, writer = taken
            io.handler.add_done_callback(lambda _task: self._settle(entry, writer, up.session))

    def _settle(self, entry: Idle, writer, session) -> None:
        """The first client's handler is done with the connection: pool it, unless that handler used it or
        its session was deleted or changed meanwhile."""
        if writer.dirty or (self.registry is not None
                            and not (self.registry.holds(session) and session.rev == entry.key.rev)):
            entry.close()
        else:
            self.pool.put(entry)

    # -----------------------------------------------------------------------------------------
    @staticmethod
    def _eligible(client: connection.Client) -> bool:
        return isinstance(client.proxy_mode, (TransparentMode, RegularMode)) and client.alpn in seams.HTTP1_ALPN
