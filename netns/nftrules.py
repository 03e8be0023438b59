"""A sandbox's nftables table as data: each rule a list of terms, each term both nft text and the
nf_tables expressions nft itself would compile it to (`nft --debug=netlink`).

One model, two renderings: `text()` for `nft -f` / libnftables and for people (`render_rules`), and
`nftnl.Batch` for a raw netlink transaction that needs no nft cache, so `sandbox up` costs the same
with 1 or 1,000 sandbox tables on the host (libnftables reads every table first: ~0.5 ms each).
`tests/netns/test_nftnl.py` applies both renderings to fresh namespaces and compares what
`nft list table` prints.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass, field

# linux/netfilter/nf_tables.h
META_IIFNAME, META_OIFNAME, META_NFPROTO, META_L4PROTO = 6, 7, 15, 16
CMP_EQ, CMP_NEQ = 0, 1
PAYLOAD_NETWORK, PAYLOAD_TRANSPORT = 1, 2
CT_STATUS = 2  # nft_ct_keys: STATE 0, DIRECTION 1, STATUS 2
IPS_DST_NAT = 1 << 5
NF_DROP, NF_ACCEPT = 0, 1
NF_NAT_RANGE_PROTO_SPECIFIED = 2
REG_VERDICT, REG_1 = 0, 1
HOOKS = {"prerouting": 0, "input": 1, "forward": 2}
PRIORITIES = {"raw": -300, "dstnat": -100, "filter": 0}
PROTOS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
IFNAMSIZ = 16


@dataclass(frozen=True)
class Expr:
    """One nf_tables expression: its name and its attributes as (type, encoded value) pairs;
    a value that is itself a list of pairs is a nested attribute."""

    name: str
    attrs: tuple


def _u32(v: int) -> bytes:
    return struct.pack(">I", v & 0xFFFFFFFF)


def _data(value: bytes) -> tuple:
    return ((1, value),)  # NFTA_DATA_VALUE


def _meta(key: int) -> Expr:
    return Expr("meta", ((2, _u32(key)), (1, _u32(REG_1))))  # NFTA_META_KEY, NFTA_META_DREG


def _cmp(op: int, value: bytes) -> Expr:
    return Expr("cmp", ((1, _u32(REG_1)), (2, _u32(op)), (3, _data(value))))


def _payload(base: int, offset: int, length: int) -> Expr:
    return Expr("payload", ((1, _u32(REG_1)), (2, _u32(base)), (3, _u32(offset)), (4, _u32(length))))


def _ifname(name: str) -> bytes:
    raw = name.encode()
    if not 0 < len(raw) < IFNAMSIZ:
        raise ValueError(f"interface name {name!r} must be 1 to {IFNAMSIZ - 1} bytes")
    return raw.ljust(IFNAMSIZ, b"\0")


@dataclass(frozen=True)
class Term:
    text: str
    exprs: tuple[Expr, ...]


def iifname(name: str) -> Term:
    return Term(f'iifname "{name}"', (_meta(META_IIFNAME), _cmp(CMP_EQ, _ifname(name))))


def oifname(name: str) -> Term:
    return Term(f'oifname "{name}"', (_meta(META_OIFNAME), _cmp(CMP_EQ, _ifname(name))))


def nfproto_ipv6() -> Term:
    return Term("meta nfproto ipv6", (_meta(META_NFPROTO), _cmp(CMP_EQ, bytes([socket.AF_INET6]))))


def _ipv4(field_offset: int, op: int, addr: str, word: str) -> Term:
    packed = ipaddress.IPv4Address(addr).packed
    return Term(f"ip {word} {'!= ' if op == CMP_NEQ else ''}{addr}",
                (_meta(META_NFPROTO), _cmp(CMP_EQ, bytes([socket.AF_INET])),
                 _payload(PAYLOAD_NETWORK, field_offset, 4), _cmp(op, packed)))


def ip_saddr_not(addr: str) -> Term:
    return _ipv4(12, CMP_NEQ, addr, "saddr")


def ip_daddr(addr: str) -> Term:
    return _ipv4(16, CMP_EQ, addr, "daddr")


def l4proto(proto: str) -> Term:
    return Term(f"meta l4proto {proto}", (_meta(META_L4PROTO), _cmp(CMP_EQ, bytes([PROTOS[proto]]))))


def dport(proto: str, port: int) -> Term:
    return Term(f"{proto} dport {port}",
                (_meta(META_L4PROTO), _cmp(CMP_EQ, bytes([PROTOS[proto]])),
                 _payload(PAYLOAD_TRANSPORT, 2, 2), _cmp(CMP_EQ, struct.pack(">H", port))))


def ct_status_dnat() -> Term:
    mask = struct.pack("=I", IPS_DST_NAT)
    return Term("ct status dnat", (
        Expr("ct", ((2, _u32(CT_STATUS)), (1, _u32(REG_1)))),
        Expr("bitwise", ((1, _u32(REG_1)), (2, _u32(REG_1)), (3, _u32(4)), (4, _data(mask)), (5, _data(b"\0" * 4)))),
        _cmp(CMP_NEQ, b"\0" * 4)))


def counter() -> Term:
    return Term("counter", (Expr("counter", ((1, struct.pack(">Q", 0)), (2, struct.pack(">Q", 0)))),))


def _verdict(code: int) -> Expr:
    return Expr("immediate", ((1, _u32(REG_VERDICT)), (2, ((2, ((1, _u32(code)),)),))))  # DATA_VERDICT{CODE}


def drop() -> Term:
    return Term("drop", (_verdict(NF_DROP),))


def accept() -> Term:
    return Term("accept", (_verdict(NF_ACCEPT),))


def redirect(port: int) -> Term:
    return Term(f"redirect to :{port}", (
        Expr("immediate", ((1, _u32(REG_1)), (2, _data(struct.pack(">H", port))))),
        Expr("redir", ((1, _u32(REG_1)), (3, _u32(NF_NAT_RANGE_PROTO_SPECIFIED))))))


@dataclass(frozen=True)
class Rule:
    terms: tuple[Term, ...]
    comment: str | None = None

    def text(self) -> str:
        body = " ".join(t.text for t in self.terms)
        return body + (f' comment "{self.comment}"' if self.comment else "")

    @property
    def exprs(self) -> list[Expr]:
        return [e for t in self.terms for e in t.exprs]


@dataclass(frozen=True)
class Chain:
    name: str
    type: str  # filter | nat
    hook: str
    priority: str
    rules: tuple[Rule, ...]


@dataclass
class Table:
    """An inet table."""

    name: str
    comment: str
    chains: list[Chain] = field(default_factory=list)

    def text(self) -> list[str]:
        lines = [f"table inet {self.name} {{", f'\tcomment "{self.comment}"']
        for c in self.chains:
            lines += ["", f"\tchain {c.name} {{",
                      f"\t\ttype {c.type} hook {c.hook} priority {c.priority}; policy accept;"]
            lines += [f"\t\t{r.text()}" for r in c.rules]
            lines.append("\t}")
        lines.append("}")
        return lines


def comment_udata(text: str) -> bytes:
    """libnftnl's user data TLV for a comment (type 0, NUL-terminated), as nft writes it."""
    raw = text.encode() + b"\0"
    if len(raw) > 128:
        raise ValueError("nft comments are at most 127 bytes")
    return bytes([0, len(raw)]) + raw
