"""Finding placeholders in request parts, and what a real value looks like once written into one.

Pure functions and one index; nothing here knows mitmproxy or any value's
source. The index holds every live placeholder of every session, keyed by its
random core, so a scan costs one regex pass over the text however many
sessions exist.
"""

from __future__ import annotations

import base64
import functools
import binascii
import json
from dataclasses import dataclass
from urllib.parse import quote, quote_plus, unquote, unquote_plus

from gateway.secrets.model import BoundSecret
from gateway.secrets.placeholders import CORE_RE


@dataclass(frozen=True)
class Hit:
    secret: BoundSecret
    part: str
    partial: bool  # the core is there but not the whole placeholder


class PlaceholderIndex:
    def __init__(self) -> None:
        self._by_core: dict[str, BoundSecret] = {}

    def add(self, secret: BoundSecret) -> None:
        self._by_core[secret.core] = secret

    def remove(self, secret: BoundSecret) -> None:
        if self._by_core.get(secret.core) is secret:
            del self._by_core[secret.core]

    def __len__(self) -> int:
        return len(self._by_core)

    def scan(self, text: str, part: str) -> list[Hit]:
        hits = []
        for m in CORE_RE.finditer(text):
            secret = self._by_core.get(m.group(1))
            if secret is None:
                continue
            offset = secret.placeholder.find(m.group(0))  # -1: the marker's case was changed
            start = m.start() - offset
            whole = offset >= 0 and start >= 0 and text.startswith(secret.placeholder, start)
            hits.append(Hit(secret, part, partial=not whole))
        return hits


def decode_basic(value: str) -> str | None:
    """`Basic base64(user:pass)` → `user:pass`, else None."""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        return base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):  # non-ASCII input raises ValueError
        return None


def encode_basic(userpass: str) -> str:
    return "Basic " + base64.b64encode(userpass.encode()).decode()


def views(text: str, *, form: bool = False) -> list[str]:
    """The text and the decodings a client may have applied to it (URL encoding, twice)."""
    out = [text]
    once = unquote_plus(text) if form else unquote(text)
    if once != text:
        out.append(once)
        twice = unquote_plus(once) if form else unquote(once)
        if twice != once:
            out.append(twice)
    return out


def written(value: str, context: str) -> str:
    """A real value as it must appear in a part: raw, URL path/query, form body or JSON string."""
    if context == "path":
        return quote(value, safe="")
    if context in ("query", "form"):
        return quote_plus(value, safe="")
    if context == "json":
        return json.dumps(value)[1:-1]
    return value


@functools.lru_cache(maxsize=1024)
def masks(value: str) -> tuple[bytes, ...]:
    """Forms of a real value to look for in responses (raw, JSON-escaped, URL-encoded), longest first.

    Cached: every response of a session with secrets asks for them."""
    forms = {value, json.dumps(value)[1:-1], quote(value, safe=""), quote_plus(value, safe="")}
    return tuple(f.encode() for f in sorted((f for f in forms if f), key=len, reverse=True))
