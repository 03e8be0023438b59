"""Address blocks: one /30 per sandbox out of a pool, lowest free block first.

Block i of pool P is P.network + 4*i; the host side gets .1, the sandbox .2.
Pure functions; the caller serialises allocation with the state-dir lock.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from gateway.errors import SandboxError

DEFAULT_POOL = "10.211.0.0/16"
BLOCK_PREFIX = 30
BLOCK_SIZE = 4


@dataclass(frozen=True)
class Block:
    index: int
    host_addr: IPv4Address
    sandbox_addr: IPv4Address
    prefix: int = BLOCK_PREFIX

    @property
    def network(self) -> IPv4Network:
        return IPv4Network(f"{self.host_addr}/{self.prefix}", strict=False)


def parse_pool(pool: str) -> IPv4Network:
    try:
        net = ipaddress.ip_network(pool, strict=True)
    except ValueError as e:
        raise SandboxError(f"invalid address pool {pool!r}: {e} "
                           "(fix: give an IPv4 network such as 10.211.0.0/16)") from None
    if not isinstance(net, IPv4Network) or net.prefixlen > BLOCK_PREFIX:
        raise SandboxError(f"invalid address pool {pool!r}: need an IPv4 network of /{BLOCK_PREFIX} "
                           "or larger (fix: e.g. 10.211.0.0/16)")
    return net


def block(pool: IPv4Network, index: int) -> Block:
    if not 0 <= index < pool.num_addresses // BLOCK_SIZE:
        raise SandboxError(f"block index {index} is outside pool {pool}")
    base = int(pool.network_address) + BLOCK_SIZE * index
    return Block(index, IPv4Address(base + 1), IPv4Address(base + 2))


def span(net: IPv4Network) -> tuple[int, int]:
    return int(net.network_address), int(net.broadcast_address)


def allocate(pool: IPv4Network, used: set[int], taken: list[tuple[int, int]]) -> Block:
    """Lowest block not in `used` (indices) and overlapping none of `taken` (networks already
    configured in the gateway namespace, as inclusive (first, last) address ranges: see span)."""
    start, count = int(pool.network_address), pool.num_addresses // BLOCK_SIZE
    end = start + pool.num_addresses - 1
    blocked: list[tuple[int, int]] = []      # inclusive index ranges hit by taken networks
    for first, last in taken:
        if last < start or first > end:
            continue
        blocked.append(((max(first, start) - start) // BLOCK_SIZE, (min(last, end) - start) // BLOCK_SIZE))
    i = 0
    while i < count:
        if i in used:
            i += 1
            continue
        hit = next((hi for lo, hi in blocked if lo <= i <= hi), None)
        if hit is None:
            return block(pool, i)
        i = hit + 1
    raise SandboxError(f"address pool {pool} is exhausted ({count} blocks of /{BLOCK_PREFIX}, "
                       f"{len(used)} in use) (fix: remove unused sandboxes or configure a larger pool)")
