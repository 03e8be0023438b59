"""gateway.upstreamseams: the pieces that do not need a running proxy."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from mitmproxy.connection import ConnectionState
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.http._http1 import Http1Client
from mitmproxy.proxy.layers.tls import ServerTLSLayer
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow
from OpenSSL import SSL

from gateway import upstreamseams as seams
from gateway.addons.upstreamreuse import keep_alive_timeout


def _client(mode: str = "transparent", alpn: bytes | None = b"http/1.1"):
    client = tflow.tclient_conn()
    client.proxy_mode = ProxyMode.parse(mode)
    client.alpn = alpn
    return client


def _request(connection: list[str], version: str = "HTTP/1.1", method: str = "GET"):
    req = tflow.treq()
    req.http_version = version
    req.method = method
    for value in connection:
        req.headers.add("Connection", value)
    return req


@pytest.mark.parametrize("connection,version,mode,alpn,hop", [
    (["close"], "HTTP/1.1", "transparent", b"http/1.1", True),
    ([" Close "], "HTTP/1.1", "transparent", None, True),  # plain HTTP: no ALPN
    (["close"], "HTTP/1.0", "transparent", None, False),  # HTTP/1.0 closes anyway
    (["close, upgrade"], "HTTP/1.1", "transparent", None, False),  # other options: left alone
    (["close", "close"], "HTTP/1.1", "transparent", None, False),
    (["keep-alive"], "HTTP/1.1", "transparent", None, False),
    ([], "HTTP/1.1", "transparent", None, False),
    (["close"], "HTTP/1.1", "regular", None, True),  # the explicit proxy: in a CONNECT tunnel, absolute-form
    (["close"], "HTTP/1.1", "transparent", b"h2", False),
])
def test_which_connection_close_is_hop_by_hop(connection, version, mode, alpn, hop):
    assert seams.close_is_hop_by_hop(_client(mode, alpn), _request(connection, version)) is hop


def test_a_connect_request_keeps_its_connection_close():
    assert not seams.close_is_hop_by_hop(_client("regular", None), _request(["close"], method="CONNECT"))


class _Writer:
    def get_extra_info(self, name, default=None):
        return {"peername": ("198.18.1.10", 443)}.get(name, default)


class _Tls:
    def get_shutdown(self):
        return 0

    def sendall(self, data):  # pragma: no cover - must never be reached through the stand-in
        raise AssertionError("the kept connection's TLS object was used")


def test_the_detached_writer_marks_any_use_but_the_teardown_close():
    async def main():
        owner = asyncio.current_task()
        w = seams._DetachedWriter(_Writer(), owner)
        w.close()  # the reader task's own teardown
        assert not w.dirty
        other = seams._DetachedWriter(_Writer(), owner)
        async def closer():
            other.close()
        await asyncio.create_task(closer())  # from another task: closed on purpose
        assert other.dirty
    asyncio.run(main())
    w = seams._DetachedWriter(_Writer())
    assert not w.dirty and not w.is_closing() and w.get_extra_info("peername") == ("198.18.1.10", 443)
    w.write(b"")
    assert not w.dirty
    w.write(b"GET / HTTP/1.1\r\n")
    assert w.dirty
    w2 = seams._DetachedWriter(_Writer())
    w2.write_eof()
    assert w2.dirty


@pytest.mark.parametrize("use,error", [
    (lambda t: t.sendall(b"x"), SSL.ZeroReturnError),  # what mitmproxy's TLS layer takes as a closed peer
    (lambda t: t.recv(65535), SSL.ZeroReturnError),
    (lambda t: t.bio_write(b"x"), None),
    (lambda t: t.do_handshake(), SSL.Error),
])
def test_the_detached_tls_object_marks_any_use(use, error):
    w = seams._DetachedWriter(_Writer())
    t = seams._DetachedTls(_Tls(), w)
    assert t.get_shutdown() == 0 and t.pending() == 0 and not w.dirty
    with pytest.raises(SSL.WantReadError):
        t.bio_read(65535)  # nothing to send: not a use
    assert not w.dirty
    if error is None:
        use(t)
    else:
        with pytest.raises(error):
            use(t)
    assert w.dirty


@pytest.mark.parametrize("value,timeout", [
    ("", None),
    ("max=100", None),
    ("timeout=5", 4.5),
    ("timeout=5, max=1000", 4.5),
    (" Timeout = 2 ", 1.5),
    ('timeout="3"', 2.5),
    ("timeout=0", 0.0),
    ("timeout=soon", 0.0),  # unreadable: not kept
])
def test_an_origins_keep_alive_timeout_bounds_the_idle_time(value, timeout):
    assert keep_alive_timeout(value) == timeout


# -- idle_parts / detach on real mitmproxy layers -----------------------------------------------------
class _Reader:
    def __init__(self, waiting=True):
        self._waiter = object() if waiting else None
        self._buffer = b""

    def at_eof(self):
        return False

    def exception(self):
        return None


class _RealWriter(_Writer):
    def __init__(self):
        self.transport = SimpleNamespace(is_closing=lambda: False, abort=lambda: None)

    def is_closing(self):
        return False


class _OpenTls:
    def __init__(self, pending=0, shutdown=0):
        self._pending, self._shutdown = pending, shutdown

    def pending(self):
        return self._pending

    def get_shutdown(self):
        return self._shutdown


def _tree(tls: bool = True, **change):
    """(root, server, io): a layer tree with an idle HTTP/1 client layer (and a TLS layer) for `server`,
    then `change` applied: http1.<attr>, tls.<attr>, server.<attr>, reader/handler settings."""
    client, server = tflow.tclient_conn(), tflow.tserver_conn()
    server.state = ConnectionState.OPEN
    server.tls = tls
    server.alpn = b"http/1.1" if tls else None
    with taddons.context() as tctx:
        context = Context(client, tctx.options)
    context.server = server
    http1 = Http1Client(context)
    http1.state = http1.read_headers
    tls_layer = ServerTLSLayer(context, server) if tls else None
    if tls_layer is not None:
        tls_layer.tls = _OpenTls()
        tls_layer.child_layer = SimpleNamespace(child_layer=http1)
    root = SimpleNamespace(layer=tls_layer or http1)
    done = change.pop("handler_done", False)
    handler = SimpleNamespace(done=lambda: done, cancel=lambda msg=None: None)
    io = SimpleNamespace(reader=_Reader(change.pop("waiting", True)), writer=_RealWriter(), handler=handler)
    for name, value in change.items():
        target, _, attr = name.partition("_")
        setattr({"http1": http1, "tls": tls_layer.tls if tls_layer else None, "server": server}[target], attr, value)
    return root, server, io, tls_layer


def _make(reader, writer, tls):
    from gateway.upstream_pool import Idle, Key
    return Idle(Key("s", "r", ("198.18.1.10", 443), tls is not None, "allowed.test"), reader, writer, tls)


@pytest.mark.parametrize("tls,change,kept", [
    (True, {}, True),
    (False, {}, True),
    (True, {"http1_stream_id": 3}, False),  # a request open
    (True, {"http1_buf": b"HTTP/1.1 200"}, False),  # part of a response buffered
    (True, {"waiting": False}, False),  # the reader task holds bytes it read: not parked in read()
    (True, {"handler_done": True}, False),
    (True, {"tls_pending": lambda: 5}, False),  # decrypted bytes nobody read
    (True, {"tls_get_shutdown": lambda: 2}, False),  # close_notify came
    (True, {"server_alpn": b"h2"}, False),
    (True, {"server_state": ConnectionState.CAN_READ}, False),  # half closed
])
def test_only_an_idle_connection_is_detached(tls, change, kept):
    root, server, io, tls_layer = _tree(tls, **change)
    if "http1_buf" in change:  # a ReceiveBuffer, not bytes
        http1 = next(layer for layer in seams._layers(root) if isinstance(layer, Http1Client))
        from mitmproxy.proxy.layers.http._http1 import ReceiveBuffer
        http1.buf = ReceiveBuffer()
        http1.buf += change["http1_buf"]
    real_writer = io.writer
    taken = seams.detach(SimpleNamespace(layer=root.layer), server, io, _make)
    assert (taken is not None) is kept
    if kept:
        entry, writer = taken
        assert entry.writer is real_writer and io.writer is writer  # the handler keeps only the stand-in
        if tls:
            assert isinstance(tls_layer.tls, seams._DetachedTls) and entry.tls is not tls_layer.tls
    else:
        assert io.writer is real_writer


def test_a_layer_tree_too_large_to_walk_keeps_nothing():
    root, server, io, _ = _tree(True)
    chain = SimpleNamespace(child_layer=None)
    deep = chain
    for _ in range(seams.MAX_LAYERS):
        deep.child_layer = SimpleNamespace(child_layer=None)
        deep = deep.child_layer
    deep.child_layer = root.layer  # the connection's layers sit below more than MAX_LAYERS others
    assert seams._layers(chain) is None
    assert seams.idle_parts(chain, server) is None
    assert seams.idle_parts(root.layer, server) is not None
