"""The recording origin, reached from the lab's gateway namespace."""

from __future__ import annotations

import json
import socket
import ssl
import time
import uuid

import pytest

from gateway.lab import decode_body, header
from labutil import connect, raw_exchange, request, request_json, tls_connect

pytestmark = pytest.mark.netns


def token() -> str:
    return uuid.uuid4().hex[:12]


def test_https_request_recorded_with_sni(lab):
    t = token()
    status, headers, body = request(lab, "allowed.test", "GET", f"/{t}?q=1", headers={"X-Test": t})
    assert status == 200 and body == b"hello from allowed.test\n"
    assert headers["x-lab-local"] == f"{lab.hosts['allowed.test']}:443"
    assert headers["x-lab-sni"] == "allowed.test"
    (rec,) = lab.records(kind="http", path=f"/{t}?q=1")
    assert rec["tls"] is True and rec["sni"] == "allowed.test" and rec["alpn"] == "http/1.1"
    assert rec["local_addr"] == lab.hosts["allowed.test"] and rec["local_port"] == 443
    assert rec["peer"] == lab.gw_addr and rec["method"] == "GET" and rec["status"] == 200
    assert header(rec, "x-test") == t and rec["host"] == "allowed.test"
    assert rec["body_len"] == 0


def test_sni_selects_certificate(lab):
    # api.allowed.test has its own certificate; a name under allowed.test gets the wildcard
    for name in ("api.allowed.test", "private.allowed.test", "shared.test", "x.wild.test"):
        s = tls_connect(lab, lab.hosts["allowed.test"], sni=name)  # verifies hostname
        s.close()
    # wrongcert.test: a valid certificate, for another name
    with pytest.raises(ssl.SSLCertVerificationError, match="match|mismatch"):
        tls_connect(lab, lab.hosts["wrongcert.test"], sni="wrongcert.test")
    s = tls_connect(lab, lab.hosts["wrongcert.test"], sni="wrongcert.test", verify=False)
    peer = s.getpeercert(binary_form=True)
    s.close()
    from cryptography import x509

    san = x509.load_der_x509_certificate(peer).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["elsewhere.test"]
    deadline = time.monotonic() + 2
    while not lab.records(kind="tls", sni="wrongcert.test") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lab.records(kind="tls", sni="wrongcert.test")


def test_default_certificate_without_sni(lab):
    s = tls_connect(lab, lab.hosts["other.test"], sni=None)  # CA-verified, no hostname check
    cert = s.getpeercert()
    s.close()
    assert ("DNS", "lab-default.test") in cert["subjectAltName"]
    assert ("IP Address", lab.hosts["other.test"]) in cert["subjectAltName"]
    status, _, _ = request(lab, "other.test", path="/nosni", sni=None)
    assert status == 200
    assert lab.records(kind="http", path="/nosni")[0]["sni"] is None


def test_routes(lab):
    t = token()
    echo = request_json(lab, "other.test", "PUT", f"/echo?t={t}", body=b"\xff\x00binary", tls=False)
    assert echo["method"] == "PUT" and echo["path"] == f"/echo?t={t}" and echo["body_len"] == 8
    assert echo["body_encoding"] == "base64" and echo["tls"] is False
    (rec,) = lab.records(path=f"/echo?t={t}")
    assert decode_body(rec) == b"\xff\x00binary" and rec["local_port"] == 80

    assert request(lab, "allowed.test", path="/status/418")[0] == 418
    assert request(lab, "allowed.test", path="/status/204")[0] == 204
    status, headers, _ = request(lab, "allowed.test", path="/redirect?to=https%3A%2F%2Fdenied.test%2Fx")
    assert status == 302 and headers["location"] == "https://denied.test/x"
    status, _, body = request(lab, "allowed.test", path="/bytes/100000")
    assert status == 200 and len(body) == 100000
    assert len(request(lab, "allowed.test", path="/bytes/1k", tls=False)[2]) == 1024
    assert request_json(lab, "allowed.test", "POST", "/upload", body=b"x" * 5000) == {"received": 5000}
    status, headers, body = request(lab, "allowed.test", "HEAD", "/bytes/77")
    assert status == 200 and body == b"" and headers["content-length"] == "77"
    assert request(lab, "api.allowed.test", path="/", port=4443)[2] == b"hello from api.allowed.test:4443\n"
    assert request(lab, "allowed.test", path="/", port=8000, tls=False)[0] == 200


def test_keepalive_chunked_and_continue(lab):
    t = token()
    s = tls_connect(lab, lab.hosts["allowed.test"], sni="allowed.test")
    f = s.makefile("rb")

    def response():
        status = f.readline()
        length = 0
        while (line := f.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        return status, f.read(length)

    s.sendall(f"GET /{t}/1 HTTP/1.1\r\nHost: allowed.test\r\n\r\n".encode())
    assert response()[0].startswith(b"HTTP/1.1 200")
    s.sendall(
        f"POST /{t}/2 HTTP/1.1\r\nHost: allowed.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n".encode()
    )
    status, body = response()
    assert json.loads(body) == {"received": 11}
    s.sendall(
        f"POST /{t}/3 HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n".encode()
    )
    assert f.readline() == b"HTTP/1.1 100 Continue\r\n" and f.readline() == b"\r\n"
    s.sendall(b"abc")
    assert json.loads(response()[1]) == {"received": 3}
    s.close()
    recs = lab.records(path__contains=f"/{t}/")
    assert [r["path"] for r in recs] == [f"/{t}/1", f"/{t}/2", f"/{t}/3"]
    assert len({r["peer_port"] for r in recs}) == 1  # one connection
    assert recs[1]["body"] == "hello world"


def test_large_body_truncated_in_record(lab):
    t = token()
    assert request_json(lab, "allowed.test", "POST", f"/{t}", body=b"a" * 200_000) == {"received": 200_000}
    (rec,) = lab.records(path=f"/{t}")
    assert rec["body_len"] == 200_000 and rec["body_truncated"] and len(rec["body"]) == 64 * 1024


def test_malformed_request(lab):
    out = raw_exchange(lab, lab.hosts["other.test"], 80, b"NONSENSE\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400")
    out = raw_exchange(
        lab, lab.hosts["other.test"], 80,
        b"POST /smuggle HTTP/1.1\r\nHost: o\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    assert out.startswith(b"HTTP/1.1 400")
    assert lab.records(kind="http", path="/smuggle")[0]["error"]
    # HTTP/1.0 without keep-alive: the server closes after one response
    out = raw_exchange(lab, lab.hosts["other.test"], 80, b"GET /ten HTTP/1.0\r\nHost: other.test\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"hello from other.test\n")


def test_tcp_recorders(lab):
    t = token().encode()
    s = connect(lab, lab.hosts["denied.test"], 22)
    f = s.makefile("rb")
    assert f.readline() == b"SSH-2.0-lab\r\n"
    s.sendall(b"SSH-2.0-client " + t + b"\r\n")
    assert f.read(len(t) + 17) == b"SSH-2.0-client " + t + b"\r\n"  # echoed
    s.close()
    (rec,) = lab.records(kind="tcp", data__contains=t.decode())
    assert rec["local_addr"] == lab.hosts["denied.test"] and rec["local_port"] == 22
    assert rec["peer"] == lab.gw_addr

    for port in (9999, 853, 53):
        addr = lab.foreign_resolver if port in (53, 853) else lab.hosts["other.test"]
        out = raw_exchange(lab, addr, port, b"ping-" + t)
        assert out == b"lab-tcp\nping-" + t
        assert lab.records(kind="tcp", local_addr=addr, local_port=port, data="ping-" + t.decode())


def test_udp_recorders(lab):
    t = token()

    def udp():
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.settimeout(2)
        u.connect((lab.hosts["allowed.test"], 9999))  # connected: only replies from that address count
        u.send(f"udp-{t}".encode())
        echoed = u.recv(100)
        u.close()
        q = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        q.sendto(f"quic-{t}".encode(), (lab.hosts["other.test"], 443))
        q.sendto(f"dns-{t}".encode(), (lab.foreign_resolver, 53))
        q.close()
        return echoed

    assert lab.call_in(lab.gw_ns, udp) == f"udp-{t}".encode()
    recs = lab.wait_records(kind="udp", data__contains=t, count=3)
    got = {(r["local_addr"], r["local_port"], r["data"]) for r in recs}
    assert got == {
        (lab.hosts["allowed.test"], 9999, f"udp-{t}"),
        (lab.hosts["other.test"], 443, f"quic-{t}"),
        (lab.foreign_resolver, 53, f"dns-{t}"),
    }
    assert all(r["peer"] == lab.gw_addr for r in recs)
