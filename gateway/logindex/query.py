"""Filters over flow-log events: parsed once, applied in Python (tail) or as SQL (the index).

Both forms mean the same thing, and the tests hold them to it:

    session     exact session id (repeatable: any of them)
    since/until event time in [since, until) (RFC3339, a date, `now`, or relative: `-15m`, `2h`, `-7d`)
    host        shell glob over the event's host (dest_host, else SNI, else DNS name), case-insensitive;
                `*` also matches dots: `*.example.com` is every subdomain, not the name itself
    decision    allow | deny | report
    kind        dns | tls | http | tcp | connect | session
    rule        exact rule name
    alerts      only events with an alert or detections
"""

from __future__ import annotations

import fnmatch
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from gateway.log import events as ev
from gateway.logindex import QueryError

DECISIONS = ("allow", "deny", "report")
KINDS = ev.KINDS

_RELATIVE = re.compile(r"^([+-]?)(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)$", re.I)
_UNIT = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, now: float | None = None) -> float:
    """RFC3339 (`2026-11-22T23:11:54Z`, offsets allowed), a date, `now`, or `-15m` / `2h` ago."""
    value = text.strip()
    now = time.time() if now is None else now
    if value.lower() == "now":
        return now
    m = _RELATIVE.match(value)
    if m:
        amount = float(m.group(2)) * _UNIT[m.group(3).lower()]
        return now + amount if m.group(1) == "+" else now - amount
    try:
        dt = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise QueryError(
            f"time {text!r} is not understood (fix: write RFC3339 like 2026-11-22T23:11:54Z, "
            "a date like 2026-11-22, `now`, or a relative time like -15m, -2h, -7d)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)  # the log is in UTC; so are times given without an offset
    return dt.timestamp()


def event_time(event: dict) -> float | None:
    """The event's time as a Unix timestamp, None when it has none or it is unreadable."""
    t = event.get("time")
    if not isinstance(t, str):
        return None
    try:
        return datetime.fromisoformat(t).timestamp()
    except ValueError:
        return None


def host_of(event: dict) -> str:
    """The one host an event is about: destination host, else SNI, else DNS name (lower-case, no dot)."""
    h = event.get("dest_host") or event.get("sni") or event.get("dns_qname") or ""
    if not isinstance(h, str):
        h = str(h)
    return h.lower().rstrip(".")


def is_alert(event: dict) -> bool:
    return bool(event.get("alert")) or bool(event.get("detections"))


def _glob_kind(pattern: str) -> tuple[str, str]:
    """How the index can answer a host glob: exact, prefix, suffix (on reversed names) or scan."""
    wild = re.compile(r"[*?\[]")
    if not wild.search(pattern):
        return "exact", pattern
    if pattern.startswith("*") and not wild.search(pattern[1:]):
        return "suffix", pattern[1:]
    return "scan", pattern


@dataclass(frozen=True)
class Filter:
    sessions: tuple[str, ...] = ()
    since: float | None = None
    until: float | None = None
    host: str | None = None
    decision: str | None = None
    kind: str | None = None
    rule: str | None = None
    alerts: bool = False

    def __post_init__(self):
        if self.decision is not None and self.decision not in DECISIONS:
            raise QueryError(f"decision {self.decision!r} is not one of {', '.join(DECISIONS)}")
        if self.kind is not None and self.kind not in KINDS:
            raise QueryError(f"event kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.host is not None:
            object.__setattr__(self, "host", self.host.lower().rstrip("."))
        if self.since is not None and self.until is not None and self.until < self.since:
            raise QueryError("--until is before --since (fix: swap them)")

    @classmethod
    def from_args(cls, args, now: float | None = None) -> "Filter":
        return cls(
            sessions=tuple(args.session or ()),
            since=parse_time(args.since, now) if args.since else None,
            until=parse_time(args.until, now) if args.until else None,
            host=args.host, decision=args.decision, kind=args.kind, rule=args.rule, alerts=args.alerts,
        )

    def match(self, event: dict, ts: float | None = None) -> bool:
        if self.sessions and event.get("session") not in self.sessions:
            return False
        if self.kind is not None and event.get("event") != self.kind:
            return False
        if self.decision is not None and event.get("decision") != self.decision:
            return False
        if self.rule is not None and event.get("rule") != self.rule:
            return False
        if self.alerts and not is_alert(event):
            return False
        if self.since is not None or self.until is not None:
            ts = event_time(event) if ts is None else ts
            if ts is None:
                return False
            if self.since is not None and ts < self.since:
                return False
            if self.until is not None and ts >= self.until:
                return False
        if self.host is not None and not fnmatch.fnmatchcase(host_of(event), self.host):
            return False
        return True

    def sql(self) -> tuple[str, list]:
        """A WHERE clause (without the word) over the index's `events` columns, and its parameters."""
        where: list[str] = []
        params: list = []
        if self.sessions:
            where.append(f"session IN ({','.join('?' * len(self.sessions))})")
            params.extend(self.sessions)
        for column, value in (("kind", self.kind), ("decision", self.decision), ("rule", self.rule)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if self.alerts:
            where.append("alert = 1")
        if self.since is not None:
            where.append("ts >= ?")
            params.append(self.since)
        if self.until is not None:
            where.append("ts < ?")
            params.append(self.until)
        if self.host is not None:
            how, text = _glob_kind(self.host)
            if how == "exact":
                where.append("host = ?")
                params.append(text)
            elif how == "suffix":
                # `*.example.com` -> reversed names starting with `moc.elpmaxe.`: an index range scan.
                where.append("rhost GLOB ?")
                params.append(_glob_literal(text[::-1]) + "*")
            else:
                where.append("host GLOB ?")
                params.append(self.host)
        return " AND ".join(where) or "1", params

    def describe_args(self) -> list[str]:
        """The `log query` options that express this filter (for "N more: run ..." lines)."""
        out: list[str] = []
        for s in self.sessions:
            out += ["--session", s]
        for opt, value in (("--host", self.host), ("--decision", self.decision), ("--kind", self.kind),
                           ("--rule", self.rule)):
            if value is not None:
                out += [opt, value]
        if self.since is not None:
            out += ["--since", ev.rfc3339(self.since)]
        if self.until is not None:
            out += ["--until", ev.rfc3339(self.until)]
        if self.alerts:
            out.append("--alerts")
        return out


def _glob_literal(text: str) -> str:
    """Escape GLOB's special characters so `text` matches only itself."""
    return re.sub(r"([*?\[])", r"[\1]", text)
