"""Every metric egressgw exports, declared once.

Names: prefix `egressgw_`, base units, `_total` on counters, `_seconds` on
histograms. Labels are small closed sets (protocol, action, reason, rcode):
never a host name, URL or session id.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

DECISIONS = Counter(
    "egressgw_requests_total",
    "Decisions on sandbox traffic, by protocol (http, tls, tcp, connect), action (allow, deny, report) and reason.",
    ["protocol", "action", "reason"],
    registry=REGISTRY,
)
DNS_QUERIES = Counter(
    "egressgw_dns_queries_total",
    "DNS queries from sandboxes, by action and the response code sent back.",
    ["action", "rcode"],
    registry=REGISTRY,
)
ACTIVE_SESSIONS = Gauge("egressgw_active_sessions", "Sessions registered now.", registry=REGISTRY)
SESSION_STORE_UP = Gauge(
    "egressgw_session_store_up",
    "1 while the session store can vouch for this replica's sessions; 0 while their traffic is refused.",
    registry=REGISTRY,
)
UPSTREAM_LATENCY = Histogram(
    "egressgw_upstream_latency_seconds",
    "Time from forwarding a request upstream to the first byte of its response.",
    ["protocol"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
DETECTIONS = Counter(
    "egressgw_detections_total",
    "Exfiltration detection hits, by rule id and the action taken (block, redact, alert).",
    ["rule", "action"],
    registry=REGISTRY,
)
LIMIT_REFUSALS = Counter(
    "egressgw_limit_refusals_total",
    "Sandbox traffic refused for exceeding a per-session limit (connections, requests, header-count, ...).",
    ["limit"],
    registry=REGISTRY,
)
UPSTREAM_REUSE = Counter(
    "egressgw_upstream_reuse_total",
    "Idle upstream connections kept for the session's next client connection (kept), handed to one and used "
    "(reused), closed at upstream.reuseIdleSeconds after their last use (expired), found closed or noisy when "
    "wanted (stale), closed for room (evicted) or because their session was deleted or changed (flushed).",
    ["event"],
    registry=REGISTRY,
)
LOG_RECORDS = Counter("egressgw_log_records_total", "Records written to the flow log.", registry=REGISTRY)
LOG_ERRORS = Counter(
    "egressgw_log_write_errors_total", "Flow-log writes that failed (egress is refused then).", registry=REGISTRY
)
WEBHOOK_SENT = Counter("egressgw_webhook_alerts_sent_total", "Alerts delivered to the webhook.", registry=REGISTRY)
WEBHOOK_DROPPED = Counter(
    "egressgw_webhook_alerts_dropped_total", "Alerts the webhook sink gave up on (queue-full, retries-exhausted, shutdown).",
    ["reason"], registry=REGISTRY,
)

GC_FROZEN = Gauge("egressgw_gc_frozen_objects",
                  "Objects start-up left alive, moved out of the garbage collector's way (gateway/gctune.py).",
                  registry=REGISTRY)

# A supervisor's own (workers: N > 1, gateway/workers.py): registered on REGISTRY by its Pool only, so a
# one-process gateway does not export them.
WORKERS = Gauge("egressgw_workers", "Worker processes configured (workers: N).", registry=None)
WORKERS_UP = Gauge("egressgw_workers_up", "Worker processes running with their listeners up.", registry=None)
WORKER_RESTARTS = Counter("egressgw_worker_restarts_total", "Worker processes restarted after they died.",
                          registry=None)


def exposition() -> bytes:
    return generate_latest(REGISTRY)
