"""Network layer: other protocols and ports, IPv6 and IPv4-in-IPv6, IP-literal encodings, special
address ranges, foreign resolvers (UDP, TCP, DoT, DoH), DNS rebinding, a shared CDN address, and the
gateway's own listeners, all tried from inside a real sandbox.

denied.test is 198.18.1.12 (3323068684, 0xc612010c); allowed.test is 198.18.1.10 (0xc612010a).
"""

from __future__ import annotations

import os
import stat

import pytest

from advcase import DROPPED, IPV6_OFF, Case, curl, params, py, refused, run_case, sh

RULES = """
- name: allowed
  hosts: [{matchName: allowed.test}]
  ports: [80, 443]
- name: rebinding-names
  hosts: [{matchName: rebind.allowed.test}, {matchName: private.allowed.test}, {matchName: meta.allowed.test},
          {matchName: gwself.allowed.test}, {matchName: loop6.allowed.test}, {matchName: zero.allowed.test},
          {matchName: mapped.allowed.test}]
  ports: [80, 443]
"""

# Names the policy allows whose upstream answers point inside: rebinding (added to the lab zone).
REBIND = {
    "gwself.allowed.test": {"A": ["198.18.0.1"]},      # the gateway's own lab address
    "loop6.allowed.test": {"AAAA": ["::1"]},
    "zero.allowed.test": {"A": ["0.0.0.0"]},
    "mapped.allowed.test": {"AAAA": ["::ffff:127.0.0.1"]},
}


@pytest.fixture(scope="module")
def lab_options():
    return {"extra_records": REBIND}


def udp(addr: str, port: int, payload: str = "b'MARK'", user: str = "nobody"):
    return py(f"import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              f"for _ in range(3): s.sendto({payload}, ('{addr}', {port}))\n", user=user)


def dns_query(name: str) -> str:
    """A Python expression building an A query for `name` (labels measured at run time: MARK grows)."""
    return (f"struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0) + b''.join(bytes([len(p)]) + p.encode() "
            f"for p in '{name}'.split('.')) + b'\\x00' + struct.pack('>HH', 1, 1)")


def raw_http(addr: str, port: int, host: str) -> object:
    """A plain HTTP request to addr:port naming `host` in its Host header."""
    return py("import socket, sys\n"
              f"s = socket.create_connection(('{addr}', {port}), timeout=4)\n"
              f"s.sendall(b'GET /MARK HTTP/1.1\\r\\nHost: {host}\\r\\nConnection: close\\r\\n\\r\\n')\n"
              "print(s.recv(200))\n")


IPV6_ROOT = """
sysctl -qw net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.default.disable_ipv6=0
for i in $(ls /sys/class/net | grep -v lo); do sysctl -qw net.ipv6.conf.$i.disable_ipv6=0
  ip -6 addr add fd00:ad::2/64 dev $i nodad; ip -6 route add default dev $i; done
sleep 0.5
for a in '64:ff9b::c612:10c' '2002:c612:10c::1' '::198.18.1.12' '2001:db8::10'; do
  curl -s -m 1 -g "http://[$a]/MARK"; echo "curl $a=$?"
done
ping -6 -c 1 -W 1 2001:db8::10 >/dev/null; echo "ping=$?"
"""

CASES = [
    # other protocols and ports
    Case("udp-to-origin", udp("198.18.1.10", 9999), {"kind": "udp"}, DROPPED),
    Case("quic-udp-443", udp("198.18.1.10", 443, "b'\\xc0\\x00\\x00\\x00\\x01' + b'MARK' * 300"),
         {"kind": "udp"}, DROPPED),
    Case("icmp-ping", sh("ping -c 2 -W 1 -p 4d41524b 198.18.1.10", user="root"), {}, DROPPED),
    Case("sctp-raw-proto-132", py("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_RAW, 132)\n"
                                  "s.sendto(b'MARK' * 8, ('198.18.1.10', 0))\n", user="root"), {}, DROPPED),
    Case("ipv6-nat64-6to4-compat-global", sh(IPV6_ROOT, user="root"), {}, IPV6_OFF,
         note="root re-enables IPv6 inside: 64:ff9b::, 6to4, IPv4-compatible, a global address"),
    # v4-mapped destinations leave as IPv4 (the kernel maps them) and reach the gateway as IP literals
    *[Case(f"ipv6-mapped-{i}", py("import socket\ns = socket.socket(socket.AF_INET6)\ns.settimeout(4)\n"
                                  f"s.connect(('{a}', 80))\n"
                                  "s.sendall(b'GET /MARK HTTP/1.1\\r\\nHost: denied.test\\r\\n\\r\\n')\n"
                                  "print(s.recv(200))\n"), {"local_addr": "198.18.1.12"}, refused())
      for i, a in enumerate(("::ffff:198.18.1.12", "::ffff:c612:10c"))],
    Case("raw-tcp-port-22", py("import socket\ns = socket.create_connection(('198.18.1.10', 22), timeout=4)\n"
                               "s.sendall(b'SSH-2.0-MARK\\r\\n')\nprint(s.recv(100))\n"),
         {"kind": "tcp"}, {"event": "tcp", "decision": "deny"}),
    Case("http-port-not-allowed", curl("http://allowed.test:8000/MARK"), {"local_port": 8000},
         refused("port-not-allowed")),
    Case("https-port-not-allowed", curl("https://allowed.test:4443/MARK"), {"local_port": 4443}, refused()),
    # IP literals and their encodings
    Case("ip-literal-dotted", curl("http://198.18.1.12/MARK"), {"local_addr": "198.18.1.12"},
         refused("ip-literal-not-allowed")),
    Case("ip-literal-https-no-sni", curl("-k", "https://198.18.1.12/MARK"), {"local_addr": "198.18.1.12"}, refused()),
    Case("ip-literal-decimal", curl("http://3323068684/MARK"), {"local_addr": "198.18.1.12"}, refused()),
    Case("ip-literal-octal", curl("http://0306.022.01.014/MARK"), {"local_addr": "198.18.1.12"}, refused()),
    Case("ip-literal-hex", curl("http://0xc612010c/MARK"), {"local_addr": "198.18.1.12"}, refused()),
    Case("ip-literal-short", curl("http://198.18.268/MARK"), {"local_addr": "198.18.1.12"}, refused()),
    Case("allowed-hosts-ip-hex", curl("http://0xc612010a/MARK"), {"local_addr": "198.18.1.10"}, refused()),
    Case("host-header-decimal", raw_http("198.18.1.10", 80, "3323068682"), {}, refused()),
    Case("host-header-v4-mapped", raw_http("198.18.1.10", 80, "[::ffff:198.18.1.10]"), {}, refused()),
    Case("host-header-v4-mapped-hex", raw_http("198.18.1.10", 80, "[::ffff:c612:10a]"), {}, refused()),
    Case("host-header-nat64", raw_http("198.18.1.10", 80, "[64:ff9b::c612:10a]"), {}, refused()),
    Case("host-header-6to4", raw_http("198.18.1.10", 80, "[2002:c612:10a::]"), {}, refused()),
    # special ranges
    Case("metadata-169.254.169.254", curl("http://169.254.169.254/latest/meta-data/MARK"), {}, refused()),
    Case("host-header-loopback", raw_http("198.18.1.10", 80, "127.0.0.1"), {}, refused()),
    Case("host-header-loopback-short", raw_http("198.18.1.10", 80, "127.1"), {}, refused()),
    Case("host-header-localhost", raw_http("198.18.1.10", 80, "localhost"), {}, refused()),
    Case("host-header-metadata", raw_http("198.18.1.10", 80, "169.254.169.254"), {}, refused()),
    # rebinding: allowed names whose upstream answer points inside
    *[Case(f"rebind-{n.split('.')[0]}", curl(f"http://{n}/MARK", "--resolve", f"{n}:80:198.18.1.10"), {},
           refused("address-not-allowed", "dns-failure", "upstream-error"))
      for n in ("rebind.allowed.test", "private.allowed.test", "meta.allowed.test", "gwself.allowed.test",
                "loop6.allowed.test", "zero.allowed.test", "mapped.allowed.test")],
    # foreign resolvers: UDP and TCP 53 are answered by the gateway under the policy; DoT and DoH refused
    Case("foreign-resolver-udp", py("import socket, struct\n"
                                    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)\n"
                                    f"s.sendto({dns_query('MARK.denied.test')}, ('198.18.1.53', 53))\n"
                                    "print(s.recv(512)[3] & 15)\n"),
         {"local_addr": "198.18.1.53", "dns": {"qname__contains": "denied"}},
         {"event": "dns", "decision": "deny"}),
    Case("foreign-resolver-tcp", py("import socket, struct\n"
                                    f"q = {dns_query('MARK.denied.test')}\n"
                                    "s = socket.create_connection(('198.18.1.53', 53), timeout=3)\n"
                                    "s.sendall(struct.pack('>H', len(q)) + q)\nprint(s.recv(512))\n"),
         {"local_addr": "198.18.1.53", "dns": {"qname__contains": "denied"}},
         {"event": "dns", "decision": "deny"}),
    Case("dns-over-tls-853", py("import socket, ssl\nctx = ssl._create_unverified_context()\n"
                                "s = ctx.wrap_socket(socket.create_connection(('198.18.1.53', 853), timeout=4))\n"
                                "s.sendall(b'MARK')\nprint(s.recv(10))\n"),
         {"local_addr": "198.18.1.53"}, refused()),
    Case("dns-over-https-denied-host", curl("https://dns.denied.test/dns-query?dns=MARK",
                                            "--resolve", "dns.denied.test:443:198.18.1.53"),
         {"local_addr": "198.18.1.53", "dns": {"qname__contains": "denied"}}, refused("host-not-allowed")),
    # a shared CDN address: allowed.test and shared.test are both 198.18.1.10; only one is allowed
    Case("shared-ip-denied-name-https", curl("https://shared.test/MARK", "--resolve", "shared.test:443:198.18.1.10"),
         {"sni": "shared.test"}, refused("host-not-allowed")),
    Case("shared-ip-denied-name-http", curl("http://shared.test/MARK", "--resolve", "shared.test:80:198.18.1.10"),
         {"host": "shared.test"}, refused("host-not-allowed")),
    Case("shared-ip-by-address", curl("-k", "https://198.18.1.10/MARK", "-H", "Host: shared.test"),
         {"local_addr": "198.18.1.10"}, refused()),
    # the gateway's own listeners (its address on the sandbox's link: metrics, proxy, DNS, transparent)
    *[Case(f"gateway-own-port-{port}", curl(f"http://{{GW}}:{port}/MARK"), {}, refused())
      for port in (9469, 3128, 15353, 80)],
    # the transparent port itself, addressed directly: not a redirected flow, dropped by nftables
    Case("gateway-own-port-15001", curl("http://{GW}:15001/MARK"), {}, DROPPED),
    Case("gateway-lab-address", curl("http://198.18.0.1:9469/metrics?MARK"), {}, refused()),
]


@pytest.fixture(scope="module")
def box(sandboxes, lab):
    # The gateway host forwards for others (a router, a Docker host): the sandbox's own table must
    # still drop everything it does not redirect, and its drop counters are the evidence.
    lab.run_in(lab.gw_ns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
    return sandboxes.up(RULES)


@pytest.mark.parametrize("case", params(CASES))
def test_network_attack_is_refused(case, box, lab, leak_counter):
    run_case(case, box, lab, leak_counter, {"GW": box.info["gateway"]})


def test_control_api_and_logs_are_out_of_reach(box, gateway):
    """Not a network flow: the control socket and the flow log, from the sandbox's filesystem view."""
    assert stat.S_IMODE(os.stat(gateway.control_sock).st_mode) == 0o600
    r = box.python(f"""
        import socket
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect({str(gateway.control_sock)!r}); print("CONNECTED")
        except OSError as e:
            print("refused", e.errno)
    """)
    assert "CONNECTED" not in r.stdout and "refused" in r.stdout, r.stderr
    assert box.run("cat", str(gateway.dir / "control.token")).returncode != 0
