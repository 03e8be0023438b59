"""Timeouts against slow clients and slow origins.

mitmproxy closes a connection idle for `tcp_timeout` seconds (config `timeouts.idleSeconds`). It has no
deadline for a request head or body trickled one byte at a time, nor for an origin that never answers;
this addon keeps those deadlines and a one-second watchdog closes what misses them:

- `requestHeadersSeconds`: from a connection's start (TLS handshake included), or from its previous
  response, to the next complete request head (slowloris);
- `requestBodySeconds`: from a request head to the end of its body (slow POST);
- `responseHeadersSeconds`: from a request sent upstream to its response head (slow origin).

Raw TCP, TLS passthrough and WebSocket connections have only the idle timeout. Each timeout is
logged (reason `timeout-<which>`) and counted like any refusal.
"""

from __future__ import annotations

import asyncio
import logging
import time

from mitmproxy import connection, http, tcp
from mitmproxy.proxy.mode_specs import DnsMode

from gateway import metrics
from gateway.addons.refuse import META, close_flow, connection_handler
from gateway.log import events
from gateway.log.writer import LogWriteError

logger = logging.getLogger("egressgw")

HEADERS, BODY, ORIGIN = "request-headers", "request-body", "response-headers"


class Timeouts:
    def __init__(self, conns, audit, *, headers: float = 30.0, body: float = 600.0, origin: float = 60.0,
                 tick: float = 0.5):
        self.conns, self.audit = conns, audit
        self.limits = {HEADERS: headers, BODY: body, ORIGIN: origin}
        self.tick = tick
        self._conn_deadline: dict[str, tuple[float, connection.Client]] = {}
        self._flow_deadline: dict[str, tuple[float, str, http.HTTPFlow]] = {}
        self._inflight: dict[str, int] = {}
        self._exempt: set[str] = set()
        self._task: asyncio.Task | None = None

    def running(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    # -- bookkeeping ----------------------------------------------------------------------------
    def _arm(self, client: connection.Client) -> None:
        if client.id not in self._exempt:
            self._conn_deadline[client.id] = (time.monotonic() + self.limits[HEADERS], client)

    def client_connected(self, client: connection.Client) -> None:
        if client.transport_protocol != "tcp" or isinstance(client.proxy_mode, DnsMode):
            self._exempt.add(client.id)  # DNS (UDP or TCP) and other datagrams: no HTTP to time
            return
        self._arm(client)

    def client_disconnected(self, client: connection.Client) -> None:
        self._conn_deadline.pop(client.id, None)
        self._inflight.pop(client.id, None)
        self._exempt.discard(client.id)

    def _exempt_conn(self, client: connection.Client) -> None:
        self._exempt.add(client.id)
        self._conn_deadline.pop(client.id, None)

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        self._exempt_conn(flow.client_conn)

    def tls_established_client(self, data) -> None:
        state = self.conns.get(data.context.client.id)
        if state is not None and state.dial is not None:  # passthrough: no HTTP to time
            self._exempt_conn(data.context.client)

    def tls_clienthello(self, data) -> None:
        if data.ignore_connection:
            self._exempt_conn(data.context.client)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        cid = flow.client_conn.id
        self._conn_deadline.pop(cid, None)
        self._inflight[cid] = self._inflight.get(cid, 0) + 1
        if flow.response is None:
            self._flow_deadline[flow.id] = (time.monotonic() + self.limits[BODY], BODY, flow)

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is None and not flow.error:
            self._flow_deadline[flow.id] = (time.monotonic() + self.limits[ORIGIN], ORIGIN, flow)
        else:
            self._flow_deadline.pop(flow.id, None)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._flow_deadline.pop(flow.id, None)

    def response(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        self._exempt_conn(flow.client_conn)

    def _finished(self, flow: http.HTTPFlow) -> None:
        self._flow_deadline.pop(flow.id, None)
        cid = flow.client_conn.id
        left = self._inflight.get(cid, 1) - 1
        self._inflight[cid] = max(0, left)
        if left <= 0 and flow.websocket is None and flow.request.method != "CONNECT":
            self._arm(flow.client_conn)

    # -- the watchdog ---------------------------------------------------------------------------
    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                self._expire(time.monotonic())
            except Exception:  # noqa: BLE001 - the watchdog must outlive any one bad entry
                logger.exception("timeout watchdog failed")

    def _expire(self, now: float) -> None:
        for cid, (deadline, client) in list(self._conn_deadline.items()):
            if deadline <= now:
                del self._conn_deadline[cid]
                self._close_client(client)
        for fid, (deadline, which, flow) in list(self._flow_deadline.items()):
            if deadline <= now:
                del self._flow_deadline[fid]
                self._close_flow(flow, which)

    def _close_client(self, client: connection.Client) -> None:
        state = self.conns.get(client.id)
        reason = f"timeout-{HEADERS}"
        metrics.LIMIT_REFUSALS.labels(f"timeout-{HEADERS}").inc()
        try:
            self.audit.emit(events.make_event(
                events.CONNECT, session=state.session.id if state and state.session else None,
                client=events.address(client.peername), dest_host=state.host if state else None,
                decision="deny", reason=reason,
                detail=f"no complete request head within {self.limits[HEADERS]:g}s"))
        except LogWriteError:
            pass
        handler = connection_handler(client.id)
        if handler is not None and client in handler.transports:
            handler.close_connection(client)

    def _close_flow(self, flow: http.HTTPFlow, which: str) -> None:
        from gateway.addons.auditor import HttpAudit

        metrics.LIMIT_REFUSALS.labels(f"timeout-{which}").inc()
        info = flow.metadata.setdefault(META, {})
        info.update(decision="deny", reason=f"timeout-{which}", logged=True,
                    detail=f"{which.replace('-', ' ')} not complete within {self.limits[which]:g}s")
        try:
            self.audit.emit(HttpAudit._event(flow, info))
        except LogWriteError:
            pass
        close_flow(flow)
