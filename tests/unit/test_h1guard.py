"""gateway.h1guard on mitmproxy's real HTTP/1 server layer (sans-IO): a chunked request body is parsed
no further than the limit, however much of it arrived in one read."""

from __future__ import annotations

import pytest
from mitmproxy import connection, options
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy import commands, context, events
from mitmproxy.proxy.layers.http import ReceiveHttp
from mitmproxy.proxy.layers.http._events import (RequestData, RequestEndOfMessage, RequestHeaders, RequestProtocolError,
                                                  ResponseEndOfMessage, ResponseHeaders)
from mitmproxy.proxy.layers.http._http1 import Http1Server
from mitmproxy.test import tutils

from gateway import h1guard

HEAD = (b"POST /up HTTP/1.1\r\nHost: allowed.test\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/octet-stream\r\n\r\n")


class Conn:
    def __init__(self):
        opts = options.Options()
        Proxyserver().load(opts)
        self.client = connection.Client(peername=("10.0.0.2", 40000), sockname=("10.0.0.1", 443), timestamp_start=0)
        self.layer = Http1Server(context.Context(self.client, opts))
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
        self.feed_event(events.DataReceived(self.client, data))

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
