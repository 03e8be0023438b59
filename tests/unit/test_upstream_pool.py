"""gateway.upstream_pool: idle connections by key, on real loopback sockets."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from gateway.upstream_pool import Idle, IdlePool, Key

KEY = Key("s-1", "rev-1", ("198.18.1.10", 443), True, "allowed.test", frozenset())


class Origin:
    """A loopback server that keeps every accepted connection's writer, to talk back or hang up."""

    def __init__(self):
        self.peers: list[asyncio.StreamWriter] = []

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        for w in self.peers:
            w.close()
        self.server.close()
        await self.server.wait_closed()

    async def _accept(self, reader, writer):
        self.peers.append(writer)

    async def idle(self, key: Key = KEY) -> Idle:
        known = len(self.peers)
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        while len(self.peers) == known:  # accepted: peers[-1] is this connection's far end
            await asyncio.sleep(0.001)
        return Idle(key, reader, writer)


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("field,value", [
    ("session", "s-2"),
    ("rev", "rev-2"),
    ("address", ("198.18.1.10", 8443)),
    ("tls", False),
    ("host", "shared.test"),
    ("credentials", frozenset({"OPENAI_API_KEY"})),
])
def test_a_connection_is_handed_out_only_for_exactly_its_key(field, value):
    async def main():
        async with Origin() as origin:
            pool = IdlePool(5)
            entry = await origin.idle()
            assert pool.put(entry)
            assert pool.take(dataclasses.replace(KEY, **{field: value})) is None
            assert len(pool) == 1
            assert pool.take(KEY) is entry
            assert pool.take(KEY) is None and len(pool) == 0
            assert pool.counts["reused"] == 0  # counted by the caller, once the connection is really used
            entry.close()
    run(main())


@pytest.mark.parametrize("event", ["byte", "eof", "reset"])
def test_a_connection_that_showed_life_while_idle_is_not_handed_out(event):
    async def main():
        async with Origin() as origin:
            pool = IdlePool(5)
            entry = await origin.idle()
            assert pool.put(entry)
            peer = origin.peers[-1]
            if event == "byte":
                peer.write(b"x")
            elif event == "eof":
                peer.write_eof()
            else:
                peer.transport.abort()
            await asyncio.sleep(0.05)
            assert not entry.quiet()
            assert pool.take(KEY) is None
            assert entry.writer.transport.is_closing()  # closed, not leaked
            assert pool.counts["stale"] == 1
    run(main())


def test_an_idle_connection_expires_and_is_closed():
    async def main():
        async with Origin() as origin:
            pool = IdlePool(0.05)
            entry = await origin.idle()
            assert pool.put(entry)
            await asyncio.sleep(0.15)
            assert len(pool) == 0 and pool.counts["expired"] == 1
            assert entry.writer.transport.is_closing()
            assert pool.take(KEY) is None
    run(main())


def test_newest_first_and_bounded_per_key_and_in_total():
    async def main():
        async with Origin() as origin:
            pool = IdlePool(5, per_key=2, per_session=10, total=3)
            a, b, c = [await origin.idle() for _ in range(3)]
            for e in (a, b, c):
                assert pool.put(e)
            assert len(pool) == 2 and a.writer.transport.is_closing()  # per key: the oldest made room
            other = await origin.idle(dataclasses.replace(KEY, host="other.test"))
            other2 = await origin.idle(dataclasses.replace(KEY, host="third.test"))
            assert pool.put(other) and pool.put(other2)
            assert len(pool) == 3 and b.writer.transport.is_closing()  # in total: the oldest overall
            assert pool.counts["evicted"] == 2
            assert pool.take(KEY) is c
            for e in (c, other, other2):
                e.close()
    run(main())


def test_one_session_cannot_fill_the_pool():
    async def main():
        async with Origin() as origin:
            pool = IdlePool(5, per_key=8, per_session=2, total=10)
            mine = [await origin.idle(dataclasses.replace(KEY, host=f"h{i}.test")) for i in range(3)]
            other = await origin.idle(dataclasses.replace(KEY, session="s-2"))
            for e in (other, *mine):
                assert pool.put(e)
            assert len(pool) == 3  # s-1's oldest made room for its third; s-2's stays
            assert mine[0].writer.transport.is_closing() and not other.writer.transport.is_closing()
            assert pool.take(dataclasses.replace(KEY, session="s-2")) is other
            for e in (other, *mine):
                e.close()
    run(main())


def test_a_session_is_flushed_alone():
    async def main():
        async with Origin() as origin:
            pool = IdlePool(5)
            mine = [await origin.idle() for _ in range(2)]
            other = await origin.idle(dataclasses.replace(KEY, session="s-2"))
            for e in (*mine, other):
                pool.put(e)
            pool.flush("s-1")
            assert len(pool) == 1 and pool.counts["flushed"] == 2
            assert all(e.writer.transport.is_closing() for e in mine)
            assert pool.take(KEY) is None and not other.writer.transport.is_closing()
            other.close()
    run(main())


def test_age_counts_from_the_last_use_not_from_the_pool():
    async def main():
        async with Origin() as origin:
            pool = IdlePool(0.2)
            late = await origin.idle()
            late.since -= 0.25  # last used upstream 0.25 s ago: past its time already
            assert not pool.put(late) and late.writer.transport.is_closing()
            recent = await origin.idle()
            recent.since -= 0.15  # 0.05 s left
            assert pool.put(recent)
            await asyncio.sleep(0.1)
            assert pool.take(KEY) is None and pool.counts["expired"] == 1
            assert recent.writer.transport.is_closing()
    run(main())


def test_an_origins_own_shorter_limit_wins():
    async def main():
        async with Origin() as origin:
            pool = IdlePool(5)
            entry = await origin.idle()
            entry.limit = 0.05  # the origin said Keep-Alive: timeout=...
            assert pool.put(entry)
            await asyncio.sleep(0.1)
            assert len(pool) == 0 and pool.counts["expired"] == 1 and entry.writer.transport.is_closing()
            late = await origin.idle()
            late.limit, late.since = 0.05, late.since - 0.1
            assert not pool.put(late)
    run(main())


def test_a_pool_that_is_off_keeps_nothing():
    async def main():
        async with Origin() as origin:
            pool = IdlePool(0)
            entry = await origin.idle()
            assert not pool.enabled and not pool.put(entry)
            assert entry.writer.transport.is_closing() and len(pool) == 0
    run(main())


def test_clear_closes_everything_and_notify_sees_each_event():
    seen = []

    async def main():
        async with Origin() as origin:
            pool = IdlePool(5, notify=seen.append)
            entries = [await origin.idle() for _ in range(2)]
            for e in entries:
                pool.put(e)
            pool.clear()
            assert len(pool) == 0 and all(e.writer.transport.is_closing() for e in entries)
    run(main())
    assert seen == ["kept", "kept", "flushed", "flushed"]


class _Tls:
    def __init__(self, pending=0, shutdown=0, broken=False):
        self._pending, self._shutdown, self._broken = pending, shutdown, broken

    def pending(self):
        if self._broken:
            raise RuntimeError("odd state")
        return self._pending

    def get_shutdown(self):
        return self._shutdown


@pytest.mark.parametrize("tls,quiet", [
    (_Tls(), True),
    (_Tls(pending=5), False),  # decrypted bytes nobody read
    (_Tls(shutdown=2), False),  # close_notify seen
    (_Tls(broken=True), False),
])
def test_tls_state_counts_toward_quiet(tls, quiet):
    async def main():
        async with Origin() as origin:
            entry = await origin.idle()
            entry.tls = tls
            assert entry.quiet() is quiet
            entry.close()
    run(main())


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError):
        IdlePool(-1)
    with pytest.raises(ValueError):
        IdlePool(1, per_key=0)
    with pytest.raises(ValueError):
        IdlePool(1, per_session=0)
