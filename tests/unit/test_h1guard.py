"""gateway.h1guard on mitmproxy's real HTTP/1 server layer (sans-IO): a chunked request body is parsed
no further than the limit, however much of it arrived in one read."""

from __future__ import annotations

import pytest
from mitmproxy import connection, options
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy import commands, context, events
from mitmproxy.proxy.layers.http import ReceiveHttp
from mitmproxy.proxy.layers.http._events import (RequestData, RequestEndOfMessage, RequestHeaders, RequestProtocolError,
                                                  ResponseEndOfMessage, ResponseHeaders, ResponseProtocolError)
from mitmproxy.proxy.layers.http._http1 import Http1Client, Http1Server
from mitmproxy.test import tutils

from gateway import h1guard

HEAD = (b"POST /up HTTP/1.1\r\nHost: allowed.test\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/octet-stream\r\n\r\n")


class Driven:
    """A mitmproxy HTTP/1 layer fed by hand: what it closed and the HTTP events it produced."""

    def __init__(self, layer, peer):
        self.layer = layer
        self.peer = peer
        self.closed = False
        self.got: list = []
        self.feed_event(events.Start())

    def feed_event(self, event) -> None:
        for cmd in self.layer.handle_event(event):
            if isinstance(cmd, commands.CloseConnection):
                self.closed = True
            elif isinstance(cmd, ReceiveHttp):
                self.got.append(cmd.event)

    def feed(self, data: bytes) -> None:
        self.feed_event(events.DataReceived(self.peer, data))


def _context() -> context.Context:
    opts = options.Options()
    Proxyserver().load(opts)
    client = connection.Client(peername=("10.0.0.2", 40000), sockname=("10.0.0.1", 443), timestamp_start=0)
    return context.Context(client, opts)


class Conn(Driven):
    """mitmproxy's real Http1Server for one sandbox connection."""

    def __init__(self):
        ctx = _context()
        self.client = ctx.client
        super().__init__(Http1Server(ctx), ctx.client)

    def chunks(self) -> list[bytes]:
        return [e.data for e in self.got if isinstance(e, RequestData)]

    def errors(self) -> list[str]:
        return [e.message for e in self.got if isinstance(e, RequestProtocolError)]


class Limit:
    """The limits addon's part: a limit per client connection, and who asked."""

    def __init__(self, limit: int = 10):
        self.limit = limit
        self.asked: list = []

    def __call__(self, client) -> int:
        self.asked.append(client)
        return self.limit


@pytest.fixture
def guard():
    limit = Limit()
    h1guard.install(limit)
    yield limit
    h1guard.uninstall(limit)


@pytest.mark.parametrize("limit, sent, passed, stopped", [
    (10, 5, 5, False),      # under the limit: every chunk, and the end of the body
    (10, 11, 11, False),    # the limit and one more pass (LimitsBody cuts and logs at that one)
    (10, 12, 11, True),     # past it: parsing stops there
    (10, 20000, 11, True),  # a flood in one read: the same
    (0, 3, 1, True),
])
def test_small_chunks_past_the_limit_stop_the_parse(guard, limit, sent, passed, stopped):
    guard.limit = limit
    c = Conn()
    c.feed(HEAD + b"1\r\nz\r\n" * sent + b"0\r\n\r\n")
    assert isinstance(c.got[0], RequestHeaders)
    assert len(c.chunks()) == passed
    assert c.closed is stopped
    assert c.errors() == ([h1guard.MESSAGE] if stopped else [])
    assert any(isinstance(e, RequestEndOfMessage) for e in c.got) is not stopped
    assert guard.asked == [c.client]  # asked once per request body


def test_nothing_more_is_parsed_after_the_stop(guard):
    c = Conn()
    c.feed(HEAD + b"1\r\nz\r\n" * 50)
    n = len(c.got)
    c.feed(b"1\r\nz\r\n" * 50 + b"0\r\n\r\n")
    assert len(c.got) == n and len(c.layer.buf) == 0


def test_chunks_of_a_kilobyte_or_more_are_not_counted(guard):
    c = Conn()
    big = b"400\r\n" + b"z" * 1024 + b"\r\n"
    c.feed(HEAD + big * 30 + b"0\r\n\r\n")
    assert len(c.chunks()) == 30 and not c.closed and not c.errors()


def test_a_body_of_known_length_is_not_counted(guard):
    c = Conn()
    c.feed(b"POST /up HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 40\r\n\r\n")
    for _ in range(40):
        c.feed(b"z")  # forty reads of one byte: each costs the sandbox a read
    assert len(c.chunks()) == 40 and not c.closed


def test_a_limit_that_fails_stops_the_body(guard):
    def broken(_client):
        raise RuntimeError("no session store")

    h1guard.install(broken)
    try:
        c = Conn()
        c.feed(HEAD + b"1\r\nz\r\n" * 3)
        assert len(c.chunks()) == 1 and c.closed  # fail closed: limit 0, the one LimitsBody would cut at
    finally:
        h1guard.uninstall(broken)


def test_uninstall_puts_mitmproxy_back():
    def limit(_client):
        return 1

    h1guard.install(limit)
    h1guard.uninstall(lambda _c: 5)  # not the installed one: left alone
    assert "read_body" in Http1Server.__dict__
    h1guard.uninstall(limit)
    assert "read_body" not in Http1Server.__dict__
    c = Conn()
    c.feed(HEAD + b"1\r\nz\r\n" * 100 + b"0\r\n\r\n")
    assert len(c.chunks()) == 100 and not c.closed


@pytest.mark.parametrize("second, passed, stopped", [(8, 8, False), (12, 11, True)])
def test_a_pipelined_request_is_counted_on_its_own(guard, second, passed, stopped):
    """One read can end a body (answered early) and hold the next request's: each body has its own
    count (review finding: two bodies under the limit closed a keep-alive connection)."""
    c = Conn()
    c.feed(HEAD + b"1\r\nz\r\n" * 2)
    resp = tutils.tresp(content=b"")
    resp.headers["content-length"] = "0"
    c.feed_event(ResponseHeaders(1, resp))  # the origin answered before the body ended
    c.feed_event(ResponseEndOfMessage(1))
    c.feed(b"1\r\nz\r\n" * 6 + b"0\r\n\r\n" + HEAD + b"1\r\nz\r\n" * second + b"0\r\n\r\n")
    assert [e.stream_id for e in c.got if isinstance(e, RequestHeaders)] == [1, 3]
    assert len([e for e in c.got if isinstance(e, RequestData) and e.stream_id == 3]) == passed
    assert c.closed is stopped
    assert [e.stream_id for e in c.got if isinstance(e, RequestProtocolError)] == ([3] if stopped else [])


# ----------------------------------------------------------------------------- the origin's response head

class Upstream(Driven):
    """mitmproxy's real Http1Client for one origin connection, with a request already sent on it."""

    def __init__(self):
        ctx = _context()
        ctx.server = connection.Server(address=("allowed.test", 443))
        super().__init__(Http1Client(ctx), ctx.server)
        self.feed_event(RequestHeaders(1, tutils.treq(host="allowed.test", port=443), end_stream=True))
        self.feed_event(RequestEndOfMessage(1))

    def errors(self) -> list[str]:
        return [e.message for e in self.got if isinstance(e, ResponseProtocolError)]


def _head(size: int) -> bytes:
    line = b"X-Big: " + b"h" * 50 + b"\r\n"
    return b"HTTP/1.1 200 OK\r\n" + line * (size // len(line))


@pytest.fixture
def head_guard():
    limit = Limit(limit=4096)
    h1guard.install(Limit(), limit)
    yield limit
    h1guard.uninstall()


@pytest.mark.parametrize("size, reads, stopped", [
    (3000, 1, False),       # under the limit, whole: the response goes on
    (3000, 30, False),      # under the limit, in pieces
    (8000, 1, False),       # over it but whole in one read: parsed once, the limits addon judges it
    (12000, 3, True),       # over it before its end: stopped
    (1 << 20, 200, True),   # a megabyte in pieces: stopped at the first read past the limit
])
def test_an_origins_head_past_the_limit_is_dropped_unparsed(head_guard, size, reads, stopped):
    u = Upstream()
    data = _head(size) + b"Content-Length: 2\r\n\r\nok"
    step = -(-len(data) // reads)
    fed = 0
    for i in range(0, len(data), step):
        u.feed(data[i : i + step])
        fed += 1
        if u.closed:
            break
    assert u.closed is stopped
    assert u.errors() == ([h1guard.RESPONSE_HEAD_CLOSED] if stopped else [])
    assert any(isinstance(e, ResponseHeaders) for e in u.got) is not stopped
    assert any(isinstance(e, ResponseEndOfMessage) for e in u.got) is not stopped
    if stopped:
        assert fed * step <= 4096 + 2 * step  # stopped as soon as the buffer passed the limit
        assert len(u.layer.buf) == 0
        u.feed(b"X-More: 1\r\n" * 1000 + b"\r\n")  # what arrives later is dropped, never parsed
        assert len(u.layer.buf) == 0 and len(u.got) == 1


def test_a_head_limit_that_fails_stops_the_head():
    def broken(_client):
        raise RuntimeError("no session store")

    h1guard.install(Limit(), broken)
    try:
        u = Upstream()
        u.feed(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n")  # incomplete: the guard asks, fails, limit 0
        assert u.closed and u.errors() == [h1guard.RESPONSE_HEAD_CLOSED]
    finally:
        h1guard.uninstall()


def test_without_a_head_limit_mitmproxy_reads_the_head_as_before():
    h1guard.install(Limit())
    try:
        u = Upstream()
        u.feed(_head(100_000) + b"Content-Length: 0\r\n\r\n")
        assert not u.closed and any(isinstance(e, ResponseHeaders) for e in u.got)
    finally:
        h1guard.uninstall()
    assert Http1Client.read_headers is h1guard._ORIGINAL_HEAD


def test_a_whole_head_behind_a_blank_line_is_parsed_not_stopped(head_guard):
    """h11 takes one leading blank line per call and says 'no head yet': the guard looks again before
    it measures (review finding: a whole head and body behind one CRLF tripped it)."""
    u = Upstream()
    u.feed(b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 20000\r\n\r\n" + b"b" * 20000)
    assert not u.closed and u.errors() == []
    assert any(isinstance(e, ResponseEndOfMessage) for e in u.got)


def test_a_head_mitmproxy_refuses_itself_is_not_refused_twice(head_guard):
    u = Upstream()
    u.feed(b"HTTP/1.1 abc OK\r\n\r\n" + b"b" * 20000)
    assert len(u.errors()) == 1 and h1guard.RESPONSE_HEAD_CLOSED not in u.errors()


def test_installing_again_without_a_head_limit_removes_the_head_guard():
    h1guard.install(Limit(), Limit(limit=10))
    h1guard.install(Limit())
    try:
        assert Http1Client.read_headers is h1guard._ORIGINAL_HEAD
    finally:
        h1guard.uninstall()
