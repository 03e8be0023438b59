"""The review report: one self-contained HTML file from an `Aggregator`.

No script, no external resource: inline CSS, inline SVG, and a Content
Security Policy (`default-src 'none'`) that would block any fetch anyway.
Every string from the log goes through `h()` (html.escape): URLs, hosts, DNS
names, reasons and even session ids are sandbox-influenced or could come from
an edited log. Long tables stop at `top` rows and say how many more there are,
with the `egressgw log query` command that lists them all.
"""

from __future__ import annotations

import shlex
import time
from datetime import datetime, timezone
from html import escape
from importlib import resources
from string import Template

from gateway.review import charts
from gateway.review.aggregate import NO_SESSION, NX_BURST_COUNT, NX_BURST_SECONDS, Aggregator, Scope
from gateway.review.integrity import Integrity

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


def h(value) -> str:
    return escape("" if value is None else str(value), quote=True)


def _iso(ts: float | None) -> str:
    if ts is None:
        return "–"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "–"
    s = int(b - a)
    d, s = divmod(s, 86400)
    hh, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return " ".join(p for p in (f"{d}d" if d else "", f"{hh}h" if hh else "", f"{m}m" if m else "", f"{s}s") if p)


def _n(x) -> str:
    return f"{x:,}"


def _tag(decision: str) -> str:
    cls = decision if decision in ("allow", "deny", "report") else ""
    return f'<span class="tag {cls}">{h(decision or "–")}</span>'


FOLD = 25  # rows shown before the rest of a table folds under "N more rows"


def _table(headers: list[str], rows: list[list[str]], numeric: set[int] = frozenset(), fold: int = FOLD) -> str:
    """Rows of cell HTML (already escaped by the caller); rows past `fold` open on a click (no script)."""
    head = "".join(f'<th class="n">{h(t)}</th>' if i in numeric else f"<th>{h(t)}</th>" for i, t in enumerate(headers))

    def body(part):
        return "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                        for i, c in enumerate(row)) + "</tr>" for row in part)

    out = f"<table><thead><tr>{head}</tr></thead><tbody>{body(rows[:fold])}</tbody></table>"
    if len(rows) > fold:
        out += (f'<details class="fold"><summary>{len(rows) - fold:,} more rows</summary>'
                f"<table><thead><tr>{head}</tr></thead><tbody>{body(rows[fold:])}</tbody></table></details>")
    return out


class Report:
    def __init__(self, agg: Aggregator, logs: list[str], integrity: Integrity, *, top: int = 200,
                 session_details: int = 50, title: str | None = None):
        self.agg = agg
        self.logs = [str(p) for p in logs]
        self.integrity = integrity
        self.top = top
        self.session_details = session_details
        self.title = title or "egressgw flow-log review"
        self.all = agg.overall()

    # --- helpers --------------------------------------------------------------------------------

    def cmd(self, *args: str) -> str:
        return "egressgw log query " + " ".join(shlex.quote(a) for a in (*self.logs, *args))

    def more(self, shown: int, total: int, *args: str, what: str = "rows", how: str = "The events: ") -> str:
        if total <= shown:
            return ""
        return (f'<p class="more">{_n(total - shown)} more {h(what)} not in this report. {h(how)}'
                f"<code>{h(self.cmd(*args))}</code></p>")

    def _session_args(self, s: Scope) -> list[str]:
        return [] if s is self.all or s.session == NO_SESSION else ["--session", s.session]

    # --- the page -------------------------------------------------------------------------------

    def html(self) -> str:
        a = self.all
        body = [self._header(), self._nav(), '<section id="summary"><h2>Summary</h2>', self._cards(a), "</section>",
                '<section id="timeline"><h2>Timeline</h2>', self._charts(a), "</section>",
                '<section id="destinations"><h2>Destinations</h2>', self._destinations(a, self.top, charts_too=True),
                "</section>",
                '<section id="refusals"><h2>Refused attempts</h2>', self._refusals(a, self.top), "</section>",
                '<section id="detections"><h2>Detections and placeholder misuse</h2>', self._findings(a, self.top),
                "</section>",
                '<section id="credentials"><h2>Credentials used</h2>', self._credentials(a), "</section>",
                '<section id="dns"><h2>DNS anomalies</h2>', self._dns(a, self.top), "</section>",
                '<section id="sessions"><h2>Sessions</h2>', self._sessions_table(), self._session_sections(),
                "</section>",
                self._footer()]
        template = Template(resources.files("gateway.review").joinpath("templates/report.html").read_text())
        css = resources.files("gateway.review").joinpath("templates/report.css").read_text()
        return template.substitute(csp=CSP, title=h(self.title), css=css, body="\n".join(body))

    def _header(self) -> str:
        a = self.all
        i = self.integrity
        sessions = len([s for s in self.agg.sessions if s != NO_SESSION])
        logs = " ".join(f"<code>{h(p)}</code>" for p in self.logs)
        return (f"<header><h1>{h(self.title)}</h1>"
                f'<p class="meta">Logs: {logs}</p>'
                f'<p class="meta">Period: {h(_iso(a.first))} → {h(_iso(a.last))} ({h(_duration(a.first, a.last))}); '
                f"{_n(self.agg.records)} events, {_n(sessions)} sessions. Generated {h(_iso(time.time()))}.</p>"
                f'<div class="verdict {i.css}" id="integrity">{h(i.headline)} — <span>{h(i.text)}</span></div>'
                "</header>")

    @staticmethod
    def _nav() -> str:
        links = [("summary", "Summary"), ("timeline", "Timeline"), ("destinations", "Destinations"),
                 ("refusals", "Refusals"), ("detections", "Detections"), ("credentials", "Credentials"),
                 ("dns", "DNS"), ("sessions", "Sessions")]
        return "<nav>" + "".join(f'<a href="#{k}">{h(v)}</a>' for k, v in links) + "</nav>"

    def _cards(self, s: Scope) -> str:
        secrets = {name for name, _ in s.credentials}
        cards = [
            ("requests", _n(s.requests), ""),
            ("allowed", _n(s.allowed), ""),
            ("refused (all kinds)", _n(s.refused), "bad" if s.refused else ""),
            ("passed in report mode", _n(s.reported), "warn" if s.reported else ""),
            ("DNS queries", _n(s.dns), ""),
            ("DNS refused", _n(s.dns_refused), "bad" if s.dns_refused else ""),
            ("alerts and detections", _n(s.alerts), "bad" if s.alerts else ""),
            ("bytes sent", charts.human_bytes(s.bytes_out), ""),
            ("bytes received", charts.human_bytes(s.bytes_in), ""),
            ("credentials used", _n(len(secrets)), ""),
            ("events", _n(s.events), ""),
        ]
        if s is self.all:
            n = len([x for x in self.agg.sessions if x != NO_SESSION])
            cards.insert(0, ("sessions", _n(n), ""))
        return '<div class="cards">' + "".join(
            f'<div class="card {cls}"><div class="n">{h(v)}</div><div class="l">{h(label)}</div></div>'
            for label, v, cls in cards) + "</div>"

    def _charts(self, s: Scope) -> str:
        legend = ('<p class="legend"><span><i style="background:#3b6fb6"></i>allowed requests</span>'
                  '<span><i style="background:#c8372d"></i>refusals (any kind, DNS included)</span></p>')
        return (f"<h3>Requests and refusals over time</h3>{legend}"
                + charts.timeline(s.t_ok, s.t_refused, s.first, s.last,
                                  label=f"requests and refusals over time, {s.session}")
                + "<h3>Bytes sent over time</h3>"
                + charts.volume_over_time(s.t_bytes, s.v_bytes, s.first, s.last,
                                          label=f"bytes sent over time, {s.session}"))

    def _destinations(self, s: Scope, top: int, charts_too: bool = False) -> str:
        host_sessions = self._host_sessions() if s is self.all else None
        by_req = s.hosts.top(top, 0)
        by_bytes = [(k, r) for k, r in s.hosts.top(top, 3) if r[3] > 0]
        headers = ["host", "requests", "allowed", "refused", "sent", "received"]
        if host_sessions is not None:
            headers.append("sessions")

        def rows(items):
            out = []
            for host, r in items:
                row = [f'<span class="wrap">{h(host)}</span>', _n(r[0]), _n(r[1]), _n(r[2]),
                       h(charts.human_bytes(r[3])), h(charts.human_bytes(r[4]))]
                if host_sessions is not None:
                    row.append(_n(host_sessions.get(host, 0)))
                out.append(row)
            return out

        numeric = {1, 2, 3, 4, 5, 6}
        total = len(s.hosts.rows)
        folded = ""
        if s.hosts.other_hosts:
            folded = (f'<p class="more">At least {_n(s.hosts.other_hosts)} more hosts with '
                      f"{_n(s.hosts.other_requests)} requests were folded while counting (too many distinct hosts); "
                      "counts of the hosts shown are exact or lower bounds.</p>")
        parts = []
        if charts_too:
            vol = [(k, r[3], r[4]) for k, r in s.hosts.top(20, 3) if r[3] or r[4]]
            parts.append("<h3>Per-host volume (top 20 by bytes sent)</h3>" + charts.hbars(vol))
        if not by_req:
            return "".join(parts) + '<p class="empty">No requests.</p>'
        parts.append("<h3>By requests</h3>" + _table(headers, rows(by_req), numeric)
                     + self.more(len(by_req), total, *self._session_args(s), "--host", "HOST", what="hosts",
                               how="One host's events: "))
        parts.append("<h3>By bytes sent</h3>" + (_table(headers, rows(by_bytes), numeric) if by_bytes
                                                   else '<p class="empty">No request bytes were sent.</p>'))
        parts.append(folded)
        return "".join(parts)

    def _host_sessions(self) -> dict[str, int]:
        cached = getattr(self, "_hs", None)
        if cached is None:
            cached = {}
            for sc in self.agg.sessions.values():
                for host in sc.hosts.rows:
                    cached[host] = cached.get(host, 0) + 1
            self._hs = cached
        return cached

    def _refusals(self, s: Scope, top: int) -> str:
        if not s.refused:
            return '<p class="empty">Nothing was refused.</p>'
        per_reason: dict[str, dict[str, int]] = {}
        kinds_of: dict[str, set] = {}
        for (reason, kind, host), n in s.refusals.counts.items():
            hosts_n = per_reason.setdefault(reason, {})
            hosts_n[host] = hosts_n.get(host, 0) + n
            kinds_of.setdefault(reason, set()).add(kind)
        reason_rows = []
        for reason, n in s.reasons.most_common():
            items = sorted(per_reason.get(reason, {}).items(), key=lambda t: (-t[1], t[0]))
            kinds = sorted(map(str, kinds_of.get(reason, ())))
            hosts = ", ".join(f"<code>{h(host or '–')}</code> ({_n(c)})" for host, c in items[:5])
            if len(items) > 5:
                hosts += f" and {_n(len(items) - 5)} more"
            reason_rows.append([f"<code>{h(reason or '–')}</code>", _n(n), h(", ".join(map(str, kinds))), hosts])
        out = ["<h3>By reason</h3>", _table(["reason", "refusals", "kinds", "top hosts"], reason_rows, {1})]
        detail = s.refusals.top(top)
        rows = [[f"<code>{h(reason or '–')}</code>", h(kind), f'<span class="wrap">{h(host or "–")}</span>', _n(n)]
                for (reason, kind, host), n in detail]
        out.append("<h3>By reason and host</h3>")
        out.append(_table(["reason", "kind", "host", "refusals"], rows, {3}))
        out.append(self.more(len(detail), len(s.refusals), *self._session_args(s), "--decision", "deny",
                             what="reason/host pairs"))
        if s.refusals.other:
            out.append(f'<p class="more">{_n(s.refusals.other)} refusals of rarely seen hosts were folded while '
                       "counting.</p>")
        return "".join(out)

    def _findings(self, s: Scope, top: int) -> str:
        if not s.findings_total:
            return '<p class="empty">No alerts, detections or placeholder misuse.</p>'
        parts = []
        if s.misuse:
            parts.append("<h3>Placeholder misuse by reason</h3>" + _table(
                ["reason", "events"], [[f"<code>{h(r)}</code>", _n(n)] for r, n in s.misuse.most_common()], {1}))
        shown = s.findings[:top]
        rows = []
        for f in shown:
            dets = []
            for d in f.detections:
                bits = [f"<b>{h(d.get('rule', '?'))}</b>"]
                for key in ("label", "part", "encoding", "action"):
                    if d.get(key) not in (None, ""):
                        bits.append(f"{h(key)}={h(d[key])}")
                if d.get("offset") is not None:
                    bits.append(f"offset={h(d['offset'])}")
                if d.get("context"):
                    bits.append(f"context: <code>{h(d['context'])}</code>")
                dets.append(" ".join(bits))
            where = f.url or f.host
            rows.append([
                f'<span class="nw">{h(f.time)}</span><br><code>{h(f.session)}</code>',
                f'<div class="url wrap">{h(f.kind)}: {h(where or "–")}</div>',
                f"{_tag(f.decision)}<br><code>{h(f.reason or '–')}</code>",
                "<br>".join(f"<code>{h(x)}</code>" for x in f.secrets) or "–",
                f'<div class="det">{"<br>".join(dets) or (h(f.detail) if f.detail else "–")}</div>',
            ])
        parts.append("<h3>Events</h3>" + _table(
            ["time / session", "where", "decision / reason", "credentials (names)",
             "detections (redacted context)"], rows))
        kept = len(s.findings)
        if s.findings_total > len(shown):
            note = ""
            if kept < s.findings_total and s is self.all:
                note = " (the report keeps the first alerts of each session)"
            parts.append(self.more(len(shown), s.findings_total, *self._session_args(s), "--alerts",
                                   what="alerts" + note))
        return "".join(parts)

    def _credentials(self, s: Scope) -> str:
        if not s.credentials:
            return '<p class="empty">No credential was substituted or presented as a placeholder.</p>'
        sess = self.agg.credential_sessions() if s is self.all else None
        rows = []
        for (name, host), (uses, ok, refused, parts) in sorted(s.credentials.items(),
                                                                key=lambda kv: (kv[0][0], -kv[1][0], kv[0][1])):
            row = [f"<code>{h(name)}</code>", f'<span class="wrap">{h(host or "–")}</span>', _n(uses), _n(ok),
                   _n(refused), h(", ".join(sorted(map(str, parts))) or "–")]
            if sess is not None:
                row.append(_n(sess.get((name, host), 0)))
            rows.append(row)
        headers = ["credential", "host", "uses", "substituted / allowed", "refused", "parts"]
        if sess is not None:
            headers.append("sessions")
        shown = rows[: self.top]
        return (_table(headers, shown, {2, 3, 4, 6}) + self.more(len(shown), len(rows), *self._session_args(s),
                                                                  what="credential/host pairs")
                + '<p class="more">Names only: the log never holds a credential\'s value.</p>')

    def _dns(self, s: Scope, top: int) -> str:
        parts = []
        if s.tunnels.total():
            rows = [[f'<span class="wrap">{h(base)}</span>', f"<code>{h(signal)}</code>", _n(n)]
                    for (base, signal), n in s.tunnels.top(top)]
            parts.append("<h3>Suspected DNS tunnels</h3>" + _table(["base domain", "signal", "queries"], rows, {2}))
        else:
            parts.append("<h3>Suspected DNS tunnels</h3><p class=\"empty\">None detected.</p>")
        if s.dns_refused:
            top_names = s.dns_refused_names.top(top)
            rows = [[f'<span class="wrap">{h(name or "–")}</span>', f"<code>{h(reason or '–')}</code>", _n(n)]
                    for (name, reason), n in top_names]
            parts.append("<h3>Refused names</h3>" + _table(["name", "reason", "queries"], rows, {2})
                         + self.more(len(top_names), len(s.dns_refused_names), *self._session_args(s),
                                     "--kind", "dns", "--decision", "deny", what="names"))
        else:
            parts.append("<h3>Refused names</h3><p class=\"empty\">No DNS query was refused.</p>")
        bursts = s.nx_bursts
        title = f"<h3>NXDOMAIN bursts (≥ {NX_BURST_COUNT} within {NX_BURST_SECONDS:.0f} s)</h3>"
        if bursts:
            rows = []
            for b in bursts[:top]:
                if s is self.all:
                    sess, start, end, n = b
                else:
                    sess, (start, end, n) = s.session, b
                rows.append([f"<code>{h(sess)}</code>", h(_iso(start)), h(_duration(start, end)), _n(n)])
            parts.append(title + _table(["session", "from", "lasting", "NXDOMAIN answers"], rows, {3}))
            if len(bursts) > top:
                parts.append(f'<p class="more">{_n(len(bursts) - top)} more bursts not shown.</p>')
        else:
            parts.append(title + '<p class="empty">None.</p>')
        return "".join(parts)

    def _ranked_sessions(self) -> list[Scope]:
        return sorted((s for s in self.agg.sessions.values()),
                      key=lambda s: (-s.alerts, -s.refused, -s.requests, -s.events, s.session))

    def _sessions_table(self) -> str:
        ranked = self._ranked_sessions()
        if not ranked:
            return '<p class="empty">No events.</p>'
        self._anchors = {s.session: f"s{i}" for i, s in enumerate(ranked[: self.session_details])}
        rows = []
        for s in ranked[: self.top]:
            top_host = s.hosts.top(1, 0)
            anchor = self._anchors.get(s.session)
            sid = f'<a href="#{anchor}"><code>{h(s.session)}</code></a>' if anchor else f"<code>{h(s.session)}</code>"
            rows.append([sid, h(s.name or "–"), h(s.policy or "–"), h(_iso(s.first)), h(_duration(s.first, s.last)),
                         _n(s.events), _n(s.requests), _n(s.refused), _n(s.alerts),
                         h(charts.human_bytes(s.bytes_out)),
                         f'<span class="wrap">{h(top_host[0][0])}</span>' if top_host else "–"])
        out = ('<p class="more">Sessions with alerts first, then by refusals and requests.</p>'
               + _table(["session", "name", "policy", "first event", "span", "events", "requests", "refused",
                         "alerts", "sent", "top host"], rows, {5, 6, 7, 8, 9}))
        if len(ranked) > self.top:
            out += (f'<p class="more">{_n(len(ranked) - self.top)} more sessions not shown. One session\'s events: '
                    f"<code>{h(self.cmd('--session', 'SESSION'))}</code></p>")
        return out

    def _session_sections(self) -> str:
        ranked = self._ranked_sessions()[: self.session_details]
        if not ranked:
            return ""
        out = [f"<h3>Per session (the {_n(len(ranked))} sessions listed first above)</h3>"]
        for s in ranked:
            anchor = self._anchors[s.session]
            summary = (f"<code>{h(s.session)}</code> {h(s.name)} — {_n(s.requests)} requests, "
                       f"{_n(s.refused)} refused, {_n(s.alerts)} alerts, {h(charts.human_bytes(s.bytes_out))} sent")
            open_ = " open" if (s.alerts or s.refused) and s is ranked[0] else ""
            out.append(
                f'<details class="session" id="{anchor}"{open_}><summary>{summary}</summary>'
                f'<p class="meta">Policy {h(s.policy or "–")}; {h(_iso(s.first))} → {h(_iso(s.last))}. '
                f"All its events: <code>{h(self.cmd('--session', s.session))}</code></p>"
                + self._cards(s)
                + self._charts(s)
                + "<h3>Destinations</h3>" + self._destinations(s, 10)
                + "<h3>Refused attempts</h3>" + self._refusals(s, 20)
                + "<h3>Detections and placeholder misuse</h3>" + self._findings(s, 20)
                + "<h3>Credentials used</h3>" + self._credentials(s)
                + "<h3>DNS anomalies</h3>" + self._dns(s, 20)
                + "</details>")
        return "".join(out)

    def _footer(self) -> str:
        untimed = (f" {_n(self.agg.untimed)} events had no readable time." if self.agg.untimed else "")
        return (f"<footer>Made by <code>egressgw review</code> from the flow log alone (no network access; this page "
                f"loads nothing). Bodies and header values are never in the log; URL query values are removed by "
                f"the gateway; credentials appear by name only.{h(untimed)}</footer>")


def render(agg: Aggregator, logs: list[str], integrity: Integrity, **kw) -> str:
    return Report(agg, logs, integrity, **kw).html()
