"""Secrets as a session declares them: which value, for which hosts, in which parts of a request.

A spec holds a source URI and never a value. Parsing is strict: a secret that
would silently go nowhere (no hosts) or everywhere (a bad pattern) is an error
with a fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gateway.policy.hosts import HostError, name_selector, normalize_host, pattern_selector
from gateway.policy.model import HostSelector

PARTS = ("headers", "query", "path", "body", "websocket")
DEFAULT_PARTS = frozenset({"headers"})
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_KEYS = {"name", "source", "hosts", "parts", "format", "sigv4"}
SIGV4_DERIVED = {"secretAccessKey": "AWS_SECRET_ACCESS_KEY", "sessionToken": "AWS_SESSION_TOKEN"}


@dataclass(frozen=True)
class SecretSpec:
    name: str  # also the environment variable the sandbox gets the placeholder in
    source: str  # a URI: env://, file://, exec://, vault://, aws-sm://
    hosts: tuple[HostSelector, ...]
    parts: frozenset[str] = DEFAULT_PARTS
    format: str | None = None  # e.g. "Bearer {}": used when a header's whole value is the placeholder
    # AWS: this secret is an access key id; requests signed with its placeholder are re-signed with the real
    # key pair. Maps "secretAccessKey" (required) and "sessionToken" (optional) to source URIs.
    sigv4: tuple[tuple[str, str], ...] = ()

    def sigv4_source(self, key: str) -> str | None:
        return dict(self.sigv4).get(key)

    def derived(self) -> list["SecretSpec"]:
        """The companion secrets of an AWS key id: placeholders allowed in no part (signing only)."""
        return [SecretSpec(SIGV4_DERIVED[k], uri, self.hosts, frozenset()) for k, uri in self.sigv4]

    def approved_for(self, host: str) -> bool:
        try:
            host = normalize_host(host)
        except ValueError:
            return False
        return any(sel.matches(host) for sel in self.hosts)

    def render(self, value: str) -> str:
        return self.format.replace("{}", value) if self.format else value

    def describe(self) -> dict:
        """What the API and logs may show: everything but the value (the source URI names where it lives)."""
        return {
            "name": self.name,
            "source": self.source,
            "hosts": [s.to_dict() for s in self.hosts],
            "parts": sorted(self.parts),
            **({"format": self.format} if self.format else {}),
            **({"sigv4": dict(self.sigv4)} if self.sigv4 else {}),
        }


@dataclass(frozen=True)
class BoundSecret:
    """A secret of one session: its spec and the placeholder the sandbox holds."""

    session_id: str
    spec: SecretSpec
    placeholder: str = field(repr=False)
    core: str = field(repr=False)


def parse_secret(raw: object, where: str = "secret") -> SecretSpec:
    """One secret from its JSON/YAML form. ValueError names the field and the fix."""
    from gateway.secrets.backends import parse_source

    if not isinstance(raw, dict):
        raise ValueError(f"{where}: must be a mapping with name, source and hosts")
    unknown = set(raw) - _KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(_KEYS)})")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{where}: name must be an environment variable name like OPENAI_API_KEY")
    where = f"secret {name}"
    source = raw.get("source")
    if not isinstance(source, str):
        raise ValueError(f"{where}: source must be a URI such as env://NAME or file:///path")
    try:
        parse_source(source)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    hosts_raw = raw.get("hosts")
    if not isinstance(hosts_raw, list) or not hosts_raw:
        raise ValueError(f"{where}: hosts must list the hosts it is approved for, e.g. [{{matchName: api.openai.com}}]")
    hosts = []
    for h in hosts_raw:
        if isinstance(h, str):
            h = {"matchPattern": h} if h.startswith("*") else {"matchName": h}
        if not isinstance(h, dict) or len(h) != 1 or not set(h) <= {"matchName", "matchPattern"}:
            raise ValueError(f"{where}: each host is {{matchName: NAME}} or {{matchPattern: '*.DOMAIN'}}")
        (kind, value), = h.items()
        try:
            hosts.append(name_selector(value) if kind == "matchName" else pattern_selector(value))
        except HostError as e:
            raise ValueError(f"{where}: {e}") from None
    parts = raw.get("parts", sorted(DEFAULT_PARTS))
    if not isinstance(parts, list) or not parts or not set(parts) <= set(PARTS):
        raise ValueError(f"{where}: parts must be a list drawn from {list(PARTS)}")
    fmt = raw.get("format")
    if fmt is not None and (not isinstance(fmt, str) or fmt.count("{}") != 1):
        raise ValueError(f"{where}: format must contain {{}} exactly once, e.g. 'Bearer {{}}'")
    sigv4 = raw.get("sigv4")
    if sigv4 is not None:
        if not isinstance(sigv4, dict) or "secretAccessKey" not in sigv4 or not set(sigv4) <= set(SIGV4_DERIVED):
            raise ValueError(f"{where}: sigv4 must be {{secretAccessKey: URI, sessionToken: URI (optional)}}")
        for key, uri in sigv4.items():
            try:
                parse_source(uri)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{where}: sigv4.{key}: {e}") from None
        sigv4 = tuple(sorted(sigv4.items()))
    return SecretSpec(name, source, tuple(hosts), frozenset(parts), fmt, sigv4 or ())


def parse_secrets(raw: object) -> list[SecretSpec]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ValueError("secrets must be a list")
    specs = [parse_secret(r, f"secrets[{i}]") for i, r in enumerate(raw)]
    names = [s.name for spec in specs for s in (spec, *spec.derived())]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"secret names must be unique: {dupes}")
    return specs
