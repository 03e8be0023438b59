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


def open_store(url: str) -> SessionStore:
    """The store a `sessions.store` URL names."""
    if url == "memory":
        return MemoryStore()
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        if not path.startswith("/"):
            raise ConfigError(f"sessions.store {url!r}: needs an absolute path, e.g. sqlite:///var/lib/egressgw/sessions.db")
        return SqliteStore(path)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from gateway.sessions.redisstore import RedisStore

        return RedisStore(url)
    raise ConfigError(f"sessions.store {url!r}: unknown store "
                      "(fix: memory, sqlite:///path/sessions.db or redis://host:6379/0)")


Watcher = Callable[[str, dict | None], None]  # (session id, record or None when deleted)
