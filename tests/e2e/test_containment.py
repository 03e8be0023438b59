"""A hostile root inside the sandbox, IPv6, a stopped gateway, a broken policy: egress stays shut."""

from __future__ import annotations

import sys

ALLOWED = """
- name: allowed
  hosts: [{matchName: allowed.test}]
"""


def test_root_flushing_its_firewall_and_sending_raw_packets_gets_nowhere(sandboxes, lab, leak_counter):
    box = sandboxes.up(ALLOWED)
    flush = box.run("nft", "flush", "ruleset", user="root")
    assert flush.returncode == 0, flush.stderr
    assert box.curl("https://198.18.1.12/", "-k", user="root")[0] == 0
    # Raw sockets as root: forged source addresses, ICMP, UDP and TCP SYNs straight at the origins.
    r = box.run(sys.executable, "-c", """
import socket, struct
from scapy.all import IP, TCP, UDP, ICMP, send
for src in (None, "198.18.0.1", "10.211.0.1"):
    kw = {"src": src} if src else {}
    send(IP(dst="198.18.1.10", **kw) / TCP(dport=443, flags="S"), verbose=False)
    send(IP(dst="198.18.1.10", **kw) / UDP(dport=9999) / b"raw", verbose=False)
    send(IP(dst="198.18.1.10", **kw) / ICMP(), verbose=False)
print("sent")
""", user="root")
    assert r.stdout.strip() == "sent", r.stderr
    assert leak_counter() == 0
    assert not lab.records(local_addr="198.18.1.10", kind="udp")
    # And the sandbox still works through the gateway afterwards.
    assert box.curl("https://allowed.test/")[0] == 200


def test_ipv6_is_no_side_door(sandboxes, lab, gateway, leak_counter):
    box = sandboxes.up(ALLOWED)
    sb = gateway.cli("sandbox", "list", "--json").stdout
    import json

    host_if = next(b["host_if"] for b in json.loads(sb) if b["name"] == box.name)
    sandbox_if = next(b["sandbox_if"] for b in json.loads(sb) if b["name"] == box.name)
    # A listener on every IPv6 address of the gateway's namespace.
    listener = lab.popen_in(lab.gw_ns, [sys.executable, "-c", """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", 15999)); s.listen(); s.settimeout(8)
try:
    c, peer = s.accept(); print("ACCEPTED", peer, flush=True)
except OSError:
    print("none", flush=True)
"""], stdout=__import__("subprocess").PIPE, text=True)
    lab.run_in(lab.gw_ns, ["ip", "-6", "addr", "add", "fd00:e9::1/64", "dev", host_if])
    # Root re-enables IPv6 inside and tries the gateway's addresses and an origin's.
    script = f"""
sysctl -qw net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.{sandbox_if}.disable_ipv6=0
ip -6 addr add fd00:e9::2/64 dev {sandbox_if} nodad
ip -6 route add default via fd00:e9::1 dev {sandbox_if} 2>/dev/null
sleep 1
curl -s -m 2 -g 'http://[fd00:e9::1]:15999/' ; echo "curl=$?"
curl -s -m 2 -g 'http://[2001:db8::10]/' ; echo "curl=$?"
ping -6 -c 1 -W 1 fd00:e9::1 >/dev/null; echo "ping=$?"
"""
    r = box.run("sh", "-c", script, user="root")
    out, _ = listener.communicate(timeout=15)
    assert "ACCEPTED" not in out
    assert "ping=0" not in r.stdout and "curl=0" not in r.stdout, r.stdout
    assert leak_counter() == 0


def test_stopped_gateway_leaves_no_egress(sandboxes, gateway, lab, leak_counter):
    box = sandboxes.up(ALLOWED)
    assert box.curl("https://allowed.test/")[0] == 200
    before = len(lab.records(kind="http"))
    gateway.stop()
    try:
        for url, extra in (("https://allowed.test/", ["--resolve", "allowed.test:443:198.18.1.10"]),
                           ("http://198.18.1.10/", []), ("https://198.18.1.12/", ["-k"])):
            assert box.curl(url, *extra, user="root")[0] == 0
        assert box.run("getent", "hosts", "allowed.test").returncode != 0
        assert len(lab.records(kind="http")) == before
        assert leak_counter() == 0
    finally:
        gateway.start()
    # Sessions persist in the gateway's session store (SQLite): after a restart the sandbox is served
    # again, under the same policy.
    assert box.curl("https://allowed.test/", "--resolve", "allowed.test:443:198.18.1.10")[0] == 200
    assert box.curl("https://denied.test/", "--resolve", "denied.test:443:198.18.1.12")[0] == 0


def test_broken_policy_file_names_the_line(gateway, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: egressgw.dev/v1alpha1\nkind: EgressPolicy\nmetadata:\n  name: bad\nspec:\n  egress:\n"
        "    - hosts:\n        - matchPattern: '*'\n      ports: [99999]\n"
    )
    r = gateway.cli("sandbox", "up", "tbad", "--policy", str(bad), check=False)
    assert r.returncode == 1
    assert f"{bad}:8:" in r.stderr and f"{bad}:9:" in r.stderr
    assert "fix:" in r.stderr
    assert "tbad" not in gateway.cli("sandbox", "list").stdout
