"""nf_tables over netlink, without the nft tool: list table names, and write a transaction.

`nft list tables` (nftables 1.0.6) fetches the whole ruleset first, which costs
about 4 ms per sandbox table; `up` needs only the names. A table dump is one
small netlink request, answered in well under a millisecond. The socket
belongs to the calling thread's network namespace.
"""

from __future__ import annotations

import functools
import os
import socket
import struct

from gateway.errors import SandboxError

from . import rtnl

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWTABLE, NFT_MSG_GETTABLE = 0, 1
NFTA_TABLE_NAME = 1
NFPROTO_INET = 1
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
_HDR = struct.Struct("=IHHII")     # nlmsghdr: len, type, flags, seq, pid
_NFGEN = struct.Struct("=BBH")     # nfgenmsg: family, version, res_id (big endian, 0 here)


def _socket(step: str) -> socket.socket:
    """A netfilter netlink socket in the calling thread's network namespace."""
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    except OSError as e:
        raise SandboxError(f"{step}: netlink socket failed: {e}") from None
    try:
        s.settimeout(5)
        s.bind((0, 0))
    except OSError as e:
        s.close()
        raise SandboxError(f"{step}: netlink socket failed: {e}") from None
    return s


def _messages(s: socket.socket, step: str):
    """(type, sequence number, data, payload offset, end) of each netlink message received on `s`."""
    while True:
        data = s.recv(1 << 16)
        off = 0
        while off + _HDR.size <= len(data):
            length, mtype, _flags, mseq, _pid = _HDR.unpack_from(data, off)
            if length < _HDR.size:
                raise SandboxError(f"{step}: malformed netlink reply")
            yield mtype, mseq, data, off + _HDR.size, off + length
            off = (off + length + 3) & ~3


def _errno(data: bytes, off: int) -> int:
    """The errno of an NLMSG_ERROR message (0: an acknowledgement)."""
    return -struct.unpack_from("=i", data, off)[0]


_TABLE_NAME = frozenset((NFTA_TABLE_NAME,))


def table_names(family: int = NFPROTO_INET) -> list[str]:
    """Names of all nf_tables tables of `family` in this network namespace."""
    step = "list nftables tables"
    with _socket(step) as s:
        seq = int.from_bytes(os.urandom(4), "little") or 1
        body = _NFGEN.pack(family, 0, 0)
        msg_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE
        s.send(_HDR.pack(_HDR.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
        names: list[str] = []
        for mtype, mseq, data, off, end in _messages(s, step):
            if mseq != seq:
                continue
            if mtype == NLMSG_DONE:
                return sorted(names)
            if mtype == NLMSG_ERROR:
                if err := _errno(data, off):
                    raise SandboxError(f"{step}: {os.strerror(err)}")
            elif mtype == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE:
                name = rtnl.parse_attrs(data, off + _NFGEN.size, end, _TABLE_NAME).get(NFTA_TABLE_NAME)
                if name is not None:
                    names.append(name.rstrip(b"\0").decode())
    raise AssertionError("unreachable")


# --- writing: one nf_tables transaction as a raw netlink batch ------------------------------------

NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_DELTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_NEWRULE = 2, 3, 6
NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x4, 0x200, 0x400, 0x800
NFTA_TABLE_USERDATA = 6
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME, NFTA_CHAIN_HOOK, NFTA_CHAIN_POLICY, NFTA_CHAIN_TYPE = 1, 3, 4, 5, 7
NFTA_HOOK_HOOKNUM, NFTA_HOOK_PRIORITY = 1, 2
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS, NFTA_RULE_USERDATA = 1, 2, 4, 7
NFTA_LIST_ELEM, NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 1, 2


def _nla(atype: int, value) -> bytes:
    """One netlink attribute; `value` bytes, str (NUL-terminated) or a sequence of (type, value)
    pairs (a nested attribute)."""
    if isinstance(value, str):
        return rtnl.attr(atype, value.encode() + b"\0")
    if isinstance(value, (bytes, bytearray)):
        return rtnl.attr(atype, bytes(value))
    return rtnl.nested(atype, *(_nla(t, v) for t, v in value))


@functools.lru_cache(maxsize=4096)
def _expr(e) -> bytes:
    """One expression of a rule's list, encoded. Most are the same in every sandbox's table (loads,
    protocol and port compares, verdicts): encoded once per process, not once per `up`."""
    return _nla(NFTA_LIST_ELEM, ((NFTA_EXPR_NAME, e.name), (NFTA_EXPR_DATA, e.attrs)))


class Batch:
    """nf_tables messages sent as one transaction: the kernel applies all of them or none. No cache
    of the existing ruleset is read, so the cost does not grow with the tables already there."""

    def __init__(self, family: int = NFPROTO_INET):
        self.family = family
        self.msgs: list[tuple[int, int, bytes, str]] = []  # (type, flags, attributes, what)

    def _add(self, msg: int, flags: int, attrs: list[tuple[int, object]], what: str) -> None:
        self.msgs.append(((NFNL_SUBSYS_NFTABLES << 8) | msg, flags, b"".join(_nla(t, v) for t, v in attrs), what))

    def new_table(self, name: str, *, exclusive: bool, userdata: bytes | None = None) -> None:
        attrs: list[tuple[int, object]] = [(NFTA_TABLE_NAME, name)]
        if userdata:
            attrs.append((NFTA_TABLE_USERDATA, userdata))
        self._add(NFT_MSG_NEWTABLE, NLM_F_CREATE | (NLM_F_EXCL if exclusive else 0), attrs, f"table {name}")

    def delete_table(self, name: str) -> None:
        self._add(NFT_MSG_DELTABLE, 0, [(NFTA_TABLE_NAME, name)], f"delete table {name}")

    def new_chain(self, table: str, name: str, ctype: str, hooknum: int, priority: int, policy: int) -> None:
        hook = ((NFTA_HOOK_HOOKNUM, struct.pack(">I", hooknum)), (NFTA_HOOK_PRIORITY, struct.pack(">i", priority)))
        self._add(NFT_MSG_NEWCHAIN, NLM_F_CREATE,
                  [(NFTA_CHAIN_TABLE, table), (NFTA_CHAIN_NAME, name), (NFTA_CHAIN_HOOK, hook),
                   (NFTA_CHAIN_POLICY, struct.pack(">I", policy)), (NFTA_CHAIN_TYPE, ctype)],
                  f"chain {table} {name}")

    def new_rule(self, table: str, chain: str, exprs, userdata: bytes | None = None, what: str = "") -> None:
        attrs: list[tuple[int, object]] = [(NFTA_RULE_TABLE, table), (NFTA_RULE_CHAIN, chain),
                                           (NFTA_RULE_EXPRESSIONS | rtnl.NLA_F_NESTED, b"".join(map(_expr, exprs)))]
        if userdata:
            attrs.append((NFTA_RULE_USERDATA, userdata))
        self._add(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, attrs, what or f"rule in {table} {chain}")

    def encode(self, seq: int) -> bytes:
        def msg(mtype: int, flags: int, body: bytes, s: int, family: int, res_id: int) -> bytes:
            payload = _NFGEN.pack(family, 0, res_id) + body
            return _HDR.pack(_HDR.size + len(payload), mtype, NLM_F_REQUEST | flags, s, 0) + payload

        res = socket.htons(NFNL_SUBSYS_NFTABLES)
        out = [msg(NFNL_MSG_BATCH_BEGIN, 0, b"", seq, socket.AF_UNSPEC, res)]
        for i, (mtype, flags, body, _what) in enumerate(self.msgs):
            out.append(msg(mtype, flags | NLM_F_ACK, body, seq + 1 + i, self.family, 0))
        out.append(msg(NFNL_MSG_BATCH_END, 0, b"", seq + 1 + len(self.msgs), socket.AF_UNSPEC, res))
        return b"".join(out)

    def commit(self, step: str) -> None:
        """Send the batch in this thread's network namespace and wait for every message's answer;
        SandboxError naming the first message the kernel refused (nothing was applied then)."""
        if not self.msgs:
            return
        with _socket(step) as s:
            # every answer comes at once after the commit (~0.7 KB each): room for all of them
            need = 65536 + 1024 * len(self.msgs)
            try:
                try:
                    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, need)
                except OSError:  # not CAP_NET_ADMIN: as much as rmem_max allows
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, need)
            except OSError as e:
                raise SandboxError(f"{step}: netlink socket setup failed: {e}") from None
            seq = (int.from_bytes(os.urandom(4), "little") & 0x3FFFFFFF) or 1
            try:
                s.sendall(self.encode(seq))
            except OSError as e:
                raise SandboxError(f"{step}: sending the nftables batch failed: {e}") from None
            waiting = set(range(seq + 1, seq + 1 + len(self.msgs)))
            try:
                for mtype, mseq, data, off, _end in _messages(s, step):
                    # an error on the batch's begin message (seq) refuses the whole batch
                    if mtype != NLMSG_ERROR or not (mseq in waiting or mseq == seq):
                        continue
                    waiting.discard(mseq)
                    if err := _errno(data, off):  # the kernel aborted the transaction
                        what = self.msgs[mseq - seq - 1][3] if mseq != seq else "the whole batch"
                        raise SandboxError(f"{step}: the kernel refused {what}: {os.strerror(err)} "
                                           "(nothing of this transaction was applied)")
                    if not waiting:
                        return
            except TimeoutError:
                raise SandboxError(f"{step}: no answer from nf_tables within 5 s "
                                   f"({len(waiting)} of {len(self.msgs)} messages unanswered)") from None
            except OSError as e:
                raise SandboxError(f"{step}: reading nf_tables' answers failed: {e}") from None


SO_RCVBUFFORCE = 33
