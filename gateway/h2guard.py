"""HTTP/2 rapid reset (CVE-2023-44487): a connection that cancels too much is closed at the frame.

A stream the sandbox opens and resets at once is over for h2, which frees its slot among
`MAX_CONCURRENT_STREAMS` (100), but not for the gateway: every HEADERS frame becomes a flow, a
stream layer and a task per hook. Worse, mitmproxy 12.2 drops the reset when h2 read it together
with its HEADERS (h2 has closed the stream by the time mitmproxy sees the request's end, so
mitmproxy forgets the stream and ignores the reset): the request is decided, logged and would be
forwarded with nobody waiting. One connection sending 20,000 HEADERS+RST_STREAM pairs in half a
second left ~16,000 flows queued (+50-80 MB) and the one event loop busy for ~30 s, stalling
every other session; the per-session request rate refused most of them, but only once they existed.

`install(decide)` wraps three methods of mitmproxy's `Http2Server`:
- each RST_STREAM from the client for a stream the gateway still serves (its request taken, its
  response not ended) asks `decide(client)` (the limits addon: `spec.limits.streamResetsPerSecond`)
  whether one more is allowed. When not, or when `decide` fails, the connection is closed with
  GOAWAY `ENHANCE_YOUR_CALM` before any frame behind that reset is handled. So the gateway holds at
  most a burst of such flows, not what was sent.
- an allowed reset always reaches its stream, which stops there (mitmproxy's own path for a reset).
- however the connection closes (that GOAWAY, the client's GOAWAY or close, a protocol error),
  every stream still served ends with it; mitmproxy alone ends only those it still tracks.
A reset of a stream already answered, or never handed to the gateway, is not counted.

`install(decide, body_chunks)` also counts the DATA frames under `SMALL_CHUNK` bytes of each
stream's request body, answered or not (mitmproxy parses and acknowledges them all): one past
`body_chunks(client)` (the session's `bodyChunks`), or when it fails, that stream's request ends
with `BODY_CHUNKS_CLOSED` (logged as `limit-body-chunks`) and the connection is closed the same
way; its other streams end with `BODY_CHUNKS_OTHERS`, an error of their own allowed request. mitmproxy acknowledges every DATA frame at
once, so flow control never slowed such a flood: a million one-byte frames on one stream kept the
attacker's connection open until its own timeout and another session waiting up to 1.6 s
(tests/adversarial/test_resources.py). The HTTP/1 twin is `gateway/h1guard.py`.
"""

from __future__ import annotations

from typing import Callable

import h2.errors
import h2.events
from mitmproxy.proxy.layers.http import ReceiveHttp
from mitmproxy.proxy.layers.http._events import ErrorCode, ResponseEndOfMessage, ResponseProtocolError
from mitmproxy.proxy.layers.http._http2 import Http2Server, StreamState

from gateway.limits import BODY_CHUNKS_CLOSED, SMALL_CHUNK, mark_body_chunks_closed

Decide = Callable[[object], bool]  # the client connection -> may it reset one more stream?
Limit = Callable[[object], int]  # the client connection -> small pieces one request body may have

# what the connection's other streams end with when one request's body is refused for its DATA frames
BODY_CHUNKS_OTHERS = "HTTP/2 connection closed: another request on it sent its body in more small DATA frames than bodyChunks allows"
MESSAGE = "HTTP/2 rapid reset: streams cancelled while the gateway served them, past streamResetsPerSecond"

_ORIGINAL = Http2Server.__dict__["handle_h2_event"], Http2Server.__dict__["_handle_event"]
_CLOSE = Http2Server.close_connection  # Http2Connection's: Http2Server has none of its own
_decide: Decide | None = None
_body_chunks: Limit | None = None


def _allowed(client) -> bool:
    try:
        return _decide is None or bool(_decide(client))
    except Exception:  # noqa: BLE001 - fail closed: a guard that cannot decide closes the connection
        return False


def _chunks_left(layer: Http2Server, stream_id: int) -> int:
    """One small DATA frame more on `stream_id`: how many more its body may have (< 0: past the limit)."""
    counts = layer.__dict__.setdefault("_egw_chunks", {})
    left = counts.get(stream_id)
    if left is None:
        try:
            left = int(_body_chunks(layer.context.client)) + 1 if _body_chunks is not None else 1 << 62
        except Exception:  # noqa: BLE001 - fail closed: a guard that cannot decide stops the body (limit 0)
            left = 1
    counts[stream_id] = left - 1
    return left - 1


def _served(layer: Http2Server) -> set[int]:
    """Streams of this connection whose request the gateway took and has not finished answering."""
    served = layer.__dict__.get("_egw_served")
    if served is None:
        served = layer.__dict__["_egw_served"] = set()
    return served


def _close_socket(client) -> None:
    from gateway.addons.refuse import close_client_socket  # mitmproxy's handler of this connection

    close_client_socket(client)


def handle_h2_event(self: Http2Server, event: h2.events.Event):
    """mitmproxy's `handle_h2_event`, counting the resets of streams still being served."""
    if isinstance(event, h2.events.RequestReceived):
        _served(self).add(event.stream_id)
    elif (isinstance(event, h2.events.DataReceived) and len(event.data) < SMALL_CHUNK
          and not (event.stream_ended and not event.data) and _chunks_left(self, event.stream_id) < 0):
        # every stream's DATA counts, answered or not: mitmproxy parses and acknowledges them all.
        # This stream's request is the refusal; the others only end with the connection.
        sid = event.stream_id
        mark_body_chunks_closed(self.context.client)
        _served(self).discard(sid)
        self.streams.pop(sid, None)
        yield ReceiveHttp(self.ReceiveProtocolError(sid, BODY_CHUNKS_CLOSED, ErrorCode.REQUEST_TOO_LARGE))
        yield from self.protocol_error(BODY_CHUNKS_OTHERS, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        _close_socket(self.context.client)
        return True
    elif isinstance(event, h2.events.StreamReset) and event.stream_id in _served(self):
        if not _allowed(self.context.client):
            yield from self.protocol_error(MESSAGE, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)  # close_connection below
            _close_socket(self.context.client)
            return True  # mitmproxy's contract: read no further event of this connection
        _served(self).discard(event.stream_id)
        # When h2 read the HEADERS and the RST_STREAM in one go, the stream is closed by the time
        # mitmproxy sees its StreamEnded, which forgets it; the reset was then dropped and the gateway
        # served a request nobody waits for. Make mitmproxy pass the reset on to the stream.
        self.streams.setdefault(event.stream_id, StreamState.HEADERS_RECEIVED)
    if isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
        self.__dict__.get("_egw_chunks", {}).pop(event.stream_id, None)  # its body is over
    return (yield from _ORIGINAL[0](self, event))


def _handle_event(self: Http2Server, event):
    """mitmproxy's `_handle_event`; a response ended (or failed) is no longer being served."""
    if isinstance(event, (ResponseEndOfMessage, ResponseProtocolError)):
        _served(self).discard(event.stream_id)
    return (yield from _ORIGINAL[1](self, event))


def close_connection(self: Http2Server, msg: str):
    """mitmproxy's `close_connection` ends the streams it still tracks; every stream still served ends.

    mitmproxy forgets a stream that h2 had closed when mitmproxy saw the request's end: with a reset,
    or with the client's GOAWAY, in the same read. Closing would leave those flows running."""
    for stream_id in _served(self):
        self.streams.setdefault(stream_id, StreamState.HEADERS_RECEIVED)
    _served(self).clear()
    return (yield from _CLOSE(self, msg))


def install(decide: Decide, body_chunks: Limit | None = None) -> None:
    """Guard every HTTP/2 client connection of this process; `decide` is asked per counted reset,
    `body_chunks` once per request body with small DATA frames."""
    global _decide, _body_chunks
    _decide, _body_chunks = decide, body_chunks
    Http2Server.handle_h2_event = handle_h2_event  # type: ignore[method-assign]
    Http2Server._handle_event = _handle_event  # type: ignore[method-assign]
    Http2Server.close_connection = close_connection  # type: ignore[method-assign]


def uninstall(decide: Decide | None = None) -> None:
    """Put mitmproxy's methods back (only if `decide`, when given, is the one installed)."""
    global _decide, _body_chunks
    if decide is not None and _decide != decide:
        return
    _decide = _body_chunks = None
    Http2Server.handle_h2_event, Http2Server._handle_event = _ORIGINAL  # type: ignore[method-assign]
    if "close_connection" in Http2Server.__dict__:
        del Http2Server.close_connection
