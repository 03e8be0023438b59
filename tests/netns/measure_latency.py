"""Measure `up` and `down` latency inside a private gateway namespace (root only).

    /work/venv/bin/python tests/netns/measure_latency.py [runs] [background-sandboxes]

In-process: netns.up()/down() called from a thread that entered the test
gateway namespace (what a long-running gateway would see). Per-process: a
fresh `python -c 'import netns; netns.up(...)'` under `nsenter --net`
(what a CLI call costs, interpreter start included).
"""

from __future__ import annotations

import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from netns_testlib import ROOT, Gateway, add_netns, del_netns  # noqa: E402

import netns  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    background = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    tag = secrets.token_hex(3)
    tmp = tempfile.mkdtemp(prefix="egw-bench-")
    g = Gateway(f"t-gw-{tag}", os.path.join(tmp, "state"), f"t{tag}")
    add_netns(g.name)
    try:
        for i in range(background):
            g.up(f"bg{i}")
        ups, downs = [], []
        for _ in range(runs):
            t0 = time.perf_counter()
            g.up("m")
            t1 = time.perf_counter()
            g.down("m")
            t2 = time.perf_counter()
            ups.append((t1 - t0) * 1000)
            downs.append((t2 - t1) * 1000)
        cli_up, cli_down = [], []
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for _ in range(min(runs, 10)):
            for op, acc in (("up", cli_up), ("down", cli_down)):
                args = ", transparent_port=18080, dns_port=15353" if op == "up" else ""
                code = f"import netns; netns.{op}({g.sbname('c')!r}{args}, state_dir={g.state_dir!r})"
                t0 = time.perf_counter()
                subprocess.run(g.enter() + [sys.executable, "-c", code], check=True, env=env)
                acc.append((time.perf_counter() - t0) * 1000)
        print(f"{runs} runs, {background} other sandboxes present, kernel {os.uname().release}")
        for label, xs in (("up (in-process)", ups), ("down (in-process)", downs),
                          ("up (fresh python process)", cli_up),
                          ("down (fresh python process)", cli_down)):
            print(f"  {label:30s} p50 {statistics.median(xs):6.1f} ms   p90 {pct(xs, 90):6.1f} ms"
                  f"   min {min(xs):6.1f}   max {max(xs):6.1f}")
    finally:
        for sb in netns.list_sandboxes(g.state_dir):
            try:
                g.call(netns.down, sb.name, state_dir=g.state_dir)
            except Exception as e:  # noqa: BLE001
                print("cleanup:", e)
        del_netns(g.name)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
