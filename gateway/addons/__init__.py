"""The gateway's addons, in the order a connection meets them: the wiring diagram."""

from __future__ import annotations

from gateway import metrics
from gateway.addons.auditor import HttpAudit
from gateway.addons.credentials import Credentials
from gateway.addons.detection import Detection
from gateway.addons.dialgate import DialGate
from gateway.addons.dnsgate import DnsGate
from gateway.addons.httppolicy import HttpPolicy
from gateway.addons.identity import Identity
from gateway.addons.limits import Limits, LimitsBody
from gateway.addons.protocolerrors import ProtocolErrors
from gateway.addons.tcppolicy import TcpPolicy
from gateway.addons.timeouts import Timeouts
from gateway.addons.tlsgate import TlsGate
from gateway.addons.upstreamreuse import UpstreamReuse
from gateway.exfil.detectors import SessionDetectors
from gateway.upstream_pool import DEFAULT_IDLE_SECONDS, IdlePool


def _count_reuse(event: str) -> None:
    metrics.UPSTREAM_REUSE.labels(event).inc()


def default_addons(*, registry, conns, resolver, guard, audit, store, dns_tunnels=None, timeouts=None,
                   reuse_idle_seconds=DEFAULT_IDLE_SECONDS) -> list:
    """`timeouts`: keyword arguments of `Timeouts` (headers, body, origin seconds), from the config;
    `reuse_idle_seconds`: how long an idle upstream connection waits for the session's next client
    connection (upstream.reuseIdleSeconds; 0: never kept)."""
    detectors = SessionDetectors(store, registry.holds)  # each session's compiled detectors, shared by DNS and HTTP detection
    return [
        Identity(registry, conns, audit),  # source address / proxy credentials -> session
        Limits(registry, conns, audit),  # per-session limits: connections, rates, sizes (gateway/limits.py)
        Timeouts(conns, audit, **(timeouts or {})),  # slow clients, slow origins
        DnsGate(registry, resolver, audit, dns_tunnels, detectors=detectors),  # allowed names only, asked of upstream.dns; tunnels refused
        TlsGate(conns, guard, audit),  # SNI at ClientHello: refuse / pass through / intercept
        HttpPolicy(conns, guard, audit),  # Host = SNI = authority; port, method, path
        TcpPolicy(conns, guard, audit),  # raw TCP only where a tcp rule allows it
        Detection(registry, store, audit, detectors=detectors),  # exfiltration in what the sandbox sends, before any substitution
        LimitsBody(audit),  # request bodies counted as they stream, cut past spec.limits.bodyBytes
        Credentials(registry, store, audit),  # placeholders -> real values, approved hosts only; mask responses
        DialGate(conns),  # only vetted addresses are dialled
        UpstreamReuse(conns, IdlePool(reuse_idle_seconds, notify=_count_reuse), registry),  # idle upstream connections kept for the same session
        HttpAudit(audit),  # one flow-log event per HTTP decision
        ProtocolErrors(registry, audit),  # HTTP/2 requests mitmproxy refuses before any hook, from its own log
    ]
