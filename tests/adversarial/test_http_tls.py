"""HTTP and TLS layer: SNI/Host/:authority disagreement (HTTP/1.1 and HTTP/2), absolute-form targets
(httpjail's bypass), host switching on a kept-alive connection, request smuggling, h2c and odd
upgrades, CONNECT inside the tunnel (sandbox-runtime's relayed CONNECT), ECH, missing SNI or Host,
and an origin whose certificate names another host.
"""

from __future__ import annotations

import pytest

from advcase import Case, curl, params, py, raw, refused, req, run_case, vpy

RULES = """
- name: allowed
  hosts: [{matchName: allowed.test}, {matchName: wrongcert.test}]
  ports: [80, 443]
"""

DENY = refused("host-not-allowed", "sni-host-mismatch", "bad-request", "ip-literal-not-allowed",
               "method-not-allowed")
# mitmproxy refuses these framings itself (400, "refusing to prevent request smuggling attacks") after
# the requestheaders hook; the policy addon records them as bad-request with mitmproxy's reason.
SMUGGLE = refused("bad-request")

H2 = r"""
import os, socket, ssl, sys
import h2.connection, h2.config, h2.events
sni, streams = sys.argv[1], sys.argv[2:]
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
ctx.set_alpn_protocols(["h2"])
s = ctx.wrap_socket(socket.create_connection(("198.18.1.10", 443), timeout=4), server_hostname=sni)
assert s.selected_alpn_protocol() == "h2", s.selected_alpn_protocol()
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
c.initiate_connection()
s.sendall(c.data_to_send())
for i, spec in enumerate(streams):
    authority, path = spec.split("|")
    sid = 1 + 2 * i
    c.send_headers(sid, [(":method", "GET"), (":scheme", "https"), (":authority", authority), (":path", path)],
                   end_stream=True)
    s.sendall(c.data_to_send())
    done = False
    while not done:
        data = s.recv(65536)
        if not data:
            break
        for ev in c.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                print(sid, dict(ev.headers).get(b":status"))
            if isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset, h2.events.ConnectionTerminated)):
                done = True
        s.sendall(c.data_to_send())
"""


def h2(sni: str, *streams: str) -> object:
    return vpy(H2, sni, *streams, user="root")


# A TLS ClientHello carrying an encrypted_client_hello extension (0xfe0d) whose outer, public SNI is a
# cover name the policy does not allow; the inner hello (the real destination) is opaque bytes.
ECH = r"""
import os, socket, ssl, sys
outer = sys.argv[1]
inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
ctx = ssl.create_default_context()
obj = ctx.wrap_bio(inc, out, server_hostname=outer)
try:
    obj.do_handshake()
except ssl.SSLWantReadError:
    pass
hello = bytearray(out.read())
# record(5) handshake(4) version(2) random(32) sid(1+n) suites(2+n) comp(1+n) ext_len(2) exts
i = 5 + 4 + 2 + 32
i += 1 + hello[i]
i += 2 + int.from_bytes(hello[i:i + 2], "big")
i += 1 + hello[i]
ext = b"\xfe\x0d" + (len(b"MARK" * 40) + 0).to_bytes(2, "big") + b"MARK" * 40
hello[i + 2:i + 2] = ext
hello[i:i + 2] = (int.from_bytes(hello[i:i + 2], "big") + len(ext)).to_bytes(2, "big")
hello[3:5] = (int.from_bytes(hello[3:5], "big") + len(ext)).to_bytes(2, "big")
hello[6:9] = (int.from_bytes(hello[6:9], "big") + len(ext)).to_bytes(3, "big")
s = socket.create_connection(("198.18.1.10", 443), timeout=4)
s.sendall(bytes(hello))
try:
    print(s.recv(100)[:10])
except OSError as e:
    print("closed", e)
"""

CL_TE = "POST / HTTP/1.1\\r\\nHost: allowed.test\\r\\nContent-Length: {n}\\r\\n{te}\\r\\n{body}"
SMUGGLED = "0\\r\\n\\r\\nGET /MARK HTTP/1.1\\r\\nHost: denied.test\\r\\n\\r\\n"


def smuggle(te: str, tls: bool = True) -> object:
    body = SMUGGLED
    payload = CL_TE.format(n=4, te=te, body=body)
    return raw(payload, port=443 if tls else 80, sni="allowed.test" if tls else "-")


CASES = [
    # SNI / Host / :authority disagreement
    Case("h1-sni-allowed-host-denied", curl("https://allowed.test/MARK", "-H", "Host: denied.test"), {},
         refused("sni-host-mismatch")),
    Case("h2-sni-allowed-host-denied", curl("--http2", "https://allowed.test/MARK", "-H", "Host: denied.test"), {},
         DENY),
    Case("connect-to-denied-name", curl("https://denied.test/MARK", "--connect-to", "denied.test:443:allowed.test:443"),
         {"sni": "denied.test"}, refused("host-not-allowed")),
    Case("h2-authority-denied", h2("allowed.test", "denied.test|/MARK"), {}, DENY),
    Case("h2-second-stream-switches-authority", h2("allowed.test", "allowed.test|/", "denied.test|/MARK"), {}, DENY),
    Case("h2-authority-with-userinfo", h2("allowed.test", "allowed.test@denied.test|/MARK"), {}, refused("bad-request")),
    # absolute-form targets (httpjail)
    Case("absolute-form-tls", raw(req("allowed.test", path="http://denied.test/MARK"), port=443, sni="allowed.test"),
         {}, DENY),
    Case("absolute-form-https-tls", raw(req("allowed.test", path="https://denied.test/MARK"), port=443,
                                        sni="allowed.test"), {}, DENY),
    Case("absolute-form-plain", raw(req("allowed.test", path="http://denied.test/MARK")), {}, DENY),
    Case("absolute-form-ip-plain", raw(req("allowed.test", path="http://198.18.1.12/MARK")), {}, DENY),
    # host switching on a kept-alive connection
    Case("keepalive-host-switch-tls", raw(req("allowed.test", path="/") + "<PAUSE>" + req("denied.test"), port=443,
                                          sni="allowed.test"), {"host": "denied.test"}, DENY),
    Case("keepalive-host-switch-plain", raw(req("allowed.test", path="/") + "<PAUSE>" + req("denied.test")),
         {"host": "denied.test"}, DENY),
    Case("pipelined-host-switch-plain", raw(req("allowed.test", path="/") + req("denied.test")),
         {"host": "denied.test"}, DENY),
    # request smuggling forms: the smuggled request (to denied.test) must never be parsed as one
    Case("smuggle-cl-te", smuggle("Transfer-Encoding: chunked\\r\\n"), {"host": "denied.test"}, SMUGGLE),
    Case("smuggle-te-xchunked", smuggle("Transfer-Encoding: xchunked\\r\\n"), {"host": "denied.test"}, SMUGGLE),
    Case("smuggle-te-space-before-colon", smuggle("Transfer-Encoding : chunked\\r\\n"), {"host": "denied.test"}, SMUGGLE),
    Case("smuggle-te-chunked-identity", smuggle("Transfer-Encoding: chunked, identity\\r\\n"), {"host": "denied.test"},
         SMUGGLE),
    Case("smuggle-te-tab", smuggle("Transfer-Encoding:\\tchunked\\r\\n"), {"host": "denied.test"}, SMUGGLE),
    Case("smuggle-te-duplicate", smuggle("Transfer-Encoding: chunked\\r\\nTransfer-Encoding: x\\r\\n"),
         {"host": "denied.test"}, SMUGGLE),
    Case("smuggle-duplicate-cl", raw("POST / HTTP/1.1\\r\\nHost: allowed.test\\r\\nContent-Length: 0\\r\\n"
                                     "Content-Length: 44\\r\\n\\r\\nGET /MARK HTTP/1.1\\r\\nHost: denied.test\\r\\n\\r\\n",
                                     port=443, sni="allowed.test"), {"host": "denied.test"}, SMUGGLE),
    Case("smuggle-cl-te-plain", smuggle("Transfer-Encoding: chunked\\r\\n", tls=False), {"host": "denied.test"},
         SMUGGLE),
    # h2c and odd upgrades
    Case("h2c-prior-knowledge-denied-authority", curl("--http2-prior-knowledge", "http://allowed.test/MARK",
                                                      "-H", "Host: denied.test"), {}, DENY),
    Case("h2c-upgrade-denied-host", curl("--http2", "http://denied.test/MARK", "--resolve", "denied.test:80:198.18.1.10"),
         {"host": "denied.test"}, DENY),
    Case("websocket-upgrade-denied-host", raw(req("denied.test", extra="Upgrade: websocket\\r\\nConnection: Upgrade\\r\\n"
                                                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\n"
                                                  "Sec-WebSocket-Version: 13\\r\\n"), port=443, sni="allowed.test"),
         {}, DENY),
    # CONNECT inside the tunnel (sandbox-runtime's relayed CONNECT)
    Case("connect-in-tls-tunnel", raw("CONNECT denied.test:443 HTTP/1.1\\r\\nHost: denied.test:443\\r\\n\\r\\n"
                                      "<PAUSE>GET /MARK HTTP/1.1\\r\\nHost: denied.test\\r\\n\\r\\n",
                                      port=443, sni="allowed.test"), {"host": "denied.test"}, DENY),
    Case("connect-in-plain-http", raw("CONNECT denied.test:443 HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n"
                                      "<PAUSE>GET /MARK HTTP/1.1\\r\\nHost: denied.test\\r\\n\\r\\n"),
         {"host": "denied.test"}, DENY),
    Case("connect-to-allowed-then-denied", raw("CONNECT allowed.test:443 HTTP/1.1\\r\\nHost: allowed.test:443\\r\\n\\r\\n"
                                               "<PAUSE>GET /MARK HTTP/1.1\\r\\nHost: denied.test\\r\\n\\r\\n"),
         {"host": "denied.test"}, DENY),
    # ECH, missing SNI, missing Host
    Case("ech-outer-sni-cover-name", py(ECH, "cover.denied.test", user="root"), {}, refused("host-not-allowed")),
    Case("no-sni-host-denied", raw(req("denied.test"), port=443, sni="none"), {}, DENY),
    Case("no-sni-no-host", raw("GET /MARK HTTP/1.0\\r\\n\\r\\n", port=443, sni="none"), {}, refused()),
    Case("plain-no-host", raw("GET /MARK HTTP/1.0\\r\\n\\r\\n"), {}, refused()),
    Case("plain-empty-host", raw(req("")), {}, refused()),
    # an allowed name whose origin presents a certificate for another name: nothing is sent to it
    Case("origin-wrong-certificate", curl("https://wrongcert.test/MARK"), {"kind": "http", "host": "wrongcert.test"},
         {"event": "http", "dest_host": "wrongcert.test", "detail": lambda d: bool(d) and "ertificate" in d}),
]


@pytest.fixture(scope="module")
def box(sandboxes):
    return sandboxes.up(RULES)


@pytest.mark.parametrize("case", params(CASES))
def test_http_tls_attack_is_refused(case, box, lab, leak_counter):
    run_case(case, box, lab, leak_counter)
