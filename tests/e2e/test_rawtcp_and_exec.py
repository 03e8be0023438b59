"""Raw TCP rules (git over SSH) and what `sandbox exec` hands the process inside."""

from __future__ import annotations

RULES = """
- name: git-ssh
  protocol: tcp
  hosts: [{matchName: allowed.test}]
  ports: [22]
- name: web
  hosts: [{matchName: allowed.test}]
"""

SSH_CLIENT = """
import socket, sys
addr = socket.gethostbyname(sys.argv[1])
s = socket.create_connection((addr, int(sys.argv[2])), timeout=4)
s.sendall(b"SSH-2.0-OpenSSH_9.2\\r\\n")
try:
    print(s.recv(100).decode().splitlines()[0])  # the banner; the echo of our own line may follow
except OSError as e:
    print("error", e)
"""


def test_tcp_rule_allows_ssh_to_the_named_host_only(sandboxes, lab):
    box = sandboxes.up(RULES)
    r = box.run("python3", "-c", SSH_CLIENT, "allowed.test", "22")
    assert r.stdout.strip() == "SSH-2.0-lab", r.stdout + r.stderr
    rec = lab.records(kind="tcp", local_addr="198.18.1.10", local_port=22)
    assert rec and rec[-1]["peer"] == lab.gw_addr  # the gateway dialled, not the sandbox
    assert box.events(event="tcp", decision="allow", rule="git-ssh", dest_host="allowed.test")
    # Port 9999 on the same host, and port 22 on another address: refused.
    r = box.run("python3", "-c", SSH_CLIENT, "allowed.test", "9999")
    assert "lab-tcp" not in r.stdout
    r = box.python("""
        import socket
        s = socket.create_connection(("198.18.1.11", 22), timeout=4)
        s.sendall(b"SSH-2.0-OpenSSH_9.2\\r\\n")
        print(repr(s.recv(100)))
    """)
    assert "SSH-2.0-lab" not in r.stdout
    assert not lab.records(kind="tcp", local_addr="198.18.1.11")
    assert not lab.records(kind="tcp", local_port=9999)


def test_exec_runs_unprivileged_with_the_ca_environment(sandboxes):
    box = sandboxes.up(RULES)
    r = box.run("sh", "-c", "id -u; grep -E '^Cap(Eff|Bnd|Prm)' /proc/self/status; env")
    lines = r.stdout.splitlines()
    assert lines[0] == "65534"  # nobody
    caps = dict(line.split(":\t") for line in lines[1:4])
    assert set(caps.values()) == {"0000000000000000"}  # no CAP_NET_ADMIN, no CAP_NET_RAW, nothing
    env = dict(line.split("=", 1) for line in lines[4:] if "=" in line)
    bundle = env["SSL_CERT_FILE"]
    for name in ("REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO", "PIP_CERT", "CURL_CA_BUNDLE"):
        assert env[name] == bundle
    assert env["EGRESSGW_SESSION"] == box.session
    # The unprivileged process cannot change the sandbox's network.
    r = box.run("ip", "addr", "add", "10.9.9.9/32", "dev", "lo")
    assert r.returncode != 0
