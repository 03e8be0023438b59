"""Flow-log benchmark: how fast records are written, and what logging costs a request.

    python bench/logbench.py                   # writer only (no root): events/s per format and sink
    sudo python bench/logbench.py --requests   # also request throughput: log to a file vs /dev/null

Writer: N realistic HTTP events through `FlowLog` (hash chain, HMAC checkpoint every 1000
records, rotation at 64 MiB) for each format (ocsf, ecs, native), to a real file and to
/dev/null, next to "before": the writer as it was before the chain (one JSON line and
os.write). Requests: the `bench/run` lab (nginx origin, wrk in an `egressgw sandbox up`
sandbox, the 20-rule bench policy), egressgw with its flow log as configured by default
(OCSF to a real file) against the cheapest sink (native format to /dev/null), interleaved
rounds, gateway restarted between runs; req/s and the gateway's CPU per request.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from gateway.log import events  # noqa: E402
from gateway.log.writer import FlowLog  # noqa: E402


def sample(i: int) -> dict:
    return events.make_event(
        events.HTTP, session="s-a9ea92c81e84d4e3", client=f"10.211.0.2:{30000 + i % 30000}",
        dest_host="allowed.test", dest_ip="198.18.1.10", dest_port=443, sni="allowed.test", method="GET",
        url=f"https://allowed.test/v1/items/{i}?page=&limit=", status=200, bytes_out=0, bytes_in=24,
        decision="allow", rule="allowed-https", reason="allowed", duration_ms=10.136)


class Before:
    """The writer before the chain: one compact JSON line per event, unbuffered os.write."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def write(self, event):
        os.write(self.fd, (json.dumps(event, ensure_ascii=True, separators=(",", ":")) + "\n").encode("ascii"))

    def close(self):
        os.close(self.fd)


def bench_writer(n: int, repeat: int = 3) -> list[dict]:
    """Best of `repeat` runs (CPU time of this process: least disturbed by other load on the machine)."""
    evs = [sample(i) for i in range(n)]
    key = os.urandom(32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("before", "native", "ocsf", "ecs"):
            for sink in ("file", "/dev/null"):
                best_cpu = best_wall = float("inf")
                size = 0
                for r in range(repeat):
                    path = Path(tmp) / f"{fmt}{r}" / "flows.jsonl" if sink == "file" else Path("/dev/null")
                    path.parent.mkdir(parents=True, exist_ok=True)
                    log = Before(path) if fmt == "before" else FlowLog(
                        path, format=fmt, rotate_bytes=64 << 20, keep=0, checkpoint_every=1000, key=key)
                    c0, t0 = time.process_time(), time.perf_counter()
                    for e in evs:
                        log.write(e)
                    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
                    log.close()
                    best_cpu, best_wall = min(best_cpu, cpu), min(best_wall, wall)
                    if sink == "file":
                        size = sum(p.stat().st_size for p in path.parent.iterdir())
                        for p in path.parent.iterdir():
                            p.unlink()
                rows.append({"format": fmt, "sink": sink, "events": n, "events_per_s": round(n / best_wall),
                             "cpu_us_per_event": round(best_cpu / n * 1e6, 2),
                             "wall_us_per_event": round(best_wall / n * 1e6, 2),
                             "bytes_per_event": round(size / n) if size else None})
                print(f"  writer {fmt:7s} -> {sink:9s} {n / best_wall:10,.0f} events/s "
                      f"{best_cpu / n * 1e6:7.2f} us CPU/event" + (f" {size / n:6.0f} B/event" if size else ""),
                      file=sys.stderr)
    return rows


def bench_requests(rounds: int, duration: float, warmup: float, case_keys: list[str]) -> dict:
    import bench as harness  # bench/bench.py
    from gateway.lab import Lab
    from gateway.lab.gateway import LabGateway

    harness.preflight()
    variants = {
        "file-ocsf": {},  # the default: OCSF, rotation, checkpoints, a real file
        "devnull-native": {"log": {"path": "/dev/null", "format": "native"}},
    }
    all_cases = {c.key: c for c in harness.cases(4)}
    results: dict = {v: {k: [] for k in case_keys} for v in variants}
    with Lab(nginx=True) as lab:
        policy = lab.work / "bench-policy.yaml"
        policy.write_text(harness.POLICY)
        for r in range(rounds):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            for v in order:
                gw = LabGateway(lab, name=f"lb-{v}-{r}", extra_config=variants[v])
                gw.start()
                name = f"lb{r}{v[0]}"
                try:
                    info = gw.sandbox_up(name, policy)
                    runner = harness.Runner(info["netns"], warmup, duration, pid=gw.proc.pid)
                    for key in case_keys:
                        res = runner.measure(all_cases[key], lab, v)
                        results[v][key].append(res)
                finally:
                    gw.sandbox_down(name)
                    gw.stop()
    out: dict = {}
    for key in case_keys:
        row = {}
        for v in variants:
            runs = results[v][key]
            row[v] = {"rps": round(statistics.median(x["rps"] for x in runs), 1),
                      "cpu_us_per_req": round(statistics.median(x["proxy_cpu_us_per_req"] for x in runs), 1),
                      "runs": [round(x["rps"], 1) for x in runs]}
        row["rps_ratio"] = round(row["file-ocsf"]["rps"] / row["devnull-native"]["rps"], 3)
        row["cpu_ratio"] = round(row["file-ocsf"]["cpu_us_per_req"] / row["devnull-native"]["cpu_us_per_req"], 3)
        out[key] = row
    return out


def profile_share(seconds: float, case_key: str) -> dict:
    """py-spy a gateway (default log: OCSF to a file) under load: share of its busy CPU samples spent logging.

    A sample counts as logging when a frame of `gateway/log/` or `Audit.emit` is on its stack. The
    share is robust to other load on the machine (both parts slow down alike), unlike req/s.
    """
    import shutil
    import subprocess

    import bench as harness
    from gateway.lab import Lab
    from gateway.lab.gateway import LabGateway

    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    case = {c.key: c for c in harness.cases(4)}[case_key]
    with Lab(nginx=True) as lab, tempfile.TemporaryDirectory() as tmp:
        policy = lab.work / "bench-policy.yaml"
        policy.write_text(harness.POLICY)
        gw = LabGateway(lab, name="lb-profile").start()
        try:
            info = gw.sandbox_up("lbprof", policy)
            runner = harness.Runner(info["netns"], 1.0, seconds, pid=gw.proc.pid)
            runner.wrk(case, lab, 1.0)  # warm-up
            raw = Path(os.environ.get("LOGBENCH_PROFILE_DIR", tmp)) / f"profile-{case_key}.raw"
            spy = subprocess.Popen([pyspy, "record", "--pid", str(gw.proc.pid), "--duration", str(int(seconds)),
                                    "--rate", "250", "--nonblocking", "--format", "raw", "-o", str(raw)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(0.3)
            load = runner.wrk(case, lab, seconds + 1)
            spy.communicate(timeout=60)
            total = logging_ = writer_io = 0
            for line in raw.read_text(errors="replace").splitlines():
                stack, _, n = line.rpartition(" ")
                if not n.isdigit():
                    continue
                total += int(n)
                if "gateway/log/" in stack or "emit (gateway/audit.py" in stack:
                    logging_ += int(n)
                    if "posix.write" in stack or "_write_batch" in stack.rsplit(";", 1)[-1]:
                        writer_io += int(n)
        finally:
            gw.sandbox_down("lbprof")
            gw.stop()
    share = logging_ / total if total else None
    print(f"  profile {case_key}: {logging_}/{total} busy samples in logging = {share:.2%}"
          f" ({load['rps']:.0f} req/s under py-spy)", file=sys.stderr)
    return {"case": case_key, "samples": total, "logging_samples": logging_, "logging_share": share,
            "rps_under_profile": round(load["rps"], 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench/logbench.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=100_000, help="events per writer run (default 100000)")
    ap.add_argument("--requests", action="store_true", help="also measure request throughput (root, ~3 minutes)")
    ap.add_argument("--rounds", type=int, default=4, help="request runs per variant, interleaved (default 4)")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--cases", nargs="+", default=["http_ka_c10", "https_ka_c10"])
    ap.add_argument("--profile", type=float, metavar="SECONDS",
                    help="also py-spy the gateway under load: share of its CPU spent logging (root)")
    ap.add_argument("--out", default=str(BENCH / "results" / "logbench.json"))
    args = ap.parse_args(argv)
    result = {"writer": bench_writer(args.events)}
    if args.requests:
        result["requests"] = bench_requests(args.rounds, args.duration, args.warmup, args.cases)
    if args.profile:
        result["profile"] = [profile_share(args.profile, key) for key in args.cases]
    print("| writer | sink | events/s | CPU µs/event | bytes/event |\n|---|---|---:|---:|---:|")
    for row in result["writer"]:
        print(f"| {row['format']} | {row['sink']} | {row['events_per_s']:,} | {row['cpu_us_per_event']} | "
              f"{row['bytes_per_event'] or ''} |")
    if "requests" in result:
        print("\n| case | log to file (OCSF) req/s | /dev/null (native) req/s | ratio | CPU µs/req file | "
              "CPU µs/req /dev/null |\n|---|---:|---:|---:|---:|---:|")
        for key, row in result["requests"].items():
            print(f"| {key} | {row['file-ocsf']['rps']:,.0f} | {row['devnull-native']['rps']:,.0f} | "
                  f"{row['rps_ratio']:.3f} | {row['file-ocsf']['cpu_us_per_req']:,.0f} | "
                  f"{row['devnull-native']['cpu_us_per_req']:,.0f} |")
    for p in result.get("profile", []):
        print(f"\nlogging share of the gateway's busy CPU, {p['case']}: {p['logging_share']:.2%} "
              f"({p['logging_samples']} of {p['samples']} py-spy samples)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
