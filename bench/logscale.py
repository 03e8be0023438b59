#!/usr/bin/env python3
"""Flow-log scale benchmark: `log query` and `review` on a generated 1,000,000-event log.

    python bench/logscale.py [--events 1000000] [--sessions 1000] [--hosts 400] [--dir DIR] [--keep]
    bash bench/run --only logscale [same options]

Writes the log with the gateway's own writer (OCSF records, hash chain, HMAC
checkpoints, rotation at 100 MiB like the default config), then times, each
as the `egressgw` command a reviewer would run (a new process, Python start-up
included):

    index build   the first `egressgw log query` (builds the SQLite index)
    queries       typical filters on the built index (target < 1 s each)
    review        `egressgw review` of the whole log, integrity check included (target < 30 s)
    render        headless Chromium loading the report (if chromium is installed)

Prints a markdown table; writes bench/results/logscale.json and logscale.md.
Needs no root and no network.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.lab.flowlog import generate  # noqa: E402
from gateway.log.events import rfc3339  # noqa: E402

QUERY_TARGET = 1.0
REVIEW_TARGET = 30.0


CPU = {"last": 0.0}  # CPU seconds (user + sys) of the last command and its children


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def egressgw(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    """Run `egressgw ARGS` as a new process: (wall seconds, result); its CPU seconds in CPU["last"]."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    c0 = _children_cpu()
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=env, text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dt = time.monotonic() - t0
    CPU["last"] = _children_cpu() - c0
    if r.returncode != 0:
        raise SystemExit(f"egressgw {' '.join(args)} failed ({r.returncode}): {r.stderr}")
    return dt, r


def startup() -> tuple[float, float]:
    """Wall and CPU seconds of `egressgw log --help`: interpreter and imports, no work."""
    dt, _ = egressgw("log", "--help")
    return dt, CPU["last"]


def main() -> int:
    ap = argparse.ArgumentParser(prog="bench/logscale.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--hosts", type=int, default=400, help="distinct destination hosts (plus DNS-tunnel names)")
    ap.add_argument("--dir", help="where to write the log (default: a temporary directory, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the generated log, index and report")
    ap.add_argument("--reuse", action="store_true", help="reuse a log already in --dir (skip generation)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="egw-logscale-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "flows.jsonl"
    key_file = work.parent / f"{work.name}.key"
    results: dict = {"events": args.events, "sessions": args.sessions, "hosts": args.hosts,
                     "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                 "platform": platform.platform()}}
    try:
        if not (args.reuse and log.exists()):
            for p in work.glob("flows.jsonl*"):
                p.unlink()
            for p in work.glob(".flows.jsonl*"):
                p.unlink()
            key = os.urandom(32)
            key_file.write_text(key.hex() + "\n")
            key_file.chmod(0o600)
            print(f"logscale: writing {args.events:,} events to {log} ...", file=sys.stderr)
            t0 = time.monotonic()
            sessions = generate(log, args.events, n_sessions=args.sessions, key=key, rotate_bytes=100 << 20,
                                keep=0)
            gen = time.monotonic() - t0
            results["generate"] = {"seconds": round(gen, 2), "events_per_second": round(args.events / gen)}
        else:
            from gateway.lab.flowlog import sessions as make_sessions
            sessions = make_sessions(args.sessions)
        files = sorted(p for p in work.iterdir() if p.name.startswith("flows.jsonl"))
        size = sum(p.stat().st_size for p in files)
        results["log"] = {"files": len(files), "bytes": size}
        print(f"logscale: {len(files)} files, {size / 1e6:.0f} MB", file=sys.stderr)

        wall, cpu = min(startup() for _ in range(3))
        results["startup"] = {"seconds": round(wall, 3), "cpu_seconds": round(cpu, 3)}
        results["load_average_before"] = os.getloadavg()

        # Index build: the first query.
        for p in work.glob(".flows.jsonl.idx.sqlite*"):
            p.unlink()
        dt, r = egressgw("log", "query", str(log), "--count")
        index_path = work / ".flows.jsonl.idx.sqlite"
        results["index"] = {"build_seconds": round(dt, 2), "build_cpu_seconds": round(CPU["last"], 2),
                            "count": int(r.stdout.strip()), "bytes": index_path.stat().st_size}
        print(f"logscale: index built in {dt:.1f} s ({index_path.stat().st_size / 1e6:.0f} MB)", file=sys.stderr)
        dt, r = egressgw("log", "query", str(log), "--count")
        results["index"]["up_to_date_check_seconds"] = round(dt, 3)
        results["index"]["up_to_date_check_cpu_seconds"] = round(CPU["last"], 3)

        # Typical queries on the built index.
        busy = sessions[0].id
        tunnel = next((s for s in sessions if s.tunnel), sessions[0]).id
        t_end = 1_795_000_000.0 + 86400 * 0.5
        queries = [
            ("one session, first 100", ["--session", busy, "--limit", "100"]),
            ("one session, all events as JSON lines", ["--session", tunnel, "--format", "jsonl"]),
            ("host glob + refused, 100", ["--host", "*.tracker-3.example.net", "--decision", "deny", "--limit", "100"]),
            ("alerts only, newest 200", ["--alerts", "--newest-first", "--limit", "200"]),
            ("1 h window, HTTP, 100", ["--since", rfc3339(t_end - 3600), "--until", rfc3339(t_end), "--kind", "http",
                                       "--limit", "100"]),
            ("count refusals (whole log)", ["--decision", "deny", "--count"]),
            ("rule + kind, CSV, 1000", ["--rule", "ssh", "--kind", "tcp", "--format", "csv", "--limit", "1000"]),
        ]
        results["queries"] = []
        for name, q in queries:
            times = []
            cpus = []
            rows = 0
            for _ in range(3):
                dt, r = egressgw("log", "query", str(log), *q)
                times.append(dt)
                cpus.append(CPU["last"])
                rows = int(r.stdout.strip()) if "--count" in q else max(0, len(r.stdout.splitlines()) - (
                    1 if "--format" not in q or "csv" in q else 0))
            best = min(times)
            results["queries"].append({"name": name, "args": q, "seconds": round(best, 3),
                                       "seconds_all": [round(t, 3) for t in times],
                                       "cpu_seconds": round(min(cpus), 3), "rows": rows,
                                       "pass": best < QUERY_TARGET})
            print(f"logscale: query {name}: {best:.3f} s, {rows} rows", file=sys.stderr)

        # Review of the whole log.
        report = work.parent / f"{work.name}-report.html"  # not in the log directory: it would count as a log
        dt, r = egressgw("review", str(log), "-o", str(report), "--key-file", str(key_file))
        results["review"] = {"seconds": round(dt, 2), "cpu_seconds": round(CPU["last"], 2),
                             "bytes": report.stat().st_size, "stderr": r.stderr.strip(), "pass": dt < REVIEW_TARGET}
        results["load_average_after"] = os.getloadavg()
        print(f"logscale: review {dt:.1f} s, {report.stat().st_size / 1e6:.2f} MB", file=sys.stderr)
        chromium = shutil.which("chromium")
        if chromium:
            t0 = time.monotonic()
            c = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                                report.as_uri()], capture_output=True, text=True, timeout=300)
            results["review"]["render_seconds"] = round(time.monotonic() - t0, 2)
            results["review"]["rendered_ok"] = c.returncode == 0 and "Log integrity" in c.stdout
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)
            key_file.unlink(missing_ok=True)
            (work.parent / f"{work.name}-report.html").unlink(missing_ok=True)

    md = markdown(results)
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "logscale.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "logscale.md").write_text(md + "\n")
    ok = all(q["pass"] for q in results["queries"]) and results["review"]["pass"]
    return 0 if ok else 1


def markdown(r: dict) -> str:
    load = ", ".join(f"{x:.1f}" for x in r.get("load_average_before", ()))
    lines = [f"Flow log: {r['events']:,} events, {r['sessions']:,} sessions, "
             f"{r['log']['files']} files, {r['log']['bytes'] / 1e6:,.0f} MB (OCSF, hash chain, HMAC checkpoints); "
             f"Python {r['machine']['python']}, {r['machine']['cpus']} CPUs, load average before {load}. "
             "Times are wall-clock of the `egressgw` command as a new process, start-up included "
             f"(`egressgw log --help`: {r['startup']['seconds']:.2f} s); CPU is user + sys of the command "
             "and its children (the honest figure on a busy machine).", "",
             "| step | wall | CPU | detail | target |", "|---|---:|---:|---|---|"]
    if "generate" in r:
        lines.append(f"| write the log (real writer) | {r['generate']['seconds']:.1f} s | | "
                     f"{r['generate']['events_per_second']:,} events/s | |")
    ix = r["index"]
    lines.append(f"| index build (first `log query`) | {ix['build_seconds']:.1f} s | {ix['build_cpu_seconds']:.1f} s | "
                 f"{ix['count']:,} records, index {ix['bytes'] / 1e6:,.0f} MB | |")
    lines.append(f"| `log query --count`, index up to date | {ix['up_to_date_check_seconds']:.2f} s | "
                 f"{ix['up_to_date_check_cpu_seconds']:.2f} s | | < 1 s |")
    for q in r["queries"]:
        lines.append(f"| `log query` {q['name']} | {q['seconds']:.2f} s | {q['cpu_seconds']:.2f} s | "
                     f"{q['rows']:,} rows | < 1 s {'PASS' if q['pass'] else 'MISS'} |")
    rv = r["review"]
    render = f"; Chromium load {rv['render_seconds']:.1f} s" if "render_seconds" in rv else ""
    lines.append(f"| `review` (verify included) | {rv['seconds']:.1f} s | {rv['cpu_seconds']:.1f} s | "
                 f"HTML {rv['bytes'] / 1e6:.2f} MB{render} | < 30 s {'PASS' if rv['pass'] else 'MISS'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
