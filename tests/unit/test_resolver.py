"""gateway/resolver.py against a real DNS server (the lab's, in-process) on 127.0.0.1."""

from __future__ import annotations

import socket
import time
import types

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from gateway import resolver as resolver_mod
from gateway.config import Listen
from gateway.lab.dnsserver import DNSServer
from gateway.lab.records import read_records
from gateway.resolver import CACHE_TTL_CAP, DnsFailure, UpstreamResolver

from .helpers import run

MANY = [f"198.18.2.{i}" for i in range(1, 61)]  # 60 A records: far over 512 bytes, UDP answer is truncated

ZONE = {
    "ttl": 30,
    "records": {
        "a.test.": {"A": ["198.18.1.10", "198.18.1.11"], "AAAA": ["2001:db8::1"], "TXT": ["hello"]},
        "both.test.": {"A": ["198.18.1.14"], "AAAA": ["2001:db8::14"]},
        "v6only.test.": {"AAAA": ["2001:db8::6"]},
        "alias.test.": {"CNAME": "a.test."},
        "short.test.": {"A": ["198.18.1.12"], "ttl": 5},
        "long.test.": {"A": ["198.18.1.13"], "ttl": 86400},
        "many.test.": {"A": MANY},
        "txtonly.test.": {"TXT": ["no addresses here"]},
    },
    "servfail": ["broken.test."],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    record = tmp_path_factory.mktemp("dns") / "dns.jsonl"
    srv = DNSServer({**ZONE, "listen": ["127.0.0.1", 0], "record": str(record)})
    srv.start()
    yield srv
    srv.stop()


def queries(server, qname: str) -> list[dict]:
    return read_records(server.recorder.path, qname=qname)


def upstream(server, **kw) -> UpstreamResolver:
    return UpstreamResolver((Listen("127.0.0.1", server.port),), **{"timeout": 2.0, **kw})


def dead_udp_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_query_forwards_any_type_and_returns_the_response(server):
    response = run(upstream(server).query(dns.message.make_query("a.test", "TXT")))
    assert response.rcode() == dns.rcode.NOERROR
    assert [r.to_text() for r in response.answer[0]] == ['"hello"']


def test_query_passes_nxdomain_back(server):
    response = run(upstream(server).query(dns.message.make_query("nope.test", "A")))
    assert response.rcode() == dns.rcode.NXDOMAIN


def test_a_answer(server):
    assert sorted(run(upstream(server).addresses("a.test"))) == ["198.18.1.10", "198.18.1.11"]


def test_ipv4_first_and_aaaa_not_asked_when_a_found(server):
    assert run(upstream(server).addresses("both.test")) == ("198.18.1.14",)
    assert [q["qtype"] for q in queries(server, "both.test.")] == ["A"]


def test_aaaa_fallback_when_no_a(server):
    assert run(upstream(server).addresses("v6only.test")) == ("2001:db8::6",)
    assert [q["qtype"] for q in queries(server, "v6only.test.")] == ["A", "AAAA"]


def test_cname_is_followed_to_addresses(server):
    assert sorted(run(upstream(server).addresses("alias.test"))) == ["198.18.1.10", "198.18.1.11"]


@pytest.mark.parametrize("name", ["nope.test", "txtonly.test"])
def test_nxdomain_or_nodata_gives_an_empty_tuple(server, name):
    assert run(upstream(server).addresses(name)) == ()


def test_answers_are_cached_within_the_ttl(server, monkeypatch):
    clock = types.SimpleNamespace(now=1000.0)
    monkeypatch.setattr(resolver_mod, "time", types.SimpleNamespace(monotonic=lambda: clock.now))
    r = upstream(server)

    async def twice():
        return await r.addresses("short.test"), await r.addresses("short.test")

    first, second = run(twice())
    assert first == second == ("198.18.1.12",)
    assert len(queries(server, "short.test.")) == 1  # the second answer came from the cache
    clock.now += 4.9
    assert run(r.addresses("short.test")) == ("198.18.1.12",)
    assert len(queries(server, "short.test.")) == 1
    clock.now += 0.2  # past the record's 5 s TTL
    assert run(r.addresses("short.test")) == ("198.18.1.12",)
    assert len(queries(server, "short.test.")) == 2


def test_cache_lifetime_is_capped(server, monkeypatch):
    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(resolver_mod, "time", types.SimpleNamespace(monotonic=lambda: clock.now))
    r = upstream(server)
    run(r.addresses("long.test"))  # TTL 86400
    clock.now = CACHE_TTL_CAP - 0.1
    run(r.addresses("long.test"))
    assert len(queries(server, "long.test.")) == 1
    clock.now = CACHE_TTL_CAP + 0.1
    run(r.addresses("long.test"))
    assert len(queries(server, "long.test.")) == 2


def test_cache_is_bounded(server, monkeypatch):
    monkeypatch.setattr(resolver_mod, "CACHE_LIMIT", 2)
    r = upstream(server)

    async def fill():
        for name in ("a.test", "v6only.test", "short.test"):
            await r.addresses(name)

    run(fill())
    assert len(r._cache) <= 2


def test_truncated_udp_answer_is_retried_over_tcp(server):
    assert sorted(run(upstream(server).addresses("many.test"))) == sorted(MANY)
    asked = queries(server, "many.test.")
    assert [(q["transport"], q["truncated"]) for q in asked] == [("udp", True), ("tcp", False)]


def test_dead_server_is_a_dns_failure_with_a_clear_message():
    r = UpstreamResolver((Listen("127.0.0.1", dead_udp_port()),), timeout=0.2)
    with pytest.raises(DnsFailure, match=r"^upstream resolvers did not answer \(127\.0\.0\.1:\d+\): \w+"):
        run(r.addresses("a.test"))


def test_silent_server_times_out_as_a_dns_failure():
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))  # receives, never answers
    try:
        r = UpstreamResolver((Listen("127.0.0.1", silent.getsockname()[1]),), timeout=0.2)
        started = time.monotonic()
        with pytest.raises(DnsFailure, match=r"upstream resolvers did not answer \(127\.0\.0\.1:\d+\): Timeout"):
            run(r.query(dns.message.make_query("a.test", "A")))
        assert time.monotonic() - started < 2.0
    finally:
        silent.close()


def test_next_server_is_tried_when_one_is_dead(server):
    r = UpstreamResolver((Listen("127.0.0.1", dead_udp_port()), Listen("127.0.0.1", server.port)), timeout=0.2)
    assert sorted(run(r.addresses("a.test"))) == ["198.18.1.10", "198.18.1.11"]


def test_no_servers_configured_is_a_dns_failure(monkeypatch):
    # No upstream.dns and no nameserver in /etc/resolv.conf.
    monkeypatch.setattr(resolver_mod, "system_resolvers", lambda: ())
    r = UpstreamResolver(())
    assert r.servers == ()
    with pytest.raises(DnsFailure, match=r"no upstream resolver configured \(set upstream.dns"):
        run(r.addresses("a.test"))


def test_configured_servers_win_over_the_system_ones(server):
    assert upstream(server).servers == (Listen("127.0.0.1", server.port),)


# ---- forwarded answers reused for their TTL ---------------------------------------------------------

def test_the_same_query_is_answered_from_the_cache_with_aged_ttls(server, monkeypatch):
    r = upstream(server)
    clock = [1000.0]
    monkeypatch.setattr(resolver_mod.time, "monotonic", lambda: clock[0])
    before = len(queries(server, "both.test."))
    first = run(r.query(dns.message.make_query("both.test", "A")))
    clock[0] += 12
    q = dns.message.make_query("both.test", "A")
    second = run(r.query(q))
    assert len(queries(server, "both.test.")) == before + 1 and r.answer_hits == 1  # upstream asked once
    assert second.id == q.id and second.answer[0].ttl == first.answer[0].ttl - 12
    assert [x.to_text() for x in second.answer[0]] == [x.to_text() for x in first.answer[0]]


@pytest.mark.parametrize("name, qtype, asked_again_after", [
    ("short.test", "A", 5.5),  # its own TTL (5 s) ends first
    ("long.test", "A", resolver_mod.ANSWER_TTL_CAP + 0.5),  # the cap ends first
    # negative answers (RFC 2308): for the smaller of the SOA's TTL and MINIMUM (both the zone's 30 s)
    ("nope.test", "A", 30.5),  # NXDOMAIN
    ("txtonly.test", "A", 30.5),  # NOERROR without records (NODATA)
    ("v6only.test", "A", 30.5),
    ("broken.test", "A", 0.0),  # SERVFAIL: never reused
])
def test_reuse_ends_with_the_ttl_or_the_cap(server, monkeypatch, name, qtype, asked_again_after):
    r = upstream(server)
    clock = [5000.0]
    monkeypatch.setattr(resolver_mod.time, "monotonic", lambda: clock[0])
    before = len(queries(server, name + "."))
    run(r.query(dns.message.make_query(name, qtype)))
    if asked_again_after:
        clock[0] += asked_again_after - 1
        run(r.query(dns.message.make_query(name, qtype)))
        assert len(queries(server, name + ".")) == before + 1  # still reused
    clock[0] += 1
    run(r.query(dns.message.make_query(name, qtype)))
    assert len(queries(server, name + ".")) == before + 2


@pytest.mark.parametrize("soa_ttl, minimum, cap, reused_for", [
    (300, 7, 30.0, 7.0),  # MINIMUM smaller
    (4, 3600, 30.0, 4.0),  # the SOA's own TTL smaller
    (3600, 3600, 30.0, 30.0),  # the cap
])
def test_negative_ttl_is_the_smaller_of_the_soa_ttl_and_minimum(soa_ttl, minimum, cap, reused_for, monkeypatch):
    monkeypatch.setattr(resolver_mod, "ANSWER_TTL_CAP", cap)
    response = dns.message.make_response(dns.message.make_query("gone.test", "A"))
    response.set_rcode(dns.rcode.NXDOMAIN)
    response.authority.append(dns.rrset.from_text("test.", soa_ttl, "IN", "SOA", f"ns.test. h.test. 1 2 3 4 {minimum}"))
    assert resolver_mod._reusable_for(response) == reused_for
    response.authority.clear()  # no SOA: no negative TTL, never reused
    assert resolver_mod._reusable_for(response) == 0.0


def test_a_different_case_or_type_is_a_different_question(server):
    r = upstream(server)
    before = len(queries(server, "a.test.")) + len(queries(server, "A.test."))
    for name, qtype in (("a.test", "A"), ("A.test", "A"), ("a.test", "AAAA")):
        run(r.query(dns.message.make_query(name, qtype)))
    after = len(queries(server, "a.test.")) + len(queries(server, "A.test."))
    assert after - before == 3 and r.answer_hits == 0


# ---- forward: a sandbox's query as wire bytes ---------------------------------------------------------

def _forward(r, name, qtype, **kw):
    q = dns.message.make_query(name, qtype, **kw)
    return q, run(r.forward(q.to_wire()))


@pytest.mark.parametrize("name, qtype, rcode, addresses", [
    ("a.test", "A", "NOERROR", ("198.18.1.10", "198.18.1.11")),
    ("a.test", "AAAA", "NOERROR", ("2001:db8::1",)),
    ("a.test", "TXT", "NOERROR", ()),
    ("nope.test", "A", "NXDOMAIN", ()),
    ("txtonly.test", "A", "NOERROR", ()),
    ("broken.test", "A", "SERVFAIL", ()),
])
def test_forward_answers_with_the_query_id_and_the_same_records_as_query(server, monkeypatch, name, qtype, rcode, addresses):
    """Asked upstream, then from the reused answers (bytes patched, no message objects): the ID is
    the query's, the records and rcode are what `query` returns, the TTLs aged like `query`'s."""
    r = upstream(server)
    clock = [7000.0]
    monkeypatch.setattr(resolver_mod.time, "monotonic", lambda: clock[0])
    for step in range(2):
        q, got = _forward(r, name, qtype)
        answer = dns.message.from_wire(got.wire)
        assert answer.id == q.id and got.rcode == rcode and dns.rcode.to_text(answer.rcode()) == rcode
        assert sorted(got.addresses) == sorted(addresses)
        want = run(upstream(server).query(dns.message.make_query(name, qtype)))
        assert sorted(x.to_text() for s in answer.answer for x in s) == sorted(x.to_text() for s in want.answer for x in s)
        if step == 0:
            first = answer
            clock[0] += 3
    reused = rcode != "SERVFAIL"
    assert r.answer_hits == (1 if reused else 0)
    for a, b in zip(first.answer + first.authority, answer.answer + answer.authority):
        assert b.ttl == (a.ttl - 3 if reused else a.ttl)


def test_forward_leaves_the_edns_record_alone_when_aging():
    """The OPT pseudo-record's TTL field holds the extended rcode and flags (DO bit): never aged."""
    q = dns.message.make_query("x.test", "A", use_edns=0, want_dnssec=True)
    resp = dns.message.make_response(q)
    resp.use_edns(0, dns.flags.DO, 1232)
    resp.answer.append(dns.rrset.from_text("x.test.", 20, "IN", "A", "198.18.9.9"))
    resp.authority.append(dns.rrset.from_text("test.", 40, "IN", "NS", "ns.test."))
    resp.additional.append(dns.rrset.from_text("ns.test.", 50, "IN", "A", "198.18.9.1"))
    wire = resp.to_wire()
    offsets = resolver_mod._ttl_offsets(wire)
    assert [ttl for _o, ttl in offsets] == [20, 40, 50]
    r = UpstreamResolver((Listen("127.0.0.1", 9),))
    r._answers[q.to_wire()[2:]] = resolver_mod._Answer(1e12, time.monotonic() - 10, wire, offsets, "NOERROR", ("198.18.9.9",))
    q2 = dns.message.make_query("x.test", "A", use_edns=0, want_dnssec=True)
    q2.id = q.id ^ 0x5A5A
    got = run(r.forward(q2.id.to_bytes(2, "big") + q.to_wire()[2:]))
    answer = dns.message.from_wire(got.wire)
    assert answer.id == q2.id
    assert [s.ttl for s in answer.answer + answer.authority + answer.additional] == [10, 30, 40]
    assert answer.edns == 0 and answer.ednsflags & dns.flags.DO  # the OPT record as it was


def test_forward_of_a_query_that_does_not_parse_is_a_dns_exception(server):
    with pytest.raises(dns.exception.DNSException):
        run(upstream(server).forward(b"\x12\x34\x01\x00\x00\x01"))
