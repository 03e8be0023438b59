"""gateway.h2guard: mitmproxy's real HTTP/2 server layer, fed frames from a real h2 client (sans-IO).

The attack of CVE-2023-44487 is HEADERS and RST_STREAM pairs: the layer must pass each reset on to the
stream it cancels (mitmproxy alone drops it when both arrive in one read) and close the connection
with GOAWAY ENHANCE_YOUR_CALM once the decision callback says no more.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
from hyperframe.frame import GoAwayFrame, RstStreamFrame
from mitmproxy import connection, options
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy import commands, context, events
from mitmproxy.proxy.layers.http import ReceiveHttp, RequestData, RequestHeaders, RequestProtocolError
from mitmproxy.proxy.layers.http._events import ErrorCode, ResponseEndOfMessage, ResponseHeaders, ResponseProtocolError
from mitmproxy.proxy.layers.http._http2 import Http2Server
from mitmproxy.test import tutils

from gateway import h2guard
from gateway import limits as lim

HEAD = [(":method", "GET"), (":scheme", "https"), (":authority", "allowed.test"), (":path", "/")]


class Conn:
    """One client connection: the layer under test and the h2 client talking to it."""

    def __init__(self, peer_port: int = 40000):
        opts = options.Options()
        Proxyserver().load(opts)  # the proxy options the layer reads
        self.client = connection.Client(peername=("10.0.0.2", peer_port), sockname=("10.0.0.1", 443),
                                        timestamp_start=0)
        self.layer = Http2Server(context.Context(self.client, opts))
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.h2.initiate_connection()
        self.received: list = []  # what the client's h2 made of the layer's bytes
        self.closed = False
        self._feed(self.layer.handle_event(events.Start()))

    def _feed(self, cmds) -> list:
        out = []
        for cmd in cmds:
            if isinstance(cmd, commands.SendData):
                self.received += self.h2.receive_data(cmd.data)
            elif isinstance(cmd, commands.CloseConnection):
                self.closed = True
            elif isinstance(cmd, ReceiveHttp):
                out.append(cmd.event)
        return out

    def send(self, streams: int, reset: bool = True, resets_after: bool = False, then: bytes = b"") -> list:
        """`streams` requests (HEADERS with END_STREAM), each reset at once (or, `resets_after`, all
        the HEADERS first and then all the resets), and `then` (raw frames); one read for the layer."""
        sids = []
        for _ in range(streams):
            sids.append(sid := self.h2.get_next_available_stream_id())
            self.h2.send_headers(sid, HEAD, end_stream=True)
            if reset and not resets_after:
                self.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        for sid in sids if resets_after else ():
            self.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        data = self.h2.data_to_send() + then
        return self._feed(self.layer.handle_event(events.DataReceived(self.client, data)))

    def reset(self, sid: int) -> list:
        """An RST_STREAM frame for `sid`, built by hand: h2 will not send one for a stream it saw end."""
        frame = RstStreamFrame(sid, error_code=h2.errors.ErrorCodes.CANCEL).serialize()
        return self._feed(self.layer.handle_event(events.DataReceived(self.client, frame)))

    def answer(self, sid: int, error: bool = False) -> None:
        """The gateway's whole response on stream `sid` (what an HttpStream sends down to the layer),
        or (`error`) the error response mitmproxy makes when the stream fails on the origin's side."""
        if error:
            self._feed(self.layer.handle_event(ResponseProtocolError(sid, "origin failed", ErrorCode.CONNECT_FAILED)))
            return
        resp = tutils.tresp(content=b"")
        resp.headers["content-length"] = "0"
        self._feed(self.layer.handle_event(ResponseHeaders(sid, resp, end_stream=False)))
        self._feed(self.layer.handle_event(ResponseEndOfMessage(sid)))

    def goaway(self) -> h2.events.ConnectionTerminated | None:
        return next((e for e in self.received if isinstance(e, h2.events.ConnectionTerminated)), None)


def errored(out) -> list[int]:
    return [e.stream_id for e in out if isinstance(e, RequestProtocolError)]


def opened(out) -> list[int]:
    return [e.stream_id for e in out if isinstance(e, RequestHeaders)]


@pytest.fixture
def guard():
    """install(decide) with a decide that allows `allow[0]` resets (None: any), recording the clients asked."""
    asked: list = []
    allow = [None]

    def decide(client):
        asked.append(client)
        if isinstance(allow[0], Exception):
            raise allow[0]
        return allow[0] is None or len(asked) <= allow[0]

    h2guard.install(decide)
    yield allow, asked
    h2guard.uninstall()


def test_without_the_guard_mitmproxy_drops_a_reset_read_with_its_headers():
    """Why the guard passes resets on: if this starts failing, mitmproxy fixed it upstream."""
    h2guard.uninstall()
    out = Conn().send(3)
    assert opened(out) == [1, 3, 5]
    assert errored(out) == []  # the three requests go on being served, nobody waiting for them


def test_each_reset_reaches_the_stream_it_cancels(guard):
    out = Conn().send(3)
    assert opened(out) == [1, 3, 5]
    assert errored(out) == [1, 3, 5]
    assert [e.code.name for e in out if isinstance(e, RequestProtocolError)] == ["CANCEL"] * 3


@pytest.mark.parametrize("allowed, streams, expect_opened", [
    (0, 5, [1]),  # the first counted reset is one too many
    (2, 5, [1, 3, 5]),  # the third reset closes: nothing behind it is read
    (10, 5, [1, 3, 5, 7, 9]),  # under the limit: served and cancelled one by one
])
def test_past_the_limit_the_connection_is_closed_with_enhance_your_calm(guard, allowed, streams, expect_opened):
    allow, asked = guard
    allow[0] = allowed
    conn = Conn()
    out = conn.send(streams)
    assert opened(out) == expect_opened
    assert sorted(errored(out)) == expect_opened  # every stream it took ends, none is left served
    closes = allowed < streams
    assert conn.closed is closes
    assert len(asked) == (allowed + 1 if closes else streams)
    assert all(c is conn.client for c in asked)
    if closes:
        assert conn.goaway().error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        assert list(conn.layer.handle_event(events.DataReceived(conn.client, b"\0" * 64))) == []  # reads no more
    else:
        assert conn.goaway() is None


def test_a_guard_that_fails_closes_the_connection(guard):
    allow, asked = guard
    allow[0] = RuntimeError("store down")
    conn = Conn()
    conn.send(1)
    assert conn.closed and conn.goaway().error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


@pytest.mark.parametrize("error", [False, True], ids=["answered", "failed"])
def test_a_stream_already_answered_is_not_counted(guard, error):
    """The gateway answers (or fails, with an error response) before the request's body ended; the
    client then resets the stream: not counted."""
    allow, asked = guard
    conn = Conn()
    for _ in range(2):
        conn.h2.send_headers(conn.h2.get_next_available_stream_id(), [(":method", "POST"), *HEAD[1:]])
    conn._feed(conn.layer.handle_event(events.DataReceived(conn.client, conn.h2.data_to_send())))
    conn.answer(1, error=error)
    assert any(isinstance(e, h2.events.StreamEnded) and e.stream_id == 1 for e in conn.received)
    assert errored(conn.reset(1)) == [1]  # mitmproxy passes it on as ever
    assert asked == []
    assert errored(conn.reset(3)) == [3]  # still being served: counted
    assert len(asked) == 1


def test_streams_still_served_when_the_connection_closes_all_end(guard):
    allow, _ = guard
    allow[0] = 0
    conn = Conn()
    conn.send(3, reset=False)  # three requests in flight
    out = conn.reset(1)
    assert conn.closed
    assert sorted(errored(out)) == [1, 3, 5]


@pytest.mark.parametrize("allowed", [0, 1])
def test_streams_whose_reset_was_not_read_yet_end_with_the_connection(guard, allowed):
    """All the HEADERS first, then the resets: mitmproxy has forgotten every stream (h2 closed them
    all in that read) before the guard refuses the first or second reset."""
    allow, asked = guard
    allow[0] = allowed
    conn = Conn()
    out = conn.send(3, resets_after=True)
    assert conn.closed and len(asked) == allowed + 1
    assert sorted(errored(out)) == [1, 3, 5]  # none left served with nobody waiting


def test_a_client_goaway_in_the_same_read_ends_every_stream(guard):
    """No reset at all: HEADERS then GOAWAY in one read; h2 closes the connection and its streams."""
    allow, asked = guard
    conn = Conn()
    out = conn.send(3, reset=False, then=GoAwayFrame(0, last_stream_id=0, error_code=0).serialize())
    assert opened(out) == [1, 3, 5]
    assert conn.closed and sorted(errored(out)) == [1, 3, 5]
    assert asked == []  # not a reset: not counted, just ended


def test_connections_are_counted_apart(guard):
    allow, asked = guard
    a, b = Conn(40000), Conn(40001)
    a.send(2)
    b.send(1)
    assert [c.peername[1] for c in asked] == [40000, 40000, 40001]


def test_uninstall_puts_mitmproxy_back(guard):
    allow, asked = guard
    h2guard.uninstall(lambda c: True)  # not the installed one: kept
    Conn().send(1)
    assert len(asked) == 1
    h2guard.uninstall()
    Conn().send(1)
    assert len(asked) == 1
    assert Http2Server.handle_h2_event is h2guard._ORIGINAL[0]
    assert "close_connection" not in Http2Server.__dict__  # mitmproxy's own, inherited, again


# -- small DATA frames of a request body (bodyChunks) -----------------------------------------------

def post(conn: Conn, frames: int, size: int = 1, *, end: bool = True) -> list:
    """One POST whose body is `frames` DATA frames of `size` bytes, all in one read for the layer
    (the client's flow-control window is widened first, as a hostile client would ignore it)."""
    sid = conn.h2.get_next_available_stream_id()
    conn.h2.send_headers(sid, [(":method", "POST"), *HEAD[1:]], end_stream=False)
    conn.h2.local_flow_control_window = lambda _sid: 1 << 30  # type: ignore[method-assign]
    conn.h2.max_outbound_frame_size = 1 << 14
    for _ in range(frames):
        conn.h2.send_data(sid, b"z" * size)
    if end:
        conn.h2.end_stream(sid)
    return conn._feed(conn.layer.handle_event(events.DataReceived(conn.client, conn.h2.data_to_send())))


@pytest.fixture
def chunks():
    """install() with a bodyChunks limit of `limit[0]`, recording the clients asked."""
    limit, asked = [10], []

    def body_chunks(client):
        asked.append(client)
        if isinstance(limit[0], Exception):
            raise limit[0]
        return limit[0]

    h2guard.install(lambda _c: True, body_chunks)
    yield limit, asked
    h2guard.uninstall()


@pytest.mark.parametrize("limit, frames, passed, closed", [
    (10, 5, 5, False),
    (10, 11, 11, False),  # the limit and one more pass: LimitsBody cuts the body and logs it
    (10, 12, 11, True),
    (10, 20000, 11, True),  # a flood in one read: nothing behind the frame past the limit is read
    (RuntimeError("no session store"), 3, 1, True),  # a limit that fails stops the body (fail closed)
])
def test_small_data_frames_past_body_chunks_close_the_connection(chunks, limit, frames, passed, closed):
    chunks[0][0] = limit
    conn = Conn()
    out = post(conn, frames)
    assert len([e for e in out if isinstance(e, RequestData)]) == passed
    assert conn.closed is closed
    assert [e.message for e in out if isinstance(e, RequestProtocolError)] == ([lim.BODY_CHUNKS_CLOSED] if closed else [])
    goaway = conn.goaway()
    assert (goaway is not None and goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM) is closed
    assert chunks[1] == [conn.client]  # asked once per body


def test_data_frames_of_a_kilobyte_or_more_are_not_counted(chunks):
    chunks[0][0] = 2
    conn = Conn()
    out = post(conn, 20, size=1024)
    assert len([e for e in out if isinstance(e, RequestData)]) == 20 and not conn.closed


def test_without_a_body_chunks_limit_data_frames_are_not_counted(guard):
    conn = Conn()
    out = post(conn, 5000)
    assert len([e for e in out if isinstance(e, RequestData)]) == 5000 and not conn.closed


def open_post(conn: Conn) -> int:
    sid = conn.h2.get_next_available_stream_id()
    conn.h2.send_headers(sid, [(":method", "POST"), *HEAD[1:]], end_stream=False)
    conn.h2.local_flow_control_window = lambda _sid: 1 << 30  # type: ignore[method-assign]
    conn._feed(conn.layer.handle_event(events.DataReceived(conn.client, conn.h2.data_to_send())))
    return sid


def flood(conn: Conn, sid: int, frames: int) -> list:
    for _ in range(frames):
        conn.h2.send_data(sid, b"z")
    return conn._feed(conn.layer.handle_event(events.DataReceived(conn.client, conn.h2.data_to_send())))


@pytest.mark.parametrize("error", [False, True])
def test_data_frames_after_the_response_ended_still_count(chunks, error):
    """mitmproxy parses and acknowledges DATA on a stream it answered (or failed) too; after an error
    response no stream is left to cut it (review finding: 20,000 frames went through, connection open)."""
    conn = Conn()
    sid = open_post(conn)
    conn.answer(sid, error=error)
    out = flood(conn, sid, 20000)
    assert len([e for e in out if isinstance(e, RequestData)]) <= 11 and conn.closed


def test_only_the_flooding_stream_is_refused_the_others_end_with_the_connection(chunks):
    conn = Conn()
    conn.h2.send_headers(1, HEAD, end_stream=True)  # a GET waiting for its response
    conn._feed(conn.layer.handle_event(events.DataReceived(conn.client, conn.h2.data_to_send())))
    sid = open_post(conn)
    out = flood(conn, sid, 50)
    assert sorted((e.stream_id, e.message) for e in out if isinstance(e, RequestProtocolError)) == [
        (1, h2guard.BODY_CHUNKS_OTHERS), (sid, lim.BODY_CHUNKS_CLOSED)]


def test_counts_of_streams_the_client_ended_or_reset_are_forgotten(chunks):
    conn = Conn()
    for i in range(80):  # ended streams stay open until answered: under MAX_CONCURRENT_STREAMS
        sid = open_post(conn)
        flood(conn, sid, 1)
        if i % 2:
            conn.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        else:
            conn.h2.end_stream(sid)
        conn._feed(conn.layer.handle_event(events.DataReceived(conn.client, conn.h2.data_to_send())))
    assert conn.layer.__dict__.get("_egw_chunks") == {} and not conn.closed
