"""CPU per request of the detection addon's hooks alone (no proxy, no namespaces, no root).

    PYTHONPATH=$PWD python bench/detection_hooks.py [--requests 500] [--rounds 7]

The real addon (`gateway.addons.detection.Detection`) with the real engine, a session with one
secret and one canary, called on mitmproxy test flows the way mitmproxy calls it:
`requestheaders`, then `request`, each awaited on an event loop. Cases: the bench's small POST
(bench/detection_cost.py: 626-byte JSON, Authorization with a random token), the same with the
session's placeholder in Authorization (what an agent sends), and a GET with a query. Prints
process-CPU µs per request (min and median of the rounds), minus the cost of awaiting two
empty coroutines the same way (the event-loop overhead any hook pays).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from mitmproxy.test import tflow  # noqa: E402

import detection_cost  # noqa: E402
from gateway.addons.detection import Detection  # noqa: E402
from gateway.addons.refuse import META  # noqa: E402
from gateway.policy import load_policy_text  # noqa: E402
from gateway.secrets.backends import SecretStore  # noqa: E402
from gateway.secrets.model import parse_secret  # noqa: E402
from gateway.secrets.placeholders import make_placeholder  # noqa: E402
from gateway.sessions.registry import SessionRegistry  # noqa: E402

REAL = "sk-proj-" + "Q7wz9Lk2" * 6
POLICY = """\
apiVersion: egressgw.dev/v1alpha1
kind: EgressPolicy
metadata: {name: hooks}
spec:
  egress:
    - name: api
      hosts: [{matchName: api.bench.test}]
"""


class _Audit:
    def emit(self, event):
        pass


def setup():
    os.environ["EGW_BENCH_HOOKS"] = REAL
    registry = SessionRegistry()
    spec = parse_secret({"name": "KEY", "source": "env://EGW_BENCH_HOOKS", "hosts": ["api.bench.test"]})
    session = registry.create("s", load_policy_text(POLICY), secrets=[(spec, make_placeholder(REAL))])
    registry.add_canaries(session.id, [b"canary-0f1e2d3c4b5a6978"], ["c1"])
    return Detection(registry, SecretStore(), _Audit()), session


def flow(session, method, path, headers, body=b""):
    f = tflow.tflow()
    f.request.method, f.request.host, f.request.path = method, "api.bench.test", path
    f.request.headers.clear()
    for k, v in headers:
        f.request.headers.add(k, v)
    f.request.content = body  # (a test flow comes with a body of its own)
    if body:
        f.request.headers["content-length"] = str(len(body))
    f.response = None
    f.metadata[META] = {"session": session, "host": "api.bench.test", "decision": "allow", "reason": "allowed",
                        "rule": "api", "port": 443, "path": path}
    return f


def cases(session):
    ua = [("Host", "api.bench.test"), *(tuple(h.split(": ", 1)) for h in detection_cost.HEADERS)]
    body = detection_cost.body()
    return {
        "POST 626 B JSON, random token": ("POST", "/", [*ua, tuple(detection_cost.auth_header().split(": ", 1))], body),
        "POST 626 B JSON, placeholder": ("POST", "/", [*ua, ("Authorization", "Bearer " + session.secrets["KEY"].placeholder)],
                                         body),
        "GET with a query": ("GET", "/v1/items?page=2&sort=name&q=report", ua, b""),
    }


def measure(addon, session, spec, n, loop) -> float:
    total = 0.0
    for _ in range(n):
        f = flow(session, *spec)
        t = time.process_time()
        loop.run_until_complete(addon.requestheaders(f))
        loop.run_until_complete(addon.request(f))
        total += time.process_time() - t
        assert f.response is None, f.response.get_text()
    return total / n * 1e6


def overhead(n, loop) -> float:
    async def nothing():
        return None

    t = time.process_time()
    for _ in range(n):
        loop.run_until_complete(nothing())
        loop.run_until_complete(nothing())
    return (time.process_time() - t) / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    addon, session = setup()
    loop = asyncio.new_event_loop()
    specs = cases(session)
    for spec in specs.values():  # warm: compile, caches
        measure(addon, session, spec, 50, loop)
    base = min(overhead(a.requests, loop) for _ in range(a.rounds))
    print(f"event-loop overhead of awaiting two hooks: {base:.0f} us (subtracted below)")
    for name, spec in specs.items():
        runs = sorted(measure(addon, session, spec, a.requests, loop) - base for _ in range(a.rounds))
        print(f"{name:32s} min {runs[0]:6.0f} us  median {statistics.median(runs):6.0f} us per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
