"""The review report of a real run, rendered by headless Chromium; and no secret in any output.

A real gateway and two real sandboxes make allowed, refused, DNS-refused,
credential-using, placeholder-misusing and markup-carrying requests. Then
`egressgw review` writes the report, `egressgw log query` builds its index
and `egressgw log har` exports a session. Chromium (Debian's `chromium`)
renders the report inside an empty network namespace, with a net log that
must show no request made by the page, and the test reads what the page shows.

Artifacts (git-ignored): `artifacts/review/` at the repository root, or
`$EGRESSGW_ARTIFACTS/review/`: report.html, report.png (1280x2000), dom.html,
netlog.json, the HAR. Their paths are printed (`pytest -s` shows them).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
from html import unescape
from pathlib import Path

import pytest
import yaml

from gateway.log.reader import iter_records

pytestmark = pytest.mark.netns

CHROMIUM = shutil.which("chromium")
ROOT = Path(__file__).resolve().parents[2]
REAL = "sk-proj-" + secrets.token_hex(20)
RULES = """
- name: allowed
  hosts: [{matchName: allowed.test}, {matchName: api.allowed.test}]
"""
MARKUP_PATH = "/<svg/onload=alert(1)>"
MARKUP_NAME = "<script>alert(2)</script>.test"

RAW_DNS = """
import socket, struct, sys
name = sys.argv[1]
q = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\\0" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(q, ("198.18.1.10", 53))
print(s.recv(512)[3] & 0x0F)
"""


@pytest.fixture(scope="module")
def artifacts() -> Path:
    base = Path(os.environ.get("EGRESSGW_ARTIFACTS") or ROOT / "artifacts") / "review"
    base.mkdir(parents=True, exist_ok=True)
    return base


@pytest.fixture(scope="module")
def gateway(lab):
    from gateway.lab.gateway import LabGateway

    gw = LabGateway(lab, name="gwreview")
    gw.start(env={"EGW_TEST_REVIEW": REAL})
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def run(gateway, sandboxes, tmp_path_factory):
    """Traffic of two sandboxes; returns them."""
    spec = [{"name": "OPENAI_API_KEY", "source": "env://EGW_TEST_REVIEW", "hosts": [{"matchName": "allowed.test"}]}]
    path = tmp_path_factory.mktemp("secrets") / "secrets.yaml"
    path.write_text(yaml.safe_dump(spec))
    agent = sandboxes.up(RULES, "enforce", "--secrets", str(path))
    quiet = sandboxes.up(RULES)
    ph = agent.env["OPENAI_API_KEY"]
    assert agent.curl("https://allowed.test/")[0] == 200
    assert agent.curl("https://allowed.test/echo", "-H", f"Authorization: Bearer {ph}")[0] == 200  # substituted
    assert agent.curl("https://api.allowed.test/echo", "-H", f"Authorization: Bearer {ph}")[0] == 403  # misuse
    assert agent.run("getent", "hosts", "denied.test").returncode != 0  # DNS refused
    assert agent.curl("https://denied.test/", "--resolve", "denied.test:443:198.18.1.12")[0] == 0  # TLS refused
    assert agent.curl("http://denied.test/", "--resolve", "denied.test:80:198.18.1.12")[0] == 403  # HTTP refused
    assert agent.curl("https://allowed.test" + MARKUP_PATH)[0] in (200, 404)
    assert agent.run("python3", "-c", RAW_DNS, MARKUP_NAME).stdout.strip() == "3"  # NXDOMAIN
    assert quiet.curl("https://allowed.test/")[0] == 200
    return agent, quiet


@pytest.fixture(scope="module")
def outputs(gateway, run, artifacts):
    agent, _ = run
    report = artifacts / "report.html"
    har = artifacts / "session.har"  # one per run, overwritten
    r = gateway.cli("review", str(gateway.log_path), "-o", str(report), timeout=120)
    q = gateway.cli("log", "query", str(gateway.log_path), "--format", "jsonl", timeout=60)
    gateway.cli("log", "har", str(gateway.log_path), "--session", agent.session, "-o", str(har), timeout=60)
    index = gateway.log_path.with_name("." + gateway.log_path.name + ".idx.sqlite")
    assert index.exists()
    print(f"\nreview artifacts: {artifacts}")
    return {"report": report, "har": har, "index": index, "query": q.stdout, "review_stderr": r.stderr}


def chromium(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Headless Chromium in a fresh, empty network namespace: nothing could leave even if it tried."""
    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"egw-chromium-{secrets.token_hex(4)}"
    try:
        return subprocess.run(
            ["unshare", "--net", CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-extensions", f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def page_requests(netlog: Path) -> list[str]:
    """URLs the page asked for. Chromium's own background jobs (update checks, clock) have no origin as
    their initiator; anything the document loads has the document's origin (`null` for file:)."""
    data = json.loads(netlog.read_text())
    names = {v: k for k, v in data["constants"]["logEventTypes"].items()}
    out = []
    for e in data["events"]:
        p = e.get("params") or {}
        if names.get(e["type"]) == "URL_REQUEST_START_JOB" and "url" in p and p.get("initiator") != "not an origin":
            out.append(p.get("url", ""))
    return out


needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/bootstrap installs it)")


@needs_chromium
def test_the_net_log_check_sees_a_page_request(tmp_path):
    """The check below is not vacuous: a page that does load something is caught."""
    page = tmp_path / "fetches.html"
    page.write_text('<html><body><img src="http://198.51.100.7/x.png"><p>x</p></body></html>')
    netlog = tmp_path / "netlog.json"
    r = chromium(f"--log-net-log={netlog}", "--dump-dom", page.as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    assert "http://198.51.100.7/x.png" in page_requests(netlog)


@needs_chromium
def test_report_in_chromium_shows_the_run(gateway, run, outputs, artifacts):
    agent, quiet = run
    report = outputs["report"]
    netlog = artifacts / "netlog.json"
    r = chromium(f"--log-net-log={netlog}", "--dump-dom", report.as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    dom = r.stdout
    (artifacts / "dom.html").write_text(dom)
    shot = artifacts / "report.png"
    shot.unlink(missing_ok=True)
    s = chromium(f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars", report.as_uri())
    assert s.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")

    # No request made by the page (CSP default-src 'none', and nothing in it asks).
    assert page_requests(netlog) == []

    # Independent counts, straight from the log.
    events = [rec.event for rec in iter_records([gateway.log_path])]
    sessions = {e["session"] for e in events if e.get("session")}
    refused = sum(1 for e in events if e.get("decision") == "deny")

    def section(name: str) -> str:
        m = re.search(rf'<section id="{name}">(.*?)</section>', dom, re.S)
        assert m, name
        return m.group(1)

    def card(label: str) -> int:
        m = re.search(rf'<div class="n">([\d,]+)</div><div class="l">{re.escape(label)}</div>', section("summary"))
        return int(m.group(1).replace(",", ""))

    assert card("sessions") == len(sessions) >= 2
    assert card("refused (all kinds)") == refused >= 4
    assert card("alerts and detections") >= 1
    assert card("credentials used") == 1
    assert agent.session in section("sessions") and quiet.session in section("sessions")
    refusals = section("refusals")
    assert "denied.test" in refusals and "host-not-allowed" in refusals
    assert "placeholder-not-approved" in section("detections") and "api.allowed.test" in section("detections")
    creds = section("credentials")
    assert "OPENAI_API_KEY" in creds and "allowed.test" in creds
    assert "denied.test" in section("dns")
    verdict = re.search(r'<div class="verdict (\w+)" id="integrity">(.*?)</div>', dom, re.S)
    assert verdict.group(1) == "ok" and "Log integrity: verified" in verdict.group(2)
    assert re.search(r"OK: \d+ records", verdict.group(2))
    # Markup the sandbox sent is shown as text; the DOM holds no element it tried to create.
    assert MARKUP_NAME.split(".")[0] in unescape(dom)
    assert "<script" not in dom and "onload" not in re.sub(r"&lt;[^&]*&gt;", "", dom.replace("&amp;", "&"))


def test_no_secret_value_in_index_report_har_or_query(gateway, run, outputs):
    agent, _ = run
    texts = {
        "report": outputs["report"].read_bytes(),
        "har": outputs["har"].read_bytes(),
        "query output": outputs["query"].encode(),
        "review stderr": outputs["review_stderr"].encode(),
        "flow log": gateway.log_path.read_bytes(),
    }
    for p in outputs["index"].parent.glob(outputs["index"].name + "*"):
        texts[p.name] = p.read_bytes()
    assert any(b"OPENAI_API_KEY" in t for t in texts.values())  # the name is there: the values are not
    for where, data in texts.items():
        assert REAL.encode() not in data, where
    har = json.loads(texts["har"])
    assert any(e["_egressgw"].get("secrets") for e in har["log"]["entries"])
    assert all(e["request"]["headers"] == [] for e in har["log"]["entries"])
