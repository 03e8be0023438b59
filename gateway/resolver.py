"""The gateway's own DNS client: it asks `upstream.dns`, never the sandbox's choice.

Two uses: forwarding a sandbox's allowed query verbatim (`forward`), and
resolving a destination name before the gateway dials it (`addresses`,
cached for the record's TTL, capped).
"""

from __future__ import annotations

import ipaddress
import struct
import time
from dataclasses import dataclass

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
import dns.resolver

from gateway.config import Listen
from gateway.errors import EgressgwError

CACHE_TTL_CAP = 60.0
CACHE_LIMIT = 10_000


class DnsFailure(EgressgwError):
    """No upstream resolver gave a usable answer."""


def system_resolvers() -> tuple[Listen, ...]:
    try:
        return tuple(Listen(ns, 53) for ns in dns.resolver.Resolver().nameservers)
    except dns.resolver.NoResolverConfiguration:
        return ()


ANSWER_TTL_CAP = 30.0  # forwarded answers are reused at most this long (and never past their own TTL)
ANSWER_LIMIT = 20_000
_TTL = struct.Struct("!I")
_OPT = 41  # EDNS pseudo-record: its TTL field holds flags, not a TTL


@dataclass(frozen=True)
class Forwarded:
    """An answer for a sandbox: its wire form (with the query's ID), rcode and A/AAAA addresses."""

    wire: bytes
    rcode: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class _Answer:
    expires: float
    stored: float
    wire: bytes
    ttls: tuple[tuple[int, int], ...]  # (offset of a record's TTL in `wire`, that TTL)
    rcode: str
    addresses: tuple[str, ...]


def _addresses(response: dns.message.Message) -> tuple[str, ...]:
    return tuple(rdata.address for rrset in response.answer if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
                 for rdata in rrset)


def _skip_name(wire: bytes, i: int) -> int:
    while True:
        n = wire[i]
        if n >= 0xC0:  # a compression pointer ends the name
            return i + 2
        if n == 0:
            return i + 1
        i += 1 + n


def _ttl_offsets(wire: bytes) -> tuple[tuple[int, int], ...]:
    """Where each record's TTL sits in a message's wire form (the EDNS OPT record's excepted)."""
    qd, an, ns, ar = struct.unpack_from("!4H", wire, 4)
    i = 12
    for _ in range(qd):
        i = _skip_name(wire, i) + 4
    out = []
    for _ in range(an + ns + ar):
        i = _skip_name(wire, i)
        rtype, _cls, ttl, rdlen = struct.unpack_from("!HHIH", wire, i)
        if rtype != _OPT:
            out.append((i + 4, ttl))
        i += 10 + rdlen
    return tuple(out)


class UpstreamResolver:
    def __init__(self, servers: tuple[Listen, ...], timeout: float = 3.0):
        self.servers = servers or system_resolvers()
        self.timeout = timeout
        self._cache: dict[str, tuple[float, tuple[str, ...]]] = {}
        # forwarded answers by the query's wire form without its ID (same name, same case, type,
        # class, flags, EDNS): upstream is the same for every session, the policy is checked before
        self._answers: dict[bytes, _Answer] = {}
        self.answer_hits = 0

    async def query(self, request: dns.message.Message) -> dns.message.Message:
        if not self.servers:
            raise DnsFailure("no upstream resolver configured (set upstream.dns in the gateway config)")
        wire = request.to_wire()
        hit = self._hit(wire)
        if hit is not None:
            return dns.message.from_wire(hit.wire)
        response = await self._ask(request)
        self._store(wire[2:], response)
        return response

    async def forward(self, packed: bytes) -> Forwarded:
        """Answer a sandbox's query, given and returned as wire bytes: from the reused answers without
        building any message object (the ID and aged TTLs patched into the stored bytes), else
        parsed and asked upstream. Raises DnsFailure, or DNSException for a query that does not parse."""
        if not self.servers:
            raise DnsFailure("no upstream resolver configured (set upstream.dns in the gateway config)")
        hit = self._hit(packed)
        if hit is not None:
            return hit
        request = dns.message.from_wire(packed)
        response = await self._ask(request)
        stored = self._store(packed[2:], response)
        if stored is not None:
            return Forwarded(packed[:2] + stored.wire[2:], stored.rcode, stored.addresses)
        response.id = request.id
        return Forwarded(response.to_wire(), dns.rcode.to_text(response.rcode()), _addresses(response))

    def _hit(self, wire: bytes) -> Forwarded | None:
        """The reused answer to the query `wire`, with its ID and aged TTLs, or None."""
        now = time.monotonic()
        entry = self._answers.get(wire[2:])
        if entry is None or entry.expires <= now:
            return None
        self.answer_hits += 1
        out = bytearray(entry.wire)
        out[:2] = wire[:2]
        age = int(now - entry.stored)
        if age:
            for offset, ttl in entry.ttls:  # the records have aged since upstream answered
                _TTL.pack_into(out, offset, max(1, ttl - age))
        return Forwarded(bytes(out), entry.rcode, entry.addresses)

    def _store(self, key: bytes, response: dns.message.Message) -> _Answer | None:
        ttl = _reusable_for(response)
        if ttl <= 0:
            return None
        now = time.monotonic()
        if len(self._answers) >= ANSWER_LIMIT:
            self._answers = {k: v for k, v in self._answers.items() if v.expires > now}
            if len(self._answers) >= ANSWER_LIMIT:
                self._answers.clear()
        wire = response.to_wire()
        entry = _Answer(now + ttl, now, wire, _ttl_offsets(wire), dns.rcode.to_text(response.rcode()),
                        _addresses(response))
        self._answers[key] = entry
        return entry

    async def _ask(self, request: dns.message.Message) -> dns.message.Message:
        last: Exception | None = None
        for server in self.servers:
            try:
                response = await dns.asyncquery.udp(request, server.host, port=server.port, timeout=self.timeout)
                if response.flags & dns.flags.TC:
                    response = await dns.asyncquery.tcp(
                        request, server.host, port=server.port, timeout=self.timeout
                    )
                return response
            except (dns.exception.DNSException, OSError) as e:
                last = e
        tried = ", ".join(str(s) for s in self.servers)
        raise DnsFailure(f"upstream resolvers did not answer ({tried}): {type(last).__name__}")

    async def addresses(self, name: str) -> tuple[str, ...]:
        """IPv4 addresses of `name` (then IPv6 if it has none). Empty when the name does not exist."""
        now = time.monotonic()
        hit = self._cache.get(name)
        if hit and hit[0] > now:
            return hit[1]
        found: tuple[str, ...] = ()
        ttl = CACHE_TTL_CAP
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            response = await self.query(dns.message.make_query(name, rdtype))
            if response.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                return ()  # a server failure is not an answer: nothing to dial, nothing to cache
            for rrset in response.answer:
                if rrset.rdtype == rdtype:
                    ttl = min(ttl, rrset.ttl)
                    found += tuple(str(ipaddress.ip_address(r.address)) for r in rrset)
            if found:
                break
        if len(self._cache) >= CACHE_LIMIT:
            self._cache.clear()
        self._cache[name] = (now + max(ttl, 1.0), found)
        return found


def _reusable_for(response: dns.message.Message) -> float:
    """Seconds a forwarded answer may be reused, capped at ANSWER_TTL_CAP: a NOERROR answer with
    records for its smallest TTL; a negative one (NXDOMAIN, or NOERROR without records: the AAAA of
    an IPv4-only host, asked by every dual-stack client) for its negative TTL, the smaller of its
    SOA's TTL and MINIMUM (RFC 2308). Without an SOA, truncated, or any other rcode: asked again
    every time."""
    if response.flags & dns.flags.TC:
        return 0.0
    rcode = response.rcode()
    if rcode == dns.rcode.NOERROR and response.answer:
        return min(ANSWER_TTL_CAP, *(float(rrset.ttl) for rrset in response.answer))
    if rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN) and not response.answer:
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
                return min(ANSWER_TTL_CAP, float(rrset.ttl), float(rrset[0].minimum))
    return 0.0
