"""Values split over several requests: a bounded tail per (session, host, channel).

A sandbox can send a secret a few bytes at a time: `?d=c2stcH`, `?d=JvaiOx`, ...
Each request alone holds nothing. For every (session, host) the tracker keeps,
per channel (a query parameter, a header, a path segment, the body, WebSocket
messages), the last few KiB the sandbox sent there within the window. A new
fragment is scanned together with its channel's tail, so a value that only
exists once the fragments are joined is found.

Memory is bounded three ways: bytes per channel (`tail_bytes`), channels per
pair (`max_channels`, least recently used dropped) and pairs (`max_pairs`, LRU).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Callable

DEFAULT_TAIL = 2048
DEFAULT_CHANNELS = 16
DEFAULT_PAIRS = 512


class _Channel:
    """The tail of one channel: its bytes, and when each piece of them arrived (for the window)."""

    __slots__ = ("buf", "times", "last")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.times: deque[tuple[float, int]] = deque()  # (arrival, length), oldest first
        self.last = b""

    @property
    def size(self) -> int:
        return len(self.buf)

    def expire(self, cutoff: float) -> None:
        drop = 0
        while self.times and self.times[0][0] < cutoff:
            drop += self.times.popleft()[1]
        if drop:
            del self.buf[:drop]

    def tail(self) -> bytes:
        return bytes(self.buf)

    def append(self, now: float, data: bytes, limit: int) -> None:
        self.last = data
        self.buf += data
        self.times.append((now, len(data)))
        cut = len(self.buf) - limit
        if cut > 0:
            del self.buf[:cut]
            while cut > 0:
                t, n = self.times[0]
                if n <= cut:
                    self.times.popleft()
                    cut -= n
                else:
                    self.times[0] = (t, n - cut)
                    cut = 0


@dataclass(frozen=True)
class Joined:
    """What to scan for one fragment: its channel's tail followed by the head of the fragment."""

    channel: str
    data: bytes
    tail_len: int  # data[:tail_len] came from earlier requests


class SplitTracker:
    def __init__(self, tail_bytes: int = DEFAULT_TAIL, max_channels: int = DEFAULT_CHANNELS,
                 max_pairs: int = DEFAULT_PAIRS, clock: Callable[[], float] = time.monotonic):
        self.tail_bytes = tail_bytes
        self.max_channels = max_channels
        self.max_pairs = max_pairs
        self.clock = clock
        self._pairs: OrderedDict[tuple[str, str], OrderedDict[str, _Channel]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pairs)

    def feed(self, session: str, host: str, fragments: list[tuple[str, bytes]], window: float,
             reach: int) -> list[Joined]:
        """Record fragments; return, for those whose channel has a tail, tail + the fragment's first `reach` bytes.

        `reach` is the longest encoded form of any known value: a match that starts in the tail
        cannot end further into the fragment than that."""
        if window <= 0 or not fragments:
            return []
        now = self.clock()
        key = (session, host)
        channels = self._pairs.get(key)
        if channels is None:
            channels = self._pairs[key] = OrderedDict()
            if len(self._pairs) > self.max_pairs:
                self._pairs.popitem(last=False)
        else:
            self._pairs.move_to_end(key)
        limit = max(1, min(self.tail_bytes, reach))
        out = []
        for name, data in fragments:
            if not data:
                continue
            channel = channels.get(name)
            if channel is None:
                channel = channels[name] = _Channel()
                if len(channels) > self.max_channels:
                    channels.popitem(last=False)
            else:
                channels.move_to_end(name)
                channel.expire(now - window)
                if data == channel.last:  # the same value again (a token, a fixed path): nothing new to join
                    continue
                tail = channel.tail()
                if tail:
                    out.append(Joined(name, tail + data[:reach], len(tail)))
            channel.append(now, data, limit)
        return out

    def forget(self, session: str) -> None:
        for key in [k for k in self._pairs if k[0] == session]:
            del self._pairs[key]
