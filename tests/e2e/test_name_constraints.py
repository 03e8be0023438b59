"""A gateway whose CA is name-constrained (ca.nameConstraints): sandbox clients accept the leaves it mints
for permitted names and reject the leaves for any other name, even one the policy allows."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.lab.gateway import LabGateway
from gateway.lab.harness import Sandboxes

POLICY = "- name: a\n  hosts: [{matchName: allowed.test}]\n- name: o\n  hosts: [{matchName: other.test}]\n"


@pytest.fixture(scope="module")
def constrained(lab, tmp_path_factory):
    gw = LabGateway(lab, name="constrained", extra_config={"ca": {"nameConstraints": ["allowed.test"]}}).start()
    boxes = Sandboxes(gw, tmp_path_factory.mktemp("policies"))
    yield gw, boxes
    boxes.cleanup()
    gw.stop()


def test_only_permitted_names_verify_in_the_sandbox(constrained, lab):
    gw, boxes = constrained
    cert = x509.load_pem_x509_certificate((gw.dir / "ca" / "mitmproxy-ca-cert.pem").read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert ext.critical and x509.DNSName("allowed.test") in ext.value.permitted_subtrees
    box = boxes.up(POLICY)
    assert box.curl("https://allowed.test/")[0] == 200
    assert box.curl("https://api.allowed.test/")[0] != 200  # not in the policy: refused by the gateway anyway
    # other.test is allowed by the policy, but the CA may not vouch for it: curl (OpenSSL) rejects the leaf
    r = box.run("curl", "-sS", "-m", "5", "https://other.test/")
    assert r.returncode == 60 and "certificate" in r.stderr.lower(), (r.returncode, r.stderr)
    r = box.python("""
import os, ssl, urllib.request
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
try:
    urllib.request.urlopen("https://other.test/", context=ctx, timeout=5); print("ok")
except Exception as e:
    print(type(e).__name__, e)
""")
    assert "permitted subtree violation" in r.stdout or "CERTIFICATE_VERIFY_FAILED" in r.stdout, r.stdout + r.stderr



def test_the_sandbox_gets_an_ecdsa_leaf_for_the_name_only(constrained):
    """Transparent mode, HTTP/2 offered: the leaf is ECDSA P-256 (ca.leafKey's default), issued by the
    constrained CA, and names the SNI only (no IP SAN an IP subtree would have to cover)."""
    gw, boxes = constrained
    box = boxes.up(POLICY)
    r = box.python("""
import os, socket, ssl
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
ctx.verify_flags |= ssl.VERIFY_X509_STRICT
ctx.set_alpn_protocols(["h2", "http/1.1"])
with ctx.wrap_socket(socket.create_connection(("allowed.test", 443), timeout=5), server_hostname="allowed.test") as s:
    print(s.version(), s.selected_alpn_protocol())
    print(s.getpeercert(binary_form=True).hex())
""")
    tls, der = r.stdout.strip().splitlines()
    assert tls == "TLSv1.3 h2", r.stdout + r.stderr
    leaf = x509.load_der_x509_certificate(bytes.fromhex(der))
    key = leaf.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    ca_cert = x509.load_pem_x509_certificate((gw.dir / "ca" / "mitmproxy-ca-cert.pem").read_bytes())
    leaf.verify_directly_issued_by(ca_cert)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.DNSName("allowed.test")]
