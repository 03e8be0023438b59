"""Upload budgets: how many bytes a session may send one host within a sliding window.

Per (session, host) a deque of (time, bytes) within the window and its sum;
the number of tracked pairs is bounded (least recently used dropped), and so
is each deque (entries are merged into one-second buckets).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from typing import Callable

DEFAULT_PAIRS = 4096


class _Window:
    __slots__ = ("entries", "total")

    def __init__(self) -> None:
        self.entries: deque[list] = deque()  # [second, bytes]
        self.total = 0

    def expire(self, cutoff: float) -> None:
        while self.entries and self.entries[0][0] <= cutoff:
            self.total -= self.entries.popleft()[1]

    def add(self, now: float, n: int) -> None:
        second = int(now)
        if self.entries and self.entries[-1][0] == second:
            self.entries[-1][1] += n
        else:
            self.entries.append([second, n])
        self.total += n


class UploadBudgets:
    def __init__(self, max_pairs: int = DEFAULT_PAIRS, clock: Callable[[], float] = time.monotonic):
        self.max_pairs = max_pairs
        self.clock = clock
        self._windows: OrderedDict[tuple[str, str], _Window] = OrderedDict()

    def _window(self, session: str, host: str, seconds: int) -> _Window:
        key = (session, host)
        w = self._windows.get(key)
        if w is None:
            w = self._windows[key] = _Window()
            if len(self._windows) > self.max_pairs:
                self._windows.popitem(last=False)
        else:
            self._windows.move_to_end(key)
        w.expire(self.clock() - seconds)
        return w

    def used(self, session: str, host: str, seconds: int) -> int:
        return self._window(session, host, seconds).total

    def charge(self, session: str, host: str, n: int, limit: int, seconds: int) -> bool:
        """Count n bytes if they fit in the budget; False (and nothing counted) when they would exceed it."""
        w = self._window(session, host, seconds)
        if w.total + n > limit:
            return False
        if n:
            w.add(self.clock(), n)
        return True

    def forget(self, session: str) -> None:
        for key in [k for k in self._windows if k[0] == session]:
            del self._windows[key]
