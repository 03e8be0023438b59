"""The lab DNS server: zone logic in-process, then the real server from the gateway namespace."""

from __future__ import annotations

import os
import socket
import struct
import sys
import time

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from gateway.lab.dnsserver import DNSServer

ZONE = {
    "listen": ["127.0.0.1", 0],
    "record": None,
    "ttl": 7,
    "records": {
        "a.test.": {"A": ["198.18.1.10", "198.18.1.11"], "AAAA": ["2001:db8::1"], "TXT": ["hi there"]},
        "alias.test.": {"CNAME": "a.test."},
        "dangling.test.": {"CNAME": "nowhere.test."},
        "*.wild.test.": {"A": ["198.18.1.20"]},
        "sub.wild.test.": {"A": ["198.18.1.21"]},
        "deep.x.test.": {"A": ["198.18.1.22"], "ttl": 60},
        "big.test.": {"TXT": ["y" * 200] * 1 + ["z" * 200, "w" * 200, "v" * 200]},
    },
    "servfail": ["broken.test."],
    "drop": ["black.hole."],
}


def ask(server, name, rdtype="A", transport="udp", **kw):
    q = dns.message.make_query(name, rdtype, **kw)
    out = server.handle(q.to_wire(), ("198.18.0.1", 5353), transport)
    return None if out is None else dns.message.from_wire(out)


def answers(resp):
    return sorted(rd.to_text() for rrset in resp.answer for rd in rrset)


@pytest.fixture()
def server():
    return DNSServer(ZONE)


def test_zone_answers(server):
    r = ask(server, "a.test.")
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert answers(r) == ["198.18.1.10", "198.18.1.11"]
    assert r.answer[0].ttl == 7
    assert answers(ask(server, "A.TEST.", "AAAA")) == ["2001:db8::1"]
    assert ask(server, "A.TEST.").answer[0].name.to_text() == "A.TEST."  # client's case
    assert answers(ask(server, "a.test.", "TXT")) == ['"hi there"']
    # NODATA: name exists, type doesn't -> NOERROR, empty, SOA in authority
    r = ask(server, "a.test.", "MX")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer and r.authority[0].rdtype == dns.rdatatype.SOA
    r = ask(server, "nope.test.")
    assert r.rcode() == dns.rcode.NXDOMAIN and r.authority[0].rdtype == dns.rdatatype.SOA
    # empty non-terminal
    assert ask(server, "x.test.").rcode() == dns.rcode.NOERROR
    assert ask(server, "deep.x.test.").answer[0].ttl == 60


def test_cname_wildcard_special(server):
    r = ask(server, "alias.test.")
    assert [rr.rdtype for rr in r.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
    assert ask(server, "dangling.test.").rcode() == dns.rcode.NXDOMAIN
    r = ask(server, "foo.wild.test.")
    assert answers(r) == ["198.18.1.20"] and r.answer[0].name.to_text() == "foo.wild.test."
    assert answers(ask(server, "sub.wild.test.")) == ["198.18.1.21"]
    # closest encloser is sub.wild.test, which has no wildcard (RFC 4592)
    assert ask(server, "x.sub.wild.test.").rcode() == dns.rcode.NXDOMAIN
    assert ask(server, "broken.test.").rcode() == dns.rcode.SERVFAIL
    assert ask(server, "black.hole.") is None
    q = dns.message.make_query("a.test.", "A", rdclass="CH")
    assert dns.message.from_wire(server.handle(q.to_wire(), ("x", 1), "udp")).rcode() == dns.rcode.REFUSED


def test_truncation(server):
    r = ask(server, "big.test.", "TXT")
    assert r.flags & dns.flags.TC and not r.answer
    assert len(ask(server, "big.test.", "TXT", use_edns=0, payload=4096).answer[0]) == 4
    assert len(ask(server, "big.test.", "TXT", transport="tcp").answer[0]) == 4


def test_garbage_is_ignored(server):
    for junk in (b"", b"\x00", os.urandom(11), os.urandom(300), b"\xff" * 12 + b"\x00" * 5):
        assert server.handle(junk, ("198.18.0.1", 1), "udp") is None
    resp = dns.message.make_response(dns.message.make_query("a.test.", "A"))
    assert server.handle(resp.to_wire(), ("198.18.0.1", 1), "udp") is None  # responses ignored


# ---- the real server, inside a lab -------------------------------------------------------



@pytest.mark.netns
def test_udp_tcp_from_gateway_namespace(lab):
    def query(name, rdtype, tcp=False):
        q = dns.message.make_query(name, rdtype)
        fn = dns.query.tcp if tcp else dns.query.udp
        return lab.call_in(lab.gw_ns, fn, q, lab.dns_addr, timeout=2)

    for tcp in (False, True):
        r = query("allowed.test.", "A", tcp)
        assert answers(r) == [lab.hosts["allowed.test"]]
        assert answers(query("shared.test.", "A", tcp)) == [lab.hosts["allowed.test"]]
        assert answers(query("meta.allowed.test.", "A", tcp)) == ["169.254.169.254"]
        assert answers(query("txt.test.", "TXT", tcp)) == ['"hello from the lab"']
        assert answers(query("v6.test.", "AAAA", tcp)) == ["2001:db8::10"]
        assert query("nonexistent.test.", "A", tcp).rcode() == dns.rcode.NXDOMAIN
        assert answers(query(f"w{int(tcp)}.wild.test.", "A", tcp)) == [lab.hosts["allowed.test"]]
        assert query("servfail.test.", "A", tcp).rcode() == dns.rcode.SERVFAIL
    big = query("big.allowed.test.", "TXT")
    assert big.flags & dns.flags.TC
    assert len(query("big.allowed.test.", "TXT", tcp=True).answer[0]) == 12

    recs = lab.dns_records(qname="nonexistent.test.")
    assert {r["transport"] for r in recs} == {"udp", "tcp"}
    assert all(r["rcode"] == "NXDOMAIN" and r["peer"] == lab.gw_addr and r["qtype"] == "A" for r in recs)
    with pytest.raises(dns.exception.Timeout):
        lab.call_in(lab.gw_ns, dns.query.udp, dns.message.make_query("timeout.test.", "A"), lab.dns_addr, timeout=0.3)
    assert lab.dns_records(qname="timeout.test.")[0]["rcode"] == "DROPPED"


@pytest.mark.netns
def test_survives_garbage(lab):
    def send_junk():
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for junk in (b"\x00", os.urandom(40), os.urandom(512), b"\x12\x34" + b"\xff" * 30):
            u.sendto(junk, (lab.dns_addr, 53))
        u.close()
        t = socket.create_connection((lab.dns_addr, 53), timeout=2)
        t.sendall(struct.pack("!H", 20) + os.urandom(20))  # framed garbage
        t.sendall(struct.pack("!H", 3) + b"\x01")  # truncated frame, then close
        t.close()

    lab.call_in(lab.gw_ns, send_junk)
    deadline = time.monotonic() + 3
    while len(lab.dns_records(error=lambda e: e is not None)) < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(lab.dns_records(error=lambda e: e is not None)) >= 5
    for fn in (dns.query.udp, dns.query.tcp):
        r = lab.call_in(lab.gw_ns, fn, dns.message.make_query("allowed.test.", "A"), lab.dns_addr, timeout=2)
        assert answers(r) == [lab.hosts["allowed.test"]]


@pytest.mark.netns
def test_query_from_subprocess(lab):
    """``run_in`` runs a program inside a namespace (with this repository importable)."""
    code = (
        "import dns.message, dns.query, sys\n"
        "r = dns.query.udp(dns.message.make_query('other.test.', 'A'), sys.argv[1], timeout=2)\n"
        "print(r.answer[0][0])\n"
    )
    p = lab.run_in(lab.gw_ns, [sys.executable, "-c", code, lab.dns_addr])
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == lab.hosts["other.test"]


@pytest.mark.netns
def test_reload(lab):
    lab.set_dns_records({"moving.test.": {"A": ["198.18.1.11"]}})
    q = dns.message.make_query("moving.test.", "A")
    assert answers(lab.call_in(lab.gw_ns, dns.query.udp, q, lab.dns_addr, timeout=2)) == ["198.18.1.11"]
    lab.set_dns_records({"moving.test.": {"A": ["127.0.0.1"]}})
    assert answers(lab.call_in(lab.gw_ns, dns.query.udp, q, lab.dns_addr, timeout=2)) == ["127.0.0.1"]
    lab.set_dns_records({"moving.test.": None})
    assert lab.call_in(lab.gw_ns, dns.query.udp, q, lab.dns_addr, timeout=2).rcode() == dns.rcode.NXDOMAIN


def started(config) -> DNSServer:
    """A server on an ephemeral port (UDP's port may be taken for TCP: try again)."""
    for _ in range(10):
        server = DNSServer(config)
        try:
            server.start()
            return server
        except OSError:
            server.stop()
    raise RuntimeError("no free port pair")


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_forward_delegates_a_zone_and_records_it(tmp_path, transport):
    """A delegated zone is relayed verbatim to its server (here another lab DNS server on loopback)."""
    import json

    target = started({"listen": ["127.0.0.1", 0], "record": None,
                      "records": {"*.t.deleg.test.": {"NULL": ["\\# 4 01020304"], "A": ["198.18.1.99"]}}})
    addr, port = target.addr, target.port
    record = tmp_path / "dns.jsonl"
    front = started({**ZONE, "record": str(record), "forward": {"t.deleg.test.": [addr, port]}})
    try:
        send = dns.query.udp if transport == "udp" else dns.query.tcp
        r = send(dns.message.make_query("AbC.t.deleg.test.", "NULL"), "127.0.0.1", port=front.port, timeout=3)
        assert r.rcode() == dns.rcode.NOERROR and r.answer[0].name.to_text() == "AbC.t.deleg.test."
        assert r.answer[0][0].to_text() == "\\# 4 01020304"
        r = send(dns.message.make_query("a.test.", "A"), "127.0.0.1", port=front.port, timeout=3)
        assert answers(r) == ["198.18.1.10", "198.18.1.11"]  # the rest of the zone is answered as before
        deadline = time.monotonic() + 3
        while len(record.read_text().splitlines()) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        recs = [json.loads(line) for line in record.read_text().splitlines()]
        fwd = [x for x in recs if x.get("forwarded")]
        assert len(fwd) == 1 and fwd[0]["qname"] == "AbC.t.deleg.test." and fwd[0]["forwarded"] == f"{addr}:{port}"
        assert fwd[0]["rcode"] == "NOERROR" and fwd[0]["received"] <= fwd[0]["ts"]
    finally:
        front.stop()
        target.stop()


def test_forward_to_a_silent_server_is_recorded_as_timeout(tmp_path, monkeypatch):
    import json

    from gateway.lab import dnsserver

    monkeypatch.setattr(dnsserver, "FORWARD_TIMEOUT", 0.3)
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    record = tmp_path / "dns.jsonl"
    front = started({**ZONE, "record": str(record), "forward": {"t.deleg.test.": list(silent.getsockname())}})
    try:
        with pytest.raises(dns.exception.Timeout):
            dns.query.udp(dns.message.make_query("x.t.deleg.test.", "A"), "127.0.0.1", port=front.port, timeout=1)
        deadline = time.monotonic() + 3
        while not record.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert json.loads(record.read_text().splitlines()[-1])["rcode"] == "TIMEOUT"
    finally:
        front.stop()
        silent.close()
