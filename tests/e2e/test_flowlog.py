"""The flow log under a real gateway: SIGKILL mid-traffic loses no answered flow; verify; restart.

A sandbox client sends a steady stream of requests (allowed and refused) and prints every
answer it gets; the gateway is killed with SIGKILL in the middle. Every flow the client saw
answered must have its record in the log (the record is written before the answer), and
`egressgw log verify` must report at most a torn last line (truncation), never tampering.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest

from gateway.lab.gateway import LabGateway
from gateway.log import reader, verify
from gateway.log.chain import load_key

from gateway.lab.harness import Sandboxes

RULES = """
- name: other-plain-http
  hosts: [{matchName: other.test}]
  ports: [80]
- name: allowed-https
  hosts: [{matchName: allowed.test}]
"""

CLIENT = r"""
import sys, threading, urllib.request, urllib.error
def worker(t):
    errors = 0
    for n in range(100000):
        path = f"/crash/{t}-{n}"
        host = "other.test" if n % 3 else "allowed.test"  # plain HTTP to allowed.test: refused (403)
        try:
            with urllib.request.urlopen(f"http://{host}{path}", timeout=1) as r:
                status = r.status
                r.read()
        except urllib.error.HTTPError as e:
            status = e.code
        except Exception:
            errors += 1
            if errors > 3:
                return
            continue
        errors = 0
        print(f"{host}{path} {status}", flush=True)
threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
for th in threads: th.start()
for th in threads: th.join()
"""


@pytest.fixture(scope="module")
def gw(lab):
    g = LabGateway(lab, name="crashgw").start()
    yield g
    g.stop()


def test_sigkill_mid_traffic_loses_no_answered_flow(gw, tmp_path):
    boxes = Sandboxes(gw, tmp_path)
    try:
        box = boxes.up(RULES)
        out: dict = {}

        def client():
            argv = [*gw._enter(), sys.executable, "-m", "gateway", "sandbox", "exec", box.name, "--config",
                    str(gw.config_path), "--user", "nobody", "--", "python3", "-c", CLIENT]
            out["r"] = subprocess.run(argv, capture_output=True, text=True, timeout=60)

        th = threading.Thread(target=client)
        th.start()
        deadline = time.monotonic() + 20
        # wait until real traffic flows (records appear), then let it run a little
        while time.monotonic() < deadline and len(gw.events(event="http")) < 30:
            time.sleep(0.1)
        time.sleep(0.5)
        gw.stop(signal.SIGKILL)
        th.join(60)
        answered = [line.split() for line in out["r"].stdout.splitlines() if line.strip()]
        print(f"{len(answered)} answered before SIGKILL; {len(gw.events())} events logged")
        assert len(answered) >= 30, out["r"].stderr[-2000:]
        assert {status for _, status in answered} >= {"200", "403"}
        logged = {(e.get("url") or "").removeprefix("http://"): e for e in gw.events(event="http")}
        missing = [what for what, _ in answered if what not in logged]
        assert not missing, f"{len(missing)} answered flows have no record, e.g. {missing[:5]}"
        for what, status in answered:
            assert logged[what]["status"] == int(status)
            assert logged[what]["decision"] == ("allow" if status == "200" else "deny")

        key = load_key(gw.log_key, create=False)
        result = verify.verify([gw.log_path], key)
        assert result.error is None, result.summary()  # a torn tail at most: truncation, not tampering
        assert result.exit_code in (verify.OK, verify.TRUNCATED)
        cli = subprocess.run([sys.executable, "-m", "gateway", "log", "verify", "--key-file", str(gw.log_key),
                              str(gw.log_path)], capture_output=True, text=True)
        assert cli.returncode == result.exit_code and "TAMPERED" not in cli.stdout, cli.stdout + cli.stderr

        # started again, the gateway declares any torn line and carries the chain on
        gw.start()
        r = subprocess.run([*gw._enter(), "true"])
        assert r.returncode == 0
        gw.stop()
        result = verify.verify([gw.log_path], key)
        assert result.exit_code == verify.OK, result.summary()
        assert len(list(reader.iter_records([gw.log_path]))) >= len(answered)
    finally:
        boxes.cleanup()  # `sandbox down` needs no gateway: the namespace goes either way (it leaked one a run)
