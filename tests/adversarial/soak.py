"""Soak: N sessions of mixed legitimate and hostile traffic through one real gateway for M minutes.

    sudo PYTHONPATH=. python -m tests.adversarial.soak --sessions 50 --minutes 10

Not run in CI. Builds a lab and a gateway, brings up N sandboxes, then keeps `--workers` clients busy:
each step picks a sandbox and either a legitimate request (https://allowed.test/, must get 200 with the
origin's body) or an attack drawn from the adversarial case tables (host names, HTTP/TLS, network
TCP cases; their MARK must never reach the origin). Every `--every` seconds it prints served requests,
refused attacks, errors (a legitimate request that failed, or an attack whose MARK arrived) and the
gateway's resident memory; at the end a summary (and `--json` writes the series).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from advcase import DROPPED, IPV6_OFF, execute  # noqa: E402

from gateway.lab import Lab  # noqa: E402
from gateway.lab.gateway import LabGateway  # noqa: E402
from gateway.lab.harness import Box, Sandboxes  # noqa: E402
from netns.sandbox import exec_argv  # noqa: E402
from netns.state import Sandbox  # noqa: E402

RULES = """
- name: allowed
  hosts: [{matchName: allowed.test}]
  ports: [80, 443]
"""


def hostile_cases() -> list:
    import test_hostnames
    import test_http_tls
    import test_network

    out = []
    for mod in (test_hostnames, test_http_tls, test_network):
        out += [c for c in mod.CASES if not c.xfail and c.log not in (DROPPED, IPV6_OFF)
                and "rebind" not in c.id and "wrong" not in c.id]
    return out


class FastBox(Box):
    """A Box whose commands start straight in the sandbox (`netns.sandbox.exec_argv`: same namespace,
    user, capability drop and environment as `egressgw sandbox exec`) without a CLI process per command,
    so the soak measures the gateway rather than Python start-up."""

    def __init__(self, box: Box, state: dict):
        super().__init__(box.gw, box.name, box.info)
        self.sb = Sandbox(**{k: v for k, v in state.items() if k in Sandbox.__dataclass_fields__})

    def run(self, *cmd: str, user: str = "nobody", timeout: float = 30):
        import subprocess

        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/tmp", **self.env}
        argv = exec_argv(self.sb, list(cmd), user=user, env=env)
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            return subprocess.CompletedProcess(argv, -9, e.stdout or "", e.stderr or "")


def rss_kb(pid: int) -> int:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--hostile", type=float, default=0.5, help="share of steps that are attacks")
    ap.add_argument("--every", type=float, default=30, help="seconds between report lines")
    ap.add_argument("--json", help="write the series here")
    args = ap.parse_args(argv)

    cases = hostile_cases()
    counts = {"served": 0, "refused": 0, "errors": 0}
    marks: list[str] = []
    lock = threading.Lock()
    series = []
    with Lab() as lab:
        gw = LabGateway(lab).start()
        boxes_mgr = Sandboxes(gw, Path(tempfile.mkdtemp(prefix="egw-soak-")))
        try:
            t_up = time.monotonic()
            boxes = [boxes_mgr.up(RULES) for _ in range(args.sessions)]
            states = {s["name"]: s for s in json.loads(gw.cli("sandbox", "list", "--json").stdout)}
            boxes = [FastBox(b, states[b.name]) for b in boxes]
            print(f"{len(boxes)} sessions up in {time.monotonic() - t_up:.1f}s; {len(cases)} attack kinds", flush=True)
            stop = time.monotonic() + args.minutes * 60
            step = [0]

            def one() -> None:
                box = random.choice(boxes)
                with lock:
                    step[0] += 1
                    n = step[0]
                if random.random() >= args.hostile:
                    status, body = box.curl("https://allowed.test/")
                    ok = status == 200 and body == "hello from allowed.test"
                    with lock:
                        counts["served" if ok else "errors"] += 1
                    return
                case = random.choice(cases)
                mark = f"soak{n}x"
                execute(box, case, {"MARK": mark, "GW": box.info["gateway"]})
                with lock:
                    marks.append(mark)
                    counts["refused"] += 1  # provisional: verified against the origin's records below

            def check_marks() -> None:
                wire = lab.record_file.read_text(errors="replace") if lab.record_file.exists() else ""
                with lock:
                    pending = list(marks)
                    marks.clear()
                leaked = [m for m in pending if m in wire]
                with lock:
                    counts["refused"] -= len(leaked)
                    counts["errors"] += len(leaked)
                lab.clear_records()

            t0 = time.monotonic()
            next_report = t0 + args.every
            with ThreadPoolExecutor(args.workers) as pool:
                running: set = set()
                while time.monotonic() < stop:
                    while len(running) < args.workers:
                        running.add(pool.submit(one))
                    done = {f for f in running if f.done()}
                    for f in done:
                        if f.exception():
                            with lock:
                                counts["errors"] += 1
                    running -= done
                    if time.monotonic() >= next_report:
                        check_marks()
                        row = {"t": round(time.monotonic() - t0), **counts, "gateway_rss_mb": round(rss_kb(gw.proc.pid) / 1024, 1)}
                        series.append(row)
                        print(json.dumps(row), flush=True)
                        next_report += args.every
                    time.sleep(0.02)
            check_marks()
            row = {"t": round(time.monotonic() - t0), **counts, "gateway_rss_mb": round(rss_kb(gw.proc.pid) / 1024, 1)}
            series.append(row)
            alive = gw.proc.poll() is None
            print(f"done: {json.dumps(row)}; gateway alive: {alive}", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(series, indent=1))
            return 0 if counts["errors"] == 0 and alive else 1
        finally:
            boxes_mgr.cleanup()
            gw.stop()


if __name__ == "__main__":
    sys.exit(main())
