"""The gateway's own secrets, from inside a sandbox (its processes run as nobody on the host's file system):
the CA key, the control token, the control socket, the flow log and the session store are out of reach,
while the CA bundle the sandbox needs is readable. The control API and metrics listeners are not reachable
over the network from the sandbox either (the network-side cases are in tests/adversarial/)."""

from __future__ import annotations

import json
import stat

import pytest

ALLOWED = "- name: allowed\n  hosts: [{matchName: allowed.test}]\n"


@pytest.fixture(scope="module")
def box(sandboxes, gateway):
    b = sandboxes.up(ALLOWED)
    assert b.curl("https://allowed.test/")[0] == 200  # the flow log, store and CA all exist now
    return b


def test_the_sandbox_reads_the_bundle_but_no_secret_file(box, gateway):
    ca = gateway.dir / "ca"
    bundle = box.run("cat", str(ca / "sandbox-ca-bundle.pem"))
    assert bundle.returncode == 0 and "BEGIN CERTIFICATE" in bundle.stdout  # the path is right and readable
    secrets = [ca / "mitmproxy-ca.pem", ca / "mitmproxy-ca.p12", gateway.dir / "control.token",
               gateway.log_path, gateway.dir / "sessions.db"]
    for path in secrets:
        assert path.exists(), path
        r = box.run("cat", str(path))
        assert r.returncode != 0 and "Permission denied" in r.stderr, (path, r.returncode, r.stdout[:80])
        assert not stat.S_IMODE(path.stat().st_mode) & 0o007, oct(path.stat().st_mode)  # nothing for others
    assert stat.S_IMODE((ca / "mitmproxy-ca.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((gateway.dir / "control.token").stat().st_mode) == 0o600


def test_the_control_socket_refuses_the_sandbox(box, gateway):
    sock = gateway.control_sock
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    r = box.python(f"""
import socket
s = socket.socket(socket.AF_UNIX)
try:
    s.connect({str(sock)!r}); print("connected")
except OSError as e:
    print(e.strerror)
""")
    assert r.stdout.strip() == "Permission denied", (r.stdout, r.stderr)
    # even as the sandbox's root (a different network namespace, same file system): the token is still needed
    r = box.run("curl", "-sS", "-m", "3", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", str(sock),
                "http://egressgw/v1/sessions", user="root")
    assert r.stdout == "401", (r.stdout, r.stderr)


def test_metrics_and_control_ports_are_not_reachable_from_the_sandbox(box, gateway):
    route = json.loads(box.run("ip", "-j", "route", "show", "default").stdout or "[]")
    gw_addr = route[0]["gateway"] if route else None
    targets = [f"http://127.0.0.1:{gateway.METRICS_PORT}/metrics"]
    if gw_addr:
        targets.append(f"http://{gw_addr}:{gateway.METRICS_PORT}/metrics")
    for url in targets:
        code, body = box.curl(url)
        assert code != 200 and "egressgw_" not in body, (url, code, body[:200])
    assert gateway.metrics().startswith("#") or "egressgw_" in gateway.metrics()  # it is up, just not for them
