"""`workers: 2`: a supervisor and two real worker processes, sandboxes pinned to each.

Each sandbox gets egress per its policy through its own worker's ports; SIGKILL of one
worker refuses its sandbox's connections (nothing leaks past the gateway) while the other
sandbox keeps working; the supervisor restarts the worker and its sandbox works again; a
policy change through the control API reaches a sandbox on the other worker within a second;
every worker writes its own chained flow log and `egressgw log verify` reads them all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time

import pytest

from gateway.lab.gateway import LabGateway
from gateway.lab.harness import Sandboxes

ALLOWED = """
- name: allowed
  hosts: [{matchName: allowed.test}]
"""
OTHER = """
- name: other
  hosts: [{matchName: other.test}]
"""


@pytest.fixture(scope="module")
def gw(lab):
    gw = LabGateway(lab, "workers", workers=2, port_offset=100).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def boxes(gw, tmp_path_factory):
    boxes = Sandboxes(gw, tmp_path_factory.mktemp("policies"))
    a, b = boxes.up(ALLOWED), boxes.up(ALLOWED)
    yield a, b
    boxes.cleanup()


def _until(check, timeout: float, step: float = 0.05) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s")
        time.sleep(step)
    return time.monotonic() - start


def _probe(box, code: str) -> subprocess.Popen:
    """A Python program started inside the sandbox, as nobody, with its CA; it prints "ready" and waits for a line."""
    bundle = box.env["SSL_CERT_FILE"]
    argv = ["ip", "netns", "exec", box.info["netns"], "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
            "env", f"SSL_CERT_FILE={bundle}", "python3", "-c", textwrap.dedent(code)]
    probe = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert probe.stdout.readline().strip() == "ready"
    return probe


def _listening(gw, port: int) -> bool:
    out = gw.lab.run_in(gw.lab.gw_ns, ["ss", "-Hltn", f"sport = :{port}"]).stdout
    return bool(out.strip())


def _workers(gw) -> list[dict]:
    return gw.client().request("GET", "/v1/workers")["workers"]


def test_sandboxes_are_pinned_one_per_worker(gw, boxes):
    a, b = boxes
    assert {a.info["worker"], b.info["worker"]} == {0, 1}  # least sessions: the second goes to the other worker
    for box in boxes:
        assert gw.client().get_session(box.session)["worker"] == box.info["worker"]
    ports = {w["index"]: (w["transparent"], w["dns"]) for w in _workers(gw)}
    assert ports == {0: (gw.TRANSPARENT_PORT, gw.DNS_PORT), 1: (gw.TRANSPARENT_PORT + 1, gw.DNS_PORT + 1)}
    # the redirect of each sandbox points at its worker's ports
    for box in boxes:
        t, d = ports[box.info["worker"]]
        rules = gw.lab.run_in(gw.lab.gw_ns, ["nft", "list", "table", "inet", f"egressgw_{box.name}"]).stdout
        assert f"redirect to :{t}" in rules and f"redirect to :{d}" in rules


def test_each_worker_enforces_its_sandboxes_policy(gw, boxes, lab):
    for box in boxes:
        assert box.curl("https://allowed.test/") == (200, "hello from allowed.test")
        status, _ = box.curl("https://other.test/")
        assert status != 200
        assert box.run("getent", "hosts", "allowed.test").returncode == 0
    # each flow was logged by the worker that served it, in its own file
    for box in boxes:
        k = box.info["worker"]
        path = gw.log_path.with_name(f"flows-w{k}.jsonl")
        assert box.session in path.read_text()


PROBE = """
    import socket, sys, time
    print("ready", flush=True)
    sys.stdin.readline()
    outcomes = []
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        try:
            socket.create_connection(("198.18.0.2", 443), timeout=1).close()
            outcomes.append("connected")
        except ConnectionRefusedError:
            outcomes.append("refused")
        except OSError as e:
            outcomes.append(type(e).__name__)
        time.sleep(0.02)
    print(" ".join(outcomes))
"""
BYSTANDER = """
    import sys, urllib.request
    print("ready", flush=True)
    sys.stdin.readline()
    print(" ".join(str(urllib.request.urlopen("https://allowed.test/", timeout=5).status) for _ in range(5)))
"""


@pytest.mark.parametrize("victim_worker", [1, 0])
def test_killed_worker_fails_closed_and_comes_back(gw, boxes, leak_counter, victim_worker):
    by_worker = {box.info["worker"]: box for box in boxes}
    victim, bystander = by_worker[victim_worker], by_worker[1 - victim_worker]
    pid, port = next((w["pid"], w["transparent"]) for w in _workers(gw) if w["index"] == victim_worker)
    leaked = leak_counter()
    # the probes wait, started, inside the sandboxes; the supervisor is held (SIGSTOP) so the worker stays
    # down while they run, however slow this machine is
    probes = [_probe(victim, PROBE), _probe(bystander, BYSTANDER)]
    os.kill(gw.proc.pid, signal.SIGSTOP)
    try:
        os.kill(pid, signal.SIGKILL)
        # its sockets close once its last thread has exited (the main thread is a zombie a moment earlier)
        _until(lambda: not _listening(gw, port), 5, step=0.005)
        for probe in probes:
            probe.stdin.write("go\n")
            probe.stdin.flush()
        victim_out, bystander_out = (p.communicate(timeout=30)[0].split() for p in probes)
    finally:
        os.kill(gw.proc.pid, signal.SIGCONT)
    assert victim_out and set(victim_out) == {"refused"}, victim_out  # its sandbox: refused, every time
    assert bystander_out == ["200"] * 5  # the other worker's sandbox: unaffected
    assert leak_counter() == leaked  # nothing went past the gateway
    # the supervisor restarts the worker; its sandbox works again
    _until(lambda: next(w for w in _workers(gw) if w["index"] == victim_worker)["up"], 20)
    worker = next(w for w in _workers(gw) if w["index"] == victim_worker)
    assert worker["restarts"] >= 1 and worker["pid"] != pid
    assert victim.curl("https://allowed.test/") == (200, "hello from allowed.test")
    assert leak_counter() == leaked


POLICY_PROBE = """
    import ssl, sys, time, urllib.error, urllib.request
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.monotonic()
    while time.monotonic() - start < 5:
        try:
            urllib.request.urlopen("https://other.test/", timeout=2).read()
            break
        except (urllib.error.URLError, OSError):
            time.sleep(0.01)
    print(time.monotonic() - start)
"""


def test_policy_change_reaches_the_other_worker_within_a_second(gw, boxes):
    box = next(b for b in boxes if b.info["worker"] == 1)
    assert box.curl("https://allowed.test/")[0] == 200
    assert box.curl("https://other.test/")[0] != 200
    probe = _probe(box, POLICY_PROBE)
    gw.client().replace_policy(box.session, _policy("other", OTHER))  # through the supervisor's control API
    probe.stdin.write("go\n")
    probe.stdin.flush()
    out, _ = probe.communicate(timeout=30)
    assert float(out) < 1.0  # the worker took the change from the store within a second
    assert box.curl("https://allowed.test/")[0] != 200


def test_deleted_session_is_refused_on_its_worker(gw, tmp_path):
    boxes = Sandboxes(gw, tmp_path)
    try:
        box = boxes.up(ALLOWED)
        assert box.curl("https://allowed.test/")[0] == 200
        gw.client().delete_session(box.session)
        _until(lambda: box.curl("https://allowed.test/")[0] != 200, 1.5, step=0.05)
    finally:
        boxes.cleanup()


def test_metrics_cover_every_worker(gw, boxes):
    text = gw.metrics()
    assert "egressgw_workers 2.0" in text
    assert "egressgw_workers_up 2.0" in text
    assert "egressgw_worker_restarts_total" in text
    sessions = next(float(line.split()[1]) for line in text.splitlines() if line.startswith("egressgw_active_sessions "))
    assert sessions == len(gw.client().list_sessions())
    allowed = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith("egressgw_requests_total{") and 'action="allow"' in line)
    assert allowed >= 4  # requests both workers served


def test_flow_logs_verify_and_query_across_workers(gw, boxes):
    out = gw.cli("log", "verify", str(gw.log_path)).stdout
    # three chains, each verified: the supervisor's (session events) and one per worker
    assert out.startswith("OK:") and "3 files" in out, out
    for box in boxes:
        query = gw.cli("log", "query", "--session", box.session).stdout
        assert "allowed.test" in query


def _policy(name: str, rules: str) -> str:
    from gateway.lab.harness import policy_text

    return policy_text(name, rules)
