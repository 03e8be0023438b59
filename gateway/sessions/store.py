"""Where sessions live beyond one process: the store interface and its embedded backends.

The registry (`registry.py`) keeps every session in memory for O(1) lookups
and writes each change through to a store:

    memory                                  nothing kept (tests, throwaway gateways)
    sqlite:///var/lib/egressgw/sessions.db  one gateway; a restart keeps its sessions
    redis://host:6379/0                     several replicas share sessions (`redisstore.py`)

A store holds *records*: plain JSON with what it takes to rebuild a session
(name, policy text, sources, token hash, secret specs and placeholders). A
record never holds a token (only its SHA-256) nor a secret's value: values are
fetched from their backends (env://, vault://, ...) when a request needs them,
exactly as before a restart, so a reloaded session re-fetches them on use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Callable, Protocol

from gateway.errors import ConfigError, SessionError

logger = logging.getLogger("egressgw")

RECORD_VERSION = 1


class SessionStoreUnavailable(SessionError):
    """The shared store cannot be reached: sessions cannot be verified, so their traffic is refused."""

    reason = "session-store-unavailable"


def token_hash(token: str) -> str:
    """Tokens are 192 random bits: a plain SHA-256 is enough to make a stolen store useless as credentials."""
    return hashlib.sha256(token.encode()).hexdigest()


def decode_record(session_id: str, text: str, url: str) -> dict | None:
    """A stored record, or None (logged) when it is not a JSON object: no session, fail closed."""
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        logger.error("session store %s: record %s is not a JSON object; ignored", url, session_id)
        return None
    return record


def encode_secret(spec, placeholder: str) -> dict:
    return {"spec": spec.describe(), "placeholder": placeholder}


def decode_secret(raw: dict):
    """(SecretSpec, placeholder) from `encode_secret`. Companion AWS secrets have no parts: parsed with one, then emptied."""
    from gateway.secrets.model import parse_secret

    spec_raw = dict(raw["spec"])
    parts = spec_raw.get("parts") or []
    spec = parse_secret({**spec_raw, "parts": parts or ["headers"]}, f"stored secret {spec_raw.get('name')}")
    if not parts:
        spec = dataclasses.replace(spec, parts=frozenset())
    return spec, raw["placeholder"]


class SessionStore(Protocol):
    """What a registry needs from a backend. Writes raise SessionStoreUnavailable when the backend is down."""

    url: str

    def load(self) -> list[dict]: ...

    def put(self, record: dict) -> None: ...

    def delete(self, session_id: str) -> None: ...

    def healthy(self) -> bool:
        """Whether sessions held in memory are still known to match the store (shared stores only)."""
        ...

    def close(self) -> None: ...


class MemoryStore:
    """Keeps nothing: the registry's own dicts are the only copy."""

    url = "memory"

    def load(self) -> list[dict]:
        return []

    def put(self, record: dict) -> None:
        pass

    def delete(self, session_id: str) -> None:
        pass

    def healthy(self) -> bool:
        return True

    def close(self) -> None:
        pass


class SqliteStore:
    """One local file (mode 0600: it holds token hashes and placeholders). Writes are committed before they are answered."""

    def __init__(self, path: str):
        self.path = path
        self.url = f"sqlite://{path}"
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(path, 0o600)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, record TEXT NOT NULL)")
        except sqlite3.Error as e:
            raise ConfigError(f"sessions.store {self.url}: cannot open the session database: {e} "
                              "(fix: point it at a writable path, or delete a corrupt file)") from None

    def load(self) -> list[dict]:
        rows = self._db.execute("SELECT id, record FROM sessions ORDER BY rowid")
        return [r for r in (decode_record(i, text, self.url) for i, text in rows) if r is not None]

    def put(self, record: dict) -> None:
        try:
            self._db.execute("INSERT OR REPLACE INTO sessions (id, record) VALUES (?, ?)",
                             (record["id"], json.dumps(record, sort_keys=True)))
        except sqlite3.Error as e:
            raise SessionStoreUnavailable(f"session store {self.url}: write failed: {e}") from None

    def delete(self, session_id: str) -> None:
        try:
            self._db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
        except sqlite3.Error as e:
            raise SessionStoreUnavailable(f"session store {self.url}: delete failed: {e}") from None

    def healthy(self) -> bool:
        return True

    def close(self) -> None:
        self._db.close()


class FollowingSqliteStore(SqliteStore):
    """A worker's view of the SQLite store another process (the supervisor's control API) writes.

    `watch()` polls `PRAGMA data_version` every POLL seconds (it changes when another connection
    commits) and then re-reads every record, so a change reaches the worker well under a second.
    Failing closed: sessions count as verified only while a poll succeeded within STALE seconds and
    the file is the one opened (deleted or replaced: unavailable until reopened)."""

    POLL = 0.1
    STALE = 3.0

    def __init__(self, path: str):
        super().__init__(path)
        self._verified_at = 0.0
        self._lost = False
        self._inode = self._stat()

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def healthy(self) -> bool:
        return time.monotonic() - self._verified_at < self.STALE

    def _mark_lost(self, error: object) -> None:
        from gateway import metrics

        if not self._lost:
            logger.error("session store %s unavailable (%s): refusing session traffic", self.url, error)
        self._lost = True
        self._verified_at = 0.0
        metrics.SESSION_STORE_UP.set(0)

    def _resync(self, apply: Watcher, known: Callable[[], set[str]]) -> None:
        records = {r["id"]: r for r in self.load() if isinstance(r.get("id"), str)}
        for session_id in known() - records.keys():
            apply(session_id, None)
        for session_id, record in records.items():
            apply(session_id, record)  # the registry skips records whose rev it already has

    async def watch(self, apply: Watcher, known: Callable[[], set[str]]) -> None:
        import asyncio

        from gateway import metrics

        version = None
        while True:
            try:
                if self._stat() != self._inode:
                    raise sqlite3.OperationalError("the database file was removed or replaced")
                now = self._db.execute("PRAGMA data_version").fetchone()[0]
                if now != version:
                    self._resync(apply, known)
                    version = now
                if self._lost:
                    logger.warning("session store %s available again: sessions verified", self.url)
                    self._lost = False
                self._verified_at = time.monotonic()
                metrics.SESSION_STORE_UP.set(1)
            except asyncio.CancelledError:
                raise
            except sqlite3.Error as e:
                self._mark_lost(e)
                version = None
                try:  # reopen: the file may be back
                    self._db.close()
                    self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                    self._inode = self._stat()
                except sqlite3.Error:
                    pass
            except Exception as e:  # noqa: BLE001 - e.g. a listener failing: never stop watching
                logger.exception("session store %s: applying a change failed", self.url)
                self._mark_lost(f"{type(e).__name__}: {e}")
                version = None
            await asyncio.sleep(self.POLL)


def open_store(url: str, follow: bool = False) -> SessionStore:
    """The store a `sessions.store` URL names. `follow`: a worker following changes others write (SQLite)."""
    if url == "memory":
        return MemoryStore()
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        if not path.startswith("/"):
            raise ConfigError(f"sessions.store {url!r}: needs an absolute path, e.g. sqlite:///var/lib/egressgw/sessions.db")
        return FollowingSqliteStore(path) if follow else SqliteStore(path)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from gateway.sessions.redisstore import RedisStore

        return RedisStore(url)
    raise ConfigError(f"sessions.store {url!r}: unknown store "
                      "(fix: memory, sqlite:///path/sessions.db or redis://host:6379/0)")


Watcher = Callable[[str, dict | None], None]  # (session id, record or None when deleted)
