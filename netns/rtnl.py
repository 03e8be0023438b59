"""The few rtnetlink requests `up`/`down` need, over a plain netlink socket.

Each `ip` process costs 2-4 ms (exec, dynamic linking, its own cache dump);
the same request over netlink takes a few microseconds of Python and whatever
the kernel needs. pyroute2 would do the same but costs ~200-300 ms to import
(every CLI call) and ~2 ms to parse a link dump. A socket belongs to the
network namespace of the thread that opens it, so every function acts in the
calling thread's namespace (run it under `run.in_netns` to act elsewhere).

Errors raise SandboxError naming the step and the kernel's errno text.
"""

from __future__ import annotations

import os
import socket
import struct

from gateway.errors import SandboxError

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE = 24
RTM_NEWNSID, RTM_GETNSID = 88, 90
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
IFLA_IFNAME, IFLA_LINKINFO, IFLA_AF_SPEC, IFLA_NET_NS_FD, IFLA_EXT_MASK, IFLA_LINK_NETNSID = 3, 18, 26, 28, 29, 37
RTEXT_FILTER_SKIP_STATS = 1 << 3
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFLA_INET6_ADDR_GEN_MODE, IN6_ADDR_GEN_MODE_NONE = 8, 1
IFA_LOCAL, IFA_LABEL = 2, 3
RTA_GATEWAY, RTA_OIF = 5, 4
NETNSA_NSID, NETNSA_FD = 1, 3
IFF_UP = 0x1
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RT_SCOPE_HOST, RTN_UNICAST = 254, 3, 0, 254, 1
NLA_F_NESTED = 0x8000

_HDR = struct.Struct("=IHHII")        # nlmsghdr
_IFINFO = struct.Struct("=BxHiII")    # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")     # ifaddrmsg: family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg
_NLA = struct.Struct("=HH")


def attr(kind: int, payload: bytes) -> bytes:
    data = _NLA.pack(_NLA.size + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def nested(kind: int, *attrs: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(attrs))


def _name(name: str) -> bytes:
    return name.encode() + b"\0"


def parse_attrs(data: bytes, off: int, end: int, wanted: frozenset[int] | None = None) -> dict[int, bytes]:
    """Attributes by kind; with `wanted`, only those kinds, stopping once all are found (a link
    message carries dozens: reading just three of them halves the cost of a 200-link dump)."""
    out: dict[int, bytes] = {}
    unpack = _NLA.unpack_from
    left = len(wanted) if wanted is not None else -1
    while off + 4 <= end:
        alen, kind = unpack(data, off)
        if alen < 4:
            break
        kind &= 0x3FFF
        if wanted is None or kind in wanted:
            out[kind] = data[off + 4: off + alen]
            left -= 1
            if not left:
                break
        off += (alen + 3) & ~3
    return out


_LINK_ATTRS = frozenset((IFLA_LINKINFO, IFLA_LINK_NETNSID))
_NAME_ATTR = frozenset((IFLA_IFNAME,))
_INFO_ATTRS = frozenset((IFLA_INFO_KIND,))
_ADDR_ATTRS = frozenset((IFA_LOCAL, IFA_LABEL))


class Socket:
    """One rtnetlink socket in the calling thread's namespace; use as a context manager."""

    def __init__(self) -> None:
        try:
            self._s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        except OSError as e:
            raise SandboxError(f"rtnetlink socket failed: {e}") from None
        self._s.settimeout(5)
        self._s.bind((0, 0))
        self._seq = int.from_bytes(os.urandom(3), "little")

    def __enter__(self) -> Socket:
        return self

    def __exit__(self, *exc) -> None:
        self._s.close()

    def _send(self, mtype: int, flags: int, body: bytes) -> int:
        self._seq += 1
        self._s.send(_HDR.pack(_HDR.size + len(body), mtype, flags | NLM_F_REQUEST, self._seq, 0) + body)
        return self._seq

    def request(self, mtype: int, body: bytes, *, step: str, flags: int = 0,
                ok: tuple[int, ...] = ()) -> None:
        """Send one request and wait for its ACK; raise SandboxError on an error other than `ok` errnos."""
        seq = self._send(mtype, flags | NLM_F_ACK, body)
        for mt, data, off, _end in self._replies(seq):
            if mt == NLMSG_ERROR:
                err = -struct.unpack_from("=i", data, off)[0]
                if err and err not in ok:
                    raise SandboxError(f"{step} failed: {os.strerror(err)} (netlink errno {err})")
                return

    def query(self, mtype: int, body: bytes, *, step: str, dump: bool = False) -> list[tuple[int, bytes, int, int]]:
        """Replies (type, data, payload offset, end) to a GET request (a dump with dump=True)."""
        seq = self._send(mtype, NLM_F_DUMP if dump else 0, body)
        out = []
        for mt, data, off, end in self._replies(seq):
            if mt == NLMSG_DONE:
                break
            if mt == NLMSG_ERROR:
                err = -struct.unpack_from("=i", data, off)[0]
                if err:
                    raise SandboxError(f"{step} failed: {os.strerror(err)} (netlink errno {err})")
                break
            out.append((mt, data, off, end))
            if not dump:
                break
        return out

    def _replies(self, seq: int):
        while True:
            data = self._s.recv(1 << 16)
            off = 0
            while off + _HDR.size <= len(data):
                length, mtype, _flags, mseq, _pid = _HDR.unpack_from(data, off)
                if length < _HDR.size:
                    raise SandboxError("malformed netlink reply")
                if mseq == seq:
                    yield mtype, data, off + _HDR.size, off + length
                off = (off + length + 3) & ~3


# ------------------------------------------------------------------ reading

class LinkMessage:
    """One interface of a link dump: its name read at once; its kind and peer nsid read from the
    kept message only when asked (the nsid is near the end of ~1 KB of attributes: walking every
    link's message for it was most of a 200-link dump's Python time, and `up` never needs it)."""

    __slots__ = ("name", "_data", "_off", "_end", "_attrs")

    def __init__(self, name: str, data: bytes, off: int, end: int) -> None:
        self.name, self._data, self._off, self._end, self._attrs = name, data, off, end, None

    def _read(self) -> dict[int, bytes]:
        if self._attrs is None:
            self._attrs = parse_attrs(self._data, self._off, self._end, _LINK_ATTRS)
        return self._attrs

    @property
    def kind(self) -> str | None:
        a = self._read()
        if IFLA_LINKINFO not in a:
            return None
        info = parse_attrs(a[IFLA_LINKINFO], 0, len(a[IFLA_LINKINFO]), _INFO_ATTRS)
        return info[IFLA_INFO_KIND].rstrip(b"\0").decode() if IFLA_INFO_KIND in info else None

    @property
    def peer_netnsid(self) -> int | None:
        a = self._read()
        return struct.unpack("=i", a[IFLA_LINK_NETNSID][:4])[0] if IFLA_LINK_NETNSID in a else None


def links_and_addrs() -> list[tuple[LinkMessage, list[tuple[int, int]]]]:
    """Every interface in this namespace with its IPv4 addresses as (address, prefix length):
    what `ip -j -d addr` tells, read lazily (see LinkMessage)."""
    with Socket() as s:
        by_index: dict[int, tuple[LinkMessage, list[tuple[int, int]]]] = {}
        # without the per-link counters (most of each message)
        ask = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr(IFLA_EXT_MASK, struct.pack("=I", RTEXT_FILTER_SKIP_STATS))
        for _mt, data, off, end in s.query(RTM_GETLINK, ask, step="list interfaces", dump=True):
            index = _IFINFO.unpack_from(data, off)[2]
            body = off + _IFINFO.size
            name = parse_attrs(data, body, end, _NAME_ATTR).get(IFLA_IFNAME)   # the first attribute
            if name is not None:
                by_index[index] = (LinkMessage(name.rstrip(b"\0").decode(), data, body, end), [])
        for index, _label, addr, plen in _ipv4_dump(s):
            if index in by_index:
                by_index[index][1].append((addr, plen))
    return list(by_index.values())


def ipv4_addresses() -> list[tuple[str, int, int]]:
    """(label, address, prefix length) of every IPv4 address in this namespace: the address dump
    alone (~60 bytes an address, against ~1 KB a link in the link dump). The label is the
    interface's name unless the address was given another (`ip addr add ... label eth0:1`)."""
    with Socket() as s:
        return [(label, addr, plen) for _index, label, addr, plen in _ipv4_dump(s)]


def _ipv4_dump(s: Socket):
    """(interface index, label, address, prefix length) of each IPv4 address, from one address dump.
    An address given an empty label over raw netlink has none: it is labelled "#INDEX"."""
    for _mt, data, off, end in s.query(RTM_GETADDR, _IFADDR.pack(socket.AF_INET, 0, 0, 0, 0),
                                       step="list addresses", dump=True):
        fam, plen, _fl, _scope, index = _IFADDR.unpack_from(data, off)
        a = parse_attrs(data, off + _IFADDR.size, end, _ADDR_ATTRS)
        if fam == socket.AF_INET and IFA_LOCAL in a:
            label = a.get(IFA_LABEL, b"").rstrip(b"\0").decode() or f"#{index}"
            yield index, label, int.from_bytes(a[IFA_LOCAL][:4], "big"), plen


def netns_ids(paths: dict[str, str]) -> dict[str, int]:
    """{name: nsid} for the namespaces at `paths` ({name: /run/netns/NAME}) that have an nsid here."""
    out: dict[str, int] = {}
    with Socket() as s:
        for name, path in paths.items():
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                body = struct.pack("=Bxxx", socket.AF_UNSPEC) + attr(NETNSA_FD, struct.pack("=I", fd))
                replies = s.query(RTM_GETNSID, body, step=f"nsid of {name}")
            except SandboxError:
                continue
            finally:
                os.close(fd)
            for mt, data, off, end in replies:
                a = parse_attrs(data, off + 4, end)
                if mt == RTM_NEWNSID and NETNSA_NSID in a:
                    nsid = struct.unpack("=i", a[NETNSA_NSID][:4])[0]
                    if nsid >= 0:
                        out[name] = nsid
    return out


# ------------------------------------------------------------------ changing

def _ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return _IFINFO.pack(socket.AF_UNSPEC, 0, index, flags, change)


def set_up(s: Socket, ifname: str, up: bool = True, *, ok: tuple[int, ...] = ()) -> None:
    s.request(RTM_NEWLINK, _ifinfo(0, IFF_UP if up else 0, IFF_UP) + attr(IFLA_IFNAME, _name(ifname)),
              step=f"set {ifname} {'up' if up else 'down'}", ok=ok)


def del_link(s: Socket, ifname: str, *, ok: tuple[int, ...] = ()) -> None:
    s.request(RTM_DELLINK, _ifinfo() + attr(IFLA_IFNAME, _name(ifname)), step=f"delete {ifname}", ok=ok)


def add_veth(s: Socket, host_if: str, peer_if: str, peer_netns_fd: int) -> None:
    """A veth pair: `host_if` here, `peer_if` created directly inside the namespace of `peer_netns_fd`."""
    peer = _ifinfo() + attr(IFLA_IFNAME, _name(peer_if)) + attr(IFLA_NET_NS_FD, struct.pack("=I", peer_netns_fd))
    info = nested(IFLA_LINKINFO, attr(IFLA_INFO_KIND, b"veth"), nested(IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer)))
    s.request(RTM_NEWLINK, _ifinfo() + attr(IFLA_IFNAME, _name(host_if)) + info,
              flags=NLM_F_CREATE | NLM_F_EXCL, step=f"create veth {host_if}/{peer_if}")


def addrgenmode_none(s: Socket, ifname: str) -> None:
    """No IPv6 link-local address on `ifname` (`ip link set dev X addrgenmode none`)."""
    spec = nested(IFLA_AF_SPEC, nested(socket.AF_INET6, attr(IFLA_INET6_ADDR_GEN_MODE,
                                                             bytes([IN6_ADDR_GEN_MODE_NONE]))))
    s.request(RTM_NEWLINK, _ifinfo() + attr(IFLA_IFNAME, _name(ifname)) + spec,
              step=f"set {ifname} addrgenmode none")


def add_addr(s: Socket, ifname: str, address: str, prefix: int) -> None:
    index = socket.if_nametoindex(ifname)   # the calling thread's namespace, as the socket's
    raw = socket.inet_aton(address)
    body = _IFADDR.pack(socket.AF_INET, prefix, 0, RT_SCOPE_UNIVERSE, index) + attr(IFA_LOCAL, raw) + attr(1, raw)
    s.request(RTM_NEWADDR, body, flags=NLM_F_CREATE | NLM_F_EXCL, step=f"add {address}/{prefix} to {ifname}")


def add_default_route(s: Socket, ifname: str, gateway: str) -> None:
    index = socket.if_nametoindex(ifname)
    body = (_RTMSG.pack(socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
            + attr(RTA_GATEWAY, socket.inet_aton(gateway)) + attr(RTA_OIF, struct.pack("=I", index)))
    s.request(RTM_NEWROUTE, body, flags=NLM_F_CREATE | NLM_F_EXCL, step=f"default route via {gateway}")

