"""The per-sandbox nftables table: render it (pure), apply it, delete it, list ours.

The table lives in the gateway's namespace, on the host side of the veth, so
a root process inside the sandbox cannot see or flush it. Applying is one
batch (one nf_tables transaction): the kernel commits the whole table or nothing.
The batch goes through libnftables in this process (what `nft -f -` runs, without
its ~3 ms of process start); without libnftables.so.1, through `nft -f -`.
"""

from __future__ import annotations

import ctypes
import threading

from gateway.errors import SandboxError

from . import naming, nftnl
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


def render_rules(sb: Sandbox, *, replace: bool = True) -> str:
    """The nft script for one sandbox's table (one transaction).

    replace=True (default): "add + delete + define", idempotent: replaces a
    table of that name atomically, so it can be re-applied by hand at any time.
    replace=False: "create + define", fails if the table exists. `up` uses it:
    deleting a table costs an RCU grace period (~15 ms), `up` has just swept
    any orphan table away, and it must never clobber a table it does not own.
    """
    i = f'iifname "{sb.host_if}"'
    t, d, h, s = sb.transparent_port, sb.dns_port, sb.host_addr, sb.sandbox_addr
    if replace:
        lines = [f"add table inet {sb.table}", f"delete table inet {sb.table}"]
    else:
        lines = [f"create table inet {sb.table}"]
    lines += [
        f"table inet {sb.table} {{",
        f'\tcomment "egressgw sandbox {sb.name}; managed by egressgw, do not edit"',
        "",
        "\tchain raw {",
        "\t\ttype filter hook prerouting priority raw; policy accept;",
        f"\t\t{i} meta nfproto ipv6 counter drop comment \"no IPv6 from the sandbox\"",
        f"\t\t{i} ip saddr != {s} counter drop comment \"spoofed source\"",
        "\t}",
        "",
        "\tchain nat {",
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
        f"\t\t{i} udp dport 53 redirect to :{d}",
        f"\t\t{i} tcp dport 53 redirect to :{d}",
        f"\t\t{i} meta l4proto tcp redirect to :{t}",
        "\t}",
        "",
        "\tchain input {",
        "\t\ttype filter hook input priority filter; policy accept;",
        # Only connections our redirect rewrote: `ct status dnat` is set by
        # the redirect (a DNAT to the interface address) on the first packet
        # and holds for the whole connection.
        f"\t\t{i} ip daddr {h} tcp dport {{ {t}, {d} }} ct status dnat accept",
        f"\t\t{i} ip daddr {h} udp dport {d} ct status dnat accept",
    ]
    if d == 53:
        # Queries to host_addr:53 need no rewrite when the DNS listener is on
        # 53 itself, so conntrack never marks them dnat; allow that one path.
        lines.append(f"\t\t{i} ip daddr {h} meta l4proto {{ tcp, udp }} th dport 53 accept")
    lines += [
        f"\t\t{i} counter drop comment \"only redirected tcp/dns reach the gateway\"",
        "\t}",
        "",
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        f"\t\t{i} counter drop comment \"the sandbox never routes through the gateway\"",
        f"\t\toifname \"{sb.host_if}\" counter drop",
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def apply(sb: Sandbox, *, replace: bool = True) -> None:
    run_script(render_rules(sb, replace=replace), step=f"apply nftables table {sb.table}")


def delete_script(tables: list[str]) -> str:
    """Delete tables whether or not they exist (add+delete), in one transaction."""
    return "".join(f"add table inet {t}\ndelete table inet {t}\n" for t in tables)


def list_tables() -> list[str]:
    """Our tables (inet egressgw_*) in this namespace, read over netlink (see nftnl)."""
    return [t for t in nftnl.table_names() if t.startswith(naming.TABLE_PREFIX)]
