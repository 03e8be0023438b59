"""Fuzz target: one datagram from a sandbox through the gateway's DNS path.

The same code a real query meets: mitmproxy's DNS message parser (over UDP, and the TCP length framing)
with gateway/addons/dnswire.py installed, then DnsGate.dns_request with a real session registry, flow
log and tunnel detector. The upstream resolver is the one seam (an object answering from a table),
as in tests/unit/test_addons.py.

A finding is: the parser raising anything but struct.error (mitmproxy handles only that one: anything
else kills the connection's layer), DnsGate failing closed on an exception (a bug even if it refused),
a query without an answer, an answer that cannot be packed, or a name the policy does not allow
reaching the upstream resolver.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import tempfile
from pathlib import Path

import dns.message
import dns.rcode
import dns.rrset

SANDBOX = "10.211.0.2"
REGRESSIONS = Path(__file__).resolve().parent / "regressions"  # inputs of past findings, replayed in CI
POLICY = """apiVersion: egressgw.dev/v1alpha1
kind: EgressPolicy
metadata: {name: fuzz}
spec:
  mode: enforce
  egress:
    - name: exact
      hosts: [{matchName: allowed.test}]
    - name: wild
      hosts: [{matchPattern: '*.cdn.test'}]
    - name: ssh
      protocol: tcp
      hosts: [{matchName: git.test}]
      ports: [22]
"""


class Finding(AssertionError):
    pass


class _Resolver:
    def __init__(self):
        self.queries: list[str] = []

    async def query(self, request: dns.message.Message) -> dns.message.Message:
        name = request.question[0].name.to_text()
        self.queries.append(name)
        response = dns.message.make_response(request)
        if name.rstrip(".").lower() in ("allowed.test", "git.test") or name.lower().endswith(".cdn.test."):
            response.answer.append(dns.rrset.from_text_list(request.question[0].name, 30, "IN", "A", ["198.18.1.10"]))
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response

    async def forward(self, packed: bytes):
        """As UpstreamResolver.forward (the seam DnsGate calls): wire in, wire out with the query's ID."""
        from gateway.resolver import Forwarded

        response = await self.query(dns.message.from_wire(packed))
        return Forwarded(packed[:2] + response.to_wire()[2:], dns.rcode.to_text(response.rcode()),
                         tuple(r.address for rrset in response.answer for r in rrset))

    async def addresses(self, name: str) -> tuple[str, ...]:
        return ()


class _Failures(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Target:
    def __init__(self):
        from mitmproxy import dns as mdns
        from mitmproxy.proxy.mode_specs import ProxyMode
        from mitmproxy.test import tflow

        from gateway.addons.dnsgate import DnsGate
        from gateway.audit import Audit
        from gateway.log.writer import FlowLog
        from gateway.policy import load_policy_text
        from gateway.policy.decide import Decider
        from gateway.sessions.registry import SessionRegistry

        self.mdns, self.tflow, self.ProxyMode = mdns, tflow, ProxyMode
        self.dir = tempfile.TemporaryDirectory(prefix="egressgw-fuzz-dns-")
        self.registry = SessionRegistry()
        self.session = self.registry.create("fuzz", load_policy_text(POLICY), [SANDBOX])
        self.oracle = Decider(load_policy_text(POLICY))  # what may reach upstream, independent of the session
        self.resolver = _Resolver()
        self.flowlog = FlowLog(Path(self.dir.name) / "flows.jsonl")
        self.gate = DnsGate(self.registry, self.resolver, Audit(self.flowlog))  # installs dnswire
        self.failures = _Failures()
        logging.getLogger("egressgw").addHandler(self.failures)
        self.loop = asyncio.new_event_loop()

    def __call__(self, data: bytes) -> None:
        self.one(data, "udp")
        if len(data) >= 2:  # the TCP framing: a length prefix, then the message
            (size,) = struct.unpack_from("!H", data)
            if 0 < size <= len(data) - 2:
                self.one(data[2:2 + size], "tcp")
        if self.flowlog.path.stat().st_size > 1 << 22:
            self.flowlog.path.write_bytes(b"")

    def one(self, data: bytes, transport: str) -> None:
        mdns = self.mdns
        try:
            message = mdns.DNSMessage.unpack(data)
        except struct.error:
            return  # mitmproxy logs "invalid message" and closes: the documented path
        except Exception as e:
            raise Finding(f"mitmproxy's DNS parser raised {type(e).__name__}: {e}") from e
        client = self.tflow.tclient_conn()
        client.proxy_mode = self.ProxyMode.parse("dns")
        client.transport_protocol = transport
        client.peername = (SANDBOX, 5353)
        flow = self.tflow.tdnsflow(client_conn=client, req=message, resp=False)
        flow.response = None
        self.failures.records.clear()
        self.resolver.queries.clear()
        self.loop.run_until_complete(self.gate.dns_request(flow))
        if self.failures.records:
            record = self.failures.records[0]
            raise Finding(f"DnsGate failed closed on an exception: {record.getMessage()}\n{record.exc_text or ''}")
        if flow.response is None:
            raise Finding("a query left without an answer")
        flow.response.packed  # what mitmproxy sends back must pack
        for name in self.resolver.queries:
            if not self.oracle.dns(name.rstrip(".")).allowed:
                raise Finding(f"{name!r} reached the upstream resolver though the policy does not allow it")


def seeds() -> list[bytes]:
    out = []
    for name, rdtype in (("allowed.test", "A"), ("x.cdn.test", "AAAA"), ("denied.test", "A"),
                         ("a.b.cdn.test", "TXT"), ("git.test", "A"), ("xn--bcher-kva.test", "A"),
                         ("ALLOWED.TEST.", "A"), ("aGVsbG8gd29ybGQ.cdn.test", "NULL")):
        wire = dns.message.make_query(name, rdtype, use_edns=True).to_wire()
        out.append(wire)
        out.append(struct.pack("!H", len(wire)) + wire)
    out.append(b"\x00\x07\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03\xffab\x05cdn\x04test\x00\x00\x01\x00\x01")
    return out + [p.read_bytes() for p in sorted(REGRESSIONS.glob("dns-*"))]
