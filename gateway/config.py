"""The gateway config file: load, validate, apply defaults.

A config names where the gateway listens, whom it asks upstream, where its CA
and flow log live. Every key is documented in docs/config.md. Unknown keys are
errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.detect import dnstunnel


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ControlListen:
    """Either a unix socket path or a loopback TCP address."""

    unix: str | None = None
    tcp: Listen | None = None

    def url(self) -> str:
        return f"unix://{self.unix}" if self.unix else f"http://{self.tcp}"


@dataclass(frozen=True)
class Config:
    transparent: Listen = Listen("0.0.0.0", 15001)
    proxy: Listen | None = Listen("127.0.0.1", 3128)
    dns: Listen = Listen("0.0.0.0", 15353)
    control: ControlListen = ControlListen(unix="/run/egressgw/control.sock")
    metrics: Listen | None = Listen("127.0.0.1", 9469)
    upstream_dns: tuple[Listen, ...] = ()
    upstream_ca_bundle: str | None = None
    upstream_timeout: float = 5.0
    # upstream.reuseIdleSeconds: how long after its last use an idle upstream connection may still go to
    # the session's next client connection (gateway/upstream_pool.py); 0: never kept
    upstream_reuse_idle: float = 1.5
    secret_ttl: float = 300.0
    ca_dir: str = "/var/lib/egressgw/ca"
    # None: mitmproxy's own unconstrained CA; else names/CIDRs/`policy:<path>` the CA is limited to (gateway/ca.py)
    ca_name_constraints: tuple[str, ...] | None = None
    ca_leaf_key: str = "ecdsa"  # ca.leafKey, one of LEAF_KEYS (gateway/ca.py)
    log_path: str = "/var/log/egressgw/flows.jsonl"
    log_format: str = "ocsf"  # ocsf | ecs | native
    log_rotate_bytes: int = 100 << 20  # 0: never rotate
    log_keep: int = 10  # rotated files kept; 0: all
    log_checkpoint_every: int = 1000
    log_hmac_key_file: str = "/var/lib/egressgw/log.key"
    log_webhook: object = None  # gateway.log.webhook.WebhookConfig or None
    token_file: str = "/var/lib/egressgw/control.token"
    state_dir: str = "/run/egressgw"
    sandbox_pool: str = "10.211.0.0/16"
    allow_dest_ranges: tuple[str, ...] = ()
    session_store: str = "sqlite:///var/lib/egressgw/sessions.db"
    # None: the detector's defaults. Imported lazily: gateway.detect loads hyperscan, which the
    # CLI's other commands do not need.
    dns_detection: dnstunnel.Settings | None = None
    # timeouts.* (docs/limits.md): idle connections (mitmproxy tcp_timeout), slow clients, slow origins
    idle_timeout: float = 300.0
    request_headers_timeout: float = 30.0
    request_body_timeout: float = 600.0
    response_headers_timeout: float = 60.0
    # gateway processes: 1 = one process (as always); N > 1 = a supervisor and N workers (docs/workers.md)
    workers: int = 1
    source: str = "<defaults>"

    def control_token(self) -> str:
        """Read the control API bearer token, creating it (mode 0600) on first use."""
        path = Path(self.token_file)
        try:
            token = path.read_text().strip()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise ConfigError(f"{self.source}: cannot read control.tokenFile {path}: {e.strerror}") from e
        else:
            if token:
                return token
            raise ConfigError(
                f"{self.source}: control.tokenFile {path} is empty "
                "(fix: delete it; a new token is created on the next start)"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        return token


# ca.leafKey: the leaves' key, a per-process ECDSA P-256 key or the CA's own (RSA) key
LEAF_KEYS = ("ecdsa", "ca")

_KEYS = {
    "listen": {"transparent", "proxy", "dns", "control", "metrics"},
    "upstream": {"dns", "caBundle", "timeoutSeconds", "reuseIdleSeconds"},
    "ca": {"dir", "nameConstraints", "leafKey"},
    "log": {"path", "format", "rotateBytes", "keep", "checkpointEvery", "hmacKeyFile", "webhook"},
    "control": {"tokenFile"},
    "sandbox": {"pool", "stateDir"},
    "dialGuard": {"allowRanges"},
    "secrets": {"cacheSeconds"},
    "sessions": {"store"},
    "detection": {"dns"},
    "timeouts": {"idleSeconds", "requestHeadersSeconds", "requestBodySeconds", "responseHeadersSeconds"},
}

# keys that are a value, not a section
_TOP_LEVEL = {"workers"}

# detection.dns.<key> -> (Settings field, kind, minimum): DNS tunnel thresholds (docs/detection.md)
_DNS_DETECTION = {
    "enabled": ("enabled", bool, None),
    "windowSeconds": ("window", float, 1),
    "maxEncodedNames": ("max_encoded", int, 1),
    "maxDistinctSubdomains": ("max_distinct", int, 1),
    "maxUncommonQueries": ("max_uncommon", int, 1),
    "maxQueries": ("max_rate", int, 1),
    "encodedMinLength": ("encoded_min_length", int, 4),
    "minEntropyRatio": ("min_entropy_ratio", float, 0),
    "maxLabelLength": ("max_label_length", int, 8),
    "maxNameLength": ("max_name_length", int, 16),
    "blockSeconds": ("block", float, 0),
    "maxTrackedDomains": ("max_tracked", int, 1),
    "maxNamesPerDomain": ("max_names", int, 1),
}


def parse_listen(value: object, what: str, default_host: str = "0.0.0.0") -> Listen:
    """Parse `host:port`, `[v6]:port` or a bare port number."""
    if isinstance(value, int) and not isinstance(value, bool):  # YAML `on`/`yes` is True, not a port
        return Listen(default_host, _port(value, what))
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what}: expected 'host:port', got {value!r}")
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, sep, port = value.rpartition(":")
        if not sep:
            raise ConfigError(f"{what}: expected 'host:port', got {value!r} (fix: add a port, e.g. {value}:8080)")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{what}: {host!r} is not an IP address (fix: listen on an address, e.g. 127.0.0.1)") from None
    try:
        return Listen(host, _port(int(port), what))
    except ValueError:
        raise ConfigError(f"{what}: port {port!r} is not a number") from None


def _port(n: int, what: str) -> int:
    if not 0 < n < 65536:
        raise ConfigError(f"{what}: port {n} is out of range 1-65535")
    return n


def _resolver(value: object, what: str = "upstream.dns") -> Listen:
    """A resolver address: `ip`, `ip:port`, `[v6]:port` or a bare IPv6 address (port 53)."""
    text = str(value)
    if text.startswith("[") or text.count(":") == 1:
        return parse_listen(text, what)
    return parse_listen(f"[{text}]:53" if ":" in text else f"{text}:53", what)


def _control(value: object, what: str) -> ControlListen:
    if isinstance(value, str) and value.startswith("unix://"):
        return ControlListen(unix=value.removeprefix("unix://"))
    if isinstance(value, str) and value.startswith("/"):
        return ControlListen(unix=value)
    listen = parse_listen(value, what, "127.0.0.1")
    if not ipaddress.ip_address(listen.host).is_loopback:
        raise ConfigError(
            f"{what}: the control API must listen on a unix socket or loopback, not {listen.host} "
            "(fix: use unix:///run/egressgw/control.sock or 127.0.0.1:PORT)"
        )
    return ControlListen(tcp=listen)


def _dns_detection(body: object, source: str) -> dnstunnel.Settings:
    """The `detection.dns` mapping -> gateway.detect.dnstunnel.Settings, every value checked."""
    from gateway.detect import dnstunnel

    if not isinstance(body, dict):
        raise ConfigError(f"{source}: detection.dns must be a mapping of thresholds, e.g. {{maxEncodedNames: 10}}")
    kw: dict = {}
    for key, value in body.items():
        if key not in _DNS_DETECTION:
            raise ConfigError(f"{source}: unknown key detection.dns.{key} (known: {', '.join(sorted(_DNS_DETECTION))})")
        attr, kind, minimum = _DNS_DETECTION[key]
        what = f"{source}: detection.dns.{key}"
        if kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{what} must be true or false, not {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            noun = "a whole number" if kind is int else "a number"
            raise ConfigError(f"{what} must be {noun}, not {value!r} (fix: e.g. {getattr(dnstunnel.Settings, attr)!r})")
        elif value < minimum:
            raise ConfigError(f"{what} is {value!r}; it must be at least {minimum} "
                              f"(default {getattr(dnstunnel.Settings, attr)!r})")
        kw[attr] = kind(value)
    settings = dnstunnel.Settings(**kw)
    if settings.min_entropy_ratio > 1.5:
        raise ConfigError(f"{source}: detection.dns.minEntropyRatio {settings.min_entropy_ratio} would never match "
                          "(fix: a ratio around 0.75; 1.0 is the entropy of random base32)")
    largest = max(settings.max_encoded, settings.max_distinct)
    if settings.max_names < largest:
        raise ConfigError(f"{source}: detection.dns.maxNamesPerDomain ({settings.max_names}) is below the limits it "
                          f"must count up to ({largest}) (fix: raise it to at least {largest})")
    return settings


def load_config(path: str | os.PathLike) -> Config:
    src = str(path)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"{src}: cannot read config: {e.strerror}") from e
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{src}{line}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{src}: the config must be a mapping of sections ({', '.join(_KEYS)})")
    return config_from_dict(raw, src, base_dir=Path(path).resolve().parent)


def config_from_dict(raw: dict, source: str = "<dict>", base_dir: Path | None = None) -> Config:
    for section, body in raw.items():
        if section in _TOP_LEVEL:
            continue
        if section not in _KEYS:
            raise ConfigError(f"{source}: unknown section {section!r} (known: {', '.join(sorted([*_KEYS, *_TOP_LEVEL]))})")
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: section {section!r} must be a mapping")
        for key in body:
            if key not in _KEYS[section]:
                raise ConfigError(
                    f"{source}: unknown key {section}.{key} (known: {', '.join(sorted(_KEYS[section]))})"
                )

    def get(section: str, key: str, default=None):
        return raw.get(section, {}).get(key, default)

    def rel(p: str | None) -> str | None:
        if p is None or base_dir is None or os.path.isabs(p):
            return p
        return str(base_dir / p)

    defaults = Config()
    kw: dict = {"source": source}
    listen = raw.get("listen", {})
    if "transparent" in listen:
        kw["transparent"] = parse_listen(listen["transparent"], f"{source}: listen.transparent")
    if "dns" in listen:
        kw["dns"] = parse_listen(listen["dns"], f"{source}: listen.dns")
    for key in ("proxy", "metrics"):
        if key in listen:
            off = listen[key] in (None, False, "off")
            # A bare port for these means loopback: they are for the host, not the network.
            kw[key] = None if off else parse_listen(listen[key], f"{source}: listen.{key}", "127.0.0.1")
    if "control" in listen:
        kw["control"] = _control(listen["control"], f"{source}: listen.control")
    if kw.get("control", defaults.control).unix:
        kw["control"] = ControlListen(unix=rel(kw.get("control", defaults.control).unix))

    dns = get("upstream", "dns")
    if dns is not None:
        if isinstance(dns, str):
            dns = [dns]
        if not isinstance(dns, list) or not dns:
            raise ConfigError(f"{source}: upstream.dns must be a list of resolver addresses, e.g. ['192.0.2.53:53']")
        kw["upstream_dns"] = tuple(_resolver(d, f"{source}: upstream.dns") for d in dns)
    ca_bundle = get("upstream", "caBundle")
    if ca_bundle is not None:
        ca_bundle = rel(str(ca_bundle))
        if not os.path.isfile(ca_bundle):
            raise ConfigError(f"{source}: upstream.caBundle {ca_bundle} does not exist (fix: point it at a PEM file)")
        kw["upstream_ca_bundle"] = ca_bundle
    for section, key, attr in (("upstream", "timeoutSeconds", "upstream_timeout"),
                               ("secrets", "cacheSeconds", "secret_ttl"),
                               ("timeouts", "idleSeconds", "idle_timeout"),
                               ("timeouts", "requestHeadersSeconds", "request_headers_timeout"),
                               ("timeouts", "requestBodySeconds", "request_body_timeout"),
                               ("timeouts", "responseHeadersSeconds", "response_headers_timeout")):
        seconds = get(section, key)
        if seconds is not None:
            if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds <= 0:
                raise ConfigError(f"{source}: {section}.{key} must be a positive number of seconds")
            kw[attr] = float(seconds)
    reuse = get("upstream", "reuseIdleSeconds")
    if reuse is not None:
        if not isinstance(reuse, (int, float)) or isinstance(reuse, bool) or not 0 <= reuse <= 300:
            raise ConfigError(f"{source}: upstream.reuseIdleSeconds must be a number of seconds from 0 to 300, "
                              f"not {reuse!r} (fix: 1.5, the default; 0 turns upstream connection reuse off)")
        kw["upstream_reuse_idle"] = float(reuse)
    for section, key, attr in (
        ("ca", "dir", "ca_dir"),
        ("log", "path", "log_path"),
        ("control", "tokenFile", "token_file"),
        ("sandbox", "stateDir", "state_dir"),
    ):
        v = get(section, key)
        if v is not None:
            if not isinstance(v, str) or not v:
                raise ConfigError(f"{source}: {section}.{key} must be a path")
            kw[attr] = rel(v)
    kw.update(_log_settings(raw.get("log", {}), source, rel, kw.get("log_path", defaults.log_path)))
    pool = get("sandbox", "pool")
    if pool is not None:
        try:
            net = ipaddress.ip_network(pool, strict=True)
        except ValueError as e:
            raise ConfigError(f"{source}: sandbox.pool {pool!r} is not a network: {e}") from None
        if net.version != 4 or net.prefixlen > 29:
            raise ConfigError(f"{source}: sandbox.pool must be an IPv4 network of /29 or larger, e.g. 10.211.0.0/16")
        kw["sandbox_pool"] = str(net)
    ranges = get("dialGuard", "allowRanges")
    if ranges is not None:
        try:
            kw["allow_dest_ranges"] = tuple(str(ipaddress.ip_network(r, strict=False)) for r in ranges)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{source}: dialGuard.allowRanges must be a list of networks: {e}") from None
    constraints = get("ca", "nameConstraints")
    if constraints is not None:
        if not isinstance(constraints, list) or not constraints or not all(isinstance(c, str) and c for c in constraints):
            raise ConfigError(f"{source}: ca.nameConstraints must be a non-empty list of names, CIDRs or "
                              "policy:<path> entries (fix: e.g. [api.github.com, 'policy:/etc/egressgw/policies'])")
        kw["ca_name_constraints"] = tuple("policy:" + rel(c[len("policy:"):]) if c.startswith("policy:") else c
                                          for c in constraints)
    leaf_key = get("ca", "leafKey")
    if leaf_key is not None:
        if leaf_key not in LEAF_KEYS:
            raise ConfigError(f"{source}: ca.leafKey must be ecdsa or ca, not {leaf_key!r} (fix: ecdsa, the default; "
                              "ca only for clients that cannot verify ECDSA P-256 certificates)")
        kw["ca_leaf_key"] = leaf_key
    store = get("sessions", "store")
    if store is not None:
        kw["session_store"] = _session_store(store, f"{source}: sessions.store", rel)
    if "dns" in raw.get("detection", {}):
        kw["dns_detection"] = _dns_detection(raw["detection"]["dns"], source)
    if "workers" in raw:
        kw["workers"] = _workers(raw["workers"], f"{source}: workers")
        _check_worker_ports(kw, defaults, source)
    return Config(**kw)


MAX_WORKERS = 64


def _workers(value: object, what: str) -> int:
    """`auto` (one per core) or a whole number 1-64."""
    if value == "auto":
        return max(1, min(os.cpu_count() or 1, MAX_WORKERS))
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        raise ConfigError(f"{what} must be auto or a whole number 1-{MAX_WORKERS}, not {value!r} "
                          "(fix: workers: auto, or e.g. workers: 2)")
    return value


def _check_worker_ports(kw: dict, defaults: Config, source: str) -> None:
    """Worker k listens on each listen port + k: those ranges must not overlap each other or metrics/control."""
    n = kw["workers"]
    if n == 1:
        return
    if kw.get("session_store", defaults.session_store) == "memory":
        raise ConfigError(f"{source}: workers {n} needs a session store the workers share, not memory "
                          "(fix: sessions.store: sqlite:///var/lib/egressgw/sessions.db, or workers: 1)")
    ranges = {}
    for key in ("transparent", "dns", "proxy"):
        listen = kw.get(key, getattr(defaults, key))
        if listen is not None:
            if listen.port + n - 1 > 65535:
                raise ConfigError(f"{source}: workers {n}: listen.{key} {listen.port}+{n - 1} is past port 65535 "
                                  "(fix: a lower listen port or fewer workers)")
            ranges[key] = range(listen.port, listen.port + n)
    fixed = {}
    metrics = kw.get("metrics", defaults.metrics)
    if metrics is not None:
        fixed["metrics"] = metrics.port
    control = kw.get("control", defaults.control)
    if control.tcp is not None:
        fixed["control"] = control.tcp.port
    keys = list(ranges)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            if set(ranges[a]) & set(ranges[b]):
                raise ConfigError(f"{source}: workers {n}: worker k listens on each listen port + k, and "
                                  f"listen.{a} {ranges[a].start}-{ranges[a].stop - 1} overlaps listen.{b} "
                                  f"{ranges[b].start}-{ranges[b].stop - 1} (fix: move one of them {n} ports away)")
        for name, port in fixed.items():
            if port in ranges[a]:
                raise ConfigError(f"{source}: workers {n}: listen.{name} port {port} is inside listen.{a}'s "
                                  f"worker ports {ranges[a].start}-{ranges[a].stop - 1} (fix: move listen.{name})")


def _session_store(value: object, what: str, rel) -> str:
    """`memory`, `sqlite:///abs/path` or `sqlite://relative/path` (to the config file), `redis://...`."""
    if value == "memory":
        return value
    if isinstance(value, str) and value.startswith("sqlite://") and len(value) > len("sqlite://"):
        return "sqlite://" + rel(value.removeprefix("sqlite://"))
    if isinstance(value, str) and value.startswith(("redis://", "rediss://")):
        return value
    raise ConfigError(f"{what}: {value!r} is not a session store "
                      "(fix: memory, sqlite:///var/lib/egressgw/sessions.db or redis://HOST:6379/0)")


def _log_settings(log: dict, source: str, rel, log_path: str) -> dict:
    """The `log:` keys other than `path`: format, rotation, checkpoints, alert webhook."""
    from gateway.log.webhook import parse_webhook
    from gateway.log.writer import FORMATS

    kw: dict = {}
    if "format" in log:
        if log["format"] not in FORMATS:
            raise ConfigError(f"{source}: log.format must be one of {', '.join(FORMATS)}, not {log['format']!r}")
        kw["log_format"] = log["format"]
    for key, attr, low in (("rotateBytes", "log_rotate_bytes", 0), ("keep", "log_keep", 0),
                           ("checkpointEvery", "log_checkpoint_every", 1)):
        if key in log:
            v = log[key]
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ConfigError(f"{source}: log.{key} must be a whole number >= {low}, not {v!r}")
            kw[attr] = v
    if kw.get("log_rotate_bytes", 1) and kw.get("log_rotate_bytes", 1 << 20) < 4096:
        raise ConfigError(f"{source}: log.rotateBytes must be 0 (never rotate) or at least 4096")
    key_file = log.get("hmacKeyFile")
    if key_file is not None:
        if not isinstance(key_file, str) or not key_file:
            raise ConfigError(f"{source}: log.hmacKeyFile must be a path")
        kw["log_hmac_key_file"] = rel(key_file)
    key_path = Path(kw.get("log_hmac_key_file", Config.log_hmac_key_file)).resolve()
    log_dir = Path(log_path).resolve().parent
    if key_path.is_relative_to(log_dir):
        raise ConfigError(
            f"{source}: log.hmacKeyFile {key_path} is inside the log directory {log_dir}: whoever can read or "
            "rewrite the log could then forge its checkpoints (fix: keep it elsewhere, e.g. /var/lib/egressgw/log.key)")
    if log.get("webhook") is not None:
        kw["log_webhook"] = parse_webhook(log["webhook"], source)
    return kw
