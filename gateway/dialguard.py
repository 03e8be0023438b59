"""Which addresses the gateway will dial.

The gateway resolves destination names itself and classifies every address
before it connects: loopback, private, link-local, CGNAT, cloud metadata,
multicast and reserved ranges are refused unless the config or a `cidrs` rule
of the session's policy names them. IPv6 forms that embed an IPv4 address
(mapped, NAT64, 6to4) are judged by the address they embed; Teredo is refused.
Because the check runs on the address actually dialled, DNS rebinding gains
nothing. The gateway's own addresses (every address of its network namespace,
e.g. an allowed name whose upstream answer is the gateway's interface) are
refused too ("gateway-self"): a sandbox must not reach the gateway's listeners
through it.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from dataclasses import dataclass

from gateway.policy.hosts import parse_ip_literal
from gateway.resolver import DnsFailure, UpstreamResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_V4 = [
    ("0.0.0.0/8", "this-network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "cgnat"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.169.254/32", "metadata"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "ietf-protocol"),
    ("192.168.0.0/16", "private"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
]
_V6 = [
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("fd00:ec2::254/128", "metadata"),
    ("fc00::/7", "unique-local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
    ("2001::/32", "teredo"),
    ("100::/64", "discard"),
]
_NETS = [(ipaddress.ip_network(n), label) for n, label in _V4 + _V6]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_6TO4 = ipaddress.ip_network("2002::/16")


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    if ip.version != 6:
        return None
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _6TO4:
        return ip.sixtofour
    return None


def classify(ip: IPAddress) -> str | None:
    """The forbidden class an address falls in, or None for an ordinary destination."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        return classify(inner)
    for net, label in _NETS:
        if ip.version == net.version and ip in net:
            return label
    return None


_OWN_TTL = 5.0
_own: tuple[float, frozenset[str]] = (0.0, frozenset())


def _read_own_addresses() -> frozenset[str]:
    """Every local address of this network namespace (Linux /proc; empty elsewhere)."""
    out: set[str] = set()
    try:
        previous = ""
        with open("/proc/net/fib_trie") as f:
            for line in f:
                if "/32 host LOCAL" in line and previous.strip().startswith("|--"):
                    out.add(previous.strip()[3:].strip())
                previous = line
    except OSError:
        pass
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                raw = line.split()[0]
                out.add(str(ipaddress.IPv6Address(int(raw, 16))))
    except (OSError, ValueError, IndexError):
        pass
    return frozenset(out)


def own_addresses() -> frozenset[str]:
    """The gateway's own addresses, re-read at most every few seconds."""
    global _own
    expires, addresses = _own
    now = time.monotonic()
    if now >= expires:
        addresses = _read_own_addresses()
        _own = (now + _OWN_TTL, addresses)
    return addresses


def refusal(ip: IPAddress) -> str | None:
    """`classify`, plus "gateway-self" for an address of the gateway's own namespace."""
    label = classify(ip)
    if label is not None:
        return label
    inner = embedded_ipv4(ip) or ip
    return "gateway-self" if str(inner) in own_addresses() or str(ip) in own_addresses() else None


@functools.lru_cache(maxsize=8192)
def classify_text(address: str) -> str | None:
    """`classify` of an address in text form, cached: the per-request fast path."""
    return classify(ipaddress.ip_address(address))


def refusal_text(address: str) -> str | None:
    """`refusal` of an address in text form: the cached `classify_text`, then the own-address set."""
    label = classify_text(address)
    if label is not None:
        return label
    if address in own_addresses():
        return "gateway-self"
    return refusal(ipaddress.ip_address(address)) if ":" in address else None


@dataclass(frozen=True)
class Vetted:
    address: str | None  # the address to dial, None when refused
    reason: str = "allowed"
    detail: str = ""


class DialGuard:
    def __init__(self, resolver: UpstreamResolver, allow_ranges: tuple[str, ...] = ()):
        self.resolver = resolver
        self.allow = [ipaddress.ip_network(r) for r in allow_ranges]

    def permitted(self, ip: IPAddress, decider, port: int) -> bool:
        if refusal(ip) is None:
            return True
        if any(ip.version == net.version and ip in net for net in self.allow):
            return True
        # A cidrs rule of the session's own policy that names this address.
        # Report mode lets denials pass, but never opens the inside: only a real "allow" counts here.
        return decider.ip(ip, port, protocol="tcp").action == "allow" or decider.ip(ip, port).action == "allow"

    async def vet(self, host: str, port: int, decider) -> Vetted:
        """Resolve `host` (a name or an IP literal) and pick an address the gateway may dial."""
        literal = parse_ip_literal(host)
        if literal is not None:
            if self.permitted(literal, decider, port):
                return Vetted(str(literal))
            return Vetted(None, "address-not-allowed", refusal(literal) or "")
        try:
            addresses = await self.resolver.addresses(host)
        except DnsFailure as e:
            return Vetted(None, "dns-failure", str(e))
        if not addresses:
            return Vetted(None, "dns-failure", "name does not resolve")
        refused = ""
        for a in addresses:
            if refusal_text(a) is None or self.permitted(ipaddress.ip_address(a), decider, port):
                return Vetted(a)
            refused = refusal(ipaddress.ip_address(a)) or refused
        return Vetted(None, "address-not-allowed", refused)
