"""JSON-lines record files shared by the lab's origin and DNS servers.

Each record is one JSON object on one line, written with a single ``write(2)``
on an ``O_APPEND`` descriptor, so concurrent writers never interleave and a
file truncated by a reader (``clear_records``) keeps working.

Servers write a record *before* they answer, so once a client holds the
answer the record is already in the file.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterable

__all__ = [
    "Recorder",
    "read_records",
    "match",
    "clear_records",
    "encode_bytes",
    "decode_body",
    "header",
    "timestamp",
]


def timestamp() -> dict[str, Any]:
    """``{"time": RFC 3339 UTC, "ts": epoch seconds}``."""
    ts = time.time()
    iso = _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="microseconds")
    return {"time": iso.replace("+00:00", "Z"), "ts": ts}


def encode_bytes(data: bytes) -> tuple[str, str]:
    """``(text, encoding)``: utf-8 text when it decodes, else base64."""
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def decode_body(rec: dict[str, Any], field: str = "body") -> bytes:
    """The raw bytes of a recorded ``body``/``data`` field."""
    val = rec.get(field) or ""
    if rec.get(f"{field}_encoding") == "base64":
        return base64.b64decode(val)
    return val.encode("utf-8")


def header(rec: dict[str, Any], name: str, default: str | None = None) -> str | None:
    """First value of header ``name`` (case-insensitive) in an http record."""
    lname = name.lower()
    for k, v in rec.get("headers") or ():
        if k.lower() == lname:
            return v
    return default


class Recorder:
    """Thread-safe JSON-lines appender. ``Recorder(None)`` records nothing."""

    def __init__(self, path: str | os.PathLike[str] | None):
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._fd: int | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, kind: str, **fields: Any) -> dict[str, Any]:
        rec: dict[str, Any] = {"kind": kind, **timestamp(), **fields}
        if self._fd is None:
            return rec
        line = (json.dumps(rec, separators=(",", ":"), default=str) + "\n").encode("utf-8")
        with self._lock:
            os.write(self._fd, line)
        return rec

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def match(rec: dict[str, Any], filters: dict[str, Any]) -> bool:
    """``True`` when ``rec`` satisfies every filter.

    A filter value is compared for equality, except: a callable is called with
    the field's value (missing fields give ``None``) and must return true; a
    ``set``/``frozenset`` means "one of". Keys with a trailing ``__contains``
    test membership/substring, e.g. ``path__contains="/x"``.
    """
    for key, want in filters.items():
        if key.endswith("__contains"):
            have = rec.get(key[: -len("__contains")])
            if have is None:
                return False
            try:
                if want not in have:
                    return False
            except TypeError:
                return False
            continue
        have = rec.get(key)
        if callable(want):
            if not want(have):
                return False
        elif isinstance(want, (set, frozenset)):
            if have not in want:
                return False
        elif have != want:
            return False
    return True


def read_records(path: str | os.PathLike[str], /, **filters: Any) -> list[dict[str, Any]]:
    """All records in ``path`` matching ``filters`` (see :func:`match`), oldest first.

    A missing file gives ``[]``; an incomplete last line is skipped.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    out: list[dict[str, Any]] = []
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and match(rec, filters):
            out.append(rec)
    return out


def clear_records(path: str | os.PathLike[str]) -> None:
    """Empty a record file (writers use O_APPEND, so they carry on at offset 0)."""
    try:
        with open(path, "r+b") as f:
            f.truncate(0)
    except FileNotFoundError:
        pass


def iter_ports(spec: Iterable[Any], default_bind: str) -> list[tuple[str, int]]:
    """Normalise a port list: ``22`` or ``[addr, 22]`` or ``"addr:22"`` -> ``(addr, port)``."""
    out: list[tuple[str, int]] = []
    for item in spec:
        if isinstance(item, int):
            out.append((default_bind, item))
        elif isinstance(item, str):
            if ":" in item and not item.startswith("["):
                host, _, port = item.rpartition(":")
                out.append((host, int(port)))
            else:
                out.append((default_bind, int(item)))
        else:
            host, port = item
            out.append((str(host), int(port)))
    return out




def write_ready(path: str, info: dict) -> None:
    """Atomically write a server's readiness file (JSON), for whoever waits on it."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, path)
