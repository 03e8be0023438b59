"""gateway.upstreamseams: the pieces that do not need a running proxy."""

from __future__ import annotations

import pytest
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import tflow
from OpenSSL import SSL

from gateway import upstreamseams as seams


def _client(mode: str = "transparent", alpn: bytes | None = b"http/1.1"):
    client = tflow.tclient_conn()
    client.proxy_mode = ProxyMode.parse(mode)
    client.alpn = alpn
    return client


def _request(connection: list[str], version: str = "HTTP/1.1"):
    req = tflow.treq()
    req.http_version = version
    for value in connection:
        req.headers.add("Connection", value)
    return req


@pytest.mark.parametrize("connection,version,mode,alpn,hop", [
    (["close"], "HTTP/1.1", "transparent", b"http/1.1", True),
    ([" Close "], "HTTP/1.1", "transparent", None, True),  # plain HTTP: no ALPN
    (["close"], "HTTP/1.0", "transparent", None, False),  # HTTP/1.0 closes anyway
    (["close, upgrade"], "HTTP/1.1", "transparent", None, False),  # other options: left alone
    (["close", "close"], "HTTP/1.1", "transparent", None, False),
    (["keep-alive"], "HTTP/1.1", "transparent", None, False),
    ([], "HTTP/1.1", "transparent", None, False),
    (["close"], "HTTP/1.1", "regular", None, False),  # the explicit proxy does not take part
    (["close"], "HTTP/1.1", "transparent", b"h2", False),
])
def test_which_connection_close_is_hop_by_hop(connection, version, mode, alpn, hop):
    assert seams.close_is_hop_by_hop(_client(mode, alpn), _request(connection, version)) is hop


class _Writer:
    def get_extra_info(self, name, default=None):
        return {"peername": ("198.18.1.10", 443)}.get(name, default)


class _Tls:
    def get_shutdown(self):
        return 0

    def sendall(self, data):  # pragma: no cover - must never be reached through the stand-in
        raise AssertionError("the kept connection's TLS object was used")


def test_the_detached_writer_marks_any_use_but_the_teardown_close():
    w = seams._DetachedWriter(_Writer())
    w.close()
    assert not w.dirty and not w.is_closing() and w.get_extra_info("peername") == ("198.18.1.10", 443)
    w.write(b"")
    assert not w.dirty
    w.write(b"GET / HTTP/1.1\r\n")
    assert w.dirty
    w2 = seams._DetachedWriter(_Writer())
    w2.write_eof()
    assert w2.dirty


def test_the_detached_tls_object_answers_only_the_close_check():
    w = seams._DetachedWriter(_Writer())
    t = seams._DetachedTls(_Tls(), w)
    assert t.get_shutdown() == 0 and not w.dirty
    with pytest.raises(SSL.Error, match="kept for reuse"):
        t.sendall(b"x")
    assert w.dirty
