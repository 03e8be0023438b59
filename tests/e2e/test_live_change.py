"""Live policy change without loss: a kept-alive connection doing a request every 100 ms keeps working
across a SIGHUP policy reload and a control-API policy replacement that still allow it (zero failed
requests, one TCP connection throughout), while what the new policy denies is refused right after."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from gateway.lab.harness import policy_text

RULE = "- name: {0}\n  hosts: [{{matchName: {0}}}]\n"
ALL_THREE = RULE.format("allowed.test") + RULE.format("other.test") + RULE.format("api.allowed.test")

KEEPALIVE = r"""
import http.client, json, os, ssl, sys, time
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
conn = http.client.HTTPSConnection("allowed.test", 443, context=ctx, timeout=5)
ok, failed, ports, errors = 0, 0, set(), []
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    try:
        conn.request("GET", "/keepalive?n=%d" % ok)
        r = conn.getresponse(); r.read()
        ports.add(conn.sock.getsockname()[1])
        if r.status == 200:
            ok += 1
        else:
            failed += 1; errors.append(r.status)
    except Exception as e:
        failed += 1; errors.append(repr(e)); conn.close()
    time.sleep(0.1)
print(json.dumps({"ok": ok, "failed": failed, "connections": len(ports), "errors": errors[:5]}))
"""


def start_client(gateway, box, seconds: float) -> subprocess.Popen:
    argv = [*gateway._enter(), sys.executable, "-m", "gateway", "sandbox", "exec", box.name,
            "--config", str(gateway.config_path), "--user", "nobody", "--", "python3", "-c", KEEPALIVE, str(seconds)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_reloads_keep_an_allowed_connection_and_refuse_what_is_now_denied(sandboxes, gateway, lab, leak_counter):
    box = sandboxes.up(ALL_THREE)
    assert box.curl("https://other.test/")[0] == 200 and box.curl("https://api.allowed.test/")[0] == 200
    client = start_client(gateway, box, 14)
    time.sleep(2)

    # 1. SIGHUP after editing the policy file: other.test goes, allowed.test stays
    (path,) = sandboxes.tmp.glob(f"{box.name}-*.yaml")  # the file `sandbox up --policy` was given
    path.write_text(policy_text("live", RULE.format("allowed.test") + RULE.format("api.allowed.test")))
    gateway.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "1 session policies reloaded" not in gateway.stderr() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "SIGHUP: 1 session policies reloaded" in gateway.stderr()
    since = time.time()
    assert box.curl("https://other.test/")[0] != 200
    assert box.curl("https://api.allowed.test/")[0] == 200

    # 2. the control API: api.allowed.test goes too
    gateway.client().replace_policy(box.session, policy_text("live", RULE.format("allowed.test")))
    assert box.curl("https://api.allowed.test/")[0] != 200

    out, err = client.communicate(timeout=40)
    result = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"stderr": err}
    assert result.get("failed") == 0, result
    assert result["connections"] == 1, result  # the same kept-alive connection throughout
    assert result["ok"] >= 50, result
    # nothing of the now-denied hosts reached an origin after each reload, and nothing leaked around the gateway
    assert not [r for r in lab.records(kind="http") if r.get("host", "").startswith("other.test") and r["ts"] > since]
    assert leak_counter() == 0
    # each refusal is in the flow log (the DNS step refuses first: the name no longer resolves)
    refused = {e.get("dest_host") or e.get("dns_qname") for e in box.events(decision="deny")}
    assert {"other.test", "api.allowed.test"} <= refused, refused
