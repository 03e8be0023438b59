"""HTTP/1 chunk flood: a chunked request body is parsed no further than the session's `bodyChunks`.

Every chunk of a chunked body becomes an event that mitmproxy's layers pass on one by one; one
64 KB read of `1\\r\\nz\\r\\n` is ~11,000 of them. While the request waits on a hook (policy,
detection, the session's detector still compiling), mitmproxy goes on reading the socket, parses
each chunk and queues its event on the paused stream, and once the hook returns it works through
the whole queue in one go. `LimitsBody` cut such a body at 4,097 small chunks, but only when the
queue reached it: measured with a million 1-byte chunks, ~340,000 more chunks were parsed and
handed on after the cut (0.8 s on the one event loop, +67 MB), the attacker's socket stayed open
until its own timeout, and another session's request waited up to 3.5 s.

`install(limit)` wraps mitmproxy's `Http1Server.read_body`: for a chunked request body it counts the
pieces under `SMALL_CHUNK` bytes, and past `limit(client) + 1` (one more than `LimitsBody` needs to
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
from mitmproxy.proxy.layers.http._events import ErrorCode, RequestData, RequestProtocolError
from mitmproxy.proxy.layers.http._http1 import Http1Server

from gateway.limits import BODY_CHUNKS_CLOSED, SMALL_CHUNK

Limit = Callable[[object], int]  # the client connection -> small chunks one request body may have

MESSAGE = BODY_CHUNKS_CLOSED

_ORIGINAL = Http1Server.read_body  # Http1Connection's: Http1Server has none of its own
_limit: Limit | None = None


def _allowed(client) -> int:
    try:
        return int(_limit(client)) if _limit is not None else -1
    except Exception:  # noqa: BLE001 - fail closed: a guard that cannot decide stops the body
        return 0


def read_body(self: Http1Server, event: events.Event):
    """mitmproxy's `read_body`, counting the small chunks of a chunked request body."""
    if _limit is None or not isinstance(self.body_reader, ChunkedReader) or not isinstance(event, events.DataReceived):
        return (yield from _ORIGINAL(self, event))
    counted = self.__dict__.get("_egw_chunks")
    if counted is None or counted[0] != self.stream_id:
        counted = self.__dict__["_egw_chunks"] = [self.stream_id, 0, _allowed(self.context.client)]
    for cmd in _ORIGINAL(self, event):
        if isinstance(cmd, ReceiveHttp) and isinstance(cmd.event, RequestData) and len(cmd.event.data) < SMALL_CHUNK:
            counted[1] += 1
            if counted[2] >= 0 and counted[1] > counted[2] + 1:
                yield from _stop(self)
                return
        yield cmd


def _stop(self: Http1Server):
    self.buf.maybe_extract_at_most(len(self.buf))  # what is buffered is dropped unparsed
    self.state = _dropped.__get__(self)
    yield commands.CloseConnection(self.conn)
    yield ReceiveHttp(RequestProtocolError(self.stream_id, MESSAGE, code=ErrorCode.REQUEST_TOO_LARGE))
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
