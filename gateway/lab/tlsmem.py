"""A TLS handshake in memory: Python's ssl as the client, a pyOpenSSL `SSL.Connection` as the server.

The server object is what mitmproxy's `TlsConfig.tls_start_client` makes for a sandbox connection, so
a test or a benchmark can handshake with the gateway's real server side without a socket.
"""

from __future__ import annotations

import ssl
import time

from OpenSSL import SSL


def handshake(server: SSL.Connection, cctx: ssl.SSLContext, server_hostname: str,
              session: ssl.SSLSession | None = None) -> tuple[ssl.SSLObject, float]:
    """Run both sides to completion over memory BIOs, offering `session` for resumption. (the client's
    SSLObject, CPU seconds spent in the server's steps); the client has taken in the server's session
    tickets (`client.session` can resume). Raises what the client raises (e.g. SSLCertVerificationError)."""
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = cctx.wrap_bio(c_in, c_out, server_hostname=server_hostname, session=session)
    client_done = server_done = False
    spent = 0.0
    for _ in range(20):
        if not client_done:
            try:
                client.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
        sent = c_out.read()
        t0 = time.process_time()
        if sent:
            server.bio_write(sent)
        if not server_done:
            try:
                server.do_handshake()
                server_done = True
            except SSL.WantReadError:
                pass
        try:
            answer = server.bio_read(1 << 16)
        except SSL.WantReadError:
            answer = b""
        spent += time.process_time() - t0
        c_in.write(answer)
        if client_done and server_done:
            try:
                client.read(1)  # TLS 1.3: the NewSessionTicket messages after the handshake
            except ssl.SSLWantReadError:
                pass
            return client, spent
    raise AssertionError("handshake did not finish")
