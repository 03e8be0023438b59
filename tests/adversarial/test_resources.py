"""Bounded memory and timeouts under hostile traffic, end to end.

Session A attacks the gateway from its sandbox with a real client (raw sockets, the `h2` package
for frames): a gzip bomb, a chunked body of a million 1-byte chunks, HTTP/2 rapid reset
(CVE-2023-44487) and CONTINUATION floods, an origin answering with 1 or 16 MB of headers, and
slowloris-style trickled heads and bodies. Each test measures the gateway process's RSS
(/proc/<pid>/status VmRSS) before and after, checks the attack was refused or contained and logged,
and that session B, sending ordinary requests during the attack, was served every one of them.
Numbers are printed (run with -s to see them); docs/limits.md has the measured table.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import threading
import time

import pytest

from bystander import during
from gateway.lab import in_netns
from gateway.lab.gateway import LabGateway

RULES = """
- name: allowed
  hosts: [{matchName: allowed.test}]
  ports: [443, 8443]
"""
HEADERS_TIMEOUT, BODY_TIMEOUT = 3, 5
RSS_BUDGET_MB = 64  # growth allowed over an attack (the gateway's baseline is ~100 MB)


@pytest.fixture(scope="module")
def gateway(lab, gateway_env):
    gw = LabGateway(lab, extra_config={"timeouts": {
        "requestHeadersSeconds": HEADERS_TIMEOUT, "requestBodySeconds": BODY_TIMEOUT, "idleSeconds": 60}})
    gw.start(env=gateway_env)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def attacker(sandboxes):
    return sandboxes.up(RULES)


@pytest.fixture(scope="module")
def bystander(sandboxes):
    return sandboxes.up(RULES)


def rss_mb(gateway) -> float:
    status = open(f"/proc/{gateway.proc.pid}/status").read()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def measured(name: str, gateway, bystander, attack, seconds: float = 6.0, budget: float = RSS_BUDGET_MB,
             stalls: bool = False):
    """Run the attack while B is served; RSS before/after; print one line of numbers."""
    before = rss_mb(gateway)
    peak = [before]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb(gateway))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result, b = during(bystander, attack, seconds=seconds, require_all=not stalls)
    finally:
        stop.set()
        sampler.join()
    after = rss_mb(gateway)
    print(f"\n{name}: rss before {before:.1f} MB, peak {peak[0]:.1f} MB, after {after:.1f} MB; "
          f"B {b['ok']}/{b['total']} ok, p50 {b['p50_ms']} ms, max {b['max_ms']} ms", file=sys.stderr)
    assert peak[0] - before < budget, (before, peak[0])
    assert after - before < RSS_BUDGET_MB, (before, after)  # and it is given back
    assert gateway.proc.poll() is None
    if stalls:  # B may have been delayed during the attack; right after it, B is served at once
        t = time.monotonic()
        assert bystander.curl("https://allowed.test/after")[0] == 200
        print(f"{name}: B right after the attack: 200 in {(time.monotonic() - t) * 1000:.0f} ms", file=sys.stderr)
    return result


def vpy(box, code: str, *args: str, timeout: float = 120):
    return box.run(sys.executable, "-c", code, *args, user="root", timeout=timeout)


# -------------------------------------------------------------------------------------------- bodies

GZIP_BOMB = r"""
import http.client, json, os, ssl, zlib
c = zlib.compressobj(9, zlib.DEFLATED, 31)
zero = bytes(1 << 20)
body = b"".join(c.compress(zero) for _ in range(1024)) + c.flush()  # 1 GiB of zeros, ~1 MB gzip
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
conn = http.client.HTTPSConnection("allowed.test", 443, context=ctx, timeout=30)
try:
    conn.request("POST", "/bomb", body=body, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})
    r = conn.getresponse()
    print(json.dumps({"status": r.status, "wire": len(body), "body": r.read().decode(errors="replace")}))
except OSError as e:
    print(json.dumps({"status": 0, "wire": len(body), "error": type(e).__name__}))
"""


def test_gzip_bomb_is_refused_not_inflated(gateway, attacker, bystander, lab):
    # Detection inflates at most 64 MiB of a part (gateway.detect.decode.Limits.max_output) before it
    # refuses: the peak is bounded by that (plus copies), never by the 1 GiB the bomb holds.
    r = measured("gzip bomb (1 GiB in ~1 MB)", gateway, bystander, lambda: vpy(attacker, GZIP_BOMB), budget=192)
    result = json.loads(r.stdout)
    assert result["status"] in (0, 403), result
    assert not [rec for rec in lab.records(kind="http") if rec.get("path") == "/bomb"]
    events = [e for e in attacker.events(event="http") if e.get("reason") == "body-uninspectable"]
    assert events and events[-1]["decision"] == "deny"


CHUNK_FLOOD = r"""
import json, os, socket, ssl, sys, time
n = int(sys.argv[1])
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
s = ctx.wrap_socket(socket.create_connection(("allowed.test", 443), timeout=15), server_hostname="allowed.test")
s.sendall(b"POST /chunks HTTP/1.1\r\nHost: allowed.test\r\nTransfer-Encoding: chunked\r\n"
          b"Content-Type: application/octet-stream\r\n\r\n")
t = time.monotonic()
block = b"1\r\nz\r\n" * 10000
data = b""
try:
    for _ in range(n // 10000):
        s.sendall(block)
    s.sendall(b"0\r\n\r\n")
    while b"\r\n\r\n" not in data:
        more = s.recv(65536)
        if not more:
            break
        data += more
except (OSError, ssl.SSLError) as e:
    data = data or type(e).__name__.encode()
print(json.dumps({"status": data[:12].decode(errors="replace"), "seconds": round(time.monotonic() - t, 2)}))
"""


def test_a_million_one_byte_chunks(gateway, attacker, bystander, lab):
    # B is served throughout: the gateway parses at most `bodyChunks` + 1 small chunks of a request
    # body (gateway/h1guard.py), however many the sandbox sent while the request waited on a hook
    r = measured("1,000,000 one-byte chunks", gateway, bystander,
                 lambda: vpy(attacker, CHUNK_FLOOD, "1000000", timeout=300), seconds=8)
    result = json.loads(r.stdout)
    print(f"chunk flood: {result}", file=sys.stderr)
    assert not result["status"].endswith("200"), result
    # the gateway closed the attacker's connection: it did not wait for the client to give up (15 s)
    assert result["status"] != "TimeoutError" and result["seconds"] < 5, result
    assert not [rec for rec in lab.records(kind="http") if rec.get("path") == "/chunks" and not rec.get("error")]
    cut = [e for e in attacker.events_since(0, lambda ev: any(e.get("reason") == "limit-body-chunks" for e in ev))
           if e.get("reason") == "limit-body-chunks"]
    assert cut and cut[-1]["decision"] == "deny" and cut[-1]["event"] == "http", cut
    # an upload in 1,000 chunks of 1 kB is served as usual
    r = vpy(bystander, CHUNK_FLOOD.replace('b"1\\r\\nz\\r\\n" * 10000', 'b"3e8\\r\\n" + b"z" * 1000 + b"\\r\\n"'),
            "10000000")
    assert json.loads(r.stdout)["status"].endswith("200"), r.stdout


# --------------------------------------------------------------------------------------------- HTTP/2

H2_CLIENT = r"""
import json, os, socket, ssl, sys, time
import h2.config, h2.connection, h2.events, h2.exceptions
mode, n = sys.argv[1], int(sys.argv[2])
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
ctx.set_alpn_protocols(["h2"])
s = ctx.wrap_socket(socket.create_connection(("allowed.test", 443), timeout=10), server_hostname="allowed.test")
assert s.selected_alpn_protocol() == "h2", s.selected_alpn_protocol()
conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
conn.initiate_connection()
s.sendall(conn.data_to_send())
head = [(":method", "GET"), (":scheme", "https"), (":authority", "allowed.test"), (":path", "/h2-" + mode)]
t = time.monotonic()
closed = None
try:
    if mode == "reset":
        for i in range(n):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, head, end_stream=True)
            conn.reset_stream(sid)
            if i % 100 == 99:
                s.sendall(conn.data_to_send())
        s.sendall(conn.data_to_send())
    elif mode == "data":  # one POST, its body in DATA frames of one byte (raw: past the client's window)
        import struct
        s.sendall(conn.data_to_send())
        block = conn.encoder.encode([(":method", "POST"), *head[1:], ("content-type", "application/octet-stream")])
        frame = lambda t, f, sid, p: struct.pack(">I", len(p))[1:] + bytes([t, f]) + struct.pack(">I", sid) + p
        s.sendall(frame(1, 0x4, 1, block))  # HEADERS, END_HEADERS, no END_STREAM
        data = frame(0, 0, 1, b"z") * 1000
        for _ in range(n // 1000):
            s.sendall(data)
        s.sendall(frame(0, 0x1, 1, b""))  # END_STREAM
    else:  # continuation: one HEADERS without END_HEADERS, then CONTINUATION frames forever
        import struct
        s.sendall(conn.data_to_send())
        block = conn.encoder.encode(head)
        frame = lambda t, f, sid, p: struct.pack(">I", len(p))[1:] + bytes([t, f]) + struct.pack(">I", sid) + p
        s.sendall(frame(1, 0x1, 1, block))  # HEADERS, END_STREAM, no END_HEADERS
        cont = frame(9, 0, 1, b"\x40\x01x\x01y") * 100
        for _ in range(n // 100):
            s.sendall(cont)
except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError) as e:
    closed = type(e).__name__
# what did the gateway say?
s.settimeout(5)
events = []
try:
    while True:
        data = s.recv(65536)
        if not data:
            break
        for ev in conn.receive_data(data):
            events.append(type(ev).__name__)
        s.sendall(conn.data_to_send())
except (OSError, h2.exceptions.ProtocolError, ssl.SSLError) as e:
    closed = closed or type(e).__name__
print(json.dumps({"seconds": round(time.monotonic() - t, 2), "closed": closed,
                  "terminated": "ConnectionTerminated" in events,
                  "responses": events.count("ResponseReceived")}))
"""


def test_http2_rapid_reset(gateway, attacker, bystander, lab):
    # gateway/h2guard.py: resets of streams still served count against streamResetsPerSecond (100/s, burst
    # 200); past it the connection is closed (GOAWAY ENHANCE_YOUR_CALM) before the rest of it is read. So
    # the gateway holds at most a burst of flows, not 20,000, and B is not kept waiting.
    start = len(attacker.events())
    r = measured("HTTP/2 rapid reset (20,000 streams)", gateway, bystander,
                 lambda: vpy(attacker, H2_CLIENT, "reset", "20000"))
    result = json.loads(r.stdout)
    events = attacker.events_since(start)
    served = [e for e in events if e["event"] == "http" and e.get("url") == "https://allowed.test/h2-reset"]
    at_origin = [x for x in lab.records(kind="http") if x.get("path") == "/h2-reset"]
    print(f"rapid reset: {result}; flows in the gateway: {len(served)}; origin requests: {len(at_origin)}",
          file=sys.stderr)
    assert result["closed"] or result["terminated"], result  # the gateway ended the connection
    # and closed its socket: the client's last read ended in EOF or a reset, not its 5 s timeout (the
    # socket once stayed open after the GOAWAY, the attacker still connected; gateway/h2guard.py)
    assert result["closed"] != "TimeoutError" and result["seconds"] < 10, result
    # a burst of 200 resets, refilled at 100/s while the attack lasted, and not one flow more
    assert 0 < len(served) <= 200 + 100 * (result["seconds"] + 1), len(served)
    # each one refused, or ended by an error its detail names (the reset, the close): none ran its course
    assert all(e["decision"] == "deny" or e.get("detail") for e in served), [e for e in served if not e.get("detail")][:3]
    # what may reach the origin is bounded by what entered (measured: 0; a flow decided before its reset
    # was handled could in principle open its upstream stream first)
    assert len(at_origin) <= len(served), (len(at_origin), len(served))
    [closed] = [e for e in events if e["event"] == "connect" and e.get("reason") == "limit-stream-resets"]
    assert closed["decision"] == "deny" and closed["dest_host"] == "allowed.test"


def test_http2_tiny_data_frames(gateway, attacker, bystander, lab):
    start = len(attacker.events())
    r = measured("HTTP/2 body in 1,000,000 one-byte DATA frames", gateway, bystander,
                 lambda: vpy(attacker, H2_CLIENT, "data", "1000000", timeout=300), seconds=8)
    result = json.loads(r.stdout)
    print(f"tiny DATA frames: {result}", file=sys.stderr)
    assert result["closed"] or result["terminated"], result
    assert result["closed"] != "TimeoutError" and result["seconds"] < 10, result
    assert not [x for x in lab.records(kind="http") if x.get("path") == "/h2-data" and not x.get("error")]
    events = attacker.events_since(start, lambda ev: any(e.get("reason") == "limit-body-chunks" for e in ev))
    assert any(e.get("reason") == "limit-body-chunks" and e["decision"] == "deny" for e in events), [
        {k: e.get(k) for k in ("event", "decision", "reason", "detail", "url")} for e in events]


def test_http2_continuation_flood(gateway, attacker, bystander):
    r = measured("HTTP/2 CONTINUATION flood (100,000 frames)", gateway, bystander,
                 lambda: vpy(attacker, H2_CLIENT, "continuation", "100000"))
    result = json.loads(r.stdout)
    print(f"continuation flood: {result}", file=sys.stderr)
    assert result["closed"] or result["terminated"], result  # h2 gives up after 64 CONTINUATIONs
    assert result["responses"] == 0


# ------------------------------------------------------------------------------ giant upstream headers


def _giant_header_origin(lab, size: int):
    """A TLS origin on allowed.test:8443 (inside the origin namespace) answering with `size` bytes of
    headers. Returns the listener and what it saw: (bytes of head it got out before the gateway
    stopped reading, seconds from the request to the connection's end) per request."""
    cert, key = lab.ca.issue(["allowed.test"], lab.work, "giant-allowed")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    addr = lab.hosts["allowed.test"]
    listener = in_netns(lab.origin_ns, socket.create_server, (addr, 8443))
    served: list[tuple[int, float]] = []

    def serve():
        listener.settimeout(60)
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            try:
                with ctx.wrap_socket(raw, server_side=True) as conn:
                    conn.settimeout(10)
                    conn.recv(65536)
                    t0 = time.monotonic()
                    line = b"X-Big-%06d: " % 0 + b"h" * 50 + b"\r\n"
                    head = b"HTTP/1.1 200 OK\r\n" + b"".join(
                        b"X-Big-%06d: " % i + b"h" * 50 + b"\r\n" for i in range(size // len(line)))
                    data = head + b"Content-Length: 2\r\n\r\nok"
                    sent = 0
                    try:
                        while sent < len(data):
                            sent += conn.send(data[sent : sent + 65536])
                    except OSError:
                        pass  # the gateway closed the connection: what it took is `sent`
                    served.append((sent, time.monotonic() - t0))
            except OSError:
                pass

    threading.Thread(target=serve, daemon=True).start()
    return listener, served


@pytest.mark.parametrize("size", [1 << 20, 16 << 20])
def test_giant_upstream_headers(gateway, attacker, bystander, lab, size):
    """An origin answering with megabytes of headers: mitmproxy would buffer the head whole, without a
    bound ("FIXME: protect against header size DoS"), and parse it in one go. gateway/h1guard.py stops
    reading once the incomplete head passes what `headerBytes` allows: the sandbox gets a 502, the
    origin's connection is closed after a few hundred KB, the refusal is logged, and B is served
    every request meanwhile."""
    listener, served = _giant_header_origin(lab, size)
    try:
        def attack():
            return attacker.run("curl", "-sS", "-m", "20", "-o", "/dev/null", "-w", "%{http_code}",
                                "https://allowed.test:8443/giant")

        r = measured(f"origin sends {size >> 20} MB of headers", gateway, bystander, attack)
    finally:
        try:  # wakes the origin's accept(), so the port is free for the next case
            listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        listener.close()
    print(f"giant headers: client got {r.stdout!r} ({r.stderr.strip()}); origin sent (bytes, seconds) {served}",
          file=sys.stderr)
    assert served, "the origin was never asked"
    assert r.stdout == "502"
    if size > 8 << 20:  # read no further than the limit, plus what the sockets' buffers took
        assert all(sent < 8 << 20 for sent, _s in served), served
    events = [e for e in attacker.events(event="http") if e.get("url", "").endswith(":8443/giant")]
    assert events and events[-1]["decision"] == "deny" and events[-1]["reason"] == "limit-response-header-bytes"


# ------------------------------------------------------------------------------------------- timeouts

TRICKLE = r"""
import json, os, socket, ssl, sys, time
what = sys.argv[1]
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
s = ctx.wrap_socket(socket.create_connection(("allowed.test", 443), timeout=30), server_hostname="allowed.test")
if what == "headers":
    s.sendall(b"GET /slow-head HTTP/1.1\r\nHost: allowed.test\r\n")
    drip = b"X-a: b\r\n"
else:
    s.sendall(b"POST /slow-body HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 1000\r\n\r\n")
    drip = b"z"
t = time.monotonic()
sent = 0
try:
    while time.monotonic() - t < 25:
        s.sendall(drip)
        sent += 1
        s.settimeout(1)
        try:
            if s.recv(4096) == b"":
                break
        except socket.timeout:
            pass
except (OSError, ssl.SSLError):
    pass
print(json.dumps({"closed_after": round(time.monotonic() - t, 1), "sent": sent}))
"""


@pytest.mark.parametrize("what, limit, reason, event", [
    ("headers", HEADERS_TIMEOUT, "timeout-request-headers", "connect"),
    ("body", BODY_TIMEOUT, "timeout-request-body", "http"),
])
def test_trickled_requests_are_cut(gateway, attacker, bystander, lab, what, limit, reason, event):
    r = measured(f"slow {what} (1 drip a second)", gateway, bystander,
                 lambda: attacker.run("python3", "-c", TRICKLE, what, timeout=60), seconds=limit + 3)
    result = json.loads(r.stdout)
    print(f"slow {what}: {result}", file=sys.stderr)
    assert limit - 1 <= result["closed_after"] <= limit + 3, result
    assert [e for e in attacker.events(event=event) if e.get("reason") == reason]
    assert not [x for x in lab.records(kind="http") if x.get("path") == f"/slow-{what.replace('headers', 'head')}"
                and not x.get("error")]


def test_an_idle_keepalive_connection_is_closed_but_a_busy_one_is_not(gateway, attacker):
    r = attacker.python(f"""
        import http.client, os, ssl, time
        ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
        c = http.client.HTTPSConnection("allowed.test", 443, context=ctx, timeout=10)
        for i in range(6):  # a request every second for longer than the headers timeout: kept open
            c.request("GET", "/busy"); r = c.getresponse(); r.read()
            assert r.status == 200
            time.sleep(1)
        sock = c.sock
        time.sleep({HEADERS_TIMEOUT} + 2)  # idle longer than the timeout: closed by the gateway
        sock.settimeout(2)
        print("closed" if sock.recv(1) == b"" else "open")
    """)
    assert r.returncode == 0 and r.stdout.strip() == "closed", r.stdout + r.stderr
