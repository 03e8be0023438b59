"""Throughput with 1 worker vs N workers: two sandboxes driving HTTPS keep-alive load at once.

    sudo PYTHONPATH=$PWD python bench/workers.py [--workers 2] [--duration 10] [--conns 10]

One lab (nginx origin, DNS), then for each gateway shape (`workers: 1`, `workers: N`) a fresh
LabGateway with the bench policy and two `egressgw sandbox up` sandboxes (with N workers they are
pinned to different workers), and wrk in both sandboxes at the same time (each -t1 -cCONNS,
HTTPS keep-alive to nginx). Prints req/s per sandbox, their sum, and the ratio; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/bench.py (bench/ is not a package)

from bench import POLICY, Case, Runner, cpu_seconds, log, preflight, sanity  # noqa: E402
from gateway.lab import Lab  # noqa: E402
from gateway.lab.gateway import LabGateway  # noqa: E402


def measure_shape(lab: Lab, workers: int, args, tag: str) -> dict:
    gw = LabGateway(lab, name=f"bw{workers}", workers=workers if workers > 1 else None,
                    port_offset=200 + 10 * workers)
    gw.start(timeout=60)
    names = [f"bw{tag}{workers}{i}" for i in range(2)]
    try:
        policy = lab.work / "bench-workers-policy.yaml"
        policy.write_text(POLICY)  # its limits are out of the way: they would cap each sandbox, not the gateway
        infos = [gw.sandbox_up(n, policy) for n in names]
        cacert = gw.dir / "ca" / "sandbox-ca-bundle.pem"
        for info in infos:
            sanity(info["netns"], lab, cacert, f"workers={workers}")
        case = Case("https_ka", "https", "/", args.conns, 1)
        runners = [Runner(info["netns"], 0, args.duration) for info in infos]
        for r in runners:  # warm-up, both at once
            r.wrk(case, lab, args.warmup)
        results: list[dict] = [{}, {}]

        def drive(i: int) -> None:
            results[i] = runners[i].wrk(case, lab, args.duration)

        threads = [threading.Thread(target=drive, args=(i,)) for i in range(2)]
        cpu0, wall0 = cpu_seconds(gw.proc.pid), time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        cpu, wall = cpu_seconds(gw.proc.pid) - cpu0, time.monotonic() - wall0
        per = [round(r["rps"]) for r in results]
        requests = sum(r["requests"] for r in results)
        # what the gateway's processes (supervisor + workers) spent: cores busy, CPU per request
        cores, us_per_req = round(cpu / wall, 2), round(1e6 * cpu / requests) if requests else None
        errors = [r["errors"] for r in results]
        log(f"workers={workers}: sandbox req/s {per} (workers {[i.get('worker') for i in infos]}), "
            f"total {sum(per)}, gateway CPU {cores} cores, {us_per_req} us/req, p50 {[round(r['p50_ms'], 2) for r in results]} ms, errors {errors}")
        return {"workers": workers, "per_sandbox_rps": per, "total_rps": sum(per), "errors": errors,
                "pinned": [i.get("worker") for i in infos], "gateway_cores": cores, "gateway_cpu_us_per_req": us_per_req, "p50_ms": [r["p50_ms"] for r in results],
                "p99_ms": [r["p99_ms"] for r in results]}
    finally:
        for n in names:
            gw.sandbox_down(n)
        gw.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--warmup", type=float, default=3)
    p.add_argument("--conns", type=int, default=10)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", default="bench/results/workers.json")
    args = p.parse_args()
    preflight()
    tag = hex(int(time.time()) & 0xFFF)[2:]
    lab = Lab(prefix=f"egbw{tag}", nginx=True, nginx_workers=1, record=False)
    lab.start()
    rounds: list[dict] = []
    try:
        for r in range(args.rounds):
            shapes = [1, args.workers] if r % 2 == 0 else [args.workers, 1]
            rounds.append({str(n): measure_shape(lab, n, args, tag) for n in shapes})
    finally:
        lab.stop()
    one = sum(r["1"]["total_rps"] for r in rounds) / len(rounds)
    many = sum(r[str(args.workers)]["total_rps"] for r in rounds) / len(rounds)
    result = {"rounds": rounds, "one_worker_rps": round(one), f"{args.workers}_workers_rps": round(many),
              "ratio": round(many / one, 2) if one else None, "config": vars(args)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"HTTPS keep-alive, 2 sandboxes x {args.conns} conn: 1 worker {one:.0f} req/s, "
          f"{args.workers} workers {many:.0f} req/s, ratio {result['ratio']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
