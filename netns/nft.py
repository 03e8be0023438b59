"""The per-sandbox nftables table: render it (pure), apply it, delete it, list ours.

The table lives in the gateway's namespace, on the host side of the veth, so
a root process inside the sandbox cannot see or flush it. Applying is one
batch (one nf_tables transaction): the kernel commits the whole table or nothing.
`create` and `delete` (what up, down and sweep use) send it as a raw netlink batch
(nftnl.Batch, built from the model in nftrules.py), which reads no cache of the
tables already there. `run_script` runs nft text (render_rules) through libnftables
in this process, or `nft -f -` without libnftables.so.1.
"""

from __future__ import annotations

import ctypes
import threading

from gateway.errors import SandboxError

from . import naming, nftnl, nftrules
from .run import run
from .state import Sandbox

NFT = "nft"
LIBNFTABLES = "libnftables.so.1"
_lib_lock = threading.Lock()   # libnftables keeps some global parser state: one batch at a time
_lib: ctypes.CDLL | None | bool = False   # False: not tried yet


def _libnftables() -> ctypes.CDLL | None:
    global _lib
    if _lib is False:
        try:
            lib = ctypes.CDLL(LIBNFTABLES)
            lib.nft_ctx_new.restype, lib.nft_ctx_new.argtypes = ctypes.c_void_p, [ctypes.c_uint32]
            for f in ("nft_ctx_buffer_output", "nft_ctx_buffer_error", "nft_ctx_free"):
                getattr(lib, f).argtypes = [ctypes.c_void_p]
            lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
            lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
            _lib = lib
        except (OSError, AttributeError):
            _lib = None
    return _lib


def run_script(script: str, *, step: str) -> None:
    """Run an nft script as one transaction in the calling thread's namespace; SandboxError on failure."""
    lib = _libnftables()
    if lib is None:
        run([NFT, "-f", "-"], step=f"{step} (nft -f -)", input=script)
        return
    with _lib_lock:
        ctx = lib.nft_ctx_new(0)   # its netlink socket is opened here: the calling thread's namespace
        if not ctx:
            raise SandboxError(f"{step} failed: nft_ctx_new returned NULL")
        try:
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
            rc = lib.nft_run_cmd_from_buffer(ctx, script.encode())
            err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace").strip()
        finally:
            lib.nft_ctx_free(ctx)
    if rc != 0:
        raise SandboxError(f"{step} failed (libnftables): {err or 'error ' + str(rc)}")


def table(sb: Sandbox) -> nftrules.Table:
    """The sandbox's table as data (netns/nftrules.py): rendered as nft text or sent as a raw batch."""
    R = nftrules
    i = R.iifname(sb.host_if)
    t, d, h, s = sb.transparent_port, sb.dns_port, sb.host_addr, sb.sandbox_addr
    cnt, drop, accept, dnat = R.counter(), R.drop(), R.accept(), R.ct_status_dnat()
    # Only connections our redirect rewrote reach the gateway's listeners: `ct status dnat` is set
    # by the redirect (a DNAT to the interface address) on the first packet and holds for the whole
    # connection.
    inp = [R.Rule((i, R.ip_daddr(h), R.dport("tcp", t), dnat, accept)),
           R.Rule((i, R.ip_daddr(h), R.dport("tcp", d), dnat, accept)),
           R.Rule((i, R.ip_daddr(h), R.dport("udp", d), dnat, accept))]
    if d == 53:
        # Queries to host_addr:53 need no rewrite when the DNS listener is on 53 itself, so
        # conntrack never marks them dnat; allow that one path.
        inp += [R.Rule((i, R.ip_daddr(h), R.dport("tcp", 53), accept)),
                R.Rule((i, R.ip_daddr(h), R.dport("udp", 53), accept))]
    inp.append(R.Rule((i, cnt, drop), "only redirected tcp/dns reach the gateway"))
    return R.Table(sb.table, f"egressgw sandbox {sb.name}; managed by egressgw, do not edit", [
        R.Chain("raw", "filter", "prerouting", "raw", (
            R.Rule((i, R.nfproto_ipv6(), cnt, drop), "no IPv6 from the sandbox"),
            R.Rule((i, R.ip_saddr_not(s), cnt, drop), "spoofed source"))),
        R.Chain("nat", "nat", "prerouting", "dstnat", (
            R.Rule((i, R.dport("udp", 53), R.redirect(d))),
            R.Rule((i, R.dport("tcp", 53), R.redirect(d))),
            R.Rule((i, R.l4proto("tcp"), R.redirect(t))))),
        R.Chain("input", "filter", "input", "filter", tuple(inp)),
        R.Chain("forward", "filter", "forward", "filter", (
            R.Rule((i, cnt, drop), "the sandbox never routes through the gateway"),
            R.Rule((R.oifname(sb.host_if), cnt, drop)))),
    ])


def render_rules(sb: Sandbox, *, replace: bool = True) -> str:
    """The nft script for one sandbox's table (one transaction).

    replace=True (default): "add + delete + define", idempotent: replaces a
    table of that name atomically, so it can be re-applied by hand at any time.
    replace=False: "create + define", fails if the table exists (what `up` sends,
    as a raw batch: see create).
    """
    tb = table(sb)
    lines = ([f"add table inet {tb.name}", f"delete table inet {tb.name}"] if replace
             # the comment on the create line: nft 1.0.6 drops it from the block of a table created
             # in the same transaction
             else [f'create table inet {tb.name} {{ comment "{tb.comment}"; }}'])
    return "\n".join(lines + tb.text()) + "\n"


def batch(tb: nftrules.Table, *, exclusive: bool = True) -> nftnl.Batch:
    """The raw netlink transaction that makes `tb` (what nft sends for `create table` + its body)."""
    b = nftnl.Batch()
    b.new_table(tb.name, exclusive=exclusive, userdata=nftrules.comment_udata(tb.comment))
    for c in tb.chains:
        b.new_chain(tb.name, c.name, c.type, nftrules.HOOKS[c.hook], nftrules.PRIORITIES[c.priority],
                    nftrules.NF_ACCEPT)
    for c in tb.chains:
        for r in c.rules:
            b.new_rule(tb.name, c.name, r.exprs, nftrules.comment_udata(r.comment) if r.comment else None,
                       what=f"rule in {tb.name} {c.name}: {r.text()}")
    return b


def create(sb: Sandbox) -> None:
    """Make the sandbox's table in one nf_tables transaction, failing if a table of that name exists.

    Sent as a raw netlink batch: libnftables (and `nft -f`) first read every table on the host into
    their cache, ~0.5 ms per sandbox table, which made `up` grow with the number of sandboxes.
    `up` has just swept any orphan table away, and must never clobber a table it does not own."""
    batch(table(sb)).commit(f"create nftables table {sb.table}")


def delete(tables: list[str], *, step: str) -> None:
    """Delete tables whether or not they exist (add + delete each), in raw transactions of at most
    DELETE_BATCH tables (deleting is idempotent: a sweep of many orphans need not be one batch)."""
    for i in range(0, len(tables), DELETE_BATCH):
        b = nftnl.Batch()
        for t in tables[i:i + DELETE_BATCH]:
            b.new_table(t, exclusive=False)
            b.delete_table(t)
        b.commit(step)


DELETE_BATCH = 100


def list_tables() -> list[str]:
    """Our tables (inet egressgw_*) in this namespace, read over netlink (see nftnl)."""
    return [t for t in nftnl.table_names() if t.startswith(naming.TABLE_PREFIX)]
