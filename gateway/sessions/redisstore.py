"""Sessions shared by several gateway replicas through Redis.

    HASH    {prefix}sessions       session id -> record (JSON, as store.py describes)
    CHANNEL {prefix}changes        {"id", "rev"} after every write

A write is one MULTI: HSET/HDEL plus PUBLISH, so a replica that sees the
message finds the record. Each replica runs `watch()` in its event loop: it
subscribes, then reads the whole hash (so nothing published meanwhile is
lost), applies each message as it comes (well under a second), and reads the
hash again every RESYNC seconds (a message lost to a reconnect is caught).

Failing closed: a replica trusts its in-memory sessions only while it has
heard from Redis in the last STALE seconds. A broken connection makes it
unhealthy at once; the registry then refuses every lookup
(`session-store-unavailable`) until a resync succeeds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Callable
from urllib.parse import parse_qs, urlsplit

import redis
import redis.asyncio

from gateway import metrics
from gateway.errors import ConfigError
from gateway.sessions.store import SessionStoreUnavailable, Watcher, decode_record

logger = logging.getLogger("egressgw")

RESYNC = 1.0  # seconds between full reads of the hash
STALE = 2.5  # seconds without a successful read before sessions count as unverifiable
TIMEOUT = 1.0  # socket and connect timeout for every Redis call
RETRY = 0.25  # seconds between reconnect attempts


class RedisStore:
    def __init__(self, url: str):
        parts = urlsplit(url)
        prefix = parse_qs(parts.query).get("prefix", ["egressgw:"])[0]
        shown = parts.netloc.rpartition("@")[2]  # never a password in a log line or error
        self.url = parts._replace(query="", netloc=shown).geturl()
        self._conn_url = parts._replace(query="").geturl()
        self.hash_key = f"{prefix}sessions"
        self.channel = f"{prefix}changes"
        try:
            self._sync = redis.Redis.from_url(self._conn_url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT,
                                              decode_responses=True)
        except ValueError as e:
            raise ConfigError(f"sessions.store {self.url}: {e} (fix: redis://host:6379/0)") from None
        self._verified_at = 0.0  # monotonic time of the last successful read
        self._lost = False  # lost since the last success: say so when it comes back
        metrics.SESSION_STORE_UP.set(0)

    # -- the SessionStore interface (writes are synchronous: the API answers once Redis has them) ---
    def load(self) -> list[dict]:
        try:
            raw = self._sync.hgetall(self.hash_key)
        except redis.RedisError as e:
            raise SessionStoreUnavailable(f"session store {self.url} unreachable: {e}") from None
        self._mark_verified()
        return [r for r in (decode_record(k, v, self.url) for k, v in raw.items()) if r is not None]

    def put(self, record: dict) -> None:
        self._write(record["id"], record.get("rev", ""), json.dumps(record, sort_keys=True))

    def delete(self, session_id: str) -> None:
        self._write(session_id, "", None)

    def _write(self, session_id: str, rev: str, value: str | None) -> None:
        try:
            pipe = self._sync.pipeline(transaction=True)
            if value is None:
                pipe.hdel(self.hash_key, session_id)
            else:
                pipe.hset(self.hash_key, session_id, value)
            pipe.publish(self.channel, json.dumps({"id": session_id, "rev": rev}))
            pipe.execute()
        except redis.RedisError as e:
            raise SessionStoreUnavailable(f"session store {self.url} unreachable, nothing changed: {e}") from None

    def healthy(self) -> bool:
        return time.monotonic() - self._verified_at < STALE

    def close(self) -> None:
        self._sync.close()

    def _mark_verified(self) -> None:
        if self._lost:
            logger.warning("session store %s reachable: sessions verified again", self.url)
            self._lost = False
        self._verified_at = time.monotonic()
        metrics.SESSION_STORE_UP.set(1)

    def _mark_lost(self, error: object) -> None:
        if not self._lost:
            logger.error("session store %s lost (%s): refusing session traffic (session-store-unavailable)",
                         self.url, error)
        self._lost = True
        self._verified_at = 0.0
        metrics.SESSION_STORE_UP.set(0)

    # -- keeping this replica in step --------------------------------------------------------------
    async def watch(self, apply: Watcher, known: Callable[[], set[str]]) -> None:
        """Forever: follow the channel and resync; on any Redis error fail closed and reconnect."""
        while True:
            client = redis.asyncio.Redis.from_url(self._conn_url, socket_timeout=TIMEOUT,
                                                  socket_connect_timeout=TIMEOUT, decode_responses=True)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                await self._resync(client, apply, known)
                next_resync = time.monotonic() + RESYNC
                while True:
                    message = await pubsub.get_message(timeout=min(RESYNC, 0.2))
                    if message and message.get("type") == "message":
                        await self._one(client, message["data"], apply)
                    if time.monotonic() >= next_resync:
                        await self._resync(client, apply, known)
                        next_resync = time.monotonic() + RESYNC
            except asyncio.CancelledError:
                raise
            except (redis.RedisError, OSError) as e:
                self._mark_lost(e)
            except Exception as e:  # noqa: BLE001 - e.g. the flow log failing in a listener: never stop watching
                logger.exception("session store %s: applying a change failed", self.url)
                self._mark_lost(f"{type(e).__name__}: {e}")
            finally:
                try:
                    await pubsub.aclose()
                    await client.aclose()
                except (redis.RedisError, OSError):
                    pass
            await asyncio.sleep(RETRY)

    async def _resync(self, client, apply: Watcher, known: Callable[[], set[str]]) -> None:
        raw = await client.hgetall(self.hash_key)
        records = {k: r for k, v in raw.items() if (r := decode_record(k, v, self.url)) is not None}
        for session_id in known() - records.keys():
            apply(session_id, None)
        for session_id, record in records.items():
            apply(session_id, record)  # the registry skips records whose rev it already has
        self._mark_verified()

    async def _one(self, client, data: str, apply: Watcher) -> None:
        try:
            session_id = json.loads(data)["id"]
        except (ValueError, KeyError, TypeError):
            logger.warning("ignored a malformed message on %s", self.channel)
            return
        value = await client.hget(self.hash_key, session_id)
        apply(session_id, decode_record(session_id, value, self.url) if value is not None else None)
        self._mark_verified()
