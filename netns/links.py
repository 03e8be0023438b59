"""What the gateway namespace has: interfaces, their peers' namespaces, addresses.

Read over rtnetlink (netns/rtnl.py: a link and an address dump, well under a
millisecond; `ip -j` cost 2-3 ms of process start, importing pyroute2 ~300 ms
per CLI call). "The gateway namespace" is always the calling thread's.
"""

from __future__ import annotations

import ipaddress
import json
import os
from ipaddress import IPv4Network

from . import naming, rtnl

IP = "ip"
ADDR_SHOW = [IP, "-j", "-d", "addr", "show"]


class Link:
    """One interface of the gateway namespace. `kind` ("veth", "dummy", ...; None for lo / unknown)
    and `peer_netnsid` (nsid of the peer's namespace; None if the same namespace or none) are read
    from the kernel's message only when asked; `spans` are its IPv4 networks as inclusive integer
    ranges (what allocation compares), `nets` the same as IPv4Network objects."""

    __slots__ = ("name", "spans", "_kind", "_nsid", "_msg")

    def __init__(self, name: str, kind: str | None = None, peer_netnsid: int | None = None,
                 nets: list[IPv4Network] | None = None, *, msg: rtnl.LinkMessage | None = None,
                 addrs: list[tuple[int, int]] = ()) -> None:
        self.name, self._kind, self._nsid, self._msg = name, kind, peer_netnsid, msg
        pairs = [(int(n.network_address), n.prefixlen) for n in nets or ()] + list(addrs)
        self.spans = [_span(addr, plen) for addr, plen in pairs]

    @property
    def kind(self) -> str | None:
        return self._msg.kind if self._msg is not None else self._kind

    @property
    def peer_netnsid(self) -> int | None:
        return self._msg.peer_netnsid if self._msg is not None else self._nsid

    @property
    def nets(self) -> list[IPv4Network]:
        return [IPv4Network((lo, 32 - (hi - lo + 1).bit_length() + 1)) for lo, hi in self.spans]

    def _key(self) -> tuple:
        return self.name, self.kind, self.peer_netnsid, self.spans

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Link) and self._key() == other._key()

    def __repr__(self) -> str:
        return f"Link(name={self.name!r}, kind={self.kind!r}, peer_netnsid={self.peer_netnsid!r}, nets={self.nets!r})"


def _span(addr: int, plen: int) -> tuple[int, int]:
    """The network of addr/plen as (first, last) address."""
    size = 1 << (32 - plen)
    lo = addr & ~(size - 1) & 0xFFFFFFFF
    return lo, lo + size - 1


def parse_links(output: str) -> dict[str, Link]:
    links: dict[str, Link] = {}
    for it in json.loads(output or "[]"):
        name = it.get("ifname")
        if not name:
            continue
        nets = [ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False)
                for a in it.get("addr_info", []) if a.get("family") == "inet" and "local" in a]
        links[name] = Link(name, (it.get("linkinfo") or {}).get("info_kind"),
                           it.get("link_netnsid"), nets)
    return links


def snapshot() -> dict[str, Link]:
    return {msg.name: Link(msg.name, msg=msg, addrs=addrs) for msg, addrs in rtnl.links_and_addrs()}


def addressed() -> dict[str, list[tuple[int, int]]]:
    """Interfaces with an IPv4 address (named by the address's label) -> their IPv4 networks as
    (first, last) spans: what `up` needs, without the link dump (see rtnl.ipv4_addresses)."""
    out: dict[str, list[tuple[int, int]]] = {}
    for label, addr, plen in rtnl.ipv4_addresses():
        out.setdefault(label, []).append(_span(addr, plen))
    return out


def netns_ids(names: list[str] | None = None) -> dict[str, int]:
    """Named namespaces (/run/netns; only `names` if given) -> their nsid as seen from this namespace (if any)."""
    if names is None:
        try:
            names = os.listdir(naming.NETNS_RUN_DIR)
        except FileNotFoundError:
            return {}
    return rtnl.netns_ids({n: naming.netns_path(n) for n in names})


def exists(ifname: str) -> bool:
    """Does `ifname` exist in the calling thread's namespace? (/proc/sys/net is per netns)"""
    return os.path.isdir(f"/proc/sys/net/ipv4/conf/{ifname}")
