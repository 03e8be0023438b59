"""The gateway's own DNS client: it asks `upstream.dns`, never the sandbox's choice.

Two uses: forwarding a sandbox's allowed query verbatim (`forward`), and
resolving a destination name before the gateway dials it (`addresses`,
cached for the record's TTL, capped).
"""

from __future__ import annotations

import ipaddress
import time

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


class UpstreamResolver:
    def __init__(self, servers: tuple[Listen, ...], timeout: float = 3.0):
        self.servers = servers or system_resolvers()
        self.timeout = timeout
        self._cache: dict[str, tuple[float, tuple[str, ...]]] = {}
        # forwarded answers by the query's wire form without its ID (same name, same case, type,
        # class, flags, EDNS): upstream is the same for every session, the policy is checked before
        self._answers: dict[bytes, tuple[float, float, bytes]] = {}  # key -> (expires, stored, wire)
        self.answer_hits = 0

    async def query(self, request: dns.message.Message) -> dns.message.Message:
        if not self.servers:
            raise DnsFailure("no upstream resolver configured (set upstream.dns in the gateway config)")
        wire = request.to_wire()
        key = wire[2:]
        now = time.monotonic()
        hit = self._answers.get(key)
        if hit is not None and hit[0] > now:
            self.answer_hits += 1
            answer = dns.message.from_wire(wire[:2] + hit[2][2:])
            age = int(now - hit[1])
            for rrset in answer.answer + answer.authority + answer.additional:
                rrset.ttl = max(1, rrset.ttl - age)  # the records have aged since upstream answered
            return answer
        response = await self._ask(request)
        ttl = _reusable_for(response)
        if ttl > 0:
            if len(self._answers) >= ANSWER_LIMIT:
                self._answers = {k: v for k, v in self._answers.items() if v[0] > now}
                if len(self._answers) >= ANSWER_LIMIT:
                    self._answers.clear()
            self._answers[key] = (now + ttl, now, response.to_wire())
        return response

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
