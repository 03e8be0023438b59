"""DNS: answers only for names the session's policy allows.

A sandbox's query reaches this listener through the namespace's redirect
(whatever resolver it aimed at). Allowed names are asked of `upstream.dns`
and the answer is passed back; the addresses in it are remembered for the
session (raw TCP rules and the review use them). Refused names get NXDOMAIN
without any upstream lookup; traffic from no session gets REFUSED.
"""

from __future__ import annotations

import logging

import dns.exception
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
from mitmproxy import dns as mdns
from mitmproxy.net.dns import response_codes

from gateway.log import events
from gateway.log.writer import LogWriteError
from gateway.resolver import DnsFailure
from gateway.sessions.store import SessionStoreUnavailable

logger = logging.getLogger("egressgw.dns")


class DnsGate:
    def __init__(self, registry, resolver, audit):
        self.registry = registry
        self.resolver = resolver
        self.audit = audit

    async def dns_request(self, flow: mdns.DNSFlow) -> None:
        client = flow.client_conn.peername
        try:
            session, reason = self.registry.by_source(client[0]), "no-session"
        except SessionStoreUnavailable:
            session, reason = None, SessionStoreUnavailable.reason
        fields = {"client": events.address(client)}
        q = flow.request.question if flow.request.questions else None
        if q is not None:
            fields.update(dns_qname=q.name, dns_qtype=dns.rdatatype.to_text(q.type))
        if session is None:
            return self._answer(flow, response_codes.REFUSED, fields, "deny", reason)
        fields["session"] = session.id
        if q is None or len(flow.request.questions) != 1 or flow.request.op_code != 0 or q.class_ != 1:
            return self._answer(flow, response_codes.FORMERR, fields, "deny", "bad-request")
        decision = session.decider.dns(q.name)
        if not decision.allowed:
            return self._answer(flow, response_codes.NXDOMAIN, fields, "deny", decision.reason)
        try:
            query = dns.message.from_wire(flow.request.packed)
            answer = await self.resolver.query(query)
        except (dns.exception.DNSException, DnsFailure) as e:
            logger.warning("upstream DNS failed for session %s: %s", session.id, e)
            return self._answer(flow, response_codes.SERVFAIL, fields, decision.action, "dns-failure")
        answer.id = query.id
        addresses = []
        for rrset in answer.answer:
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                for rdata in rrset:
                    addresses.append(rdata.address)
                    session.remember(rdata.address, q.name.lower().rstrip("."))
        self._emit(flow, {**fields, "dns_rcode": dns.rcode.to_text(answer.rcode()), "dns_answers": addresses,
                          "decision": decision.action, "rule": decision.rule, "reason": decision.reason})
        if flow.response is None:  # the log write succeeded
            flow.response = mdns.DNSMessage.unpack(answer.to_wire())

    def _answer(self, flow, rcode: int, fields: dict, decision: str, reason: str) -> None:
        flow.response = flow.request.fail(rcode)
        self._emit(flow, {**fields, "dns_rcode": response_codes.to_str(rcode), "decision": decision,
                          "reason": reason})

    def _emit(self, flow, fields: dict) -> None:
        try:
            self.audit.emit(events.make_event(events.DNS, **fields))
        except LogWriteError:
            flow.response = flow.request.fail(response_codes.SERVFAIL)
