"""The detection addon hook by hook, on mitmproxy's test flows, with the real engine."""

from __future__ import annotations

import base64
import gzip
import json
import os
import urllib.parse

import pytest
from mitmproxy import http, websocket
from mitmproxy.test import tflow

from gateway.addons.credentials import Credentials
from gateway.addons.detection import Detection
from gateway.addons.refuse import META
from gateway.exfil.budget import UploadBudgets
from gateway.exfil.split import SplitTracker
from gateway.log import events
from gateway.secrets.backends import SecretStore
from gateway.secrets.model import parse_secret
from gateway.secrets.placeholders import make_placeholder
from gateway.sessions.registry import SessionRegistry

from .helpers import policy, run

REAL = "sk-proj-" + "Q7wz9Lk2" * 6
CANARY = "canary-7f3a9c1e5b2d8046"


def rules(extra: str = "", uploads: bool = False) -> str:
    return (
        "    - name: allowed\n"
        "      hosts: [{matchName: allowed.test}, {matchName: evil.test}]\n"
        + ("      uploads: true\n" if uploads else "")
        + (extra and f"  detection:\n{extra}")
    )


class Audit:
    def __init__(self):
        self.events = []

    def emit(self, event):
        self.events.append(event)


def make(monkeypatch, detection: str = "", mode: str = "enforce", uploads: bool = False):
    monkeypatch.setenv("EGW_UNIT_DETECT", REAL)
    registry = SessionRegistry()
    spec = parse_secret({"name": "KEY", "source": "env://EGW_UNIT_DETECT", "hosts": ["allowed.test"],
                         "parts": ["headers", "query", "body"]})
    text = rules(detection, uploads)
    session = registry.create("s", policy(text, mode=mode), secrets=[(spec, make_placeholder(REAL))])
    registry.add_canaries(session.id, [CANARY.encode()], ["c1"])
    audit = Audit()
    store = SecretStore()
    addon = Detection(registry, store, audit, splits=SplitTracker(), budgets=UploadBudgets())
    return addon, session, Credentials(registry, store, audit)


def flow_for(session, host="allowed.test", path="/x", headers=(), body=b"", method="POST"):
    f = tflow.tflow()
    f.request.method = method
    f.request.host = host
    f.request.path = path
    f.request.headers.clear()
    for k, v in headers:
        f.request.headers.add(k, v)
    f.request.content = body
    if body:
        f.request.headers["content-length"] = str(len(f.request.raw_content))
    f.response = None
    f.metadata[META] = {"session": session, "host": host, "decision": "allow", "reason": "allowed",
                        "rule": "allowed", "port": 443, "path": path}
    return f


def through(addon, f):
    run(addon.requestheaders(f))
    if f.response is None and not f.request.stream:
        run(addon.request(f))
    return f


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


# channel -> request kwargs carrying `value` encoded; each must be found.
CHANNELS = {
    "query-base64": lambda v: {"path": f"/x?d={b64(v)}"},
    "query-hex": lambda v: {"path": f"/x?d={v.encode().hex()}"},
    "path-urlsafe-b64": lambda v: {"path": "/u/" + base64.urlsafe_b64encode(v.encode()).decode().rstrip("=")},
    "header-reversed": lambda v: {"headers": [("X-Trace", v[::-1])]},
    "cookie-b32": lambda v: {"headers": [("Cookie", f"a=1; sid={base64.b32encode(v.encode()).decode()}")]},
    "json-body": lambda v: {"body": json.dumps({"note": b64(v)}).encode(),
                            "headers": [("Content-Type", "application/json")]},
    "form-body": lambda v: {"body": f"a=1&b={urllib.parse.quote(b64(v))}".encode(),
                            "headers": [("Content-Type", "application/x-www-form-urlencoded")]},
    "multipart": lambda v: {"body": (b"--XX\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a\"\r\n\r\n"
                                     + v.encode().hex().encode() + b"\r\n--XX--\r\n"),
                            "headers": [("Content-Type", "multipart/form-data; boundary=XX")]},
    "gzip-body": lambda v: {"body": gzip.compress(b"log line " + b64(v).encode() + b" end"),
                            "headers": [("Content-Encoding", "gzip")]},
}


@pytest.mark.parametrize("channel", sorted(CHANNELS))
@pytest.mark.parametrize("which", ["secret", "canary", "placeholder-b64"])
def test_known_values_are_blocked_in_every_channel(monkeypatch, channel, which):
    addon, session, _ = make(monkeypatch)
    value = {"secret": REAL, "canary": CANARY}.get(which)
    if which == "placeholder-b64":
        value = session.secrets["KEY"].placeholder  # encoded: Credentials would not see it
    f = through(addon, flow_for(session, **CHANNELS[channel](value)))
    assert f.response is not None and f.response.status_code == 403, channel
    body = f.response.get_text()
    assert "known-value" in body and value not in body and "close" not in f.response.headers.get("connection", "")
    info = f.metadata[META]
    assert info["reason"] == "exfiltration" and info["decision"] == "deny" and info["alert"] is True
    labels = {d["label"] for d in info["detections"]}
    assert labels & {"secret:KEY", "canary:c1", "placeholder:KEY"}
    assert all(d["action"] == "block" for d in info["detections"])
    assert value not in json.dumps(info["detections"])


def test_raw_placeholder_for_its_approved_host_is_left_to_credentials(monkeypatch):
    addon, session, creds = make(monkeypatch)
    ph = session.secrets["KEY"].placeholder
    f = through(addon, flow_for(session, headers=[("Authorization", f"Bearer {ph}")]))
    assert f.response is None and "detections" not in f.metadata[META]
    run(creds.request(f))
    assert f.request.headers["Authorization"] == f"Bearer {REAL}"


def test_raw_placeholder_elsewhere_is_refused_by_credentials_not_twice(monkeypatch):
    addon, session, creds = make(monkeypatch)
    f = through(addon, flow_for(session, host="evil.test", headers=[("X-K", session.secrets["KEY"].placeholder)]))
    assert f.response is None
    run(creds.request(f))
    assert f.response.status_code == 403 and f.metadata[META]["reason"] == "placeholder-not-approved"


def test_placeholder_shaped_like_a_key_is_not_a_credential_hit(monkeypatch):
    addon, session, _ = make(monkeypatch)
    ph = session.secrets["KEY"].placeholder  # "sk-proj-egw...": the OpenAI rule's shape
    f = through(addon, flow_for(session, body=json.dumps({"key": ph}).encode(),
                                headers=[("Content-Type", "application/json")]))
    assert f.response is None and "detections" not in f.metadata[META]


def test_clean_requests_pass_untouched(monkeypatch):
    addon, session, _ = make(monkeypatch)
    body = json.dumps({"model": "gpt", "messages": [{"role": "user", "content": "hello " * 50}]}).encode()
    f = through(addon, flow_for(session, path="/v1/chat?x=1", body=body,
                                headers=[("Content-Type", "application/json"), ("User-Agent", "curl/8")]))
    assert f.response is None and "detections" not in f.metadata[META] and f.request.content == body


@pytest.mark.parametrize("where", ["query", "header", "body"])
def test_redact_replaces_the_match_and_forwards(monkeypatch, where):
    addon, session, _ = make(monkeypatch, "    action: redact\n")
    kw = {"query": {"path": f"/x?d={CANARY}&e=1"}, "header": {"headers": [("X-D", f"pre {CANARY} post")]},
          "body": {"body": f"text {CANARY} more".encode()}}[where]
    f = through(addon, flow_for(session, **kw))
    assert f.response is None
    wire = f.request.path + repr(f.request.headers) + f.request.get_text()
    assert CANARY not in wire and "[REDACTED:known-value]" in wire
    assert f.metadata[META]["reason"] == "exfiltration-redacted"
    assert f.request.headers.get("content-length", str(len(f.request.raw_content))) == str(len(f.request.raw_content))


def test_redact_falls_back_to_block_where_the_match_cannot_be_located(monkeypatch):
    addon, session, _ = make(monkeypatch, "    action: redact\n")
    # inside a base64-transfer-encoded multipart part: found in decoded bytes, which have no place on the wire
    body = (b"--XX\r\nContent-Disposition: form-data; name=\"f\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + base64.b64encode(b"notes " + CANARY.encode() + b" end") + b"\r\n--XX--\r\n")
    f = through(addon, flow_for(session, body=body, headers=[("Content-Type", "multipart/form-data; boundary=XX")]))
    assert f.response.status_code == 403
    assert [d["action"] for d in f.metadata[META]["detections"]] == ["block"]


@pytest.mark.parametrize("settings, mode, status, decision", [
    ("    action: alert\n", "enforce", None, "allow"),
    ("", "report", None, "report"),
    ("    rules:\n      known-value: {action: alert}\n", "enforce", None, "allow"),
    ("    rules:\n      known-value: {allow: [{matchName: allowed.test}]}\n", "enforce", None, "allow"),
    ("    enabled: false\n", "enforce", None, "allow"),
])
def test_alert_report_allow_and_off(monkeypatch, settings, mode, status, decision):
    addon, session, _ = make(monkeypatch, settings, mode)
    f = through(addon, flow_for(session, path=f"/x?d={CANARY}"))
    assert (f.response.status_code if f.response else None) == status
    info = f.metadata[META]
    assert info["decision"] == decision
    logged = "allow:" not in settings and "enabled" not in settings
    assert bool(info.get("detections")) == logged
    if logged:
        assert info["alert"] is True and info["detections"][0]["action"] == "alert"


def test_credential_pattern_blocks_and_generic_rule_alerts(monkeypatch):
    addon, session, _ = make(monkeypatch)
    f = through(addon, flow_for(session, body=b"token ghp_" + b"aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5"))
    assert f.response.status_code == 403 and f.metadata[META]["detections"][0]["rule"] == "github-pat"


def test_split_over_three_requests_is_found(monkeypatch):
    addon, session, _ = make(monkeypatch)
    enc = b64(CANARY)
    pieces = [enc[:10], enc[10:20], enc[20:]]
    statuses = []
    for piece in pieces:
        f = through(addon, flow_for(session, path=f"/collect?d={urllib.parse.quote(piece)}", method="GET"))
        statuses.append(f.response.status_code if f.response else 200)
    assert statuses[:2] == [200, 200] and statuses[2] == 403
    det = f.metadata[META]["detections"][0]
    assert det["part"].startswith("split:query:d") and det["offset"] < 0 and det["label"] == "canary:c1"


def test_split_pieces_to_another_host_or_after_the_window_are_not_joined(monkeypatch):
    addon, session, _ = make(monkeypatch, "    splitWindowSeconds: 1\n")
    now = [1000.0]
    addon.splits.clock = lambda: now[0]
    half = len(CANARY) // 2
    through(addon, flow_for(session, path=f"/c?d={CANARY[:half]}", method="GET"))
    f = through(addon, flow_for(session, host="evil.test", path=f"/c?d={CANARY[half:]}", method="GET"))
    assert f.response is None
    now[0] += 5
    f = through(addon, flow_for(session, path=f"/c?d={CANARY[half:]}", method="GET"))
    assert f.response is None


def test_split_memory_is_bounded():
    t = SplitTracker(tail_bytes=64, max_channels=4, max_pairs=8)
    for i in range(100):
        t.feed(f"s{i % 20}", "h", [(f"q{j}", os.urandom(100)) for j in range(10)], 300, 64)
    assert len(t) <= 8
    assert all(len(chs) <= 4 and all(c.size <= 64 for c in chs.values()) for chs in t._pairs.values())


def test_upload_budget_refuses_once_spent(monkeypatch):
    addon, session, _ = make(monkeypatch, "    uploadBudget: {bytes: 1000, windowSeconds: 60}\n")
    f = through(addon, flow_for(session, body=b"a" * 600))
    assert f.response is None
    f = through(addon, flow_for(session, body=b"b" * 600))
    assert f.response.status_code == 403 and f.metadata[META]["reason"] == "upload-budget"


def test_upload_budget_does_not_apply_to_upload_hosts(monkeypatch):
    addon, session, _ = make(monkeypatch, "    uploadBudget: {bytes: 1000, windowSeconds: 60}\n", uploads=True)
    for _ in range(3):
        assert through(addon, flow_for(session, body=b"a" * 600)).response is None


@pytest.mark.parametrize("uploads, blob, hit", [
    (False, os.urandom(70_000), True),
    (True, os.urandom(70_000), False),
    (False, b"plain text line\n" * 5000, False),
    (False, os.urandom(1000), False),  # under highEntropyBytes
])
def test_high_entropy_uploads(monkeypatch, uploads, blob, hit):
    addon, session, _ = make(monkeypatch, uploads=uploads)
    f = through(addon, flow_for(session, body=blob, headers=[("Content-Type", "application/octet-stream")]))
    rules_hit = [d["rule"] for d in f.metadata[META].get("detections", [])]
    assert ("high-entropy-upload" in rules_hit) == hit
    assert (f.response is not None) == hit


def _stream(addon, f, chunks):
    run(addon.requestheaders(f))
    assert callable(f.request.stream)
    out = [f.request.stream(c) for c in chunks] + [f.request.stream(b"")]
    return b"".join(o if isinstance(o, bytes) else b"".join(o) for o in out)


def test_large_body_streams_and_a_secret_midway_cuts_it(monkeypatch):
    addon, session, _ = make(monkeypatch)
    chunk = b"".join(b"line %08d of a clean upload\n" % i for i in range(8192))
    chunks = [chunk] * 8 + [chunk[:1000] + CANARY.encode() + chunk[1000:]] + [chunk] * 8
    f = flow_for(session)
    f.request.content = None
    f.request.headers["content-length"] = str(sum(map(len, chunks)))
    sent = _stream(addon, f, chunks)
    assert CANARY.encode() not in sent and len(sent) < 9 * len(chunk)
    info = f.metadata[META]
    assert info["reason"] == "exfiltration" and info["logged"] and f.error is not None
    event = addon.audit.events[-1]
    assert event["reason"] == "exfiltration" and event["detections"][0]["label"] == "canary:c1"
    assert CANARY not in json.dumps(event)


def test_clean_large_body_streams_through_whole(monkeypatch):
    addon, session, _ = make(monkeypatch)
    chunk = b"".join(b"line %08d of a clean upload\n" % i for i in range(8192))
    chunks = [chunk] * 6
    f = flow_for(session)
    f.request.content = None
    f.request.headers["content-length"] = str(sum(map(len, chunks)))
    assert _stream(addon, f, chunks) == b"".join(chunks)
    assert "detections" not in f.metadata[META]


def test_small_bodies_are_not_streamed(monkeypatch):
    addon, session, _ = make(monkeypatch)
    f = flow_for(session, body=b"x" * 100)
    run(addon.requestheaders(f))
    assert not f.request.stream


def _ws_flow(session, content: bytes, from_client=True):
    f = flow_for(session, method="GET")
    f.websocket = websocket.WebSocketData()
    f.websocket.messages.append(websocket.WebSocketMessage(1, from_client, content))
    return f


@pytest.mark.parametrize("action, dropped, redacted", [("block", True, False), ("redact", False, True),
                                                        ("alert", False, False)])
def test_websocket_messages(monkeypatch, action, dropped, redacted):
    addon, session, _ = make(monkeypatch, f"    action: {action}\n")
    f = _ws_flow(session, json.dumps({"t": b64(CANARY) if action != "redact" else CANARY}).encode())
    run(addon.websocket_message(f))
    msg = f.websocket.messages[-1]
    assert msg.dropped == dropped
    assert ("[REDACTED:known-value]" in msg.text) == redacted
    event = addon.audit.events[-1]
    assert event["method"] == "WEBSOCKET" and event["alert"] is True
    assert event["detections"][0]["action"] == action and CANARY not in json.dumps(event)


def test_websocket_messages_from_the_origin_are_not_scanned(monkeypatch):
    addon, session, _ = make(monkeypatch)
    f = _ws_flow(session, CANARY.encode(), from_client=False)
    run(addon.websocket_message(f))
    assert not f.websocket.messages[-1].dropped and not addon.audit.events


def test_the_log_event_carries_detections_never_values(monkeypatch):
    from gateway.addons.auditor import HttpAudit

    addon, session, _ = make(monkeypatch)
    f = through(addon, flow_for(session, path=f"/leak/{CANARY}?q={CANARY}"))
    event = HttpAudit._event(f, f.metadata[META])
    text = json.dumps(event)
    assert CANARY not in text and event["detections"] and event["reason"] == "exfiltration"
    assert "[REDACTED:known-value]" in event["url"]
    assert set(event["detections"][0]) <= set(events.DETECTION_KEYS)


def test_a_broken_hook_refuses(monkeypatch):
    addon, session, _ = make(monkeypatch)

    def boom(*a, **k):
        raise RuntimeError("engine broke")

    monkeypatch.setattr(addon, "_detectors", boom)
    f = flow_for(session, path="/x")
    run(addon.requestheaders(f))
    assert f.response.status_code == 403


def test_deleted_sessions_are_forgotten(monkeypatch):
    addon, session, _ = make(monkeypatch)
    through(addon, flow_for(session, path="/c?d=abcdef", method="GET"))
    assert session.id in addon.detectors._sessions and len(addon.splits)
    addon.registry.delete(session.id)
    assert session.id not in addon.detectors._sessions and not len(addon.splits)


def test_a_value_in_a_header_name_is_found_and_never_logged(monkeypatch):
    addon, session, _ = make(monkeypatch, "    action: redact\n")
    f = through(addon, flow_for(session, headers=[(f"X-{CANARY}", "1")]))
    assert f.response.status_code == 403  # a name cannot be redacted: refused
    info = f.metadata[META]
    assert info["detections"][0]["part"] == "header-names" and CANARY not in json.dumps(info["detections"])


def test_sandbox_chosen_names_holding_a_value_are_not_logged(monkeypatch):
    addon, session, _ = make(monkeypatch)
    body = f"log {b64(CANARY)} end".encode()  # a form without '=': the field name is the whole text
    f = through(addon, flow_for(session, body=gzip.compress(body), headers=[
        ("Content-Type", "application/x-www-form-urlencoded"), ("Content-Encoding", "gzip")]))
    assert f.response.status_code == 403
    text = json.dumps(f.metadata[META]["detections"]) + f.response.get_text()
    assert b64(CANARY)[:20] not in text and "[?]" in text


def test_generic_rules_alert_by_default(monkeypatch):
    addon, session, _ = make(monkeypatch)
    f = through(addon, flow_for(session, body=b'config: password = "Zq8#vL2!mW9$kR4@xT7^"\n'))
    generic = [d for d in f.metadata[META].get("detections", []) if d["rule"].startswith("generic-")]
    assert generic and all(d["action"] == "alert" for d in generic) and f.response is None


def test_a_deleted_sessions_placeholder_is_not_a_credential(monkeypatch):
    addon, session, _ = make(monkeypatch)
    gone = addon.registry.create("gone", session.policy, secrets=[(session.secrets["KEY"].spec, make_placeholder(REAL))])
    ph = gone.secrets["KEY"].placeholder
    addon.registry.delete(gone.id)
    f = through(addon, flow_for(session, headers=[("Authorization", f"Bearer {ph}")]))
    assert f.response is None and "detections" not in f.metadata[META]


def test_a_value_as_a_query_name_is_not_logged(monkeypatch):
    from gateway.addons.auditor import HttpAudit

    addon, session, _ = make(monkeypatch, "    action: alert\n")
    f = through(addon, flow_for(session, path=f"/x?{CANARY}=1&page=2", method="GET"))
    event = HttpAudit._event(f, f.metadata[META])
    assert CANARY not in json.dumps(event) and event["url"].endswith("/x??=&page=")


@pytest.mark.parametrize("mode, cut", [("enforce", True), ("report", False)])
def test_a_stream_over_the_upload_budget(monkeypatch, mode, cut):
    addon, session, _ = make(monkeypatch, "    uploadBudget: {bytes: 300000, windowSeconds: 60}\n", mode)
    chunk = b"".join(b"line %08d of a clean upload\n" % i for i in range(8192))
    chunks = [chunk] * 6
    f = flow_for(session)
    f.request.content = None
    f.request.headers["content-length"] = "1"  # under the budget as declared: the stream decides
    f.request.headers["transfer-encoding"] = "chunked"
    del f.request.headers["content-length"]
    sent = _stream(addon, f, chunks)
    info = f.metadata[META]
    assert info["reason"] == "upload-budget" and info["alert"] is True
    assert (len(sent) < 300000) == cut and (sent == b"".join(chunks)) == (not cut)


def test_a_high_entropy_stream_is_cut(monkeypatch):
    addon, session, _ = make(monkeypatch)
    chunks = [os.urandom(16384) for _ in range(80)]
    f = flow_for(session)
    f.request.content = None
    f.request.headers["content-length"] = str(16384 * 80)
    sent = _stream(addon, f, chunks)
    assert len(sent) < 16384 * 8 and f.metadata[META]["detections"][0]["rule"] == "high-entropy-upload"
