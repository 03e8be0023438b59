"""Each session's compiled detectors: built off the event loop, ahead of its first packet.

A session's detector is the engine compiled with its policy's rules and its
known values (`known.py`); the values-only detector finds those values in
joined fragments and in DNS query names. Compiling a value set takes 10-40 ms
for a few values and seconds for a thousand, so it never runs on the event
loop: it runs in one compile thread (hyperscan releases the GIL while
compiling; one thread: the engine's caches are not shared between threads).

`prepare(session)` starts the compile when a session is created (or its policy,
canaries or secret values change), so the session's first request and first
DNS query find it done instead of waiting for it. A request that comes before
the compile ends waits for it (other sessions' traffic goes on); after
COMPILE_WAIT it gets DetectionNotReady (the caller refuses: fail closed). A
stale detector is never used: a canary or a rotated secret value is detected
from the first request after it was registered.

One instance is shared by the HTTP detection addon and the DNS gate, so a
session's values are compiled once. Nothing here imports mitmproxy.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from gateway.detect import Detector, RulePack, builtin_rules
from gateway.exfil.known import KnownValues

logger = logging.getLogger("egressgw.detection")

MAX_CACHED = 1024  # detectors kept (one per session and per policy)
# How long a request waits for its session's detector to compile (1,000 values: ~2 s) before it is
# refused with `detection-not-ready` (the compile goes on; the next request finds it done).
COMPILE_WAIT = 30.0


class DetectionNotReady(Exception):
    """The session's detector is still compiling after COMPILE_WAIT seconds."""


@functools.lru_cache(maxsize=64)
def compiled(packs: tuple | None) -> Detector:
    """The compiled rules, shared by every session whose policy brings the same rule files (by value).

    `None`: no rules at all (known values only, for joined fragments and DNS names)."""
    if packs is None:
        return Detector(RulePack(()))
    pack = builtin_rules()
    for extra in packs:
        pack = pack.merge(extra)
    return Detector(pack)


def _warm() -> None:
    if not compiled(()).stats["c_views"]:
        logger.warning("detection: gateway/detect/_unescape.c is not built (no C compiler at install time?): "
                       "the escape views run in pure Python, about 25% slower scans; fix: install gcc and "
                       "reinstall egressgw (make bootstrap)")
    compiled(None)


class SessionDetectors:
    def __init__(self, store, alive: Callable[[object], bool] | None = None):
        """`alive(session)`: whether the session is still registered (the registry's `holds`): a
        session deleted while its values were being read leaves nothing behind."""
        self.known = KnownValues(store)
        self._alive = alive
        self._bases: OrderedDict[int, tuple[object, Detector]] = OrderedDict()  # id(policy) -> (policy, detector)
        self._sessions: OrderedDict[str, tuple[tuple, Detector, Detector]] = OrderedDict()
        self._building: dict[str, tuple[tuple, asyncio.Future]] = {}  # session id -> (key, compile under way)
        self._compiler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="egressgw-detect-compile")
        # sessions to compile ahead, compiled one at a time: a request's own compile (submitted when
        # it comes) then waits behind at most one of them, however many sessions were restored
        self._queue: OrderedDict[str, object] = OrderedDict()
        self._drainer: asyncio.Task | None = None

    def warm(self) -> None:
        """Compile the built-in rules in the compile thread now (once the proxy is up), not on some
        sandbox's first request; on the spot without a running loop."""
        try:
            asyncio.get_running_loop().run_in_executor(self._compiler, _warm)
        except RuntimeError:
            _warm()

    def prepare(self, session) -> None:
        """Compile the session's detectors in the background (no-op without a running loop)."""
        if not session.policy.detection.enabled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._queue[session.id] = session
        self._queue.move_to_end(session.id)
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())

    async def _drain(self) -> None:
        while self._queue:
            _sid, session = self._queue.popitem(last=False)
            try:
                await self.of(session)
            except Exception as e:  # noqa: BLE001 - the first request meets the same error and refuses
                logger.debug("precompiling the detectors of session %s: %s", session.id, type(e).__name__)

    def forget(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)
        self._building.pop(session_id, None)
        self._queue.pop(session_id, None)
        self.known.forget(session_id)

    def cached(self, session_id: str) -> tuple[Detector, Detector] | None:
        """The session's detectors if compiled (no wait, no look-up of values)."""
        entry = self._sessions.get(session_id)
        return None if entry is None else (entry[1], entry[2])

    async def of(self, session) -> tuple[Detector, Detector]:
        """(full detector: rules + known values, values-only detector). Raises SecretBackendError
        (a secret never read and unreadable now) and DetectionNotReady (see the module docstring)."""
        values = await self.known.of(session)
        if self._alive is not None and not self._alive(session):
            self.known.forget(session.id)  # deleted while its values were read: keep none of them
            raise DetectionNotReady(f"session {session.id} was deleted")
        key = (session.policy, values)
        entry = self._sessions.get(session.id)
        if entry is not None and entry[0][0] is key[0] and entry[0][1] is key[1]:
            return entry[1], entry[2]
        if entry is not None and entry[0] == key:
            return entry[1], entry[2]
        building = self._building.get(session.id)
        if building is None or building[0] != key:
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(self._compiler, self._build, session.policy, values)
            building = self._building[session.id] = (key, future)

            def done(fut, sid=session.id, key=key):
                current = self._building.get(sid)
                if current is not None and current[1] is fut:
                    del self._building[sid]
                else:
                    return  # superseded by a newer value set, or the session was deleted
                if fut.cancelled() or fut.exception() is not None:
                    return
                full, values_only = fut.result()
                self._sessions[sid] = (key, full, values_only)
                self._sessions.move_to_end(sid)
                if len(self._sessions) > MAX_CACHED:
                    self._sessions.popitem(last=False)

            future.add_done_callback(done)
        try:
            return await asyncio.wait_for(asyncio.shield(building[1]), COMPILE_WAIT)
        except (asyncio.TimeoutError, TimeoutError):
            raise DetectionNotReady(f"detector of session {session.id} still compiling") from None

    def _base(self, policy) -> Detector:
        entry = self._bases.get(id(policy))
        if entry is not None and entry[0] is policy:
            self._bases.move_to_end(id(policy))
            return entry[1]
        detector = compiled(tuple(policy.detection.packs))
        self._bases[id(policy)] = (policy, detector)
        if len(self._bases) > MAX_CACHED:
            self._bases.popitem(last=False)
        return detector

    def _build(self, policy, values) -> tuple[Detector, Detector]:
        """In the compile thread."""
        return self._base(policy).with_values(values), compiled(None).with_values(values)
