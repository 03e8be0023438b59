"""One streaming pass over flow-log events: what the review report shows, per session and overall.

Memory stays bounded whatever the log holds: per session, counters and the
timestamps the charts need (8 bytes each); tables keyed by something the
sandbox chooses (hosts, DNS names) keep their heaviest entries and fold the
rest into an "other" count once they grow past a cap; detail lists (alerts)
keep the first few and a total. The overall view is the sum of the sessions,
made once at the end.

What is counted as what:

    request    an HTTP request, a raw TCP connection (its opening decision), a refused explicit-proxy
               CONNECT, and a TLS connection not intercepted (refused at ClientHello or passed through);
               an intercepted TLS connection or an allowed CONNECT tunnel is counted by what went inside
    refusal    any event with decision `deny` (DNS included)
    bytes      request bytes sent (`bytes_out`) and received (`bytes_in`), from HTTP and closed TCP events
"""

from __future__ import annotations

import heapq
from array import array
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.logindex.query import event_time, host_of

NO_SESSION = "(no session)"
NO_HOST = "(no host)"
FINDINGS_PER_SESSION = 50
NX_BURST_COUNT = 20  # NXDOMAIN answers ...
NX_BURST_SECONDS = 60.0  # ... within this many seconds make a burst
TABLE_CAP = 20_000  # keys kept per sandbox-keyed table before the lightest are folded into "other"


class CappedCounter:
    """A Counter of at most about `cap` keys: past 2*cap, the lightest half is folded into `other`.

    Heavy keys stay exact; a folded key that comes back starts from zero again, so counts of
    keys seen after a fold are lower bounds (the report says "at least" when `other` > 0).
    """

    __slots__ = ("counts", "cap", "other")

    def __init__(self, cap: int = TABLE_CAP):
        self.counts: dict = {}
        self.cap = cap
        self.other = 0

    def add(self, key, n: int = 1) -> None:
        c = self.counts
        c[key] = c.get(key, 0) + n
        if len(c) > 2 * self.cap:
            self._fold()

    def _fold(self) -> None:
        keep = heapq.nlargest(self.cap, self.counts.items(), key=lambda kv: kv[1])
        self.other += sum(self.counts.values()) - sum(v for _, v in keep)
        self.counts = dict(keep)

    def merge(self, other: "CappedCounter") -> None:
        for k, v in other.counts.items():
            self.counts[k] = self.counts.get(k, 0) + v
        self.other += other.other
        if len(self.counts) > 2 * self.cap:
            self._fold()

    def top(self, n: int) -> list[tuple]:
        return heapq.nlargest(n, self.counts.items(), key=lambda kv: (kv[1], str(kv[0])))

    def __len__(self) -> int:
        return len(self.counts)

    def total(self) -> int:
        return sum(self.counts.values()) + self.other


class HostTable:
    """host -> [requests, allowed, refused, bytes_out, bytes_in], capped like CappedCounter (by requests)."""

    __slots__ = ("rows", "cap", "other_requests", "other_hosts")

    def __init__(self, cap: int = TABLE_CAP):
        self.rows: dict[str, list[int]] = {}
        self.cap = cap
        self.other_requests = 0
        self.other_hosts = 0

    def row(self, host: str) -> list[int]:
        r = self.rows.get(host)
        if r is None:
            if len(self.rows) >= 2 * self.cap:
                self._fold()
            r = self.rows[host] = [0, 0, 0, 0, 0]
        return r

    def _fold(self) -> None:
        keep = heapq.nlargest(self.cap, self.rows.items(), key=lambda kv: (kv[1][0], kv[1][3]))
        dropped = len(self.rows) - len(keep)
        self.other_requests += sum(r[0] for r in self.rows.values()) - sum(r[0] for _, r in keep)
        self.other_hosts += dropped
        self.rows = dict(keep)

    def merge(self, other: "HostTable") -> None:
        for h, r in other.rows.items():
            mine = self.rows.get(h)
            if mine is None:
                self.rows[h] = list(r)
            else:
                for i in range(5):
                    mine[i] += r[i]
        self.other_requests += other.other_requests
        self.other_hosts += other.other_hosts
        if len(self.rows) > 2 * self.cap:
            self._fold()

    def top(self, n: int, by: int) -> list[tuple[str, list[int]]]:
        return heapq.nlargest(n, self.rows.items(), key=lambda kv: (kv[1][by], kv[1][0], kv[0]))


@dataclass
class Finding:
    """An alert, a detection or a placeholder misuse: shown with what the log says, nothing more."""

    time: str
    ts: float
    session: str
    kind: str
    host: str
    decision: str
    reason: str
    secrets: list
    detections: list
    detail: str
    url: str


@dataclass
class Scope:
    """Everything the report shows about one session (or, merged, about all of them)."""

    session: str = ""
    name: str = ""
    policy: str = ""
    events: int = 0
    requests: int = 0
    allowed: int = 0
    refused: int = 0
    reported: int = 0
    dns: int = 0
    dns_refused: int = 0
    nxdomain: int = 0
    alerts: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    first: float | None = None
    last: float | None = None
    kinds: Counter = field(default_factory=Counter)
    hosts: HostTable = field(default_factory=HostTable)
    refusals: CappedCounter = field(default_factory=CappedCounter)  # (reason, kind, host) -> n
    reasons: Counter = field(default_factory=Counter)  # reason -> refusals
    credentials: dict = field(default_factory=dict)  # (secret, host) -> [uses, allowed, refused, set(parts)]
    misuse: Counter = field(default_factory=Counter)  # reason (placeholder-*) -> n
    findings: list = field(default_factory=list)
    findings_total: int = 0
    dns_refused_names: CappedCounter = field(default_factory=CappedCounter)  # (qname, reason) -> n
    tunnels: CappedCounter = field(default_factory=CappedCounter)  # (base domain, signal) -> n
    nx_bursts: list = field(default_factory=list)  # (start ts, end ts, count)
    t_ok: array = field(default_factory=lambda: array("d"))
    t_refused: array = field(default_factory=lambda: array("d"))
    t_bytes: array = field(default_factory=lambda: array("d"))
    v_bytes: array = field(default_factory=lambda: array("q"))
    _nx: deque = field(default_factory=deque)
    _burst: list | None = None


def _base_domain(name: str) -> str:
    labels = name.rstrip(".").split(".")
    return ".".join(labels[-2:]) if len(labels) >= 2 else name


class Aggregator:
    def __init__(self, findings_per_session: int = FINDINGS_PER_SESSION):
        self.sessions: dict[str, Scope] = {}
        self.findings_cap = findings_per_session
        self.records = 0
        self.untimed = 0

    def scope(self, session: str) -> Scope:
        s = self.sessions.get(session)
        if s is None:
            s = self.sessions[session] = Scope(session=session)
        return s

    def add_all(self, events: Iterable[dict]) -> "Aggregator":
        add = self.add
        for e in events:
            add(e)
        return self

    def add(self, e: dict) -> None:
        self.records += 1
        session = e.get("session") or NO_SESSION
        s = self.sessions.get(session)
        if s is None:
            s = self.sessions[session] = Scope(session=session)
        ts = event_time(e)
        if ts is None:
            self.untimed += 1
            ts = s.last if s.last is not None else 0.0
        s.events += 1
        if s.first is None or ts < s.first:
            s.first = ts
        if s.last is None or ts > s.last:
            s.last = ts
        kind = e.get("event")
        s.kinds[kind] += 1
        if kind == "session":
            detail = e.get("detail") or ""
            what, _, name = str(detail).partition(": ")
            if name and not s.name:
                s.name = name
            if e.get("rule"):
                s.policy = str(e["rule"])
            return
        decision = e.get("decision")
        reason = e.get("reason") or ""
        host = host_of(e)
        refused = decision == "deny"
        detail = e.get("detail")
        if kind == "dns":
            s.dns += 1
            rcode = e.get("dns_rcode")
            if refused:
                s.dns_refused += 1
                s.dns_refused_names.add((host, reason))
            if rcode == "NXDOMAIN":
                s.nxdomain += 1
                self._nx(s, ts)
            if reason == "dns-tunnel" or any(str(d.get("rule", "")).startswith("dns-tunnel")
                                             for d in e.get("detections") or () if isinstance(d, dict)):
                signal = next((str(d.get("rule", "")).partition(":")[2] for d in e.get("detections") or ()
                               if isinstance(d, dict) and str(d.get("rule", "")).startswith("dns-tunnel")), "")
                s.tunnels.add((_base_domain(host), signal or reason))
            request = False
        elif kind == "tls":
            request = refused or detail != "intercept"
        elif kind == "tcp":
            request = detail != "closed"
        elif kind == "connect":
            request = refused  # an allowed tunnel is counted through the TLS / HTTP events inside it
        else:  # http
            request = True
        if request:
            s.requests += 1
            row = s.hosts.row(host or str(e.get("dest_ip") or NO_HOST))
            row[0] += 1
            if refused:
                row[2] += 1
            else:
                row[1] += 1
                s.t_ok.append(ts)
                if decision == "report":
                    s.reported += 1
                else:
                    s.allowed += 1
        if refused:
            s.refused += 1
            s.reasons[reason] += 1
            s.refusals.add((reason, kind, host or str(e.get("dest_ip") or "")))
            s.t_refused.append(ts)
        out = e.get("bytes_out")
        if isinstance(out, int) and out > 0 and kind in ("http", "tcp"):
            s.bytes_out += out
            s.t_bytes.append(ts)
            s.v_bytes.append(out)
            row = s.hosts.row(host or str(e.get("dest_ip") or NO_HOST))
            row[3] += out
        inn = e.get("bytes_in")
        if isinstance(inn, int) and inn > 0 and kind in ("http", "tcp"):
            s.bytes_in += inn
            s.hosts.row(host or str(e.get("dest_ip") or NO_HOST))[4] += inn
        secrets = e.get("secrets")
        if secrets:
            for item in secrets:
                name, _, part = str(item).partition("@")
                key = (name, host)
                c = s.credentials.get(key)
                if c is None:
                    c = s.credentials[key] = [0, 0, 0, set()]
                c[0] += 1
                c[2 if refused else 1] += 1
                if part:
                    c[3].add(part)
        if reason.startswith("placeholder-"):
            s.misuse[reason] += 1
        if e.get("alert") or e.get("detections") or reason.startswith("placeholder-"):
            s.alerts += 1
            s.findings_total += 1
            if len(s.findings) < self.findings_cap:
                s.findings.append(Finding(
                    time=str(e.get("time", "")), ts=ts, session=session, kind=str(kind), host=host,
                    decision=str(decision or ""), reason=reason, secrets=list(secrets or ()),
                    detections=[d for d in (e.get("detections") or ()) if isinstance(d, dict)][:8],
                    detail=str(detail or ""), url=str(e.get("url") or "")))

    @staticmethod
    def _nx(s: Scope, ts: float) -> None:
        q = s._nx
        q.append(ts)
        while q and q[0] < ts - NX_BURST_SECONDS:
            q.popleft()
        if len(q) >= NX_BURST_COUNT:
            b = s._burst
            if b is not None and q[0] <= b[1]:
                b[1] = ts
                b[2] += 1
            else:
                s._burst = [q[0], ts, len(q)]
                s.nx_bursts.append(s._burst)

    # --- the overall view ---------------------------------------------------------------------

    def overall(self) -> Scope:
        total = Scope(session="all sessions")
        for s in self.sessions.values():
            merge_scope(total, s, overall=True)
        total.findings.sort(key=lambda f: f.ts)
        total.nx_bursts.sort(key=lambda b: b[1])
        return total

    def merge(self, later: "Aggregator") -> "Aggregator":
        """Add what another aggregator saw in the files after this one's (parallel passes)."""
        self.records += later.records
        self.untimed += later.untimed
        for key, scope in later.sessions.items():
            mine = self.sessions.get(key)
            if mine is None:
                self.sessions[key] = scope
            else:
                merge_scope(mine, scope, overall=False)
                del mine.findings[self.findings_cap:]
        return self

    def credential_sessions(self) -> dict[tuple[str, str], int]:
        """(secret, host) -> how many sessions used it."""
        out: Counter = Counter()
        for s in self.sessions.values():
            out.update(s.credentials.keys())
        return out


_SUMS = ("events", "requests", "allowed", "refused", "reported", "dns", "dns_refused", "nxdomain", "alerts",
         "bytes_out", "bytes_in", "findings_total")


def merge_scope(into: Scope, s: Scope, overall: bool) -> None:
    """Add scope `s` to `into`: a session's later part (overall=False) or one session to the total."""
    for name in _SUMS:
        setattr(into, name, getattr(into, name) + getattr(s, name))
    if s.first is not None and (into.first is None or s.first < into.first):
        into.first = s.first
    if s.last is not None and (into.last is None or s.last > into.last):
        into.last = s.last
    into.name = into.name or s.name
    into.policy = s.policy or into.policy
    into.kinds.update(s.kinds)
    into.hosts.merge(s.hosts)
    into.refusals.merge(s.refusals)
    into.reasons.update(s.reasons)
    into.misuse.update(s.misuse)
    into.dns_refused_names.merge(s.dns_refused_names)
    into.tunnels.merge(s.tunnels)
    for key, c in s.credentials.items():
        t = into.credentials.get(key)
        if t is None:
            t = into.credentials[key] = [0, 0, 0, set()]
        t[0] += c[0]
        t[1] += c[1]
        t[2] += c[2]
        t[3] |= c[3]
    into.findings.extend(s.findings)
    if overall:
        into.nx_bursts.extend((s.session, *b) for b in s.nx_bursts)
    else:
        for b in s.nx_bursts:  # a burst cut by a file boundary is one burst
            last = into.nx_bursts[-1] if into.nx_bursts else None
            if last is not None and b[0] - last[1] <= NX_BURST_SECONDS:
                last[1] = max(last[1], b[1])
                last[2] += b[2]
            else:
                into.nx_bursts.append(list(b))
    into.t_ok.extend(s.t_ok)
    into.t_refused.extend(s.t_refused)
    into.t_bytes.extend(s.t_bytes)
    into.v_bytes.extend(s.v_bytes)


def aggregate(events: Iterable[dict]) -> Aggregator:
    return Aggregator().add_all(events)
