"""Audit: every decision becomes one flow-log event and its metrics.

Addons call `Audit.emit(event)`; this is the one path from a decision to the
log file and the counters, so the two can never disagree.
"""

from __future__ import annotations

import logging
from pathlib import Path

from gateway import metrics
from gateway.log import chain, events
from gateway.log.webhook import WebhookSink
from gateway.log.writer import FlowLog, LogWriteError
from gateway.policy.decide import REASONS

logger = logging.getLogger("egressgw")

# Reasons the gateway itself adds to the policy engine's.
GATEWAY_REASONS = (
    "no-session",
    "sni-host-mismatch",
    "address-not-allowed",
    "dns-failure",
    "bad-request",
    "proxy-auth-required",
    "upstream-error",
    "log-unavailable",
    "session-store-unavailable",
    "exfiltration",
    "exfiltration-redacted",
    "upload-budget",
    "body-uninspectable",
    "detection-not-ready",
)
_LABEL_REASONS = frozenset(REASONS) | frozenset(GATEWAY_REASONS)


def open_flow_log(config) -> FlowLog:
    """The flow-log writer a gateway config asks for (format, rotation, keyed checkpoints)."""
    key = chain.load_key(config.log_hmac_key_file, Path(config.log_path).parent, source=config.source)
    return FlowLog(config.log_path, format=config.log_format, rotate_bytes=config.log_rotate_bytes,
                   keep=config.log_keep, checkpoint_every=config.log_checkpoint_every, key=key)


class Audit:
    def __init__(self, flowlog: FlowLog, webhook: WebhookSink | None = None):
        self.flowlog = flowlog
        self.webhook = webhook
        self.healthy = True

    @classmethod
    def from_config(cls, config) -> "Audit":
        return cls(open_flow_log(config), WebhookSink(config.log_webhook) if config.log_webhook else None)

    def emit(self, event: dict) -> None:
        """Write the event, then count it. Raises LogWriteError: the caller must refuse the flow."""
        try:
            self.flowlog.write(event)
        except LogWriteError:
            self.healthy = False
            metrics.LOG_ERRORS.inc()
            logger.error("flow log write failed; refusing egress until it recovers")
            raise
        self.healthy = True
        metrics.LOG_RECORDS.inc()
        if self.webhook is not None and event.get("alert"):
            self.webhook.submit(event)  # queued; never waits on the network
        kind = event["event"]
        if kind == events.DNS:
            metrics.DNS_QUERIES.labels(event.get("decision", "deny"), event.get("dns_rcode", "NOERROR")).inc()
        elif kind != events.SESSION:
            reason = event.get("reason", "allowed")
            if reason not in _LABEL_REASONS:
                reason = "other"
            metrics.DECISIONS.labels(kind, event.get("decision", "deny"), reason).inc()
        for hit in event.get("detections", ()):
            metrics.DETECTIONS.labels(hit.get("rule", "?"), hit.get("action", "alert")).inc()

    def session_changed(self, what: str, session, active: int) -> None:
        metrics.ACTIVE_SESSIONS.set(active)
        self.emit(events.make_event(events.SESSION, session=session.id, rule=session.policy.name,
                                    detail=f"{what}: {session.name}"))

    def close(self) -> None:
        self.flowlog.close()
        if self.webhook is not None:
            self.webhook.close()
