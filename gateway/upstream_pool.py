"""Idle upstream connections kept for the next client connection of the same session.

A sandbox that opens a new TCP connection per request (curl in a loop, Python's urllib, SDKs without a
shared client) makes the gateway dial the origin and shake hands with it again every time. When a
client connection ends while its HTTP/1.1 connection to the origin is idle, the gateway keeps that
socket (and its established TLS state) here until `idle_seconds` after its last use upstream; the next
client connection that needs exactly the same upstream (`Key`) adopts it instead of dialling
(gateway/addons/upstreamreuse.py).

A key never spans sessions, policy revisions, addresses, authorities or credentials: the session id
and revision (every write to a session changes it), the vetted address that was dialled, TLS or not,
the host name the requests were allowed for (with TLS, the server name sent), and the names of the
credentials the gateway substituted into requests on that connection. An entry that shows any sign
of life while idle (a byte, EOF, an error, buffered TLS data) is not handed out; expired entries are
closed, and so are a session's entries when it is deleted or its policy replaced. Bounded per key, per session and in total: the oldest idle connection
is closed to make room.

Nothing here imports mitmproxy: the pool holds asyncio streams and an opaque TLS object.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field

# Counted from the connection's last use upstream. Gunicorn closes idle keep-alive connections after
# 2 s, Node and Apache after 5 s: a connection idle for longer than an origin's timeout could be closed
# by the origin just as it is reused, and that request would fail (mitmproxy does not retry).
DEFAULT_IDLE_SECONDS = 1.5
PER_KEY = 8
PER_SESSION = 32
TOTAL = 512
# kept: put in the pool; reused: handed to a new client connection and used; expired: closed at its
# time; stale: found closed, noisy or past its time when wanted; evicted: closed for room; flushed:
# closed because its session was deleted or changed (or the gateway stopped)
EVENTS = ("kept", "reused", "expired", "stale", "evicted", "flushed")


@dataclass(frozen=True)
class Key:
    session: str
    rev: str
    address: tuple[str, int]  # the vetted address that was dialled
    tls: bool
    host: str  # the name the requests on it were allowed for (with TLS: the server name sent)
    credentials: frozenset[str] = frozenset()  # names of the secrets substituted on the connection


@dataclass(eq=False)
class Idle:
    key: Key
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    tls: object | None = None  # the established OpenSSL connection (pyOpenSSL SSL.Connection)
    since: float = field(default_factory=time.monotonic)  # its last use upstream (time.monotonic)
    limit: float | None = None  # its own idle limit (the origin's keep-alive timeout), if below the pool's
    adopted: bool = False  # set when a dial was answered with it
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    def quiet(self) -> bool:
        """Nothing arrived, nothing failed, nothing is buffered: the connection is where we left it."""
        reader = self.reader
        if self.writer.is_closing() or reader.at_eof() or reader.exception() is not None:
            return False
        if getattr(reader, "_buffer", b""):  # CPython's StreamReader: bytes received but not read
            return False
        if self.tls is not None:
            try:
                if self.tls.pending() or self.tls.get_shutdown():
                    return False
            except Exception:  # noqa: BLE001 - a TLS object in any odd state is not reusable
                return False
        return True

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        transport = self.writer.transport
        if not transport.is_closing():
            transport.abort()  # an idle connection: nothing to flush, no FIN handshake to wait for


class IdlePool:
    """Idle connections by `Key`, newest first, each closed `idle_seconds` after its last use upstream."""

    def __init__(self, idle_seconds: float = DEFAULT_IDLE_SECONDS, per_key: int = PER_KEY,
                 per_session: int = PER_SESSION, total: int = TOTAL, notify=None):
        """`notify(event)`: called with each event counted in `counts` (metrics)."""
        if idle_seconds < 0 or per_key < 1 or per_session < 1 or total < 1:
            raise ValueError("idle_seconds >= 0; per_key, per_session and total >= 1")
        self.notify = notify
        self.idle_seconds = idle_seconds
        self.per_key = per_key
        self.per_session = per_session
        self.total = total
        self._by_key: dict[Key, list[Idle]] = {}
        self._by_session: dict[str, OrderedDict[int, Idle]] = {}  # each oldest first
        self._all: OrderedDict[int, Idle] = OrderedDict()  # oldest first
        self.counts = dict.fromkeys(EVENTS, 0)

    @property
    def enabled(self) -> bool:
        return self.idle_seconds > 0

    def __len__(self) -> int:
        return len(self._all)

    def put(self, entry: Idle) -> bool:
        """Keep `entry` until `idle_seconds` after `entry.since` (its last use), or close it now (False) when
        the pool is off, that time has passed or it is not quiet. Room is made by closing the oldest: of
        the same key, of the same session, then of all."""
        left = self._limit(entry) - (time.monotonic() - entry.since)
        if not self.enabled or left <= 0 or not entry.quiet():
            entry.close()
            return False
        bucket = self._by_key.get(entry.key, ())
        if len(bucket) >= self.per_key:
            self._drop(bucket[0], "evicted")
        mine = self._by_session.get(entry.key.session, {})
        if len(mine) >= self.per_session:
            self._drop(next(iter(mine.values())), "evicted")
        while len(self._all) >= self.total:
            self._drop(next(iter(self._all.values())), "evicted")
        self._by_key.setdefault(entry.key, []).append(entry)
        self._by_session.setdefault(entry.key.session, OrderedDict())[id(entry)] = entry
        self._all[id(entry)] = entry
        entry.timer = asyncio.get_running_loop().call_later(left, self._drop, entry, "expired")
        self.count("kept")
        return True

    def take(self, key: Key) -> Idle | None:
        """The newest quiet connection for exactly `key`, out of the pool; stale ones met on the way are closed.
        The caller counts "reused" once the connection is really used."""
        bucket = self._by_key.get(key)
        while bucket:
            entry = bucket[-1]
            self._remove(entry)
            if time.monotonic() - entry.since < self._limit(entry) and entry.quiet():
                return entry
            entry.close()
            self.count("stale")
            bucket = self._by_key.get(key)
        return None

    def flush(self, session: str) -> None:
        """Close every idle connection of `session` (deleted, or its policy replaced)."""
        for entry in list(self._by_session.get(session, {}).values()):
            self._drop(entry, "flushed")

    def clear(self) -> None:
        for entry in list(self._all.values()):
            self._drop(entry, "flushed")

    def _limit(self, entry: Idle) -> float:
        return self.idle_seconds if entry.limit is None else min(self.idle_seconds, entry.limit)

    def count(self, event: str) -> None:
        self.counts[event] += 1
        if self.notify is not None:
            self.notify(event)

    def _drop(self, entry: Idle, why: str) -> None:
        if id(entry) in self._all:
            self._remove(entry)
            entry.close()
            self.count(why)

    def _remove(self, entry: Idle) -> None:
        self._all.pop(id(entry), None)
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        bucket = self._by_key.get(entry.key)
        if bucket is not None:
            bucket.remove(entry)
            if not bucket:
                del self._by_key[entry.key]
        mine = self._by_session.get(entry.key.session)
        if mine is not None:
            mine.pop(id(entry), None)
            if not mine:
                del self._by_session[entry.key.session]
