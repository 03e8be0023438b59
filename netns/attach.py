"""Attach: govern a sandbox that already exists, instead of creating its namespace.

Two kinds of target (`sandbox.up(..., target=...)` does the rest, exactly as for
a new sandbox: allocation, the same nft table, the same state file, the same
teardown by `down`):

  * a network namespace that already exists, named by `/proc/PID/ns/net`, a pid
    or `/run/netns/X` (a container started with `--network none`, a gVisor or
    Kata sandbox's namespace). It is pinned as /run/netns/egw-NAME (`ip netns
    attach`), then gets the veth, address and default route of any sandbox.
    Refused if it already has an interface other than lo: a second way out
    would bypass the gateway. `down` deletes the veth (cutting it off) and the
    pin; the namespace itself lives on with its processes, without a way out.
  * a tap device in the gateway namespace (a Firecracker microVM's): it gets the
    host-side address and the nft table on `iifname TAP`; the VM configures the
    sandbox address itself (kernel `ip=` boot argument, printed by the CLI).
    `down` sets the tap down and removes the address and table; the tap
    belongs to the VMM and is not deleted.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass

from gateway.errors import SandboxError

from . import links
from .run import run, write_sysctl

NETNS, TAP = "attached", "tap"  # Sandbox.kind values (a sandbox `up` made itself is "netns")


@dataclass(frozen=True)
class Target:
    kind: str  # NETNS or TAP
    path: str | None = None  # the namespace file, for NETNS
    tap: str | None = None  # the device name, for TAP


def target(*, netns_pid: int | None = None, netns_path: str | None = None, tap: str | None = None) -> Target:
    """Exactly one of the three; checked now, so nothing is allocated for a target that is not there."""
    given = [x for x in (netns_pid, netns_path, tap) if x is not None]
    if len(given) != 1:
        raise SandboxError("attach needs exactly one of --netns-pid, --netns-path or --tap")
    if tap is not None:
        if not links.exists(tap):
            raise SandboxError(f"tap device {tap} does not exist in the gateway namespace "
                               "(fix: create it first, e.g. `ip tuntap add dev TAP mode tap`, or start the VMM)")
        kind = links.snapshot().get(tap)
        if kind is None or kind.kind != "tun":
            raise SandboxError(f"{tap} is not a tap device (it is {kind.kind if kind else 'unknown'}) "
                               "(fix: name the microVM's tap device)")
        if kind.nets:
            raise SandboxError(f"tap device {tap} already has addresses {', '.join(map(str, kind.nets))} "
                               "(fix: `ip addr flush dev TAP`; egressgw assigns the address)")
        return Target(TAP, tap=tap)
    path = f"/proc/{int(netns_pid)}/ns/net" if netns_pid is not None else netns_path
    try:
        theirs, ours = os.stat(path), os.stat("/proc/thread-self/ns/net")
    except OSError as e:
        raise SandboxError(f"network namespace {path}: {e.strerror} "
                           "(fix: a running process's pid, /proc/PID/ns/net or /run/netns/NAME)") from None
    if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino):
        raise SandboxError(f"{path} is the gateway's own network namespace "
                           "(fix: attach the sandbox's namespace, not the gateway's)")
    return Target(NETNS, path=path)


def pin(t: Target, netns: str) -> None:
    """/run/netns/NETNS -> the target namespace (via a short-lived process inside it and `ip netns attach`)."""
    helper = subprocess.Popen(["nsenter", f"--net={t.path}", "--", "sleep", "30"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        want = os.stat(t.path)
        deadline = time.monotonic() + 5
        while True:
            try:
                got = os.stat(f"/proc/{helper.pid}/ns/net")
                if (got.st_dev, got.st_ino) == (want.st_dev, want.st_ino):
                    break
            except FileNotFoundError:
                pass
            if helper.poll() is not None or time.monotonic() > deadline:
                raise SandboxError(f"cannot enter {t.path}: {helper.stderr.read().strip() if helper.stderr else ''}")
            time.sleep(0.005)
        run([links.IP, "netns", "attach", netns, str(helper.pid)], step=f"pin {t.path} as {netns} (ip netns attach)")
    finally:
        helper.kill()
        helper.wait()


def check_only_loopback(netns: str) -> None:
    out = run([links.IP, "-n", netns, "-j", "link", "show"], step=f"list interfaces in {netns}").stdout
    others = [it["ifname"] for it in json.loads(out or "[]") if it.get("ifname") != "lo"]
    if others:
        raise SandboxError(
            f"the namespace already has interfaces {', '.join(others)}: a way out that would bypass the gateway "
            "(fix: start the container with --network none, or remove them first)")


def configure_tap(sb) -> None:
    """Host side of a microVM: address on the tap, the same sysctls as a veth's host side."""
    cmds = [f"link set dev {sb.host_if} addrgenmode none"] if os.path.isdir("/proc/sys/net/ipv6") else []
    cmds += [f"addr add {sb.host_addr}/{sb.prefix} dev {sb.host_if}", f"link set dev {sb.host_if} up"]
    run([links.IP, "-batch", "-"], step=f"configure tap {sb.host_if} (ip -batch -)", input="\n".join(cmds) + "\n")
    write_sysctl(f"net.ipv6.conf.{sb.host_if}.disable_ipv6", "1", missing_ok=True)
    write_sysctl(f"net.ipv4.conf.{sb.host_if}.rp_filter", "1")
    write_sysctl(f"net.ipv4.conf.{sb.host_if}.arp_ignore", "1")


def release_tap(tap: str) -> list[str]:
    """Cut the VM off and give the tap back as it was (down, no address). Errors, if any."""
    if not links.exists(tap):
        return []
    r = run([links.IP, "-batch", "-"], step=f"release tap {tap}",
            input=f"link set dev {tap} down\naddr flush dev {tap}\n", check=False)
    return [] if r.returncode == 0 else [f"release tap {tap}: {(r.stderr or '').strip()}"]


def boot_args(sb) -> str:
    """Firecracker/Linux `ip=` kernel argument that gives the VM its side of the link."""
    mask = {30: "255.255.255.252", 29: "255.255.255.248"}.get(sb.prefix, f"/{sb.prefix}")
    return f"ip={sb.sandbox_addr}::{sb.host_addr}:{mask}::eth0:off"

