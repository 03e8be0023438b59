"""`sandbox up` / `sandbox down` latency, p50/p99 over N cycles (root; needs ip, nft).

    sudo /work/venv/bin/python bench/sandbox_updown.py [--cycles 50] [--background 0] [--cli 10] [--json FILE]

A throw-away gateway namespace (egwbench-XXXX) and state dir; `netns.up()` /
`netns.down()` are called in-process from a thread inside it (what a
long-lived caller such as an orchestrator sees). `--background K` first makes
K other sandboxes (up's cost in the number of existing sandboxes). `--cli N`
also times N cycles of a fresh `python -m gateway`-style process doing the
same (interpreter start included: what one `egressgw sandbox up` pays before
it talks to the gateway). Everything it made is removed on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import netns  # noqa: E402
from netns.run import in_netns  # noqa: E402

T_PORT, D_PORT = 18080, 15353


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def summary(xs: list[float]) -> dict:
    return {"n": len(xs), "p50_ms": round(pct(xs, 50), 2), "p99_ms": round(pct(xs, 99), 2),
            "min_ms": round(min(xs), 2), "max_ms": round(max(xs), 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=50)
    ap.add_argument("--background", type=int, default=0, help="other sandboxes present while measuring")
    ap.add_argument("--cli", type=int, default=0, help="also time N cycles in fresh Python processes")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    tag = secrets.token_hex(3)
    gw = f"egwbench-{tag}"
    gw_path = f"/run/netns/{gw}"
    tmp = tempfile.mkdtemp(prefix="egw-updown-")
    state = os.path.join(tmp, "state")
    pool = "10.213.0.0/16"
    subprocess.run(["ip", "netns", "add", gw], check=True)
    subprocess.run(["ip", "-n", gw, "link", "set", "lo", "up"], check=True)

    def call(fn, *a, **kw):
        return in_netns(gw_path, fn, *a, **kw)

    def up(name):
        return call(netns.up, name, transparent_port=T_PORT, dns_port=D_PORT, pool=pool, state_dir=state)

    def down(name):
        return call(netns.down, name, state_dir=state)

    result: dict = {"kernel": os.uname().release, "cycles": args.cycles, "background": args.background}
    try:
        for i in range(args.background):
            up(f"b{tag}-{i}")
        up(f"w{tag}")                          # warm-up: imports, libnftables load, first mount
        down(f"w{tag}")
        ups, downs = [], []
        for _ in range(args.cycles):
            t0 = time.perf_counter()
            up(f"m{tag}")
            t1 = time.perf_counter()
            down(f"m{tag}")
            t2 = time.perf_counter()
            ups.append((t1 - t0) * 1000)
            downs.append((t2 - t1) * 1000)
        result["up_in_process"], result["down_in_process"] = summary(ups), summary(downs)
        if args.cli:
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            cli_up, cli_down = [], []
            for _ in range(args.cli):
                for op, acc in (("up", cli_up), ("down", cli_down)):
                    extra = f", transparent_port={T_PORT}, dns_port={D_PORT}, pool={pool!r}" if op == "up" else ""
                    code = f"import netns; netns.{op}('c{tag}'{extra}, state_dir={state!r})"
                    t0 = time.perf_counter()
                    subprocess.run(["nsenter", f"--net={gw_path}", "--", sys.executable, "-c", code],
                                   check=True, env=env)
                    acc.append((time.perf_counter() - t0) * 1000)
            result["up_fresh_process"], result["down_fresh_process"] = summary(cli_up), summary(cli_down)
    finally:
        for sb in netns.list_sandboxes(state):
            try:
                down(sb.name)
            except Exception as e:  # noqa: BLE001 - report and keep cleaning
                print("cleanup:", e, file=sys.stderr)
        subprocess.run(["ip", "netns", "del", gw], check=False)
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"sandbox up/down, {args.cycles} cycles, {args.background} other sandboxes, kernel {result['kernel']}")
    print("| what | p50 ms | p99 ms | min | max |\n|---|---|---|---|---|")
    for key in ("up_in_process", "down_in_process", "up_fresh_process", "down_fresh_process"):
        if key in result:
            s = result[key]
            print(f"| {key.replace('_', ' ')} | {s['p50_ms']} | {s['p99_ms']} | {s['min_ms']} | {s['max_ms']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
