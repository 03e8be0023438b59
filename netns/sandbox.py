"""Sandbox network namespaces: up, down, list, get, exec, sweep.

`up NAME` creates, in the namespace this code runs in (the gateway namespace G):
an nft table `inet egressgw_NAME`, a veth pair egwhN (in G) / egwsN (in the
sandbox namespace egw-NAME), a /30 from the pool, and inside the sandbox lo,
the address, a default route via the host side and IPv6 switched off;
/etc/netns/egw-NAME/resolv.conf points at the host side (where DNS is
redirected to the gateway). See docs/architecture.md.

`up` launches no process: links, addresses, namespace ids, tables, the veth and
both sides' configuration go over netlink (rtnl.py, nftnl.py, nsfs.py), the nft
table too, as one raw nf_tables batch (nft.py, nftrules.py); a fresh host whose /run/netns is not yet a
shared mount gets one `ip netns add`. Per `down`: the veth is set down over
netlink, then the veth, namespace and table are deleted in parallel (each waits
for an RCU grace period in the kernel; see teardown.py).
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import re
import time

from gateway.errors import SandboxError

from . import addresses, attach, links, naming, nft, nsfs, rtnl
from . import state as st
from .addresses import DEFAULT_POOL
from .nft import render_rules
from .run import in_netns, write_sysctl
from .state import DEFAULT_STATE_DIR, Sandbox
from .sweep import sweep_locked
from .teardown import teardown

__all__ = ["Sandbox", "up", "down", "get", "list_sandboxes", "set_session", "exec_argv",
           "render_rules", "sweep_orphans", "DEFAULT_POOL", "DEFAULT_STATE_DIR"]

IP = links.IP


def _check_port(what: str, port: object) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise SandboxError(f"invalid {what} {port!r} (fix: an integer port 1-65535)")
    return port


def _check_ports(transparent_port: int, dns_port: int) -> None:
    _check_port("transparent_port", transparent_port)
    _check_port("dns_port", dns_port)
    if transparent_port == dns_port:
        raise SandboxError(f"transparent_port and dns_port are both {dns_port} "
                           "(fix: give the transparent and DNS listeners different ports)")
    if transparent_port == 53:
        raise SandboxError("transparent_port cannot be 53: TCP port 53 is redirected to the DNS "
                           "listener (fix: choose another transparent port, e.g. 8080)")


# --------------------------------------------------------------------------- up

def up(name: str, *, transparent_port: int, dns_port: int, pool: str = DEFAULT_POOL,
       state_dir: str = DEFAULT_STATE_DIR, target: attach.Target | None = None) -> Sandbox:
    """Create sandbox NAME; roll everything back and raise SandboxError if any step fails.

    `target` (see attach.py): govern an existing namespace or a microVM's tap instead of making a namespace."""
    naming.validate_name(name)
    _check_ports(transparent_port, dns_port)
    net = addresses.parse_pool(pool)
    ns = naming.netns_name(name)
    with st.locked(state_dir):
        tap = target is not None and target.kind == attach.TAP
        _, live, ifaces = sweep_locked(state_dir, full=False)
        blk = _allocate(net, live, ifaces)
        if os.path.lexists(naming.netns_path(ns)) or (not tap and links.exists(naming.host_if(blk.index))):
            # what the address dump cannot show (a leftover of ours behind a veth without an
            # address), or this name in use: the full sweep removes the one and confirms the other
            _, live, ifaces = sweep_locked(state_dir)
            blk = _allocate(net, live, ifaces)
        if any(r.sandbox.name == name for r in live):
            raise SandboxError(f"sandbox {name} already exists "
                               f"(fix: use it, or run `egressgw sandbox down {name}` first)")
        if os.path.lexists(naming.netns_path(ns)):
            raise SandboxError(
                f"network namespace {ns} already exists but {state_dir} has no sandbox {name} "
                f"(another gateway's, or a leftover) (fix: `egressgw sandbox down {name}` "
                f"or `ip netns del {ns}`, or choose another name)")
        if tap and any(r.sandbox.host_if == target.tap for r in live):
            raise SandboxError(f"tap {target.tap} already belongs to a sandbox (fix: `egressgw sandbox list`)")
        sb = Sandbox(
            name=name, netns="" if tap else ns, host_if=target.tap if tap else naming.host_if(blk.index),
            sandbox_if="" if tap else naming.sandbox_if(blk.index), host_addr=str(blk.host_addr),
            sandbox_addr=str(blk.sandbox_addr), prefix=blk.prefix, index=blk.index,
            table=naming.table_name(name), transparent_port=transparent_port,
            dns_port=dns_port, session_id=None, created=time.time(),
            kind=target.kind if target else "netns",
        )
        st.write(state_dir, sb, st.CREATING)   # a crash from here on leaves a trace for sweep
        progress: list[str] = []
        try:
            _create(sb, progress, target)
        except BaseException as e:
            # Namespace and veth did not exist before (checked under the lock),
            # so whatever exists now is ours; the table only if our apply committed.
            # A tap is the VMM's: only given back as it was.
            errors = attach.release_tap(sb.host_if) if tap and "tap" in progress else []
            _, more = teardown(host_ifs=[] if tap else [sb.host_if], netnses=[sb.netns] if sb.netns else [],
                               tables=[sb.table] if "nft" in progress else [],
                               step=f"roll back sandbox {name}")
            errors += more
            if not errors:
                st.remove(state_dir, name)
            if not isinstance(e, Exception):
                raise
            msg = str(e) if isinstance(e, SandboxError) else f"{type(e).__name__}: {e}"
            msg = f"sandbox {name} not created: {msg}"
            if errors:
                msg += ("\nrollback incomplete (state file kept; `egressgw sandbox sweep` "
                        "will retry):\n" + "\n".join(errors))
            else:
                msg += "\n(everything it had created was removed)"
            raise SandboxError(msg) from e
        st.write(state_dir, sb, st.READY)
    return sb


def _allocate(net, live: list[st.Record], ifaces: dict[str, list[tuple[int, int]]]) -> addresses.Block:
    used = {r.sandbox.index for r in live} | {naming.host_if_index(n) for n in ifaces} - {None}
    return addresses.allocate(net, used, [span for spans in ifaces.values() for span in spans])


def _ipv6_available() -> bool:
    return os.path.isdir("/proc/sys/net/ipv6")


def _create(sb: Sandbox, progress: list[str], target: attach.Target | None = None) -> None:
    # 1. Rules first. They match the host interface by name, so they are in
    #    force before the first packet can cross the veth. `create table`
    #    fails rather than touch a table of that name that is not ours.
    nft.create(sb)
    progress.append("nft")
    if target is not None and target.kind == attach.TAP:
        progress.append("tap")
        attach.configure_tap(sb)
        return

    # 2. Namespace (new, or the existing one pinned under our name), veth (peer
    #    created directly inside the sandbox), host side: over rtnetlink, no process.
    if target is None:
        nsfs.add(sb.netns)
    else:
        attach.pin(target, sb.netns)
        attach.check_only_loopback(sb.netns)
    try:
        fd = os.open(naming.netns_path(sb.netns), os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise SandboxError(f"open namespace {sb.netns} failed: {e.strerror}") from None
    try:
        with rtnl.Socket() as s:
            rtnl.add_veth(s, sb.host_if, sb.sandbox_if, fd)
            if _ipv6_available():
                rtnl.addrgenmode_none(s, sb.host_if)  # no fe80:: on the host side
            rtnl.add_addr(s, sb.host_if, sb.host_addr, sb.prefix)
            # 3. Host-side sysctls (in this namespace), before the link comes up.
            write_sysctl(f"net.ipv6.conf.{sb.host_if}.disable_ipv6", "1", missing_ok=True)
            write_sysctl(f"net.ipv4.conf.{sb.host_if}.rp_filter", "1")
            # Answer ARP only for the host-side address, so the sandbox cannot map out
            # the gateway namespace's other addresses.
            write_sysctl(f"net.ipv4.conf.{sb.host_if}.arp_ignore", "1")
            rtnl.set_up(s, sb.host_if)
    finally:
        os.close(fd)
    _check_pin_visible(sb.netns)

    # 4. Inside the sandbox: IPv6 off before its interfaces come up (a root process
    #    inside may turn it back on; the raw chain drops IPv6 anyway), then lo, the
    #    address and the default route via the host side.
    try:
        in_netns(naming.netns_path(sb.netns), _sandbox_side, sb)
    except SandboxError as e:
        raise SandboxError(f"configure sandbox side (inside {sb.netns}): {e}") from e
    except OSError as e:
        raise SandboxError(f"configure sandbox side (inside {sb.netns}) failed: {e}") from e

    # 5. resolv.conf, bind-mounted over /etc/resolv.conf by `ip netns exec`.
    d = naming.etc_dir(sb.netns)
    try:
        os.makedirs(d, mode=0o755, exist_ok=True)
        with open(os.path.join(d, "resolv.conf"), "w") as f:
            f.write(f"# written by egressgw for sandbox {sb.name}\nnameserver {sb.host_addr}\n")
    except OSError as e:
        raise SandboxError(f"write {d}/resolv.conf failed: {e}") from e


def _sandbox_side(sb: Sandbox) -> None:
    """Runs in a thread inside the sandbox's namespace."""
    write_sysctl("net.ipv6.conf.all.disable_ipv6", "1", missing_ok=True)
    write_sysctl("net.ipv6.conf.default.disable_ipv6", "1", missing_ok=True)
    with rtnl.Socket() as s:
        rtnl.set_up(s, "lo")
        rtnl.add_addr(s, sb.sandbox_if, sb.sandbox_addr, sb.prefix)
        rtnl.set_up(s, sb.sandbox_if)
        rtnl.add_default_route(s, sb.sandbox_if, sb.host_addr)


def _check_pin_visible(netns: str) -> None:
    """The /run/netns/NAME bind mount that keeps the namespace alive must be
    visible outside this process's mount namespace. Under `ip netns exec` (or
    in a service with a private mount namespace) it is not: it would vanish
    with this process, and `ip netns exec egw-NAME` elsewhere would fail.

    Checked by looking at the path through /proc/PID/root of PID 1, or, where
    PID 1 is out of reach (some containers and VMs), of our parent process.
    """
    ours = naming.netns_path(netns)
    mine = os.stat(ours)
    for pid in dict.fromkeys((1, os.getppid())):
        if pid <= 0:
            continue
        try:
            os.stat(f"/proc/{pid}/root/")
        except OSError:
            continue                  # cannot look through this one (or it is gone): next
        try:
            theirs = os.stat(f"/proc/{pid}/root{ours}")
        except FileNotFoundError:
            theirs = None
        except OSError:
            continue
        if theirs is not None and (theirs.st_dev, theirs.st_ino) == (mine.st_dev, mine.st_ino):
            return
        raise SandboxError(
            f"network namespace {netns} is pinned only in this process's private mount "
            "namespace (running under `ip netns exec`, or a service with a private mount "
            "namespace?): it would disappear with this process and other processes could "
            "not enter it (fix: enter the gateway's network namespace only, e.g. "
            "`nsenter --net=/run/netns/GW -- egressgw ...`, not `ip netns exec GW ...`)")


# ------------------------------------------------------------------------- down

def down(name: str, *, state_dir: str = DEFAULT_STATE_DIR) -> bool:
    """Remove sandbox NAME (and any partial leftovers of it). Returns False if nothing existed."""
    naming.validate_name(name)
    ns = naming.netns_name(name)
    with st.locked(state_dir):
        rec = st.read(state_dir, name)
        errors = []
        if rec is not None and rec.sandbox.kind == attach.TAP:
            errors = attach.release_tap(rec.sandbox.host_if)  # cut first; the tap itself is the VMM's
            host_ifs, tables = [], [rec.sandbox.table]
        elif rec is not None:
            host_ifs, tables = [rec.sandbox.host_if], [rec.sandbox.table]
        else:
            # No state file: find what is left by name / by the veth leading into egw-NAME.
            host_ifs = []
            if os.path.lexists(naming.netns_path(ns)):
                nsid = links.netns_ids([ns]).get(ns)
                if nsid is not None:
                    host_ifs = [link.name for link in links.snapshot().values()
                                if link.peer_netnsid == nsid
                                and link.name.startswith(naming.HOST_IF_PREFIX)]
            table = naming.table_name(name)
            tables = [table] if table in nft.list_tables() else []
        removed, more = teardown(host_ifs=host_ifs, netnses=[ns], tables=tables,
                                 step=f"down {name}")
        errors += more
        if errors:
            raise SandboxError(f"sandbox {name} only partly removed (state kept; run down "
                               "again):\n" + "\n".join(errors))
        st.remove(state_dir, name)
        return rec is not None or bool(removed)


# ------------------------------------------------------------- list, get, session

def list_sandboxes(state_dir: str = DEFAULT_STATE_DIR) -> list[Sandbox]:
    records, _ = st.read_all(state_dir)
    return sorted((r.sandbox for r in records if r.status == st.READY), key=lambda s: s.index)


def get(name: str, state_dir: str = DEFAULT_STATE_DIR) -> Sandbox:
    naming.validate_name(name)
    rec = st.read(state_dir, name)
    if rec is None or rec.status != st.READY:
        raise SandboxError(f"no sandbox named {name} in {state_dir} "
                           "(fix: `egressgw sandbox list` shows the existing ones)")
    return rec.sandbox


def set_session(name: str, session_id: str | None, state_dir: str = DEFAULT_STATE_DIR) -> None:
    naming.validate_name(name)
    with st.locked(state_dir):
        st.write(state_dir, dataclasses.replace(get(name, state_dir), session_id=session_id), st.READY)


def sweep_orphans(state_dir: str = DEFAULT_STATE_DIR) -> list[str]:
    """Remove leftovers of crashed runs; returns a description of each removed object."""
    with st.locked(state_dir):
        removed, _, _ = sweep_locked(state_dir)
    return removed


# ------------------------------------------------------------------------- exec

_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def exec_argv(sb: Sandbox, cmd: list[str], *, user: str | None = "nobody",
              env: dict[str, str]) -> list[str]:
    """argv that runs `cmd` inside the sandbox with exactly `env` as environment.

    With a user (default "nobody") the command runs under that uid/gid with no
    supplementary groups, an empty inheritable and bounding capability set and
    no_new_privs: it has no CAP_NET_ADMIN / CAP_NET_RAW, cannot regain them via
    setuid binaries, and so cannot change the sandbox's addresses, routes or
    sysctls. user=None or "root" keeps root *inside the namespace*: it can
    reconfigure the sandbox side, but the rules that confine it live in the
    gateway namespace, out of its reach. `env` should carry PATH; without it
    `env` falls back to the C library's default search path.
    """
    if not cmd:
        raise SandboxError("exec: empty command (fix: give the program to run)")
    if sb.kind == attach.TAP:
        raise SandboxError(f"exec: sandbox {sb.name} is a microVM behind tap {sb.host_if} "
                           "(fix: run commands through the VMM, e.g. its serial console or an agent)")
    if "=" in cmd[0]:
        raise SandboxError(f"exec: command {cmd[0]!r} contains '=' and would be taken as a "
                           "variable by env (fix: use ./path or a full path)")
    pairs = []
    for k, v in env.items():
        if not _ENV_KEY.fullmatch(k) or "\0" in v:
            raise SandboxError(f"exec: invalid environment variable {k!r} "
                               "(fix: names of letters, digits and _, values without NUL)")
        pairs.append(f"{k}={v}")
    argv = [IP, "netns", "exec", sb.netns]
    if user is not None and user != "root":
        try:
            pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        except (KeyError, ValueError):
            raise SandboxError(f"exec: unknown user {user!r} (fix: an existing user, e.g. nobody)") from None
        if pw.pw_uid != 0:
            argv += ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups",
                     "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
    return argv + ["env", "-i", *pairs, *cmd]
