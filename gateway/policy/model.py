"""The policy model: frozen dataclasses built by load.py, read by decide.py."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

API_VERSION = "egressgw.dev/v1alpha1"
KIND = "EgressPolicy"
MODES = ("enforce", "report")
PROTOCOLS = ("http", "tcp")
DEFAULT_PORTS = (443,)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class HostSelector:
    kind: str  # "name" | "pattern"
    value: str  # normalised; a pattern keeps its "*." prefix

    def to_dict(self) -> dict[str, str]:
        return {"matchName" if self.kind == "name" else "matchPattern": self.value}

    def matches(self, name: str) -> bool:
        """Whether a normalised name is selected (a pattern's `*` is exactly one label)."""
        if self.kind == "name":
            return name == self.value
        return name.endswith(self.value[1:]) and name.count(".") == self.value.count(".")


@dataclass(frozen=True)
class Rule:
    name: str
    protocol: str  # "http" | "tcp"
    hosts: tuple[HostSelector, ...]
    cidrs: tuple[Network, ...]
    ports: tuple[int, ...]
    ports_explicit: bool  # False: ports defaulted to 443, and plain HTTP is not allowed
    methods: frozenset[str] | None  # None: any method
    paths: tuple[str, ...] | None  # None: any path
    inspect: bool
    line: int
    uploads: bool = False  # the host takes uploads: no upload budget, no high-entropy-upload hits

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "protocol": self.protocol}
        if self.hosts:
            d["hosts"] = [h.to_dict() for h in self.hosts]
        if self.cidrs:
            d["cidrs"] = [str(c) for c in self.cidrs]
        if self.ports_explicit:
            d["ports"] = list(self.ports)
        if self.methods is not None:
            d["methods"] = sorted(self.methods)
        if self.paths is not None:
            d["paths"] = list(self.paths)
        if self.protocol == "http":
            d["inspect"] = self.inspect
        if self.uploads:
            d["uploads"] = True
        return d


DETECTION_ACTIONS = ("block", "redact", "alert")
DEFAULT_SPLIT_WINDOW = 300
DEFAULT_HIGH_ENTROPY_BYTES = 64 * 1024
DEFAULT_STREAM_BYTES = 1 << 20


@dataclass(frozen=True)
class DetectionRule:
    """What the policy says about one detection rule: its action, and where it does not apply."""

    rule: str
    action: str | None  # None: the policy's default, else the rule's own
    allow_hosts: tuple[HostSelector, ...] = ()
    allow_regexes: tuple[str, ...] = ()  # a hit whose matched text matches one of these is allowed
    line: int = 0
    _compiled: tuple[re.Pattern[bytes], ...] = field(default=(), init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", tuple(re.compile(r.encode()) for r in self.allow_regexes))

    def allows_host(self, host: str) -> bool:
        return any(sel.matches(host) for sel in self.allow_hosts)

    def allows_text(self, text: bytes) -> bool:
        return any(rx.search(text) for rx in self._compiled)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.action:
            d["action"] = self.action
        allow: list[dict[str, str]] = [h.to_dict() for h in self.allow_hosts]
        allow += [{"regex": r} for r in self.allow_regexes]
        if allow:
            d["allow"] = allow
        return d


@dataclass(frozen=True)
class UploadBudget:
    bytes: int
    window_seconds: int

    def to_dict(self) -> dict[str, int]:
        return {"bytes": self.bytes, "windowSeconds": self.window_seconds}


@dataclass(frozen=True)
class Detection:
    """`spec.detection`: payload scanning for exfiltration. On by default, with each rule's own action."""

    enabled: bool = True
    action: str | None = None  # overrides every rule's built-in default; per-rule `action` overrides this
    rules: tuple[DetectionRule, ...] = ()
    rules_files: tuple[str, ...] = ()  # gitleaks TOML, absolute paths
    split_window_seconds: int = DEFAULT_SPLIT_WINDOW
    upload_budget: UploadBudget | None = None
    high_entropy_bytes: int = DEFAULT_HIGH_ENTROPY_BYTES
    stream_bytes: int = DEFAULT_STREAM_BYTES
    declared: bool = False  # the policy had a `detection` block (to_dict writes one back only then)
    packs: tuple[Any, ...] = field(default=(), compare=False, repr=False)  # RulePacks loaded from rules_files

    def rule(self, rule_id: str) -> DetectionRule | None:
        return next((r for r in self.rules if r.rule == rule_id), None)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"enabled": self.enabled}
        if self.action:
            d["action"] = self.action
        if self.rules:
            d["rules"] = {r.rule: r.to_dict() for r in self.rules}
        if self.rules_files:
            d["rulesFiles"] = list(self.rules_files)
        d["splitWindowSeconds"] = self.split_window_seconds
        if self.upload_budget:
            d["uploadBudget"] = self.upload_budget.to_dict()
        d["highEntropyBytes"] = self.high_entropy_bytes
        d["streamBytes"] = self.stream_bytes
        return d


@dataclass(frozen=True)
class Limits:
    """`spec.limits`: what one session may use of the gateway. Every field has a safe default.

    Upload bytes per window are `spec.detection.uploadBudget` (per session and host), not repeated here."""

    connections: int = 256  # open client connections at once
    requests_per_second: int = 100  # HTTP requests (token bucket, burst 2x)
    header_count: int = 100  # request header fields
    header_bytes: int = 65536  # request (and response) header names + values
    url_bytes: int = 16384  # request target (path and query)
    body_bytes: int = 1 << 30  # request body
    body_chunks: int = 4096  # pieces under 1 KiB a request body may arrive in (HTTP/1 chunks, HTTP/2 DATA frames)
    websocket_message_bytes: int = 16 << 20  # one WebSocket message from the sandbox
    dns_per_second: int = 200  # DNS queries (token bucket, burst 2x)
    tls_per_second: int = 50  # TLS handshakes (token bucket, burst 2x)
    stream_resets_per_second: int = 100  # HTTP/2 streams reset while still served (token bucket, burst 2x)
    declared: bool = field(default=False, compare=False)  # the policy had a `limits` block

    def to_dict(self) -> dict[str, int]:
        return {key: getattr(self, attr) for key, attr in LIMIT_KEYS.items()}


# policy key -> Limits attribute
LIMIT_KEYS = {
    "connections": "connections",
    "requestsPerSecond": "requests_per_second",
    "headerCount": "header_count",
    "headerBytes": "header_bytes",
    "urlBytes": "url_bytes",
    "bodyBytes": "body_bytes",
    "bodyChunks": "body_chunks",
    "websocketMessageBytes": "websocket_message_bytes",
    "dnsQueriesPerSecond": "dns_per_second",
    "tlsHandshakesPerSecond": "tls_per_second",
    "streamResetsPerSecond": "stream_resets_per_second",
}


@dataclass(frozen=True)
class Policy:
    name: str
    mode: str  # "enforce" | "report"
    rules: tuple[Rule, ...]
    source: str
    detection: Detection = Detection()
    limits: Limits = Limits()

    def rule_named(self, name: str | None) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None) if name else None

    def to_dict(self) -> dict[str, Any]:
        """The policy as a document ``load_policy_text`` accepts (JSON or YAML)."""
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": self.name},
            "spec": {
                "mode": self.mode,
                "egress": [r.to_dict() for r in self.rules],
                **({"detection": self.detection.to_dict()} if self.detection.declared else {}),
                **({"limits": self.limits.to_dict()} if self.limits.declared else {}),
            },
        }
