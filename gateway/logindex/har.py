"""HAR 1.2 of one session's HTTP flows, from the flow log.

The gateway records no headers and no bodies, so the HAR has none: header
lists are empty, sizes come from the byte counts the log holds, query values
are empty (the log drops them), and credentials appear by name only
(`_egressgw.secrets`). What the gateway decided is kept per entry under
`_egressgw` (custom fields start with `_`, as HAR 1.2 allows).
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata
from urllib.parse import urlsplit

COMMENT = (
    "Exported from the egressgw flow log. Bodies were not captured (the gateway does not keep them); "
    "header values were not captured (none are listed); URL query values were removed by the log; "
    "credentials substituted by the gateway appear by name only in _egressgw.secrets, never their values."
)

_HTTP_METHOD = frozenset("GET HEAD POST PUT DELETE CONNECT OPTIONS TRACE PATCH".split())


def _version() -> str:
    try:
        return metadata.version("egressgw")
    except metadata.PackageNotFoundError:
        return "0"


def entry(e: dict, where: str | None = None) -> dict:
    url = e.get("url") or ""
    try:
        query = urlsplit(url).query
    except ValueError:
        query = ""
    duration = e.get("duration_ms")
    duration = float(duration) if isinstance(duration, (int, float)) else 0.0
    status = e.get("status") if isinstance(e.get("status"), int) else 0
    bytes_out = e.get("bytes_out") if isinstance(e.get("bytes_out"), int) else -1
    bytes_in = e.get("bytes_in") if isinstance(e.get("bytes_in"), int) else -1
    gw = {k: e[k] for k in ("decision", "rule", "reason", "secrets", "alert", "detections", "detail", "sni",
                             "client") if e.get(k) not in (None, [], "")}
    if where:
        gw["log"] = where
    out = {
        "startedDateTime": e.get("time", ""),
        "time": duration,
        "request": {
            "method": e.get("method", ""),
            "url": url,
            "httpVersion": "unknown",
            "cookies": [],
            "headers": [],
            "queryString": [{"name": p.split("=", 1)[0], "value": ""} for p in query.split("&") if p],
            "headersSize": -1,
            "bodySize": bytes_out,
        },
        "response": {
            "status": status,
            "statusText": "",
            "httpVersion": "unknown",
            "cookies": [],
            "headers": [],
            "content": {"size": max(bytes_in, 0), "mimeType": "", "comment": "body not captured"},
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": bytes_in,
        },
        "cache": {},
        "timings": {"send": 0, "wait": duration, "receive": 0},
        "_egressgw": gw,
    }
    if e.get("dest_ip"):
        out["serverIPAddress"] = str(e["dest_ip"])
    if e.get("decision") and e.get("decision") != "allow":
        out["comment"] = f"{e['decision']}: {e.get('reason', '')}".rstrip(": ")
    return out


def build_har(session: str, events: Iterable[tuple[dict, str | None]]) -> dict:
    """HAR for `session` from (event, "file:line") pairs in time order; non-HTTP events are counted, not listed."""
    entries = []
    other = 0
    for e, where in events:
        if e.get("session") != session:
            continue
        if e.get("event") != "http" or not e.get("url") or str(e.get("method", "")).upper() not in _HTTP_METHOD:
            other += 1
            continue
        entries.append(entry(e, where))
    comment = COMMENT + f" Session {session}: {len(entries)} HTTP requests"
    if other:
        comment += f"; {other} other events of the session (DNS, TLS, raw TCP, WebSocket messages) are not in this HAR"
        comment += f" (`egressgw log query LOG --session {session}` lists them)"
    comment += "."
    return {
        "log": {
            "version": "1.2",
            "creator": {"name": "egressgw", "version": _version()},
            "entries": entries,
            "comment": comment,
        }
    }
