"""Per-session limits: token buckets, counters and bounded per-session state.

Pure Python, no mitmproxy: the addons (HTTP, TLS, DNS) ask one `Limiter`
whether a session may do one more thing. Each session has its own buckets and
counters, so one session exhausting its limits never slows another. State for
at most `max_sessions` sessions is kept (least recently used forgotten first:
a forgotten session starts again with full buckets, never with more than its
policy allows at once).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

# The things a session can be refused for, as `limit-<name>` reasons.
CONNECTIONS = "connections"
REQUESTS = "requests"
HEADER_COUNT = "header-count"
HEADER_BYTES = "header-bytes"
URL = "url"
BODY = "body"
BODY_CHUNKS = "body-chunks"
SMALL_CHUNK = 1024  # a body's pieces below this size count against `bodyChunks` (each costs the event loop)
# the error of a request whose body a guard stopped (gateway/h1guard.py, gateway/h2guard.py)
BODY_CHUNKS_CLOSED = "request body in more small chunks than bodyChunks allows: connection closed"
RESPONSE_HEADER_BYTES = "response-header-bytes"
# the error of a response whose head gateway/h1guard.py stopped reading (an HTTP/1 origin's head that grew
# past what `headerBytes` allows before it was even complete)
RESPONSE_HEAD_CLOSED = "response head from the origin larger than headerBytes allows: connection closed"
WEBSOCKET_MESSAGE = "websocket-message"
DNS = "dns"
TLS = "tls"
STREAM_RESETS = "stream-resets"
NAMES = (CONNECTIONS, REQUESTS, HEADER_COUNT, HEADER_BYTES, URL, BODY, BODY_CHUNKS, RESPONSE_HEADER_BYTES,
         WEBSOCKET_MESSAGE, DNS, TLS, STREAM_RESETS)


_CLOSED_MARK = "_egw_body_chunks_closed"


def mark_body_chunks_closed(client) -> None:
    """A guard closed this client connection for `bodyChunks`. The refused request's flow may end with
    another error first (the close also cancels its upstream dial if that is still under way)."""
    setattr(client, _CLOSED_MARK, True)


def body_chunks_closed(client) -> bool:
    return bool(getattr(client, _CLOSED_MARK, False))


def reason(name: str) -> str:
    """The flow-log reason (and metric label) for exceeding limit `name`."""
    return f"limit-{name}"


class TokenBucket:
    """`rate` tokens per second, holding at most `burst`; starts full."""

    __slots__ = ("rate", "burst", "tokens", "stamp", "clock")

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.clock = float(rate), float(burst), clock
        self.tokens = float(burst)
        self.stamp = clock()

    def take(self, n: float = 1.0) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False


@dataclass
class _SessionState:
    connections: int = 0
    buckets: dict[str, TokenBucket] = field(default_factory=dict)


class Limiter:
    """Per-session limit bookkeeping. `limits_of(session_id)` is read on each call (a policy
    change applies to the next request); callers pass the session's `Limits`."""

    def __init__(self, max_sessions: int = 65536, clock: Callable[[], float] = time.monotonic):
        self.max_sessions = max_sessions
        self.clock = clock
        self._states: OrderedDict[str, _SessionState] = OrderedDict()

    def _state(self, session_id: str) -> _SessionState:
        state = self._states.get(session_id)
        if state is None:
            state = self._states[session_id] = _SessionState()
            while len(self._states) > self.max_sessions:
                self._evict()
        else:
            self._states.move_to_end(session_id)
        return state

    def _evict(self) -> None:
        # Never forget a session with open connections (its count must stay right): skip those.
        for sid, state in self._states.items():
            if state.connections == 0:
                del self._states[sid]
                return
        self._states.popitem(last=False)

    def forget(self, session_id: str) -> None:
        self._states.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._states)

    # -- rates ----------------------------------------------------------------------------------
    def rate(self, session_id: str, name: str, per_second: float, burst: float | None = None) -> bool:
        """One more event `name` (requests, dns, tls) at `per_second` with `burst` (2x rate by default)."""
        burst = max(1.0, float(per_second) * 2) if burst is None else float(burst)
        state = self._state(session_id)
        bucket = state.buckets.get(name)
        if bucket is None or bucket.rate != per_second or bucket.burst != burst:
            bucket = state.buckets[name] = TokenBucket(per_second, burst, self.clock)
        return bucket.take()

    # -- concurrency ----------------------------------------------------------------------------
    def open(self, session_id: str, limit: int) -> bool:
        """A new connection; False (and nothing counted) when `limit` are open already."""
        state = self._state(session_id)
        if state.connections >= limit:
            return False
        state.connections += 1
        return True

    def close(self, session_id: str) -> None:
        state = self._states.get(session_id)
        if state is not None and state.connections > 0:
            state.connections -= 1

    def open_connections(self, session_id: str) -> int:
        state = self._states.get(session_id)
        return state.connections if state else 0


def over_size(limits, *, header_count: int | None = None, header_bytes: int | None = None,
              url_bytes: int | None = None, body_bytes: int | None = None) -> str | None:
    """The first size limit a request's head exceeds (its name), or None."""
    if header_count is not None and header_count > limits.header_count:
        return HEADER_COUNT
    if header_bytes is not None and header_bytes > limits.header_bytes:
        return HEADER_BYTES
    if url_bytes is not None and url_bytes > limits.url_bytes:
        return URL
    if body_bytes is not None and body_bytes > limits.body_bytes:
        return BODY
    return None
