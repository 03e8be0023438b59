"""The lab CA: files, reuse, and leaves that Python's ssl accepts (in memory, no network)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.lab.ca import make_ca


def handshake(ca_pem, cert, key, server_hostname):
    """A TLS handshake between two SSLObjects over memory BIOs. Raises on failure."""
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    cctx = ssl.create_default_context(cafile=str(ca_pem))
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = cctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    server = sctx.wrap_bio(s_in, s_out, server_side=True)
    done_c = done_s = False
    for _ in range(20):
        if not done_c:
            try:
                client.do_handshake()
                done_c = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        if not done_s:
            try:
                server.do_handshake()
                done_s = True
            except ssl.SSLWantReadError:
                pass
        c_in.write(s_out.read())
        if done_c and done_s:
            return client.getpeercert()
    raise AssertionError("handshake did not finish")


def test_ca_files_and_extensions(tmp_path):
    ca = make_ca(tmp_path)
    assert ca.cert_path == tmp_path / "ca.pem"
    assert ca.key_path == tmp_path / "ca-key.pem"
    assert stat.S_IMODE(os.stat(ca.key_path).st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(ca.cert_path.read_bytes())
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert life > dt.timedelta(days=3640)


def test_leaf_verifies_for_its_sans(tmp_path):
    ca = make_ca(tmp_path / "ca")
    cert, key = ca.issue(["allowed.test", "*.allowed.test"], tmp_path / "certs", "allowed", ips=["198.18.1.10"])
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("198.18.1.10")]

    for name in ("allowed.test", "api.allowed.test", "198.18.1.10"):
        peer = handshake(ca.cert_path, cert, key, name)
        assert ("DNS", "allowed.test") in peer["subjectAltName"]
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(ca.cert_path, cert, key, "other.test")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(ca.cert_path, cert, key, "a.b.allowed.test")  # wildcard covers one label


def test_other_ca_does_not_verify(tmp_path):
    ca1 = make_ca(tmp_path / "one")
    ca2 = make_ca(tmp_path / "two")
    cert, key = ca1.issue(["x.test"], tmp_path / "certs", "x")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(ca2.cert_path, cert, key, "x.test")


def test_reuse(tmp_path):
    ca = make_ca(tmp_path)
    pem = ca.cert_path.read_bytes()
    again = make_ca(tmp_path)
    assert again.cert_path.read_bytes() == pem

    cert, key = ca.issue(["a.test"], tmp_path, "a")
    first = cert.read_bytes()
    assert again.issue(["a.test"], tmp_path, "a")[0].read_bytes() == first
    # different names -> reissued
    assert ca.issue(["a.test", "b.test"], tmp_path, "a")[0].read_bytes() != first

    # a corrupt CA is replaced, and leaves of the old CA are reissued
    ca.key_path.write_text("garbage")
    new = make_ca(tmp_path)
    assert new.cert_path.read_bytes() != pem
    cert, key = new.issue(["a.test", "b.test"], tmp_path, "a")
    handshake(new.cert_path, cert, key, "b.test")
