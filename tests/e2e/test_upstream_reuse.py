"""Upstream connections are reused across a sandbox's client connections, and only where it is safe:
same session, same policy revision, same address and authority, same credentials substituted.

Every request carries a unique query; the origin records the gateway's source port of the connection
each request arrived on, so "reused" is what the origin saw, not what the gateway says."""

from __future__ import annotations

import re
import secrets
import time

import pytest
import yaml

from gateway.lab.gateway import LabGateway
from gateway.lab.harness import policy_text

RULES = """
- name: allowed
  hosts: [{matchName: allowed.test}, {matchName: shared.test}, {matchName: other.test}]
  ports: [80, 443]
"""
IDLE = 30.0  # long: nothing here may expire by accident on a slow machine (expiry: test_upstream_reuse_idle.py)
REAL = "sk-proj-" + secrets.token_hex(20)


@pytest.fixture(scope="module")
def gateway(lab):
    gw = LabGateway(lab, extra_config={"upstream": {"reuseIdleSeconds": IDLE}})
    gw.start(env={"EGW_TEST_REUSE": REAL})
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def secrets_file(tmp_path_factory):
    spec = [{"name": "OPENAI_API_KEY", "source": "env://EGW_TEST_REUSE", "hosts": [{"matchName": "allowed.test"}]}]
    path = tmp_path_factory.mktemp("secrets") / "secrets.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def fetch(lab, box, url: str, *curl: str) -> dict:
    """GET `url` + a unique query in a new HTTP/1.1 sandbox connection; the origin's record of it."""
    tag = secrets.token_hex(6)
    status, _ = box.curl(f"{url}?t={tag}", "--http1.1", *curl)
    assert status == 200, (url, status)
    (rec,) = lab.wait_records(kind="http", count=1, path=f"/echo?t={tag}")
    return rec


def port(rec: dict) -> int:
    return rec["peer_port"]


def reuse_count(gateway, event: str) -> float:
    m = re.search(rf'^egressgw_upstream_reuse_total{{event="{event}"}} (\S+)$', gateway.metrics(), re.M)
    return float(m.group(1)) if m else 0.0


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_a_new_sandbox_connection_reuses_the_idle_upstream_connection(gateway, lab, sandboxes, scheme):
    box = sandboxes.up(RULES)
    before = reuse_count(gateway, "reused")
    recs = [fetch(lab, box, f"{scheme}://allowed.test/echo") for _ in range(4)]
    assert len({port(r) for r in recs}) == 1, [port(r) for r in recs]
    assert reuse_count(gateway, "reused") - before == 3
    events = box.events(dest_host="allowed.test")
    assert sum(e.get("decision") == "allow" for e in events) >= 4  # every request is still decided and logged


def test_never_across_sessions(lab, sandboxes):
    a, b = sandboxes.up(RULES), sandboxes.up(RULES)
    a1 = fetch(lab, a, "https://allowed.test/echo")
    b1 = fetch(lab, b, "https://allowed.test/echo")  # a's idle connection waits; b must not get it
    a2 = fetch(lab, a, "https://allowed.test/echo")
    b2 = fetch(lab, b, "https://allowed.test/echo")
    assert port(a1) != port(b1)
    assert port(a2) == port(a1) and port(b2) == port(b1)


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_never_across_authorities_on_the_same_address(lab, sandboxes, scheme):
    """shared.test resolves to allowed.test's address: same IP and port, another authority."""
    box = sandboxes.up(RULES)
    first = fetch(lab, box, f"{scheme}://allowed.test/echo")
    other = fetch(lab, box, f"{scheme}://shared.test/echo")
    assert other["local_addr"] == first["local_addr"]
    assert port(other) != port(first)
    assert (other["sni"], first["sni"]) == (("shared.test", "allowed.test") if scheme == "https" else (None, None))
    again = fetch(lab, box, f"{scheme}://allowed.test/echo")
    assert port(again) == port(first)


def test_never_across_credentials(gateway, lab, sandboxes, secrets_file):
    box = sandboxes.up(RULES, "enforce", "--secrets", str(secrets_file))
    auth = ["-H", f"Authorization: Bearer {box.env['OPENAI_API_KEY']}"]
    plain1 = fetch(lab, box, "https://allowed.test/echo")
    cred1 = fetch(lab, box, "https://allowed.test/echo", *auth)
    assert ["Authorization", f"Bearer {REAL}"] in cred1["headers"]  # substituted, on a connection of its own
    assert port(cred1) != port(plain1)
    cred2 = fetch(lab, box, "https://allowed.test/echo", *auth)
    plain2 = fetch(lab, box, "https://allowed.test/echo")
    assert port(cred2) == port(cred1)
    assert port(plain2) == port(plain1)
    assert REAL not in gateway.stderr()


def test_never_across_policy_revisions(gateway, lab, sandboxes):
    box = sandboxes.up(RULES)
    first = fetch(lab, box, "https://allowed.test/echo")
    gateway.client().replace_policy(box.session, policy_text("changed", RULES))
    second = fetch(lab, box, "https://allowed.test/echo")
    assert port(second) != port(first)


def test_a_connection_the_origin_closed_is_not_handed_out(gateway, lab, sandboxes):
    box = sandboxes.up(RULES)
    before = reuse_count(gateway, "stale")
    first = fetch(lab, box, "https://allowed.test/echo")
    killed = lab.run_in(lab.origin_ns, ["ss", "-K", "-tn", f"( sport = :443 and dport = :{port(first)} )"])
    assert killed.returncode == 0, killed.stderr
    time.sleep(0.2)
    second = fetch(lab, box, "https://allowed.test/echo")  # succeeds, on a fresh connection
    assert port(second) != port(first)
    assert reuse_count(gateway, "stale") - before == 1


def test_a_connection_with_a_response_in_flight_is_not_kept(gateway, lab, sandboxes):
    box = sandboxes.up(RULES)
    first = fetch(lab, box, "https://allowed.test/echo")
    kept = reuse_count(gateway, "kept")
    r = box.run("curl", "-sS", "--http1.1", "-o", "/dev/null", "-m", "1", "--limit-rate", "100k",
                "https://allowed.test/bytes/64m")
    assert r.returncode != 0  # curl gave up mid-download: the connection it used was busy
    (big,) = lab.wait_records(kind="http", count=1, path="/bytes/64m")
    assert port(big) == port(first)  # that download had adopted the idle connection...
    time.sleep(0.3)
    assert reuse_count(gateway, "kept") == kept  # ...and, busy when its client left, it was not kept
    after = fetch(lab, box, "https://allowed.test/echo")
    assert port(after) != port(big)


def test_a_connection_that_answered_1xx_is_not_kept(gateway, lab, sandboxes):
    """mitmproxy takes a 103 Early Hints as a whole exchange; the final answer is still due. A sandbox
    that gave up meanwhile must not leave that connection to the next one, which would get that answer."""
    box = sandboxes.up(RULES)
    first = fetch(lab, box, "https://allowed.test/echo")
    kept = reuse_count(gateway, "kept")
    tag = secrets.token_hex(6)
    r = box.run("curl", "-sS", "--http1.1", "-o", "/dev/null", "-m", "0.7", f"https://allowed.test/early?delay=1.5&t={tag}")
    assert r.returncode != 0  # gave up before the final answer
    (early,) = lab.wait_records(kind="http", count=1, path=f"/early?delay=1.5&t={tag}")
    assert port(early) == port(first)
    time.sleep(0.3)
    assert reuse_count(gateway, "kept") == kept
    tag = secrets.token_hex(6)
    status, body = box.curl(f"https://allowed.test/echo?t={tag}", "--http1.1")
    assert status == 200 and f"/echo?t={tag}" in body, body[:200]  # its own answer, not the late one


def test_a_deleted_session_leaves_no_idle_connection(gateway, lab, sandboxes):
    box = sandboxes.up(RULES)
    first = fetch(lab, box, "https://allowed.test/echo")
    flushed = reuse_count(gateway, "flushed")
    gateway.sandbox_down(box.name)
    sandboxes.names.remove(box.name)
    time.sleep(0.3)  # well inside upstream.reuseIdleSeconds: closed because the session went, not expired
    assert reuse_count(gateway, "flushed") == flushed + 1
    established = lab.run_in(lab.origin_ns, ["ss", "-Htn", "state", "established", f"( sport = :443 and dport = :{port(first)} )"])
    assert established.stdout.strip() == ""


def test_http2_clients_do_not_take_part(lab, sandboxes):
    """An HTTP/2 client's requests to this HTTP/1.1 origin use an upstream connection each (mitmproxy's
    own rule); they work as before and never adopt one."""
    box = sandboxes.up(RULES)
    h1 = fetch(lab, box, "https://allowed.test/echo")
    ports = set()
    for _ in range(2):
        tag = secrets.token_hex(6)
        status, _ = box.curl(f"https://allowed.test/echo?t={tag}", "--http2")
        assert status == 200
        (rec,) = lab.wait_records(kind="http", count=1, path=f"/echo?t={tag}")
        ports.add(port(rec))
    assert port(h1) not in ports and len(ports) == 2


def test_parallel_connections_each_get_their_own_answer(lab, sandboxes):
    """Twelve connections at once, some finishing while others start: idle connections are handed on
    between them, and every request still gets the answer to itself."""
    box = sandboxes.up(RULES)
    fetch(lab, box, "https://allowed.test/echo")
    tags = [secrets.token_hex(6) for _ in range(12)]
    r = box.python(f"""
        import os, ssl, threading, urllib.request
        ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
        good = []
        def one(tag):
            with urllib.request.urlopen("https://allowed.test/echo?t=" + tag, context=ctx, timeout=5) as resp:
                good.append(resp.status == 200 and ("/echo?t=" + tag) in resp.read().decode())
        threads = [threading.Thread(target=one, args=(t,)) for t in {tags!r}]
        for t in threads: t.start()
        for t in threads: t.join()
        print(sum(good))
    """)
    assert r.stdout.strip() == "12", (r.stdout, r.stderr)
    recs = [lab.wait_records(kind="http", count=1, path=f"/echo?t={t}") for t in tags]
    assert [len(r) for r in recs] == [1] * 12  # each reached the origin exactly once


def test_connection_close_from_the_sandbox_is_hop_by_hop(lab, sandboxes):
    """Python's urllib sends `Connection: close` on every request: the sandbox's connection closes after
    the response as asked, and that response says so; the origin never sees the header, and the
    upstream connection is kept."""
    box = sandboxes.up(RULES)
    tags = [secrets.token_hex(6) for _ in range(3)]
    r = box.python(f"""
        import os, socket, ssl
        ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
        for tag in {tags!r}:
            s = ctx.wrap_socket(socket.create_connection(("allowed.test", 443), timeout=5), server_hostname="allowed.test")
            s.sendall(f"GET /echo?t={{tag}} HTTP/1.1\\r\\nHost: allowed.test\\r\\nConnection: close\\r\\n\\r\\n".encode())
            data = b""
            while chunk := s.recv(65536):  # until EOF: the gateway closes as asked (else: timeout)
                data += chunk
            head = data.split(b"\\r\\n\\r\\n")[0].lower()
            assert data.startswith(b"HTTP/1.1 200") and b"\\r\\nconnection: close" in head, data[:300]
            s.close()
        print("ok")
    """)
    assert r.stdout.strip() == "ok", r.stderr
    recs = [lab.wait_records(kind="http", count=1, path=f"/echo?t={t}")[0] for t in tags]
    assert len({port(rec) for rec in recs}) == 1
    assert not any(k.lower() == "connection" and v.lower() == "close" for rec in recs for k, v in rec["headers"])


def test_the_explicit_proxy_reuses_inside_connect_tunnels(gateway, lab, tmp_path):
    """A provider sandbox going through the explicit proxy (HTTPS_PROXY with the session's credentials)
    opens a CONNECT tunnel per request: the tunnels of one session share the idle upstream connection."""
    from gateway.client import create_sandbox_access, delete_sandbox_access

    tmp_path.chmod(0o755)
    token = (gateway.dir / "control.token").read_text().strip()
    access = create_sandbox_access(f"unix://{gateway.control_sock}", token, "via-proxy", policy_text("p", RULES),
                                   ca_path=str(tmp_path / "ca.pem"))
    (tmp_path / "ca.pem").write_text(access.ca_pem)
    try:
        tags = [secrets.token_hex(6) for _ in range(3)]
        script = "; ".join(f"curl -sS --http1.1 -m 5 -o /dev/null -w '%{{http_code}} ' https://allowed.test/echo?t={t}"
                           for t in tags)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", **access.env}
        r = lab.run_in(lab.gw_ns, ["sh", "-c", script], env=env)
        assert r.stdout.split() == ["200"] * 3, (r.stdout, r.stderr)
        ports = [port(lab.wait_records(kind="http", count=1, path=f"/echo?t={t}")[0]) for t in tags]
        assert len(set(ports)) == 1, ports
    finally:
        delete_sandbox_access(f"unix://{gateway.control_sock}", token, access)
