"""Flow-log events: the field names, declared once, and how values are made safe.

Every value that comes from the sandbox (URL, Host, SNI, DNS names, headers)
passes through `clean()` so that CR/LF, ANSI escapes and other control
characters cannot forge or hide log lines, and its length is capped.
"""

from __future__ import annotations

import math
import re
import time
from datetime import datetime, timezone
from urllib.parse import urlsplit, urlunsplit

# Event kinds.
DNS = "dns"
TLS = "tls"
HTTP = "http"
TCP = "tcp"
CONNECT = "connect"
SESSION = "session"
KINDS = (DNS, TLS, HTTP, TCP, CONNECT, SESSION)

# Field names, in the order they appear in a record.
FIELDS = (
    "time",
    "event",
    "session",
    "client",
    "dest_host",
    "dest_ip",
    "dest_port",
    "sni",
    "method",
    "url",
    "status",
    "bytes_out",
    "bytes_in",
    "decision",
    "rule",
    "reason",
    "dns_qname",
    "dns_qtype",
    "dns_rcode",
    "dns_answers",
    "duration_ms",
    "secrets",
    "detections",
    "alert",
    "detail",
)
_FIELD_SET = frozenset(FIELDS)

MAX_FIELD = 2048


# C0/C1 controls, DEL, line/paragraph separators, lone surrogates (undecodable bytes) and
# bidi overrides/isolates (which reorder what a reader sees on screen)
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def clean(value: object, limit: int = MAX_FIELD) -> str:
    """Render a sandbox-controlled value as one safe, bounded line of text."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit and not _UNSAFE.search(text):
        return text  # the common case: nothing to escape
    out = []
    for ch in text[: limit + 1]:
        o = ord(ch)
        # C0/C1 controls, DEL, line/paragraph separators, lone surrogates (undecodable bytes) and
        # bidi overrides/isolates (which reorder what a reader sees on screen)
        if (o < 0x20 or o == 0x7F or 0x80 <= o < 0xA0 or 0xD800 <= o < 0xE000
                or ch in "\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"):
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
        else:
            out.append(ch)
    result = "".join(out)
    if len(text) > limit:
        result = result[:limit] + "…[truncated]"
    return result


def strip_query_values(url: str) -> str:
    """Keep query parameter names, drop their values: values often carry tokens."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return clean(re.split(r"[?#]", url, maxsplit=1)[0])
    if not parts.query:
        return clean(urlunsplit(parts._replace(fragment="")))
    names = [p.split("=", 1)[0] for p in parts.query.split("&") if p]
    query = "&".join(f"{n}=" for n in names)
    return clean(urlunsplit(parts._replace(query=query, fragment="")))


def address(peer) -> str | None:
    """`ip:port` (`[v6]:port`) of a connection's peer, as the flow log writes it."""
    if not peer:
        return None
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


_SECOND: list = [None, ""]  # last whole second formatted, and its text


def rfc3339(ts: float) -> str:
    frac, whole = math.modf(ts)
    micro = round(frac * 1e6)  # as datetime.fromtimestamp rounds
    second = int(whole)
    if micro >= 1_000_000:
        second, micro = second + 1, micro - 1_000_000
    if second != _SECOND[0]:  # formatting the date part is most of the cost: once per second
        _SECOND[0] = second
        _SECOND[1] = datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{_SECOND[1]}.{micro:06d}Z"


DETECTION_KEYS = ("rule", "label", "part", "offset", "encoding", "context", "action")
MAX_DETECTIONS = 32


def detection(hit: dict) -> dict:
    """One exfiltration hit as the log shows it: where and what kind, never the value (context is redacted)."""
    out = {}
    for key in DETECTION_KEYS:
        value = hit.get(key)
        if value is not None:
            out[key] = value if isinstance(value, int) else clean(value, 256)
    return out


_SANDBOX_TEXT = frozenset({"dest_host", "sni", "method", "dns_qname", "detail", "client"})


def make_event(kind: str, **fields: object) -> dict:
    """Build one event. Unknown field names are a programming error, caught in tests."""
    if kind not in KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    unknown = set(fields) - _FIELD_SET
    if unknown:
        raise ValueError(f"unknown flow-log fields: {sorted(unknown)}")
    event: dict = {"time": rfc3339(time.time()), "event": kind}
    for name in FIELDS[2:]:
        value = fields.get(name)
        if value is None:
            continue
        if name in _SANDBOX_TEXT:
            value = clean(value)
        elif name in ("dns_answers", "secrets"):
            value = [clean(v, 256) for v in value]  # type: ignore[union-attr]
        elif name == "detections":
            value = [detection(d) for d in value]  # type: ignore[union-attr]
        event[name] = value
    return event
