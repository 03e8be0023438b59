"""A new session's first request: detection time with and without the ahead-of-time compile.

    /work/venv/bin/python bench/first_request.py [--sessions 20] [--delay 0.05]

In process, at the hook: the real Detection addon with a real registry, each
session created with two canaries, its first request `--delay` seconds later
(the sandbox starting), through `Detection.requestheaders` (a real mitmproxy
flow). Without the ahead-of-time compile (`SessionDetectors.prepare` off) that
request compiles the session's detector (known values) and waits for it; with
it (the default) the compile ran in the compile thread when the session was
created. Prints the median and worst time of the hook for the first request.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from mitmproxy.test import tflow

from gateway.addons.detection import Detection
from gateway.addons.refuse import META
from gateway.policy import load_policy_text
from gateway.secrets.backends import SecretStore
from gateway.sessions.registry import SessionRegistry

POLICY = """apiVersion: egressgw.dev/v1alpha1
kind: EgressPolicy
metadata: {name: bench}
spec:
  egress:
    - name: allowed
      hosts: [{matchName: allowed.test}]
"""


def first_requests(n: int, delay: float, ahead: bool) -> list[float]:
    registry = SessionRegistry()
    addon = Detection(registry, SecretStore(), audit=None)
    if not ahead:
        addon.detectors.prepare = lambda session: None

    async def run() -> list[float]:
        addon.running()  # the built-in rules compile in the compile thread: wait for that first
        await asyncio.get_running_loop().run_in_executor(addon.detectors._compiler, lambda: None)
        out = []
        for i in range(n):
            session = registry.create(f"s{i}", load_policy_text(POLICY))
            registry.add_canaries(session.id, [f"canary-{i}-abcdefgh".encode(), f"other-{i}-qrstuvwx".encode()],
                                  ["a", "b"])
            await asyncio.sleep(delay)
            f = tflow.tflow()
            f.request.host, f.request.path, f.response = "allowed.test", "/x?q=1", None
            f.metadata[META] = {"session": session, "host": "allowed.test", "decision": "allow",
                                "reason": "allowed", "rule": "allowed", "port": 443, "path": "/x?q=1"}
            t = time.perf_counter()
            await addon.requestheaders(f)
            out.append((time.perf_counter() - t) * 1e3)
        return out

    return asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--delay", type=float, default=0.05)
    args = ap.parse_args()
    for ahead in (False, True):
        ms = first_requests(args.sessions, args.delay, ahead)
        label = "compiled ahead (default)" if ahead else "compiled on first request"
        print(f"{label:28} first-request detection p50 {statistics.median(ms):6.2f} ms  max {max(ms):6.2f} ms")


if __name__ == "__main__":
    main()
