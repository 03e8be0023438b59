"""What a sandbox can and cannot reach, end to end: real namespaces, nftables, mitmproxy, TLS, DNS.

Every case runs a real client (curl, Python) inside a sandbox namespace and
checks three things: what the client saw, what reached the origin or the
upstream DNS server (their own records), and what the flow log says.
"""

from __future__ import annotations

import re

import pytest

RULES = """
- name: allowed-https
  hosts: [{matchName: allowed.test}]
- name: api-get-only
  hosts: [{matchName: api.allowed.test}]
  methods: [GET]
  paths: ["/v1/*"]
- name: other-plain-http
  hosts: [{matchName: other.test}]
  ports: [80]
- name: rebinding-names
  hosts: [{matchName: rebind.allowed.test}, {matchName: private.allowed.test}, {matchName: meta.allowed.test}]
  ports: [80, 443]
"""


@pytest.fixture(scope="module")
def box(sandboxes):
    return sandboxes.up(RULES)


def test_allowed_https_with_curl(box, lab):
    status, body = box.curl("https://allowed.test/")
    assert (status, body) == (200, "hello from allowed.test")
    rec = lab.records(kind="http", sni="allowed.test", path="/")
    assert rec and rec[-1]["local_addr"] == "198.18.1.10"
    event = box.events(event="http", dest_host="allowed.test")[-1]
    assert event["decision"] == "allow" and event["rule"] == "allowed-https" and event["status"] == 200


def test_allowed_https_with_python(box):
    r = box.python("""
        import json, urllib.request
        print(json.load(urllib.request.urlopen("https://allowed.test/echo?token=abc"))["path"])
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "/echo?token=abc"
    # The flow log keeps parameter names, never their values.
    urls = [e["url"] for e in box.events(event="http", dest_host="allowed.test")]
    assert "https://allowed.test/echo?token=" in urls
    assert not any("abc" in u for u in urls)


def test_plain_http_only_where_a_rule_names_port_80(box, lab):
    assert box.curl("http://other.test/") == (200, "hello from other.test")
    status, body = box.curl("http://allowed.test/")
    assert status == 403 and "plain HTTP not allowed" in body
    assert not lab.records(kind="http", host="allowed.test", tls=False)


def test_refused_host_gets_nxdomain_and_no_upstream_lookup(box, lab):
    r = box.run("getent", "hosts", "denied.test")
    assert r.returncode == 2  # not found
    assert not lab.dns_records(qname="denied.test.")
    event = box.events(event="dns", dns_qname="denied.test")[-1]
    assert event["decision"] == "deny" and event["dns_rcode"] == "NXDOMAIN"


def test_refused_host_by_address_and_sni_fails(box, lab):
    # The sandbox knows the address anyway and forces the name: cut at ClientHello.
    status, _ = box.curl("https://denied.test/", "--resolve", "denied.test:443:198.18.1.12")
    assert status == 0
    assert not lab.records(local_addr="198.18.1.12")
    assert not lab.dns_records(qname="denied.test.")  # decided before any lookup
    assert box.events(event="tls", sni="denied.test", decision="deny", reason="host-not-allowed")


def test_direct_ip_connection_fails(box, lab):
    status, _ = box.curl("https://198.18.1.12/", "-k")
    assert status == 0
    status, body = box.curl("http://198.18.1.12/")
    assert status == 403 and "IP address" in body
    assert not lab.records(local_addr="198.18.1.12")


def test_sni_host_mismatch_is_refused(box, lab):
    before = len(lab.records(kind="http"))
    status, body = box.curl("https://allowed.test/", "-H", "Host: denied.test")
    assert status == 403 and "does not match" in body
    assert len(lab.records(kind="http")) == before
    assert box.events(event="http", reason="sni-host-mismatch")


def test_method_and_path_rules(box, lab):
    assert box.curl("https://api.allowed.test/v1/items")[0] == 200
    status, body = box.curl("https://api.allowed.test/v1/items", "-X", "POST", "-d", "x=1")
    assert status == 403 and "method not allowed" in body
    status, body = box.curl("https://api.allowed.test/admin")
    assert status == 403 and "path not allowed" in body
    status, _ = box.curl("https://api.allowed.test/v1/../admin", "--path-as-is")
    assert status == 403
    paths = {r["path"] for r in lab.records(kind="http", host="api.allowed.test")}
    assert paths == {"/v1/items"}


def test_dial_guard_refuses_internal_addresses(box, lab):
    # Names the policy allows, resolving to loopback, private and metadata addresses (DNS rebinding).
    for name in ("rebind.allowed.test", "private.allowed.test", "meta.allowed.test"):
        status, body = box.curl(f"http://{name}/", "--resolve", f"{name}:80:198.18.1.10")
        assert status == 403, name
        status, _ = box.curl(f"https://{name}/", "--resolve", f"{name}:443:198.18.1.10")
        assert status in (0, 403), name
    assert box.events(reason="address-not-allowed")
    assert not lab.records(host="rebind.allowed.test")


def test_gateway_dials_the_name_not_the_sandbox_address(box, lab):
    # The sandbox aims allowed.test at another origin's address: the request still goes to allowed.test.
    status, body = box.curl("https://allowed.test/", "--resolve", "allowed.test:443:198.18.1.11")
    assert (status, body) == (200, "hello from allowed.test")
    assert lab.records(kind="http", sni="allowed.test")[-1]["local_addr"] == "198.18.1.10"


def test_udp_quic_icmp_and_foreign_resolvers_get_nowhere(box, lab, leak_counter):
    r = box.python("""
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"\\xc0\\x00\\x00\\x00\\x01quic-initial", ("198.18.1.10", 443))
        s.sendto(b"raw udp", ("198.18.1.10", 9999))
        s.sendto(b"raw udp", ("198.18.1.53", 9999))
    """)
    assert r.returncode == 0, r.stderr
    ping = box.run("ping", "-c", "1", "-W", "1", "198.18.1.10", user="root")
    assert ping.returncode != 0
    # A foreign resolver: the query is answered by the gateway under the same policy.
    r = box.python("""
        import socket, struct
        q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\\x06denied\\x04test\\x00" + struct.pack(">HH", 1, 1)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
        s.sendto(q, ("198.18.1.53", 53))
        print(s.recv(512)[3] & 0x0F)
    """)
    assert r.returncode == 0 and r.stdout.strip() == "3", r.stderr  # NXDOMAIN, from the gateway
    assert not lab.records(kind="udp")
    assert not lab.records(local_addr="198.18.1.53")
    assert leak_counter() == 0


def test_raw_tcp_refused_without_a_tcp_rule(box, lab):
    r = box.python("""
        import socket
        s = socket.create_connection(("198.18.1.10", 22), timeout=3)
        s.sendall(b"SSH-2.0-test\\r\\n")
        print(repr(s.recv(100)))
    """)
    assert "SSH-2.0-lab" not in r.stdout
    assert not lab.records(kind="tcp")
    assert box.events(event="tcp", decision="deny")


def test_metrics_count_decisions_without_hosts_or_sessions(box, gateway):
    text = gateway.metrics()
    assert 'egressgw_requests_total{action="allow",protocol="http",reason="allowed"}' in text
    assert 'egressgw_dns_queries_total{action="deny",rcode="NXDOMAIN"}' in text
    assert "egressgw_active_sessions" in text
    assert "allowed.test" not in text and box.session not in text


def test_the_running_gateway_froze_its_start_up(box, gateway):
    """gateway/gctune.py: once running, what start-up made is out of the collector's way."""
    m = re.search(r"^egressgw_gc_frozen_objects (\S+)$", gateway.metrics(), re.M)
    assert m and float(m.group(1)) > 50_000, m


def test_gateway_ca_key_is_private_and_sandboxes_get_only_the_certificate(box, gateway):
    import os
    import stat

    ca = gateway.dir / "ca"
    assert stat.S_IMODE(os.stat(ca / "mitmproxy-ca.pem").st_mode) == 0o600
    bundle = box.env["SSL_CERT_FILE"]
    assert "PRIVATE KEY" not in open(bundle).read()
    assert box.run("cat", str(ca / "mitmproxy-ca.pem")).returncode != 0  # nobody cannot read the key
    assert stat.S_IMODE(os.stat(gateway.control_sock).st_mode) == 0o600
