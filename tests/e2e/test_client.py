"""gateway.client against a real lab gateway: the env and CA it returns are all a sandbox needs.

curl and Python, run in the gateway's lab namespace with nothing but that env (as a provider SDK
would pass it), go through the explicit proxy with the session's credentials, trust the gateway's CA,
and have their credential placeholder replaced at the approved host only.
"""

from __future__ import annotations

import secrets
import textwrap

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.lab.harness import policy_text
from gateway.client import CA_VARIABLES, create_sandbox_access, delete_sandbox_access
from gateway.lab.gateway import LabGateway

REAL_KEY = "sk-proj-" + secrets.token_hex(20)
POLICY = policy_text("client", "- name: allowed\n  hosts: [{matchName: allowed.test}]\n")
SECRETS = [{"name": "OPENAI_API_KEY", "source": "env://EGW_CLIENT_KEY", "hosts": ["allowed.test"],
            "format": "Bearer {}"}]
BASE = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}


@pytest.fixture(scope="module")
def gw(lab):
    g = LabGateway(lab, "client-gw", port_offset=30).start(env={"EGW_CLIENT_KEY": REAL_KEY})
    yield g
    g.stop()


@pytest.fixture
def access(gw, tmp_path):
    tmp_path.chmod(0o755)
    token = (gw.dir / "control.token").read_text().strip()
    a = create_sandbox_access(f"unix://{gw.control_sock}", token, "provider-sandbox", POLICY, secrets=SECRETS,
                              ca_path=str(tmp_path / "ca-bundle.pem"))
    (tmp_path / "ca-bundle.pem").write_text(a.ca_pem)
    yield a
    try:
        delete_sandbox_access(f"unix://{gw.control_sock}", token, a)
    except Exception:
        pass


def _run(gw, env: dict, script: str):
    return gw.lab.run_in(gw.lab.gw_ns, ["sh", "-c", script], env={**BASE, **env})


def test_env_and_ca_are_complete_and_hold_no_value(access, gw):
    env = access.env
    assert env["HTTPS_PROXY"] == env["https_proxy"] == env["HTTP_PROXY"] == access.proxy_url
    assert access.proxy_url.startswith(f"http://{access.session_id}:") and access.proxy_url.endswith(
        f"@127.0.0.1:{gw.PROXY_PORT}")
    assert "localhost" in env["NO_PROXY"]
    assert all(env[v] == access.ca_path for v in CA_VARIABLES)
    assert env["OPENAI_API_KEY"] == access.placeholders["OPENAI_API_KEY"] != REAL_KEY
    assert REAL_KEY not in repr(access) and REAL_KEY not in str(env)
    assert access.proxy_url not in repr(access)
    assert "BEGIN CERTIFICATE" in access.ca_pem and "PRIVATE KEY" not in access.ca_pem


def test_curl_and_python_through_the_returned_env(access, gw, lab):
    r = _run(gw, access.env, 'curl -sS -m 5 -H "Authorization: Bearer $OPENAI_API_KEY" https://allowed.test/')
    assert r.stdout.strip() == "hello from allowed.test", r.stderr
    rec = lab.records(kind="http", host="allowed.test")[-1]
    assert any(k.lower() == "authorization" and v == f"Bearer {REAL_KEY}" for k, v in rec["headers"])
    assert gw.events(session=access.session_id, dest_host="allowed.test", decision="allow")
    py = textwrap.dedent("""
        import urllib.request, urllib.error
        try:
            print(urllib.request.urlopen("https://allowed.test/", timeout=5).read().decode().strip())
        except Exception as e:
            print("failed", e)
        try:
            urllib.request.urlopen("https://denied.test/", timeout=5)
            print("denied.test reached")
        except Exception as e:
            print("refused", type(e).__name__)
    """)
    r = _run(gw, access.env, f"python3 -c '{py}'")
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "hello from allowed.test", r.stdout + r.stderr
    assert lines[1].startswith("refused")
    assert not lab.records(host="denied.test")


def test_the_leaf_is_ecdsa_p256_signed_by_the_gateway_ca(access, gw):
    """ca.leafKey's default: Python's ssl, through the explicit proxy (CONNECT), completes a handshake with
    a leaf whose key is ECDSA P-256 (for TLS 1.2 an ECDHE-ECDSA suite), issued by the bundle's CA."""
    py = textwrap.dedent("""
        import base64, http.client, os, ssl, sys, urllib.parse
        p = urllib.parse.urlsplit(os.environ["HTTPS_PROXY"])
        user, password = urllib.parse.unquote(p.username), urllib.parse.unquote(p.password)
        auth = base64.b64encode(f"{user}:{password}".encode()).decode()
        ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
        ctx.maximum_version = getattr(ssl.TLSVersion, sys.argv[1])
        c = http.client.HTTPSConnection(p.hostname, p.port, context=ctx, timeout=5)
        c.set_tunnel("allowed.test", 443, headers={"Proxy-Authorization": "Basic " + auth})
        c.request("GET", "/")
        print(c.getresponse().read().decode().strip())
        print(c.sock.version(), c.sock.cipher()[0])
        print(c.sock.getpeercert(binary_form=True).hex())
    """)
    bundle = x509.load_pem_x509_certificates(access.ca_pem.encode())
    for version in ("TLSv1_2", "TLSv1_3"):
        r = _run(gw, access.env, f"python3 -c '{py}' {version}")
        body, tls, der = r.stdout.strip().splitlines()
        assert body == "hello from allowed.test", r.stdout + r.stderr
        assert tls.startswith(version.replace("_", ".")), tls
        if version == "TLSv1_2":
            assert tls.split()[1].startswith("ECDHE-ECDSA-"), tls
        leaf = x509.load_der_x509_certificate(bytes.fromhex(der))
        key = leaf.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
        leaf.verify_directly_issued_by(next(c for c in bundle if c.subject == leaf.issuer))


def test_without_the_env_nothing_authenticates_and_deleting_ends_it(access, gw):
    token = (gw.dir / "control.token").read_text().strip()
    bare = {v: access.ca_path for v in CA_VARIABLES}
    r = _run(gw, {**bare, "HTTPS_PROXY": f"http://127.0.0.1:{gw.PROXY_PORT}"},
             "curl -sS -m 5 -o /dev/null -w '%{http_connect}' https://allowed.test/")
    assert r.stdout.strip() == "407"
    delete_sandbox_access(f"unix://{gw.control_sock}", token, access)
    r = _run(gw, access.env, "curl -sS -m 5 -o /dev/null -w '%{http_connect}' https://allowed.test/")
    assert r.stdout.strip() == "407"


@pytest.fixture
def internal_network(lab):
    """docs/providers/docker.md with plain namespaces: a 'container' on an internal network whose only
    peer is the gateway (like compose's `internal: true` network), no default route, no resolver."""
    ns, host_if = f"egwdock{secrets.token_hex(2)}", f"egwdk{secrets.token_hex(2)}"
    import subprocess

    def ip(*args, netns=None):
        argv = ["ip", *(["-n", netns] if netns else []), *args]
        subprocess.run(argv, check=True, capture_output=True)

    ip("netns", "add", ns)
    ip("link", "add", host_if, "netns", lab.gw_ns, "type", "veth", "peer", "name", "eth0", "netns", ns)
    ip("addr", "add", "10.250.7.1/30", "dev", host_if, netns=lab.gw_ns)
    ip("link", "set", host_if, "up", netns=lab.gw_ns)
    ip("addr", "add", "10.250.7.2/30", "dev", "eth0", netns=ns)
    ip("link", "set", "eth0", "up", netns=ns)
    ip("link", "set", "lo", "up", netns=ns)
    yield ns
    subprocess.run(["ip", "-n", lab.gw_ns, "link", "del", host_if], capture_output=True)
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_docker_like_recipe_internal_network_only_the_proxy(lab, internal_network, tmp_path):
    tmp_path.chmod(0o755)
    g = LabGateway(lab, "dock-gw", port_offset=40, extra_config={"listen": {"proxy": "10.250.7.1:3128"}}).start()
    try:
        token = (g.dir / "control.token").read_text().strip()
        a = create_sandbox_access(f"unix://{g.control_sock}", token, "container", POLICY,
                                  ca_path=str(tmp_path / "ca.pem"))
        (tmp_path / "ca.pem").write_text(a.ca_pem)
        assert a.proxy_url.endswith("@10.250.7.1:3128")

        def container(script: str):
            return lab.run_in(internal_network, ["sh", "-c", script], env={**BASE, **a.env})

        r = container("curl -sS -m 5 https://allowed.test/")
        assert r.stdout.strip() == "hello from allowed.test", r.stderr
        assert container("curl -sS -m 5 -o /dev/null -w '%{http_connect}' https://denied.test/").stdout == "403"
        # No way around the proxy: no route to the origins, no resolver.
        before = len(lab.records(kind="http"))
        r = container("curl -sS -m 3 --noproxy '*' http://198.18.1.10/")
        assert r.returncode == 7 and len(lab.records(kind="http")) == before  # could not connect
        r = container("ip route get 198.18.1.10")
        assert r.returncode != 0 and "unreachable" in r.stderr.lower()
        r = container("getent hosts allowed.test")
        assert r.returncode != 0
    finally:
        g.stop()
