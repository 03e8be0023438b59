"""DNS: answers only for names the session's policy allows.

A sandbox's query reaches this listener through the namespace's redirect
(whatever resolver it aimed at). Allowed names are asked of `upstream.dns`
and the answer is passed back; the addresses in it are remembered for the
session (raw TCP rules and the review use them). Refused names get NXDOMAIN
without any upstream lookup; traffic from no session gets REFUSED.

Allowed names then meet the DNS tunnel detector (gateway/detect/dnstunnel.py):
a session that tunnels through a base domain gets REFUSED for that domain, with
no upstream lookup, for the configured block time; the query that tripped it
is logged with `alert: true`, `reason: "dns-tunnel"` and the signal's numbers.
In a `report`-mode policy, or with `action: alert` for the rule `dns-tunnel`
in the policy's `spec.detection`, the alert is logged and the query still
answered; the rule's `allow` hosts are not checked at all.

Every query of a session is also searched for the session's known values
(secrets, placeholders, canaries: raw, hex, base32, base64, ... with the dots
removed, by gateway/detect's engine). A hit is logged with the name redacted
(`[REDACTED:known-value].<base>`) and an alert; an allowed name is then
refused and its base domain blocked like a tunnel (`dns-tunnel:known-value`).
"""

from __future__ import annotations

import logging

import dns.exception
import dns.rdatatype
from mitmproxy import dns as mdns
from mitmproxy.net.dns import response_codes

from gateway.addons import dnswire
from gateway.addons.failclosed import fail_closed, refuse_dns
from gateway.detect.dnstunnel import PASS, DnsTunnelDetector, base_domain, unchecked_name
from gateway.exfil.detectors import DetectionNotReady, SessionDetectors
from gateway.log import events
from gateway.log.writer import LogWriteError
from gateway.resolver import DnsFailure
from gateway.secrets.backends import SecretBackendError
from gateway.sessions.store import SessionStoreUnavailable

logger = logging.getLogger("egressgw.dns")


class DnsGate:
    def __init__(self, registry, resolver, audit, tunnels: DnsTunnelDetector | None = None, store=None,
                 detectors: SessionDetectors | None = None):
        """`detectors`: the session detectors the HTTP detection addon compiles (shared: a session's values
        are compiled once, ahead of its first query); without it, `store` gives the gate its own."""
        self.registry = registry
        self.resolver = resolver
        self.audit = audit
        self.tunnels = tunnels if tunnels is not None else DnsTunnelDetector()
        dnswire.install()  # names with non-IDNA bytes reach this hook instead of killing the socket
        self._suffixes: dict[int, tuple[object, tuple[str, ...]]] = {}  # id(policy) -> (policy, suffixes)
        self._own_detectors = detectors is None and store is not None
        self.detectors = SessionDetectors(store, registry.holds) if self._own_detectors else detectors
        registry.subscribe(self._session_changed)

    def _session_changed(self, what: str, session) -> None:
        if what in ("deleted", "removed", "expired"):
            self.tunnels.forget(session.id)
            if self.detectors is not None:
                self.detectors.forget(session.id)
        elif self._own_detectors and what in ("created", "policy-replaced", "canaries-added"):
            self.detectors.prepare(session)

    @fail_closed(refuse_dns)
    async def dns_request(self, flow: mdns.DNSFlow) -> None:
        if flow.response is not None:
            return  # already answered (a limit refused it, and logged it): never asked upstream, never logged twice
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
        # refused before the name is searched for the session's known values: only its base domain is logged
        if q is None or len(flow.request.questions) != 1 or flow.request.op_code != 0 or q.class_ != 1:
            return self._answer(flow, response_codes.FORMERR, {**fields, "dns_qname": unchecked_name(q and q.name)},
                                "deny", "bad-request")
        if any(ch.isspace() for ch in q.name):
            # The policy engine strips whitespace from names; upstream would be asked the name with it
            # (fuzz finding: "x.cdn.test. " passed as x.cdn.test). No DNS name holds whitespace.
            return self._answer(flow, response_codes.NXDOMAIN, {**fields, "dns_qname": unchecked_name(q.name)},
                                "deny", "host-not-allowed")
        decision = session.decider.dns(q.name)
        name = q.name.lower().rstrip(".")
        suffixes = self._pattern_suffixes(session.policy)
        policy_detection = getattr(session.policy, "detection", None)
        try:
            leak = await self._known_value(session, q.name)
        except DetectionNotReady:  # the name was not searched: only its base domain is logged
            return self._answer(flow, response_codes.SERVFAIL, {**fields, "dns_qname": unchecked_name(q.name)},
                                "deny", "detection-not-ready")
        except SecretBackendError as e:
            return self._answer(flow, response_codes.SERVFAIL, {**fields, "dns_qname": unchecked_name(q.name),
                                                                "detail": str(e)}, "deny", "secret-unavailable")
        if leak is not None:
            base = base_domain(name, suffixes)
            fields["dns_qname"] = f"[REDACTED:known-value].{base}"
            action = self._action(session, "known-value")
            detail = f"known value {leak.label} ({leak.encoding}) in the query name"
            mark = {"alert": True, "detail": detail, "rule": decision.rule,
                    "detections": [{"rule": "known-value", "label": leak.label, "part": "dns_qname",
                                    "encoding": leak.encoding, "action": action}]}
            if not decision.allowed:
                return self._answer(flow, response_codes.NXDOMAIN, {**fields, **mark}, "deny", decision.reason)
            if action == "block":
                self.tunnels.block(session.id, base, "known-value", detail)
                return self._answer(flow, response_codes.REFUSED, {**fields, **mark}, "deny", "dns-tunnel")
            self._emit(flow, {**fields, **mark, "decision": self._alert_decision(session), "reason": "dns-tunnel"})
            if flow.response is not None:
                return None
        if not decision.allowed:
            return self._answer(flow, response_codes.NXDOMAIN, fields, "deny", decision.reason)
        exempt = policy_detection is not None and (
            not policy_detection.enabled
            or ((r := policy_detection.rule("dns-tunnel")) is not None and r.allows_host(name)))
        verdict = PASS if exempt else self.tunnels.check(session.id, name, fields["dns_qtype"], suffixes)
        if verdict.blocked and leak is None:
            action = self._action(session, "dns-tunnel")
            tunnel = {**fields, "rule": decision.rule, "reason": "dns-tunnel", "detail": verdict.detail}
            if verdict.new:
                tunnel.update(alert=True, detections=[{"rule": f"dns-tunnel:{verdict.signal}", "part": "dns_qname",
                                                       "action": action}])
            if action == "block":
                return self._answer(flow, response_codes.REFUSED, tunnel, "deny", "dns-tunnel")
            if verdict.new:
                self._emit(flow, {**tunnel, "decision": self._alert_decision(session)})
                if flow.response is not None:
                    return None
        try:
            answer = await self.resolver.forward(flow.request.packed)
        except (dns.exception.DNSException, DnsFailure) as e:
            logger.warning("upstream DNS failed for session %s: %s", session.id, e)
            return self._answer(flow, response_codes.SERVFAIL, fields, decision.action, "dns-failure")
        host = q.name.lower().rstrip(".")
        for address in answer.addresses:
            session.remember(address, host)
        self._emit(flow, {**fields, "dns_rcode": answer.rcode, "dns_answers": list(answer.addresses),
                          "decision": decision.action, "rule": decision.rule, "reason": decision.reason})
        if flow.response is None:  # the log write succeeded
            flow.response = mdns.DNSMessage.unpack(answer.wire)

    @staticmethod
    def _action(session, rule_id: str) -> str:
        """`block` or `alert`: the policy's `spec.detection` action for the rule (redact means block
        here: a name cannot be redacted), block by default; report mode alerts."""
        detection = getattr(session.policy, "detection", None)
        if detection is None:
            return "alert" if session.policy.mode == "report" else "block"
        from gateway.exfil.verdict import action_for

        action = action_for(rule_id, "block", detection, session.policy.mode)
        return "block" if action == "redact" else action

    @staticmethod
    def _alert_decision(session) -> str:
        return "report" if session.policy.mode == "report" else "allow"

    async def _known_value(self, session, qname: str):
        """The first of the session's known values found in ``qname`` (dots removed), or None."""
        if self.detectors is None or not self.tunnels.settings.enabled:
            return None
        policy_detection = getattr(session.policy, "detection", None)
        if policy_detection is not None and not policy_detection.enabled:
            return None
        if not await self.detectors.known.of(session):
            return None  # no values: nothing to compile or wait for
        _full, values_only = await self.detectors.of(session)  # compiled off the loop, usually in advance
        hits = values_only.scan(qname.replace(".", "").encode("utf-8", "surrogateescape"), "dns_qname")
        return hits[0] if hits else None

    def _pattern_suffixes(self, policy) -> tuple[str, ...]:
        """The policy's `*.X` suffixes X: the base domains tunnels are tracked under (cached per policy)."""
        hit = self._suffixes.get(id(policy))
        if hit is not None and hit[0] is policy:
            return hit[1]
        suffixes = tuple(sorted({sel.value[2:] for rule in policy.rules for sel in rule.hosts
                                 if sel.kind == "pattern"}))
        if len(self._suffixes) > 1024:
            self._suffixes.clear()
        self._suffixes[id(policy)] = (policy, suffixes)
        return suffixes

    def _answer(self, flow, rcode: int, fields: dict, decision: str, reason: str) -> None:
        flow.response = flow.request.fail(rcode)
        self._emit(flow, {**fields, "dns_rcode": response_codes.to_str(rcode), "decision": decision,
                          "reason": reason})

    def _emit(self, flow, fields: dict) -> None:
        try:
            self.audit.emit(events.make_event(events.DNS, **fields))
        except LogWriteError:
            flow.response = flow.request.fail(response_codes.SERVFAIL)
