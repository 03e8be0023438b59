"""The places in mitmproxy 12.2 that upstream connection reuse reaches into (re-check on upgrades).

mitmproxy ties every upstream connection to the client connection that opened it. To hand one to
another client connection (gateway/addons/upstreamreuse.py), four methods are wrapped or replaced
while the addon runs (`install()` / `uninstall()`):

- `mitmproxy.proxy.server`'s `asyncio`: a module-like object whose `open_connection` answers a dial
  with the streams `adopt()` chose in the same task (the `server_connect` hook runs in the dial's task);
- `ServerTLSLayer.start_handshake`: an adopted TLS object is established already, so no server data
  will come to finish the handshake: it is finished at once (or failed at once);
- `Http1Client.send` / `Http1Server.send`: an HTTP/1.1 sandbox's `Connection: close` is hop-by-hop.
  The origin gets the request without it (so its connection can be kept), the sandbox's answer
  carries it, and the sandbox's connection closes after it as before (mitmproxy reads that from the
  sandbox's request, which keeps the header: so does the flow log).

and, to keep a connection, `detach()` reads mitmproxy's layer tree and its handler's transports.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import weakref

from mitmproxy import connection, http
from mitmproxy.proxy import server as mitm_server
from mitmproxy.proxy.layers.http import HttpConnection, HttpLayer
from mitmproxy.proxy.layers.http._events import RequestHeaders, ResponseHeaders
from mitmproxy.proxy.layers.http._http1 import Http1Client, Http1Server
from mitmproxy.proxy.layers.tls import ServerTLSLayer
from mitmproxy.proxy.mode_specs import RegularMode, TransparentMode
from mitmproxy.proxy.tunnel import TunnelState
from OpenSSL import SSL

from gateway.upstream_pool import Idle

HTTP1_ALPN = (None, b"", b"http/1.1")
MAX_LAYERS = 64  # a layer tree larger than this is not walked: nothing is kept
ADOPTED_HANDSHAKE_FAILED = "the kept upstream TLS connection could not be taken over"

_ADOPT: contextvars.ContextVar[Idle | None] = contextvars.ContextVar("egressgw_adopt", default=None)
_ADOPTED_TLS: weakref.WeakSet = weakref.WeakSet()  # established TLS objects handed to a new client's layer


# -- the dial ------------------------------------------------------------------------------------
def adopt(entry: Idle) -> None:
    """The next dial in this task is answered with `entry`'s streams (if it is still quiet then)."""
    entry.adopted = False
    _ADOPT.set(entry)


def forget_adoption() -> None:
    _ADOPT.set(None)


class _Asyncio:
    """mitmproxy.proxy.server's `asyncio`: the real module, but a dial may be answered from the pool."""

    def __getattr__(self, name):
        return getattr(asyncio, name)

    @staticmethod
    async def open_connection(host, port, **kwargs):
        entry = _ADOPT.get()
        if entry is not None:
            _ADOPT.set(None)
            if entry.key.address == (host, port) and entry.quiet():
                try:
                    # Suspend once, as a real dial does: with mitmproxy's eager task factory the handler
                    # records this connection's placeholder only after the dial task first yields, and
                    # would overwrite the streams recorded before that.
                    await asyncio.sleep(0)
                except asyncio.CancelledError:
                    entry.close()
                    raise
                if entry.quiet():
                    entry.adopted = True
                    return entry.reader, entry.writer
            entry.close()
        return await asyncio.open_connection(host, port, **kwargs)


# -- the handshake ---------------------------------------------------------------------------------
def hand_over_tls(entry: Idle):
    """The established TLS object of an adopted connection, for `tls_start_server`."""
    _ADOPTED_TLS.add(entry.tls)
    return entry.tls


_START_HANDSHAKE = ServerTLSLayer.start_handshake


def _start_handshake(self: ServerTLSLayer):
    """mitmproxy's, then, for an adopted TLS object: the handshake completed right there (or failed), and
    no server data will arrive to finish it, so it is finished now. A fresh handshake is never touched."""
    yield from _START_HANDSHAKE(self)
    if self.tls is None or self.tls not in _ADOPTED_TLS:
        return
    _ADOPTED_TLS.discard(self.tls)
    if self.tunnel_state is not TunnelState.ESTABLISHING:
        return
    if self.conn.timestamp_tls_setup is not None:
        yield from self._handshake_finished(None)
    else:
        yield from self.on_handshake_error(ADOPTED_HANDSHAKE_FAILED)
        yield from self._handshake_finished(ADOPTED_HANDSHAKE_FAILED)


# -- Connection: close ------------------------------------------------------------------------------
def close_is_hop_by_hop(client: connection.Client, request: http.Request) -> bool:
    """An HTTP/1 sandbox's HTTP/1.1 request whose only connection option is `close` (transparent mode, or
    the explicit proxy: inside a CONNECT tunnel or an absolute-form request; never the CONNECT itself)."""
    values = request.headers.get_all("connection")
    return (len(values) == 1 and values[0].strip().lower() == "close" and request.http_version == "HTTP/1.1"
            and request.method.upper() != "CONNECT"
            and isinstance(client.proxy_mode, (TransparentMode, RegularMode)) and client.alpn in HTTP1_ALPN)


_CLIENT_SEND = Http1Client.send
_SERVER_SEND = Http1Server.send


def _client_send(self: Http1Client, event):
    if isinstance(event, RequestHeaders) and self.stream_id is None and close_is_hop_by_hop(self.context.client,
                                                                                            event.request):
        request = event.request.copy()  # the head only differs: the body is the same bytes object
        del request.headers["connection"]
        event = dataclasses.replace(event, request=request)
    return _CLIENT_SEND(self, event)


def _server_send(self: Http1Server, event):
    if isinstance(event, ResponseHeaders) and self.request is not None \
            and close_is_hop_by_hop(self.context.client, self.request) \
            and "close" not in event.response.headers.get("connection", "").lower():
        response = event.response.copy()
        response.headers["connection"] = "close"  # RFC 9112 9.6: the origin was not asked, we say it
        event = dataclasses.replace(event, response=response)
    return _SERVER_SEND(self, event)


def install() -> None:
    if not isinstance(mitm_server.asyncio, _Asyncio):
        mitm_server.asyncio = _Asyncio()
    ServerTLSLayer.start_handshake = _start_handshake  # type: ignore[method-assign]
    Http1Client.send = _client_send  # type: ignore[method-assign]
    Http1Server.send = _server_send  # type: ignore[method-assign]


def uninstall() -> None:
    if isinstance(mitm_server.asyncio, _Asyncio):
        mitm_server.asyncio = asyncio
    ServerTLSLayer.start_handshake = _START_HANDSHAKE  # type: ignore[method-assign]
    Http1Client.send = _CLIENT_SEND  # type: ignore[method-assign]
    Http1Server.send = _SERVER_SEND  # type: ignore[method-assign]


# -- keeping a connection ---------------------------------------------------------------------------
class _DetachedWriter:
    """Stands in for a kept connection's writer in the first client's handler: writes nothing, closes
    nothing. Any write means that client's layers still used the connection (`dirty`)."""

    def __init__(self, writer, owner: asyncio.Task | None = None):
        self._writer = writer
        self._owner = owner  # the reader task: its teardown closes the writer, which is not a use
        self.dirty = False

    def write(self, data: bytes) -> None:
        if data:
            self.dirty = True

    def write_eof(self) -> None:
        self.dirty = True

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        if self._owner is not None and asyncio.current_task() is not self._owner:
            self.dirty = True  # closed on purpose (not by the reader task's own teardown): not to be kept

    async def drain(self) -> None:
        pass

    def get_extra_info(self, name, default=None):
        return self._writer.get_extra_info(name, default)


class _DetachedTls:
    """Stands in for a kept connection's TLS object in the first client's TLS layer: its close handling
    reads the shutdown state; any other use marks the connection used (so it is closed, not kept) and
    fails the way mitmproxy's TLS layer handles quietly (a peer that closed)."""

    def __init__(self, tls, writer: _DetachedWriter):
        self._tls = tls
        self._writer = writer

    def get_shutdown(self) -> int:
        return self._tls.get_shutdown()

    def sendall(self, data: bytes) -> None:
        self._writer.dirty = True
        raise SSL.ZeroReturnError()

    def recv(self, n: int) -> bytes:
        self._writer.dirty = True
        raise SSL.ZeroReturnError()

    def bio_write(self, data: bytes) -> None:
        self._writer.dirty = True

    def bio_read(self, n: int) -> bytes:
        raise SSL.WantReadError()

    def pending(self) -> int:
        return 0

    def __getattr__(self, name):
        self._writer.dirty = True
        raise SSL.Error(f"TLS connection kept for reuse: {name} refused")


def _layers(root) -> list | None:
    """Every layer under `root` (NextLayer.layer, child_layer, the layer a mode layer hands its events to,
    an HTTP layer's connections and streams), each once; None for a tree larger than MAX_LAYERS."""
    todo, seen, found = [root], set(), []
    while todo:
        layer = todo.pop()
        if layer is None or id(layer) in seen:
            continue
        if len(found) == MAX_LAYERS:
            return None
        seen.add(id(layer))
        found.append(layer)
        todo.append(getattr(layer, "layer", None))
        todo.append(getattr(layer, "child_layer", None))
        handle = getattr(layer, "_handle_event", None)  # mitmproxy's HttpProxy keeps its child only here
        owner = getattr(handle, "__self__", None)
        if owner is not None and owner is not layer:
            todo.append(owner)
        if isinstance(layer, HttpLayer):
            todo.extend(layer.connections.values())
            todo.extend(layer.streams.values())
    return found


def idle_parts(root, server: connection.Server) -> tuple[Http1Client, ServerTLSLayer | None] | None:
    """(HTTP/1 client layer, TLS layer or None) when `server` carries nothing now, else None."""
    http1 = tls_layer = None
    layers = _layers(root)
    if layers is None:
        return None
    for layer in layers:
        if getattr(layer, "conn", None) is not server:
            continue
        if isinstance(layer, HttpConnection):
            if http1 is not None or not isinstance(layer, Http1Client):
                return None  # two parsers, or HTTP/2 or 3
            http1 = layer
        elif isinstance(layer, ServerTLSLayer) and layer.tls is not None:
            if tls_layer is not None:
                return None
            tls_layer = layer
    if http1 is None or http1.stream_id is not None or http1.request is not None \
            or http1.state != http1.read_headers or len(http1.buf):
        return None
    if server.tls:
        if tls_layer is None or tls_layer.tls.pending() or tls_layer.tls.get_shutdown():
            return None
        if server.alpn not in HTTP1_ALPN:
            return None
    elif tls_layer is not None:
        return None
    return http1, tls_layer


def detach(handler, server: connection.Server, io, make_entry) -> tuple[Idle, _DetachedWriter] | None:
    """Take `server`'s socket (and TLS object) out of the first client's `handler`, if it is idle and its
    reader task waits in `read()` now. `make_entry(reader, writer, tls)` builds the pool entry. The
    caller pools the entry once the reader task is done, unless the writer was used meanwhile."""
    if server.state is not connection.ConnectionState.OPEN or io.reader is None or io.writer is None \
            or io.handler is None or io.handler.done() or io.writer.is_closing():
        return None
    # The reader task must be parked in `read()`: one that already read bytes and waits to hand them on
    # (for the event lock) would lose them when cancelled. (CPython's StreamReader keeps its waiter in
    # `_waiter`, set only while a read waits for data.)
    if getattr(io.reader, "_waiter", None) is None:
        return None
    parts = idle_parts(handler.layer, server)
    if parts is None:
        return None
    _, tls_layer = parts
    entry = make_entry(io.reader, io.writer, tls_layer.tls if tls_layer else None)
    if not entry.quiet():
        return None
    writer = _DetachedWriter(io.writer, io.handler)
    io.writer = writer
    if tls_layer is not None:
        tls_layer.tls = _DetachedTls(tls_layer.tls, writer)
    # Cancelled while it waits, the reader task reads nothing more: bytes that arrive later stay in the
    # StreamReader's buffer (and `Idle.quiet()` then refuses the entry).
    io.handler.cancel("egressgw: idle upstream connection kept")
    return entry, writer
