"""End to end: sandboxes in a private gateway namespace, real veths, real nftables.

Every test runs the code under test inside its own gateway namespace (fixture
`gw`) and only ever sends packets to addresses it created there.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from gateway.errors import SandboxError
from netns import naming
from netns import state as st
from netns.run import write_sysctl

from netns_testlib import (D_PORT, ORIGIN_ADDR, ROOT, T_PORT, Namespace, TcpListener,
                           UdpListener, sh)

pytestmark = pytest.mark.netns


def sandbox_ns(sb) -> Namespace:
    return Namespace(sb.netns)


def tcp_from(sb, dst: str, port: int, timeout: float = 2.0, payload: bytes = b"hi") -> bytes:
    """Connect from inside the sandbox; returns what the server answered."""
    s = sandbox_ns(sb).socket()
    s.settimeout(timeout)
    with s:
        s.connect((dst, port))
        s.sendall(payload)
        return s.recv(100)


def udp_from(sb, dst: str, port: int, payload: bytes, timeout: float = 0.5):
    """Send one datagram from inside the sandbox; returns (reply, source) or None."""
    s = sandbox_ns(sb).socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    with s:
        s.sendto(payload, (dst, port))
        try:
            data, src = s.recvfrom(2048)
            return data, src
        except TimeoutError:
            return None


# ------------------------------------------------------------------ creation

def test_up_creates_namespace_veth_addresses_routes_resolv_and_state(gw):
    sb = gw.up("a")
    assert sb.name == gw.sbname("a") and sb.netns == f"egw-{sb.name}"
    assert (sb.host_if, sb.sandbox_if, sb.index) == ("egwh0", "egws0", 0)
    assert (sb.host_addr, sb.sandbox_addr, sb.prefix) == ("10.211.0.1", "10.211.0.2", 30)
    assert sb.table == naming.table_name(sb.name)
    assert os.path.exists(f"/run/netns/{sb.netns}")

    # Host side: in G, addressed, up, peer in the sandbox, no IPv6 address.
    host = gw.links()[sb.host_if]
    assert "UP" in host["flags"]
    assert [(a["family"], a["local"], a["prefixlen"]) for a in host["addr_info"]] == \
        [("inet", "10.211.0.1", 30)]
    assert host.get("link_netnsid") is not None
    assert gw.sh(["cat", f"/proc/sys/net/ipv6/conf/{sb.host_if}/disable_ipv6"]).stdout.strip() == "1"
    assert gw.sh(["cat", f"/proc/sys/net/ipv4/conf/{sb.host_if}/rp_filter"]).stdout.strip() == "1"
    assert gw.sh(["cat", f"/proc/sys/net/ipv4/conf/{sb.host_if}/arp_ignore"]).stdout.strip() == "1"

    # Sandbox side: lo up, veth addressed and up, default route via the host side, IPv6 off.
    inside = {it["ifname"]: it for it in json.loads(
        sh(["ip", "-n", sb.netns, "-j", "addr", "show"]).stdout)}
    assert set(inside) == {"lo", sb.sandbox_if}
    assert "UP" in inside["lo"]["flags"] and "UP" in inside[sb.sandbox_if]["flags"]
    assert [(a["family"], a["local"]) for a in inside[sb.sandbox_if]["addr_info"]] == \
        [("inet", "10.211.0.2")]
    assert not any(a["family"] == "inet6" for it in inside.values() for a in it["addr_info"])
    routes = json.loads(sh(["ip", "-n", sb.netns, "-j", "route", "show"]).stdout)
    assert {"dst": "default", "gateway": "10.211.0.1", "dev": sb.sandbox_if} in \
        [{k: r.get(k) for k in ("dst", "gateway", "dev")} for r in routes]
    assert sandbox_ns(sb).sh(["cat", "/proc/sys/net/ipv6/conf/all/disable_ipv6"]).stdout.strip() == "1"

    # resolv.conf, as `ip netns exec` shows it inside the sandbox.
    with open(f"/etc/netns/{sb.netns}/resolv.conf") as f:
        assert "nameserver 10.211.0.1\n" in f.read()
    assert "nameserver 10.211.0.1" in sandbox_ns(sb).sh(["cat", "/etc/resolv.conf"]).stdout

    # Rules live in G, not in the sandbox.
    assert gw.tables() == [sb.table]
    assert sandbox_ns(sb).sh(["nft", "list", "ruleset"]).stdout.strip() == ""

    # State file, list, get, set_session.
    import netns
    with open(st.state_path(gw.state_dir, sb.name)) as f:
        data = json.load(f)
    assert data["status"] == "ready" and data["host_if"] == "egwh0" and data["session_id"] is None
    assert netns.list_sandboxes(gw.state_dir) == [sb]
    assert netns.get(sb.name, gw.state_dir) == sb
    netns.set_session(sb.name, "sess-123", gw.state_dir)
    assert netns.get(sb.name, gw.state_dir).session_id == "sess-123"
    with pytest.raises(SandboxError, match="no sandbox named"):
        netns.get(gw.sbname("nope"), gw.state_dir)


def test_second_sandbox_gets_next_block_and_own_table(gw):
    a, b = gw.up("a"), gw.up("b")
    assert (b.index, b.host_if, b.host_addr, b.sandbox_addr) == (1, "egwh1", "10.211.0.5", "10.211.0.6")
    assert sorted(gw.tables()) == sorted([a.table, b.table])
    gw.down("a")
    c = gw.up("c")   # lowest free block is reused
    assert (c.index, c.host_addr) == (0, "10.211.0.1")


def test_custom_pool(gw):
    sb = gw.up("p", pool="172.30.8.0/24")
    assert (sb.host_addr, sb.sandbox_addr) == ("172.30.8.1", "172.30.8.2")


@pytest.mark.parametrize("kw,match", [
    ({"transparent_port": 0}, "transparent_port"),
    ({"dns_port": 70000}, "dns_port"),
    ({"transparent_port": 5000, "dns_port": 5000}, "different ports"),
    ({"transparent_port": 53}, "cannot be 53"),
    ({"pool": "10.0.0.0/31"}, "pool"),
])
def test_up_rejects_bad_arguments_before_touching_anything(gw, kw, match):
    with pytest.raises(SandboxError, match=match):
        gw.up("x", **kw)
    assert not os.path.exists(f"/run/netns/egw-{gw.sbname('x')}")


def test_up_refuses_existing_names(gw):
    import netns
    with pytest.raises(SandboxError, match="invalid sandbox name"):
        gw.call(netns.up, "Bad_Name", transparent_port=T_PORT, dns_port=D_PORT,
                state_dir=gw.state_dir)
    gw.up("a")
    with pytest.raises(SandboxError, match="already exists"):
        gw.up("a")
    # A namespace of that name that this state dir does not know is not touched.
    sh(["ip", "netns", "add", f"egw-{gw.sbname('foreign')}"])
    with pytest.raises(SandboxError, match="already exists but"):
        gw.up("foreign")
    assert os.path.exists(f"/run/netns/egw-{gw.sbname('foreign')}")


# ------------------------------------------------------------------- traffic

def test_tcp_is_redirected_to_the_transparent_port_with_original_destination(gw, origin, listeners):
    sb = gw.up("t")
    tp = TcpListener(gw, "0.0.0.0", T_PORT)
    decoy = TcpListener(gw, "0.0.0.0", 9090)          # a service in G on another port
    remote = TcpListener(origin, ORIGIN_ADDR, 443)    # the "internet" must never see a SYN
    listeners += [tp, decoy, remote]

    assert tcp_from(sb, sb.host_addr, 9090, payload=b"one") == b"ok:one"
    assert tcp_from(sb, ORIGIN_ADDR, 443, payload=b"two") == b"ok:two"
    conns = tp.wait(2)
    assert [(c["peer"][0], c["orig_dst"], c["data"]) for c in conns] == [
        (sb.sandbox_addr, (sb.host_addr, 9090), b"one"),
        (sb.sandbox_addr, (ORIGIN_ADDR, 443), b"two"),
    ]
    time.sleep(0.2)
    assert decoy.conns == [] and remote.conns == []


def test_dns_udp_and_tcp_are_redirected_to_the_dns_port(gw, origin, listeners):
    sb = gw.up("d")
    dns_udp = UdpListener(gw, "0.0.0.0", D_PORT)
    dns_tcp = TcpListener(gw, "0.0.0.0", D_PORT)
    remote = UdpListener(origin, ORIGIN_ADDR, 53)
    listeners += [dns_udp, dns_tcp, remote]

    # The resolver address from resolv.conf, and any other address: both reach the gateway,
    # and the answer comes back from the address the sandbox asked.
    # (an answer is expected: wait long enough for a loaded CI machine)
    assert udp_from(sb, sb.host_addr, 53, b"q1", timeout=5) == (b"re:q1", (sb.host_addr, 53))
    assert udp_from(sb, ORIGIN_ADDR, 53, b"q2", timeout=5) == (b"re:q2", (ORIGIN_ADDR, 53))
    assert [(src[0], data) for src, data in dns_udp.wait(2)] == \
        [(sb.sandbox_addr, b"q1"), (sb.sandbox_addr, b"q2")]
    assert tcp_from(sb, sb.host_addr, 53, payload=b"tq") == b"ok:tq"
    assert dns_tcp.wait(1)[0]["orig_dst"] == (sb.host_addr, 53)
    assert remote.got == []


def test_everything_else_is_dropped_silently(gw, origin, listeners):
    sb = gw.up("x")
    tp = TcpListener(gw, "0.0.0.0", T_PORT)
    udp_g = UdpListener(gw, "0.0.0.0", 9091)          # non-redirected UDP port in G
    udp_dns_direct = UdpListener(gw, "0.0.0.0", D_PORT)
    udp_remote = UdpListener(origin, ORIGIN_ADDR, 9092)
    listeners += [tp, udp_g, udp_dns_direct, udp_remote]

    # UDP to G on a non-DNS port: no answer, and no ICMP error either (a connected
    # UDP socket would report ECONNREFUSED on an ICMP port unreachable).
    s = sandbox_ns(sb).socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        s.settimeout(0.5)
        s.connect((sb.host_addr, 9091))
        s.send(b"x")
        with pytest.raises(TimeoutError):
            s.recv(100)
    # The DNS port itself, addressed directly (no redirect, no dnat): dropped.
    assert udp_from(sb, sb.host_addr, D_PORT, b"direct") is None
    # UDP to the outside is not forwarded, although G forwards for others.
    before = gw.drop_counter(sb.table, "forward")
    assert udp_from(sb, ORIGIN_ADDR, 9092, b"out") is None
    assert gw.drop_counter(sb.table, "forward") > before
    # The transparent port addressed directly is not a redirected flow either.
    with pytest.raises((TimeoutError, OSError)):
        tcp_from(sb, sb.host_addr, T_PORT, timeout=0.5)
    # ICMP: no echo reply from G nor from beyond.
    for dst in (sb.host_addr, ORIGIN_ADDR):
        r = sandbox_ns(sb).sh(["ping", "-n", "-c", "1", "-W", "1", dst], check=False)
        assert r.returncode != 0, r.stdout
    time.sleep(0.2)
    assert udp_g.got == [] and udp_dns_direct.got == [] and udp_remote.got == []
    assert tp.conns == []


def test_without_listener_tcp_fails_fast(gw, origin):
    sb = gw.up("f")
    for dst, port in ((ORIGIN_ADDR, 443), (sb.host_addr, 8443), (ORIGIN_ADDR, 22)):
        t0 = time.monotonic()
        with pytest.raises(ConnectionRefusedError):
            tcp_from(sb, dst, port, timeout=5)
        assert time.monotonic() - t0 < 2.0  # refused at once, not the 5 s timeout (slack for a loaded machine)


def test_root_in_sandbox_cannot_touch_the_rules(gw, listeners):
    sb = gw.up("r")
    tp = TcpListener(gw, "0.0.0.0", T_PORT)
    listeners.append(tp)
    rules_before = gw.sh(["nft", "-s", "list", "table", "inet", sb.table]).stdout
    ns = sandbox_ns(sb)
    ns.sh(["nft", "flush", "ruleset"])
    ns.sh(["nft", "add", "table", "inet", sb.table])           # same name, its own namespace
    r = ns.sh(["nft", "delete", "table", "inet", sb.table], check=False)
    assert r.returncode == 0                                    # deletes only its own copy
    assert gw.sh(["nft", "-s", "list", "table", "inet", sb.table]).stdout == rules_before
    assert tcp_from(sb, sb.host_addr, 7000, payload=b"still") == b"ok:still"
    assert tp.wait(1)[0]["orig_dst"] == (sb.host_addr, 7000)


def test_spoofed_source_is_dropped_by_the_raw_chain(gw, listeners):
    from scapy.layers.inet import IP, UDP   # scapy only builds the bytes

    sb = gw.up("s")
    dns = UdpListener(gw, "0.0.0.0", D_PORT)
    listeners.append(dns)

    def send_raw(src: str, payload: bytes) -> None:
        pkt = bytes(IP(src=src, dst=sb.host_addr) / UDP(sport=40000, dport=53) / payload)
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
            s.sendto(pkt, (sb.host_addr, 0))

    before = gw.counter(sb.table, "spoofed source")
    for forged in ("10.99.0.9", "10.211.0.3", sb.host_addr, "127.0.0.1"):
        sandbox_ns(sb).call(send_raw, forged, b"forged")
    sandbox_ns(sb).call(send_raw, sb.sandbox_addr, b"genuine")   # control: the path works
    got = dns.wait(1)
    time.sleep(0.3)
    assert [(src[0], data) for src, data in dns.got] == [(sb.sandbox_addr, b"genuine")], got
    assert gw.counter(sb.table, "spoofed source") - before == 4

    # Same with a root process re-addressing the sandbox interface.
    sandbox_ns(sb).sh(["ip", "addr", "add", "10.211.0.77/32", "dev", sb.sandbox_if])
    s = sandbox_ns(sb).socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        s.bind(("10.211.0.77", 0))
        s.sendto(b"readdressed", (sb.host_addr, 53))
    time.sleep(0.3)
    assert len(dns.got) == 1
    assert gw.counter(sb.table, "spoofed source") - before == 5


def test_ipv6_stays_blocked_when_root_in_sandbox_reenables_it(gw, listeners):
    sb = gw.up("six")
    g6 = UdpListener(gw, "::", D_PORT, family=socket.AF_INET6)
    listeners.append(g6)
    assert not [a for a in gw.links()[sb.host_if]["addr_info"] if a["family"] == "inet6"]

    ns = sandbox_ns(sb)

    def enable() -> None:
        for key in ("all", "default", sb.sandbox_if):
            write_sysctl(f"net.ipv6.conf.{key}.disable_ipv6", "0")
    ns.call(enable)
    ns.sh(["ip", "-6", "addr", "add", "fd00:211::2/64", "dev", sb.sandbox_if, "nodad"])
    ifindex = int(ns.sh(["cat", f"/sys/class/net/{sb.sandbox_if}/ifindex"]).stdout)

    def send_v6() -> None:
        s = ns.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        with s:
            for _ in range(3):
                s.sendto(b"v6", ("ff02::1", D_PORT, 0, ifindex))
                time.sleep(0.05)

    def tx_packets() -> int:
        return int(ns.sh(["cat", f"/sys/class/net/{sb.sandbox_if}/statistics/tx_packets"]).stdout)

    # Layer 1: IPv6 is off on the host side (set in G, out of the sandbox's reach);
    # the kernel discards the packets before netfilter even sees them.
    tx = tx_packets()
    send_v6()
    assert tx_packets() >= tx + 3          # they did leave the sandbox
    time.sleep(0.2)
    assert g6.got == []

    # Layer 2: even with IPv6 switched back on for the host side in G, the raw chain drops it.
    gw.call(write_sysctl, f"net.ipv6.conf.{sb.host_if}.disable_ipv6", "0")
    send_v6()
    end = time.monotonic() + 3
    while gw.counter(sb.table, "no IPv6 from the sandbox") < 3 and time.monotonic() < end:
        time.sleep(0.05)
    assert gw.counter(sb.table, "no IPv6 from the sandbox") >= 3
    time.sleep(0.2)
    assert g6.got == []


def test_exec_argv_runs_unprivileged_inside_the_sandbox(gw):
    import netns
    sb = gw.up("e")
    argv = netns.exec_argv(sb, ["sh", "-c", "id -u; cat /etc/resolv.conf; grep CapEff /proc/self/status;"
                                " echo HOME=$HOME SECRET=${SECRET-unset}; ip link set lo down"],
                           env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/tmp"})
    os.environ["SECRET"] = "must-not-leak"
    try:
        r = subprocess.run(argv, capture_output=True, text=True)
    finally:
        del os.environ["SECRET"]
    import pwd
    assert r.stdout.splitlines()[0] == str(pwd.getpwnam("nobody").pw_uid)
    assert f"nameserver {sb.host_addr}" in r.stdout
    assert "CapEff:\t0000000000000000" in r.stdout
    assert "HOME=/tmp SECRET=unset" in r.stdout
    assert r.returncode != 0 and "Operation not permitted" in r.stderr
    root = subprocess.run(netns.exec_argv(sb, ["id", "-u"], user=None, env={"PATH": "/usr/bin:/bin"}),
                          capture_output=True, text=True)
    assert root.stdout.strip() == "0"


# ------------------------------------------------------------------- removal

def gone(gw, sb) -> None:
    assert not os.path.exists(f"/run/netns/{sb.netns}")
    assert sb.host_if not in gw.links()
    assert sb.table not in gw.tables()
    assert not os.path.exists(f"/etc/netns/{sb.netns}")
    assert not os.path.exists(st.state_path(gw.state_dir, sb.name))


def test_down_removes_everything_and_is_idempotent(gw):
    sb = gw.up("a")
    assert gw.down("a") is True
    gone(gw, sb)
    assert gw.down("a") is False
    assert gw.down("never-existed") is False
    import netns
    assert netns.list_sandboxes(gw.state_dir) == []


def test_down_without_state_file_cleans_partial_leftovers(gw):
    sb = gw.up("a")
    os.unlink(st.state_path(gw.state_dir, sb.name))
    assert gw.down("a") is True
    gone(gw, sb)
    # Only a table left (e.g. an interrupted down): still removed, still True.
    sb2 = gw.up("b")
    gw.call(lambda: sh(["ip", "-batch", "-"], input=f"link del {sb2.host_if}\nnetns del {sb2.netns}\n"))
    os.unlink(st.state_path(gw.state_dir, sb2.name))
    assert sb2.table in gw.tables()
    assert gw.down("b") is True
    gone(gw, sb2)


def test_down_cuts_off_a_sandbox_whose_namespace_is_still_held(gw, listeners):
    sb = gw.up("held")
    holder = subprocess.Popen(["ip", "netns", "exec", sb.netns, "sleep", "30"])
    try:
        time.sleep(0.1)
        assert gw.down("held") is True
        gone(gw, sb)
        # The process lives on in an unnamed namespace, with nothing but lo.
        out = sh(["nsenter", f"--net=/proc/{holder.pid}/ns/net", "ip", "-j", "link"]).stdout \
            if holder.poll() is None else "[]"
        assert [it["ifname"] for it in json.loads(out)] in (["lo"], [])
    finally:
        holder.kill()
        holder.wait()


def test_rollback_when_a_step_fails(gw, monkeypatch):
    import netns.rtnl as rtnl
    real_route = rtnl.add_default_route

    def broken_route(s, ifname, gateway):
        # the sandbox-side route: a real kernel refusal (a gateway off every local network)
        return real_route(s, ifname, "192.0.2.77")

    monkeypatch.setattr(rtnl, "add_default_route", broken_route)
    with pytest.raises(SandboxError) as e:
        gw.up("rb")
    msg = str(e.value)
    assert "configure sandbox side" in msg and "default route via 192.0.2.77" in msg
    assert "unreachable" in msg            # the kernel's errno text is in the message
    assert "everything it had created was removed" in msg
    name = gw.sbname("rb")
    assert not os.path.exists(f"/run/netns/egw-{name}")
    assert not any(n.startswith("egwh") for n in gw.links())
    assert gw.tables() == []
    assert not os.path.exists(f"/etc/netns/egw-{name}")
    assert not os.path.exists(st.state_path(gw.state_dir, name))
    monkeypatch.undo()
    assert gw.up("rb").index == 0


def test_rollback_when_nft_rejects_the_rules(gw, monkeypatch):
    import netns.nft as nftmod
    from netns import nftrules
    real = nftmod.table

    def broken(sb):   # the real table plus a rule with an expression the kernel does not know
        tb = real(sb)
        c = tb.chains[-1]
        bad = nftrules.Rule((nftrules.Term("nosuch", (nftrules.Expr("nosuchexpr", ()),)),))
        tb.chains[-1] = nftrules.Chain(c.name, c.type, c.hook, c.priority, c.rules + (bad,))
        return tb

    monkeypatch.setattr(nftmod, "table", broken)
    with pytest.raises(SandboxError) as e:
        gw.up("n")
    assert "create nftables table" in str(e.value) and "refused rule in" in str(e.value)
    assert "nothing of this transaction was applied" in str(e.value)
    assert not os.path.exists(f"/run/netns/egw-{gw.sbname('n')}")
    assert gw.tables() == [] and not any(n.startswith("egwh") for n in gw.links())


# --------------------------------------------------------------------- sweep

CRASH = """
import os, sys, netns.sandbox as s
def sandbox_side(sb):
    os._exit(9)              # killed after the table, namespace and veth exist
s._sandbox_side = sandbox_side
s.up({name!r}, transparent_port=18080, dns_port=15353, state_dir={state_dir!r})
"""


def test_sweep_removes_a_crashed_up(gw):
    name = gw.sbname("crash")
    r = gw.python(CRASH.format(name=name, state_dir=gw.state_dir), check=False)
    assert r.returncode == 9, r.stderr
    rec = st.read(gw.state_dir, name)
    assert rec.status == st.CREATING
    assert os.path.exists(f"/run/netns/egw-{name}") and "egwh0" in gw.links()
    assert rec.sandbox.table in gw.tables()
    import netns
    assert netns.list_sandboxes(gw.state_dir) == []     # not listed while half made

    removed = gw.sweep()
    assert f"netns egw-{name}" in removed and "veth egwh0" in removed
    assert f"nft table inet {rec.sandbox.table}" in removed
    gone(gw, rec.sandbox)
    assert gw.sweep() == []


def test_sweep_removes_state_whose_namespace_is_gone(gw):
    sb = gw.up("lost")
    sh(["ip", "netns", "del", sb.netns])        # e.g. someone ran `ip netns del`
    removed = gw.sweep()
    assert any(r.startswith("state ") for r in removed)
    gone(gw, sb)


def test_sweep_removes_objects_without_state_and_spares_foreign_namespaces(gw):
    keep = gw.up("keep")
    lost = gw.up("lost")
    os.unlink(st.state_path(gw.state_dir, lost.name))  # state lost, kernel objects remain
    # An egw-* namespace with no veth into this gateway: could be another gateway's.
    foreign = f"egw-{gw.sbname('foreign')}"
    sh(["ip", "netns", "add", foreign])
    # A host veth whose peer has no name any more (a held, deleted namespace).
    gw.sh(["ip", "link", "add", "egwh7", "type", "veth", "peer", "name", "egws7"])

    removed = gw.sweep()
    assert sorted(removed) == sorted([f"veth {lost.host_if}", "veth egwh7", f"netns {lost.netns}",
                                      f"nft table inet {lost.table}", f"dir /etc/netns/{lost.netns}"])
    gone(gw, lost)
    assert os.path.exists(f"/run/netns/{foreign}")
    import netns
    assert netns.list_sandboxes(gw.state_dir) == [keep]
    assert keep.host_if in gw.links() and keep.table in gw.tables()


def test_sweep_handles_dead_pins_and_unreadable_state(gw):
    sb = gw.up("dead")
    sh(["umount", f"/run/netns/{sb.netns}"])   # the pin is gone, an empty file remains
    bad = os.path.join(st.sandboxes_dir(gw.state_dir), f"{gw.sbname('bad')}.json")
    with open(bad, "w") as f:
        f.write("{truncated")
    removed = gw.sweep()
    assert f"netns {sb.netns}" in removed and any(r.startswith("state ") for r in removed)
    assert any(r.startswith("unreadable state") for r in removed)
    assert os.path.exists(bad + ".bad") and not os.path.exists(bad)
    gone(gw, sb)


def test_up_sweeps_first(gw):
    lost = gw.up("one", transparent_port=18081)
    os.unlink(st.state_path(gw.state_dir, lost.name))
    sb = gw.up("two")
    assert sb.index == 0 and sb.host_if == lost.host_if   # the orphan's block was freed
    assert not os.path.exists(f"/run/netns/{lost.netns}")
    # Its table went too: it matched the same interface name and would redirect elsewhere.
    assert gw.tables() == [sb.table]


def test_up_finds_a_leftover_veth_without_an_address(gw):
    """`up` reads interfaces from the address dump; a veth of ours that never got its address (and
    whose state file is gone) is found by the name `up` is about to use, and swept."""
    gw.sh(["ip", "link", "add", "egwh0", "type", "veth", "peer", "name", "egws0"])
    sb = gw.up("one")
    assert sb.index == 0 and sb.host_if == "egwh0"
    assert "egws0" not in gw.links()                        # the leftover pair went, ours is new
    assert "link_netnsid" in gw.links()["egwh0"]              # its peer is in the sandbox now


def test_up_of_the_same_name_removes_its_leftover_namespace(gw):
    """A leftover namespace of ours, behind a veth without an address and without a state file, is
    not in the address dump: `up` of the same name sweeps in full before it refuses."""
    lost = gw.up("one")
    os.unlink(st.state_path(gw.state_dir, lost.name))
    gw.sh(["ip", "addr", "flush", "dev", lost.host_if])
    sb = gw.up("one")
    assert sb.netns == lost.netns and os.path.exists(f"/run/netns/{sb.netns}")
    assert gw.tables() == [sb.table] and "link_netnsid" in gw.links()[sb.host_if]


def test_table_listing_over_netlink(gw):
    from netns import nft, nftnl
    a, b = gw.up("la"), gw.up("lb")
    gw.sh(["nft", "add", "table", "inet", "other"])
    gw.sh(["nft", "add", "table", "ip", "egressgw_ipv4_family"])
    assert gw.call(nft.list_tables) == sorted([a.table, b.table])
    assert gw.call(nftnl.table_names) == sorted([a.table, b.table, "other"])
    assert gw.call(nftnl.table_names, 2) == ["egressgw_ipv4_family"]


# --------------------------------------------------------------- concurrency

UP = """
import json, netns
sb = netns.up({name!r}, transparent_port=18080, dns_port=15353, state_dir={state_dir!r})
print(json.dumps([sb.index, sb.host_addr, sb.host_if]))
"""


def test_concurrent_ups_get_different_blocks(gw):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    names = [gw.sbname(f"c{i}") for i in range(4)]
    procs = [subprocess.Popen(gw.enter() + [sys.executable, "-c",
                               UP.format(name=n, state_dir=gw.state_dir)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for n in names]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        results.append(tuple(json.loads(out)))
    assert sorted(r[0] for r in results) == [0, 1, 2, 3]
    assert len({r[1] for r in results}) == 4 and len({r[2] for r in results}) == 4
    import netns
    sbs = netns.list_sandboxes(gw.state_dir)
    assert sorted(s.name for s in sbs) == sorted(names)
    for sb in sbs:   # alive after their creators exited, and enterable from here
        out = sh(["ip", "-n", sb.netns, "-j", "addr", "show", "dev", sb.sandbox_if]).stdout
        assert json.loads(out)[0]["addr_info"][0]["local"] == sb.sandbox_addr


def test_up_refuses_a_private_mount_namespace(gw):
    """Under `ip netns exec` the namespace pin would die with the process: refuse, roll back."""
    name = gw.sbname("priv")
    code = UP.format(name=name, state_dir=gw.state_dir)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(["ip", "netns", "exec", gw.name, sys.executable, "-c", code],
                       capture_output=True, text=True, env=env)
    assert r.returncode != 0
    assert "private mount namespace" in r.stderr and "nsenter --net=" in r.stderr
    assert not os.path.lexists(f"/run/netns/egw-{name}")
    assert not any(n.startswith("egwh") for n in gw.links()) and gw.tables() == []
    assert st.read(gw.state_dir, name) is None


def test_concurrent_ups_in_threads(gw):
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(4) as ex:
        sbs = list(ex.map(lambda i: gw.up(f"th{i}"), range(4)))
    assert sorted(s.index for s in sbs) == [0, 1, 2, 3]
