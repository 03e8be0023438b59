"""Small clients for talking to the lab from inside its gateway namespace.

Everything connects to literal lab addresses: no name is ever resolved by the
system resolver.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from typing import Any

from gateway.lab import Lab


def tls_context(lab: Lab, *, verify: bool = True, alpn: tuple[str, ...] = ("h2", "http/1.1")) -> ssl.SSLContext:
    """Trusts the lab CA; offers h2 by default (the lab origin must pick http/1.1)."""
    ctx = ssl.create_default_context(cafile=str(lab.ca_cert))
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def connect(lab: Lab, addr: str, port: int, *, timeout: float = 5.0) -> socket.socket:
    """A TCP connection from the gateway namespace."""
    return lab.call_in(lab.gw_ns, socket.create_connection, (addr, port), timeout=timeout)


def tls_connect(
    lab: Lab,
    addr: str,
    port: int = 443,
    *,
    sni: str | None,
    verify: bool = True,
    alpn: tuple[str, ...] = ("h2", "http/1.1"),
) -> ssl.SSLSocket:
    ctx = tls_context(lab, verify=verify, alpn=alpn)
    if sni is None:
        ctx.check_hostname = False
    raw = connect(lab, addr, port)
    try:
        return ctx.wrap_socket(raw, server_hostname=sni)
    except BaseException:
        raw.close()
        raise


def request(
    lab: Lab,
    host: str,
    method: str = "GET",
    path: str = "/",
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    tls: bool = True,
    addr: str | None = None,
    port: int | None = None,
    sni: str | None | type = ...,  # ... = same as host
    verify: bool = True,
    alpn: tuple[str, ...] = ("h2", "http/1.1"),
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP(S) request to ``host`` at its lab address; ``(status, headers, body)``."""
    addr = addr or lab.hosts.get(host) or lab.hosts["allowed.test"]
    port = port or (443 if tls else 80)
    if tls:
        sock: socket.socket = tls_connect(lab, addr, port, sni=host if sni is ... else sni, verify=verify, alpn=alpn)  # type: ignore[arg-type]
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(host, port)
    else:
        sock = connect(lab, addr, port)
        conn = http.client.HTTPConnection(host, port)
    conn.sock = sock
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def request_json(lab: Lab, host: str, method: str = "GET", path: str = "/echo", **kw: Any) -> Any:
    status, _, data = request(lab, host, method, path, **kw)
    assert status == 200, (status, data)
    return json.loads(data)


def raw_exchange(lab: Lab, addr: str, port: int, data: bytes, *, tls_sni: str | None = None) -> bytes:
    """Send raw bytes (then half-close, for plain TCP), read until the server closes (or 3 s pass)."""
    sock: socket.socket = (
        tls_connect(lab, addr, port, sni=tls_sni) if tls_sni else connect(lab, addr, port)
    )
    sock.settimeout(3)
    try:
        sock.sendall(data)
        if not tls_sni:
            sock.shutdown(socket.SHUT_WR)
        out = bytearray()
        while True:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, socket.timeout):
                break
            if not chunk:
                break
            out += chunk
        return bytes(out)
    finally:
        sock.close()
