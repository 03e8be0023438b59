"""HTTP/1 chunk flood: a chunked request body is parsed no further than the session's `bodyChunks`.

Every chunk of a chunked body becomes an event that mitmproxy's layers pass on one by one; one
64 KB read of `1\\r\\nz\\r\\n` is ~11,000 of them. While the request waits on a hook (policy,
detection, the session's detector still compiling), mitmproxy goes on reading the socket, parses
each chunk and queues its event on the paused stream, and once the hook returns it works through
the whole queue in one go. `LimitsBody` cut such a body at 4,097 small chunks, but only when the
queue reached it: measured with a million 1-byte chunks, ~340,000 more chunks were parsed and
handed on after the cut (0.8 s on the one event loop, +67 MB), the attacker's socket stayed open
until its own timeout, and another session's request waited up to 3.5 s.

`install(limit)` wraps mitmproxy's `Http1Server.read_body`: for each chunked request body it counts
the pieces under `SMALL_CHUNK` bytes (per request: one read can end a body and hold a pipelined
request's), and past `limit(client) + 1` (one more than `LimitsBody` needs to
see to cut the body and log `limit-body-chunks`), or when `limit` fails, it stops parsing, ends
the request with a protocol error and closes the sandbox's connection; what is still buffered or
arrives later is dropped unparsed. So the gateway queues at most `bodyChunks` + 1 small pieces per
request, not what was sent. Bodies of a known length are not counted here: each of their pieces
costs the sandbox a read of its own.

The origin's side has the twin of that flood: mitmproxy buffers an HTTP/1 response head until it is
complete, with no bound ("FIXME: protect against header size DoS" in its `Http1Client.read_headers`),
then parses it in one go on the event loop: measured sans-IO, a 16 MB head was held whole and took
552 ms of CPU to parse (1 MB: 28 ms), before `responseheaders` could refuse it. `install(...,
head_limit)` also wraps `Http1Client.read_headers`: once the buffered, still incomplete head is larger
than `head_limit(client)` bytes, it is dropped unparsed, the origin's connection closed and the
request ends with `RESPONSE_HEAD_CLOSED` (a 502 to the sandbox; the limits addon logs it as
`limit-response-header-bytes`).
"""

from __future__ import annotations

from typing import Callable

from h11._readers import ChunkedReader
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers.http._base import ReceiveHttp
from mitmproxy.proxy.layers.http._events import (ErrorCode, RequestData, RequestEndOfMessage, RequestProtocolError,
                                                  ResponseProtocolError)
from mitmproxy.proxy.layers.http._http1 import Http1Client, Http1Server

from gateway.limits import BODY_CHUNKS_CLOSED, RESPONSE_HEAD_CLOSED, SMALL_CHUNK, mark_body_chunks_closed

Limit = Callable[[object], int]  # the client connection -> small chunks one request body may have

MESSAGE = BODY_CHUNKS_CLOSED

_ORIGINAL = Http1Server.read_body  # Http1Connection's: Http1Server has none of its own
_ORIGINAL_HEAD = Http1Client.read_headers
_limit: Limit | None = None
_head_limit: Limit | None = None  # the client connection -> bytes an incomplete response head may hold


def _allowed(client, limit: Limit | None = None) -> int:
    try:
        return int((limit or _limit)(client))  # type: ignore[misc]  (asked only while installed)
    except Exception:  # noqa: BLE001 - fail closed: a guard that cannot decide stops the message
        return 0


def read_body(self: Http1Server, event: events.Event):
    """mitmproxy's `read_body`, counting the small chunks of each chunked request body it parses.

    Counted per request: one call can finish a body and go on to a pipelined request's, whose
    `read_body` then runs inside this one (and passes its chunks through here: not counted twice)."""
    if _limit is None or not isinstance(event, events.DataReceived) or self.__dict__.get("_egw_reading"):
        return (yield from _ORIGINAL(self, event))
    counts = self.__dict__.setdefault("_egw_chunks", {})  # stream id -> [small chunks, limit or None]
    self.__dict__["_egw_reading"] = True
    try:
        yield from _counted(self, _ORIGINAL(self, event), counts)
    finally:
        self.__dict__["_egw_reading"] = False


def _counted(self: Http1Server, cmds, counts: dict):
    for cmd in cmds:
        if isinstance(cmd, ReceiveHttp):
            ev = cmd.event
            if isinstance(ev, RequestData) and len(ev.data) < SMALL_CHUNK:
                counted = counts.get(ev.stream_id)
                if counted is None:  # the body being parsed now is this stream's: is it chunked?
                    chunked = isinstance(self.body_reader, ChunkedReader)
                    counted = counts[ev.stream_id] = [0, _allowed(self.context.client) if chunked else None]
                counted[0] += 1
                if counted[1] is not None and counted[0] > counted[1] + 1:
                    yield from _stop(self, ev.stream_id)
                    return
            elif isinstance(ev, (RequestEndOfMessage, RequestProtocolError)):
                counts.pop(ev.stream_id, None)
        yield cmd


def _stop(self: Http1Server, stream_id: int):
    mark_body_chunks_closed(self.context.client)
    yield from _close(self, RequestProtocolError(stream_id, MESSAGE, code=ErrorCode.REQUEST_TOO_LARGE))


def _close(self: Http1Server | Http1Client, error: RequestProtocolError | ResponseProtocolError):
    """Stop a connection a guard refused: what is buffered is dropped unparsed, nothing more is read,
    the request ends with `error`, and the socket itself is closed (mitmproxy's close only stops
    its reader: a sandbox, or a TLS origin, kept being read to its end)."""
    self.buf.maybe_extract_at_most(len(self.buf))
    self.state = _dropped.__get__(self)
    yield commands.CloseConnection(self.conn)
    yield ReceiveHttp(error)
    from gateway.addons.refuse import close_client_socket  # mitmproxy's handler of this connection

    close_client_socket(self.context.client, self.conn)


def _dropped(self: Http1Server | Http1Client, event: events.Event):
    """The state of a connection a guard stopped: nothing more is parsed or buffered."""
    self.buf.maybe_extract_at_most(len(self.buf))
    yield from ()


def read_headers(self: Http1Client, event: events.Event):
    """mitmproxy's `read_headers` of an origin's response, stopped once the incomplete head it holds
    is larger than `head_limit` allows."""
    if _head_limit is None or not isinstance(event, events.DataReceived):
        return (yield from _ORIGINAL_HEAD(self, event))
    # h11 takes one leading blank line per call and then says "no head yet": a whole head may wait
    # behind a few of them, so look again while a call made progress
    for ev in (event, *[events.DataReceived(self.conn, b"")] * 3):
        before = len(self.buf)
        closed = False
        for cmd in _ORIGINAL_HEAD(self, ev):
            closed = closed or isinstance(cmd, commands.CloseConnection)  # mitmproxy refused it itself
            yield cmd
        if closed or self.request is None or self.response is not None or self.stream_id is None:
            return
        if len(self.buf) == before:
            break
    if len(self.buf) > _allowed(self.context.client, _head_limit):
        yield from _close(self, ResponseProtocolError(self.stream_id, RESPONSE_HEAD_CLOSED, ErrorCode.GENERIC_SERVER_ERROR))


def install(limit: Limit, head_limit: Limit | None = None) -> None:
    """Guard every HTTP/1 connection of this process: `limit` is asked once per chunked request body,
    `head_limit` (if given) on each read of an origin's response head that is not complete yet."""
    global _limit, _head_limit
    _limit = limit
    _head_limit = head_limit
    Http1Server.read_body = read_body  # type: ignore[method-assign]
    Http1Client.read_headers = read_headers if head_limit is not None else _ORIGINAL_HEAD  # type: ignore[method-assign]


def uninstall(limit: Limit | None = None) -> None:
    """Put mitmproxy's methods back (only if `limit`, when given, is the one installed)."""
    global _limit, _head_limit
    if limit is not None and _limit != limit:
        return
    _limit = _head_limit = None
    if "read_body" in Http1Server.__dict__:
        del Http1Server.read_body
    Http1Client.read_headers = _ORIGINAL_HEAD  # type: ignore[method-assign]
