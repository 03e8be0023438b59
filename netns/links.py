"""What the gateway namespace has: interfaces, their peers' namespaces, addresses.

Read over rtnetlink (netns/rtnl.py: a link and an address dump, well under a
millisecond; `ip -j` cost 2-3 ms of process start, importing pyroute2 ~300 ms
per CLI call). "The gateway namespace" is always the calling thread's.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass, field
from ipaddress import IPv4Network

from . import naming, rtnl

IP = "ip"
ADDR_SHOW = [IP, "-j", "-d", "addr", "show"]


@dataclass
class Link:
    name: str
    kind: str | None            # "veth", "dummy", ... (None for lo / unknown)
    peer_netnsid: int | None    # nsid of the peer's namespace, None if same namespace or none
    nets: list[IPv4Network] = field(default_factory=list)


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
    return {name: Link(name, kind, nsid, nets) for name, kind, nsid, nets in rtnl.links_and_addrs()}


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
