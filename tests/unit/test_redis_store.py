"""gateway/sessions/redisstore.py against a real redis-server: two registries (two replicas) in step.

Replica B applies A's changes within a second, fails closed the moment Redis
is gone, and catches up (including what changed while it was away) once Redis
is back.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import time

import pytest

from gateway.policy import load_policy_text
from gateway.sessions.redisstore import RedisStore
from gateway.sessions.registry import SessionRegistry
from gateway.sessions.store import SessionStoreUnavailable
from gateway.lab.redis import RedisServer

from .helpers import ALLOWED, PLAIN, policy_text
from .test_session_store import CANARY, blocked_by_detection

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server (scripts/bootstrap)")

TEXT_A = policy_text(ALLOWED, name="a")
TEXT_B = policy_text(PLAIN, name="b")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _until(check, timeout: float) -> float:
    """Seconds until `check()` is true (fails the test after `timeout`)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def _lookup_ok(reg, session_id, token) -> bool:
    try:
        return reg.authenticate(session_id, token) is not None
    except SessionStoreUnavailable:
        return False


def test_two_replicas_share_sessions_and_fail_closed(tmp_path):
    server = RedisServer(tmp_path / "redis", _free_port()).start()
    try:
        asyncio.run(_scenario(server))
    finally:
        server.stop()


async def _scenario(server: RedisServer) -> None:
    a, b = SessionRegistry(RedisStore(server.url)), SessionRegistry(RedisStore(server.url))
    tasks = [asyncio.ensure_future(r.store.watch(r.apply, r.ids)) for r in (a, b)]
    try:
        await _until(lambda: a.store.healthy() and b.store.healthy(), 3)
        s = a.create("alpha", load_policy_text(TEXT_A), [], policy_text=TEXT_A)
        took = await _until(lambda: _lookup_ok(b, s.id, s.token), 1.0)
        assert took < 1.0
        s_b = b.get(s.id)
        assert s_b.policy.name == "a" and s_b.token == ""  # B never saw the token, only its hash

        a.replace_policy(s.id, load_policy_text(TEXT_B), policy_text=TEXT_B)
        assert await _until(lambda: s_b.policy.name == "b", 1.0) < 1.0
        assert b.get(s.id) is s_b  # replaced in place: open connections meet the new policy

        # A canary registered on A is detected on B (it travels in the record).
        a.replace_policy(s.id, load_policy_text(TEXT_A), policy_text=TEXT_A)
        assert a.add_canaries(s.id, [CANARY], ["c1"]) == ["canary:c1"]
        assert await _until(lambda: s_b.canaries == {"canary:c1": CANARY}, 1.0) < 1.0
        assert s_b.policy.name == "a"
        assert await blocked_by_detection(b, s.id, CANARY)
        a.replace_policy(s.id, load_policy_text(TEXT_B), policy_text=TEXT_B)
        assert await _until(lambda: s_b.policy.name == "b", 1.0) < 1.0
        assert s_b.canaries == {"canary:c1": CANARY}  # a later change keeps them

        # Redis gone: B stops vouching for its sessions at once (broken connection), and writes fail.
        server.stop()
        await _until(lambda: not b.store.healthy(), 3.0)
        with pytest.raises(SessionStoreUnavailable):
            b.authenticate(s.id, s.token)
        with pytest.raises(SessionStoreUnavailable):
            a.replace_policy(s.id, load_policy_text(TEXT_A), policy_text=TEXT_A)
        assert s.policy.name == "b"  # a failed write changes nothing locally either

        # Back (empty: no persistence, like a fresh Redis): B catches up, the session is gone there too.
        server.start()
        await _until(lambda: b.store.healthy(), 3.0)
        await _until(lambda: s.id not in b.ids(), 2.0)
        assert b.authenticate(s.id, s.token) is None
        # And a session created now flows again.
        t = a.create("beta", load_policy_text(TEXT_A), [], policy_text=TEXT_A)
        await _until(lambda: _lookup_ok(b, t.id, t.token), 1.0)
        a.delete(t.id)
        await _until(lambda: t.id not in b.ids(), 1.0)

        # A garbage record is no session and stops nothing; a listener that raises neither.
        a.store._sync.hset(a.store.hash_key, "s-garbage", "{not json")
        a.store._sync.publish(a.store.channel, '{"id": "s-garbage"}')
        def boom(what, session):
            if session.name == "gamma":
                raise RuntimeError("flow log unwritable")
        b.subscribe(boom)
        u = a.create("gamma", load_policy_text(TEXT_A), [], policy_text=TEXT_A)
        await asyncio.sleep(1.5)
        assert "s-garbage" not in b.ids() and b.store.healthy()
        v = a.create("delta", load_policy_text(TEXT_A), [], policy_text=TEXT_A)
        await _until(lambda: _lookup_ok(b, v.id, v.token), 3.0)
        assert u.id in b.ids()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for r in (a, b):
            r.store.close()
