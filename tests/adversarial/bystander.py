"""Session B: ordinary traffic from a second sandbox while session A attacks the same gateway.

`during(bystander, attack)` runs the attack and B's traffic at once and asserts B was served every
request; it returns the attack's result and B's numbers (requests, successes, latency).
"""

from __future__ import annotations

import json
import sys
import threading

# B: ordinary traffic for `seconds`, one HTTPS request at a time on fresh connections (DNS, TLS, HTTP
# each time). Prints {"ok": n, "total": n, "max_ms": ..., "p50_ms": ...}.
BYSTANDER = r"""
import json, sys, time, urllib.request
end = time.monotonic() + float(sys.argv[1])
ok = total = 0
lat = []
while time.monotonic() < end:
    t = time.monotonic()
    total += 1
    try:
        with urllib.request.urlopen("https://allowed.test/b-" + str(total), timeout=5) as r:
            ok += r.status == 200 and r.read() == b"hello from allowed.test\n"
    except Exception as e:
        print("error", type(e).__name__, e, file=sys.stderr)
    lat.append((time.monotonic() - t) * 1000)
    time.sleep(0.05)
lat.sort()
print(json.dumps({"ok": ok, "total": total, "p50_ms": round(lat[len(lat) // 2], 1), "max_ms": round(lat[-1], 1)}))
"""


def during(bystander, attack, seconds: float = 4.0, require_all: bool = True):
    """Run `attack()` while the bystander sends traffic; (attack's result, bystander's numbers).

    `require_all=False`: B's numbers are measured, not asserted (attacks that stall the gateway's
    single event loop for everyone; docs/limits.md, "Not bounded yet")."""
    out: dict = {}

    def b():
        r = bystander.run("python3", "-c", BYSTANDER, str(seconds), timeout=seconds + 30)
        out["b"] = r

    t = threading.Thread(target=b)
    t.start()
    result = attack()
    t.join()
    r = out["b"]
    assert r.returncode == 0, r.stderr
    numbers = json.loads(r.stdout.strip().splitlines()[-1])
    if require_all:
        assert numbers["total"] >= 5 and numbers["ok"] == numbers["total"], (numbers, r.stderr)
    print(f"bystander: {numbers}", file=sys.stderr)
    return result, numbers
