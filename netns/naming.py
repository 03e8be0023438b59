"""Names derived from a sandbox name: namespace, interfaces, nft table, paths.

Everything here is pure; one place decides how a sandbox name maps onto the
kernel's names so up, down and sweep always agree.
"""

from __future__ import annotations

import re

from gateway.errors import SandboxError

NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,30}")
NETNS_PREFIX = "egw-"          # network namespace: egw-NAME (in /run/netns, global)
HOST_IF_PREFIX = "egwh"        # host side veth, in the gateway namespace
SANDBOX_IF_PREFIX = "egws"     # sandbox side veth, inside egw-NAME
TABLE_PREFIX = "egressgw_"     # nft table inet egressgw_NAME (reserved prefix)
NETNS_RUN_DIR = "/run/netns"   # where `ip netns add` pins namespaces
ETC_NETNS_DIR = "/etc/netns"   # `ip netns exec` bind-mounts files from here onto /etc
IFNAMSIZ = 15                  # longest interface name the kernel accepts


def validate_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise SandboxError(
            f"invalid sandbox name {name!r} (fix: use 1-31 characters of a-z, 0-9 and '-', "
            "starting with a letter or digit, e.g. 'agent-1')"
        )
    return name


def netns_name(name: str) -> str:
    return NETNS_PREFIX + name


def table_name(name: str) -> str:
    return TABLE_PREFIX + name.replace("-", "_")


def host_if(index: int) -> str:
    return _ifname(HOST_IF_PREFIX, index)


def host_if_index(ifname: str) -> int | None:
    """The block index a host-side veth name stands for (egwh7 -> 7); None for any other name."""
    rest = ifname[len(HOST_IF_PREFIX):]
    return int(rest) if ifname.startswith(HOST_IF_PREFIX) and rest.isdigit() else None


def sandbox_if(index: int) -> str:
    return _ifname(SANDBOX_IF_PREFIX, index)


def _ifname(prefix: str, index: int) -> str:
    name = f"{prefix}{index}"
    if index < 0 or len(name) > IFNAMSIZ:
        raise SandboxError(f"address block index {index} gives interface name {name!r} longer than "
                           f"{IFNAMSIZ} characters (fix: use a smaller address pool)")
    return name


def netns_path(netns: str) -> str:
    return f"{NETNS_RUN_DIR}/{netns}"


def etc_dir(netns: str) -> str:
    return f"{ETC_NETNS_DIR}/{netns}"
