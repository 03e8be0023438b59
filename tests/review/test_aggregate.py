"""gateway/review/aggregate.py: what counts as what, per session and overall, in bounded memory."""

from __future__ import annotations

from gateway.log.events import rfc3339
from gateway.review.aggregate import NO_SESSION, NX_BURST_COUNT, Aggregator, CappedCounter, HostTable

T0 = 1_795_000_000.0


def ev(i: int, kind: str, **f) -> dict:
    return {"time": rfc3339(T0 + i), "event": kind, **f}


EVENTS = [
    ev(0, "session", session="s-a", rule="github", detail="created: agent-a"),
    ev(1, "dns", session="s-a", dns_qname="api.github.com", dns_rcode="NOERROR", decision="allow", reason="allowed"),
    ev(2, "tls", session="s-a", sni="api.github.com", dest_host="api.github.com", decision="allow", detail="intercept"),
    ev(3, "http", session="s-a", dest_host="api.github.com", method="GET", decision="allow", status=200,
       bytes_out=100, bytes_in=5000, secrets=["GITHUB_TOKEN@headers"]),
    ev(4, "http", session="s-a", dest_host="api.github.com", method="POST", decision="allow", status=201,
       bytes_out=300, bytes_in=10, secrets=["GITHUB_TOKEN@headers"]),
    ev(5, "tls", session="s-a", sni="pinned.test", dest_host="pinned.test", decision="allow", detail="passthrough"),
    ev(6, "tls", session="s-a", sni="evil.test", dest_host="evil.test", decision="deny", reason="host-not-allowed"),
    ev(7, "dns", session="s-a", dns_qname="evil.test", dns_rcode="NXDOMAIN", decision="deny",
       reason="host-not-allowed"),
    ev(8, "http", session="s-a", dest_host="paste.test", method="POST", decision="deny", status=403,
       reason="placeholder-not-approved", secrets=["GITHUB_TOKEN@headers"], alert=True, bytes_out=50),
    ev(9, "tcp", session="s-a", dest_host="git.test", dest_port=22, decision="allow", reason="allowed"),
    ev(10, "tcp", session="s-a", dest_host="git.test", dest_port=22, decision="allow", bytes_out=700, bytes_in=9000,
       detail="closed"),
    ev(11, "http", session="s-b", dest_host="api.github.com", method="GET", decision="report", status=200,
       reason="host-not-allowed", bytes_in=10),
    ev(12, "http", session="s-b", dest_host="up.test", method="POST", decision="deny", status=403,
       reason="exfiltration", alert=True, detections=[{"rule": "aws-access-key", "part": "body",
                                                       "context": "k=AKIA[REDACTED:16]"}]),
    ev(13, "dns", session="s-b", dns_qname="aaaa.t.tunnel.test", dns_rcode="REFUSED", decision="deny",
       reason="dns-tunnel", detections=[{"rule": "dns-tunnel:entropy", "part": "dns_qname"}], alert=True),
    ev(14, "connect", client="10.9.9.9:1234", decision="deny", reason="no-session"),
    ev(15, "connect", session="s-b", dest_host="api.github.com", dest_port=443, decision="allow"),  # a tunnel
]


def test_counts_per_session():
    agg = Aggregator().add_all(EVENTS)
    a = agg.sessions["s-a"]
    assert (a.name, a.policy) == ("agent-a", "github")
    # requests: 3 http + passthrough tls + refused tls + tcp opening; the intercepted tls and the tcp close are not
    assert a.requests == 6
    assert a.allowed == 4 and a.refused == 3 and a.dns == 2 and a.dns_refused == 1 and a.nxdomain == 1
    assert a.bytes_out == 100 + 300 + 50 + 700 and a.bytes_in == 5000 + 10 + 9000
    assert a.alerts == 1 and a.misuse == {"placeholder-not-approved": 1}
    assert a.credentials[("GITHUB_TOKEN", "api.github.com")] == [2, 2, 0, {"headers"}]
    assert a.credentials[("GITHUB_TOKEN", "paste.test")][:3] == [1, 0, 1]
    assert a.hosts.rows["api.github.com"] == [2, 2, 0, 400, 5010]
    assert a.hosts.rows["git.test"][:1] == [1] and a.hosts.rows["git.test"][3:] == [700, 9000]
    assert a.reasons == {"host-not-allowed": 2, "placeholder-not-approved": 1}
    assert a.dns_refused_names.counts == {("evil.test", "host-not-allowed"): 1}
    b = agg.sessions["s-b"]
    assert b.reported == 1 and b.allowed == 0 and b.alerts == 2
    assert b.tunnels.counts == {("tunnel.test", "entropy"): 1}
    assert b.findings[0].detections[0]["context"] == "k=AKIA[REDACTED:16]"
    assert agg.sessions[NO_SESSION].refused == 1 and agg.sessions[NO_SESSION].requests == 1
    assert b.requests == 2  # the allowed CONNECT is counted through what went inside it


def test_overall_is_the_sum():
    agg = Aggregator().add_all(EVENTS)
    total = agg.overall()
    assert total.events == len(EVENTS)
    assert total.requests == sum(s.requests for s in agg.sessions.values())
    assert total.refused == 3 + 2 + 1 and total.alerts == 3
    assert total.hosts.rows["api.github.com"][0] == 3
    assert [f.reason for f in total.findings] == ["placeholder-not-approved", "exfiltration", "dns-tunnel"]
    assert len(total.t_ok) == total.allowed + total.reported and len(total.t_refused) == total.refused
    assert agg.credential_sessions()[("GITHUB_TOKEN", "api.github.com")] == 1


def test_nxdomain_bursts():
    agg = Aggregator()
    for i in range(NX_BURST_COUNT + 5):  # one every second
        agg.add(ev(i, "dns", session="s-x", dns_qname=f"h{i}.invalid", dns_rcode="NXDOMAIN", decision="deny"))
    agg.add({"time": "2026-11-18T12:00:00.000000Z", "event": "dns", "session": "s-x", "dns_rcode": "NXDOMAIN"})
    bursts = agg.sessions["s-x"].nx_bursts
    assert len(bursts) == 1 and bursts[0][2] == NX_BURST_COUNT + 5  # one burst: every NXDOMAIN of it
    quiet = Aggregator()
    for i in range(0, NX_BURST_COUNT * 4, 4):  # one every 4 s: never 20 within 60 s
        quiet.add(ev(i, "dns", session="s-y", dns_rcode="NXDOMAIN", decision="deny"))
    assert quiet.sessions["s-y"].nx_bursts == []


def test_findings_are_capped_per_session_but_counted():
    agg = Aggregator(findings_per_session=5)
    for i in range(40):
        agg.add(ev(i, "http", session="s-z", dest_host="x.test", decision="deny", reason="exfiltration", alert=True))
    s = agg.sessions["s-z"]
    assert len(s.findings) == 5 and s.findings_total == 40 and s.alerts == 40


def test_capped_counter_keeps_heavy_keys_exact():
    c = CappedCounter(cap=10)
    for i in range(1000):
        c.add("heavy")
        c.add(f"once-{i}")
    assert len(c) <= 20 and c.counts["heavy"] == 1000
    assert c.total() == 2000 and c.other > 0


def test_host_table_folds_light_hosts():
    t = HostTable(cap=5)
    for i in range(100):
        t.row("busy.test")[0] += 1
        t.row(f"random-{i}.test")[0] += 1
    assert len(t.rows) <= 10 and t.rows["busy.test"][0] == 100 and t.other_hosts > 0


def test_untimed_events_are_counted_not_dropped():
    agg = Aggregator().add_all([{"event": "http", "session": "s", "decision": "allow", "time": "bad"}])
    assert agg.records == 1 and agg.untimed == 1 and agg.sessions["s"].requests == 1
