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
"""

from __future__ import annotations

from typing import Callable

from h11._readers import ChunkedReader
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers.http._base import ReceiveHttp
from mitmproxy.proxy.layers.http._events import ErrorCode, RequestData, RequestEndOfMessage, RequestProtocolError
from mitmproxy.proxy.layers.http._http1 import Http1Server

from gateway.limits import BODY_CHUNKS_CLOSED, SMALL_CHUNK, mark_body_chunks_closed

Limit = Callable[[object], int]  # the client connection -> small chunks one request body may have

MESSAGE = BODY_CHUNKS_CLOSED

_ORIGINAL = Http1Server.read_body  # Http1Connection's: Http1Server has none of its own
_limit: Limit | None = None


def _allowed(client) -> int:
    try:
        return int(_limit(client))  # type: ignore[misc]  (read_body asks only while installed)
    except Exception:  # noqa: BLE001 - fail closed: a guard that cannot decide stops the body
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
    self.buf.maybe_extract_at_most(len(self.buf))  # what is buffered is dropped unparsed
    self.state = _dropped.__get__(self)
    yield commands.CloseConnection(self.conn)
    yield ReceiveHttp(RequestProtocolError(stream_id, MESSAGE, code=ErrorCode.REQUEST_TOO_LARGE))
    from gateway.addons.refuse import close_client_socket  # mitmproxy's handler of this connection

    close_client_socket(self.context.client)


def _dropped(self: Http1Server, event: events.Event):
    """The state of a connection the guard stopped: nothing more is parsed or buffered."""
    self.buf.maybe_extract_at_most(len(self.buf))
    yield from ()


def install(limit: Limit) -> None:
    """Guard every HTTP/1 client connection of this process; `limit` is asked once per request body."""
    global _limit
    _limit = limit
    Http1Server.read_body = read_body  # type: ignore[method-assign]


def uninstall(limit: Limit | None = None) -> None:
    """Put mitmproxy's method back (only if `limit`, when given, is the one installed)."""
    global _limit
    if limit is not None and _limit != limit:
        return
    _limit = None
    if "read_body" in Http1Server.__dict__:
        del Http1Server.read_body
