"""The policy model: frozen dataclasses built by load.py, read by decide.py."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
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
        return d


@dataclass(frozen=True)
class Policy:
    name: str
    mode: str  # "enforce" | "report"
    rules: tuple[Rule, ...]
    source: str

    def to_dict(self) -> dict[str, Any]:
        """The policy as a document ``load_policy_text`` accepts (JSON or YAML)."""
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": self.name},
            "spec": {"mode": self.mode, "egress": [r.to_dict() for r in self.rules]},
        }
