"""A killed gateway restarts under its supervisor (scripts/supervise) and its sandbox has no egress in between.

The sandbox probes continuously (every 50 ms, fresh connections): an allowed host, a denied host by name and
by address. The gateway is SIGKILLed; the supervisor restarts it; the session comes back from the SQLite
store. Every probe either failed/was refused or, once the gateway is back, was governed by the policy:
no denied probe ever got an answer, nothing reached a denied origin, and no packet went around the gateway."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.errors import ControlAPIError
from gateway.lab.gateway import LabGateway
from gateway.lab.harness import Sandboxes

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = "- name: allowed\n  hosts: [{matchName: allowed.test}]\n"

PROBE = r"""
import json, os, socket, ssl, sys, threading, time
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
raw = ssl.create_default_context(); raw.check_hostname = False; raw.verify_mode = ssl.CERT_NONE
def get(host, addr, context=ctx):
    # by address with the name as SNI and Host: no DNS in the way, so each probe is bounded by its timeouts
    try:
        s = socket.create_connection((addr, 443), timeout=0.5)
        s = context.wrap_socket(s, server_hostname=host)
        s.settimeout(1)
        s.sendall(b"GET /probe HTTP/1.1\r\nHost: " + host.encode() + b"\r\nConnection: close\r\n\r\n")
        head = s.recv(64).decode("latin-1")
        s.close()
        return int(head.split()[1]) if head.startswith("HTTP/") else "no-http"
    except Exception as e:
        return type(e).__name__
end = time.monotonic() + float(sys.argv[1])
names = []
def resolve():  # DNS of the denied name, in its own thread (a resolver timeout lasts seconds)
    while time.monotonic() < end:
        try:
            names.append((time.time(), socket.gethostbyname("denied.test")))
        except OSError as e:
            names.append((time.time(), type(e).__name__))
        time.sleep(0.05)
threading.Thread(target=resolve, daemon=True).start()
out = []
print("probing", flush=True)
while time.monotonic() < end:
    out.append((time.time(), get("allowed.test", "198.18.1.10"), get("denied.test", "198.18.1.12"),
                get("denied.test", "198.18.1.12", raw)))
    time.sleep(0.05)
print(json.dumps({"http": out, "dns": names}))
"""


def healthy(gw) -> bool:
    try:
        return gw.client().health().get("status") == "ok"
    except ControlAPIError:
        return False


@pytest.fixture(scope="module")
def supervised(lab, tmp_path_factory):
    gw = LabGateway(lab, name="supervised")  # restarted 2 s after a failure: a window to probe in
    log = open(gw.dir / "supervise.stderr", "ab")
    sup = subprocess.Popen([*gw._enter(), "bash", str(ROOT / "scripts" / "supervise"), "--delay", "2", "--",
                            sys.executable, "-m", "gateway", "run", "--config", str(gw.config_path)],
                           stdout=log, stderr=log, start_new_session=True, env=dict(os.environ))
    deadline = time.monotonic() + 30
    while not healthy(gw):
        assert sup.poll() is None and time.monotonic() < deadline, (gw.dir / "supervise.stderr").read_text()
        time.sleep(0.1)
    boxes = Sandboxes(gw, tmp_path_factory.mktemp("policies"))
    yield gw, sup, boxes
    boxes.cleanup()
    os.killpg(sup.pid, signal.SIGTERM)
    try:
        sup.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(sup.pid, signal.SIGKILL)
    log.close()


def gateway_pid(sup) -> int:
    out = subprocess.run(["pgrep", "-P", str(sup.pid)], capture_output=True, text=True).stdout.split()
    assert len(out) == 1, out
    return int(out[0])


def test_killed_gateway_restarts_and_nothing_leaks_in_between(supervised, lab, leak_counter):
    gw, sup, boxes = supervised
    box = boxes.up(ALLOWED)
    assert box.curl("https://allowed.test/")[0] == 200
    lab.clear_records()
    argv = [*gw._enter(), sys.executable, "-m", "gateway", "sandbox", "exec", box.name, "--config",
            str(gw.config_path), "--user", "nobody", "--", "python3", "-c", PROBE, "12"]
    prober = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert prober.stdout.readline().strip() == "probing", prober.stderr.read()
    time.sleep(2)
    old = gateway_pid(sup)
    killed_at = time.time()
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while not (healthy(gw) and gateway_pid(sup) != old):
        assert time.monotonic() < deadline, (gw.dir / "supervise.stderr").read_text()[-3000:]
        time.sleep(0.05)
    back_at = time.time()
    out, err = prober.communicate(timeout=60)
    result = json.loads(out.strip().splitlines()[-1]) if out.strip() else pytest.fail(err)
    probes = result["http"]

    # denied host, by name and by address: never an HTTP answer, before, during or after
    assert not [p for p in probes if isinstance(p[2], int) or isinstance(p[3], int)], probes
    assert result["dns"] and all(not n[1][0].isdigit() for n in result["dns"]), result["dns"]  # never resolved
    assert leak_counter() == 0
    assert not lab.records(kind="http", host="denied.test") and not lab.records(local_addr="198.18.1.12")
    # the allowed host worked before the kill, failed while the gateway was down, and works again after
    before = [p for p in probes if p[0] < killed_at - 0.2]
    during = [p for p in probes if killed_at + 0.1 < p[0] < killed_at + 1.5]  # restart delay: 2 s
    after = [p for p in probes if p[0] > back_at + 0.5]
    assert before and all(p[1] == 200 for p in before), before
    assert during and all(p[1] != 200 for p in during), during
    assert after and all(p[1] == 200 for p in after[-5:]), after
    assert "exited with status 137" in (gw.dir / "supervise.stderr").read_text()
    assert box.curl("https://allowed.test/")[0] == 200  # the session came back from the store


def test_sighup_to_the_supervisor_reaches_the_gateway(supervised):
    gw, sup, _ = supervised
    log = gw.dir / "supervise.stderr"
    pid = gateway_pid(sup)
    os.kill(sup.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "SIGHUP:" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "SIGHUP:" in log.read_text() and "policies reloaded" in log.read_text()
    assert gateway_pid(sup) == pid and healthy(gw)  # reloaded, not restarted
