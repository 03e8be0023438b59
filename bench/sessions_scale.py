"""1,000 concurrent sessions on one gateway: memory per idle session, req/s, create latency (root).

    sudo /work/venv/bin/python bench/sessions_scale.py [--sessions 1000] [--duration 5] [--rounds 2] [--json FILE]

Builds a lab (gateway.lab.Lab with nginx) and a real `egressgw run` (LabGateway,
SQLite session store), plus one client namespace `<prefix>-ld` joined to the
gateway namespace by a veth that carries N source addresses (10.214.0.2 and
up, one /32 each). In the gateway namespace one nft table redirects that
veth's TCP to the transparent listener and its DNS to the DNS listener, as a
sandbox's table does (without the one-source check: the addresses are the
sessions). Every session is created through the control API
(ControlClient.create_session) with its own source address, the 20-rule bench
policy (bench.POLICY) and three env:// secrets, so the registry holds N
distinct sessions found by registry.by_source.

Measured:
  * req/s: wrk (HTTPS keep-alive, 10 connections, and HTTP, 1 connection) from
    the first session's address, with 1 session existing and with N existing,
    interleaved over --rounds rounds (median): target >= 0.95x;
  * gateway RSS (VmRSS of the gateway process) before and after creating the
    other N-1 sessions, after a warm-up and a gc, divided by N-1: target < 100 KB;
  * session create latency p50/p99 over the N-1 creates (control API round trip);
  * real traffic from every session: one HTTP request bound to each source
    address, then the flow log must show each request under the session that
    owns that address.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from bench import HOST, LUA, POLICY, cpu_seconds, rss_kib  # noqa: E402
from gateway.lab import Lab  # noqa: E402
from gateway.lab.gateway import LabGateway  # noqa: E402
from gateway.lab.topology import in_netns  # noqa: E402

# The bench policy with its per-session rate limits raised: wrk from one session must measure the gateway,
# not the session's 100 req/s token bucket (limits are per session, so other sessions are unaffected).
SCALE_POLICY = POLICY.replace("  mode: enforce\n", "  mode: enforce\n  limits:\n    requestsPerSecond: 1000000\n"
                              "    tlsHandshakesPerSecond: 100000\n    dnsQueriesPerSecond: 100000\n", 1)
assert SCALE_POLICY != POLICY
NET = ipaddress.ip_network("10.214.0.0/20")
GW_SIDE = "10.214.0.1"
RSS_TARGET_KB, RPS_TARGET = 100, 0.95


def log(msg: str) -> None:
    print(f"sessions_scale: {msg}", file=sys.stderr, flush=True)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def sh(argv: list[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    p = subprocess.run(argv, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {p.returncode}: {p.stderr.strip()}")
    return p


def sources(n: int) -> list[str]:
    return [str(NET.network_address + 2 + i) for i in range(n)]


def make_client_ns(lab: Lab, ns: str, addrs: list[str], gw: LabGateway) -> None:
    host_if, peer_if = f"{lab.prefix}-lh", f"{lab.prefix}-ll"
    sh(["ip", "netns", "add", ns])
    batch = [f"link add {host_if} type veth peer name {peer_if} netns {ns}",
             f"addr add {GW_SIDE}/{NET.prefixlen} dev {host_if}", f"link set {host_if} up"]
    sh(["ip", "-n", lab.gw_ns, "-batch", "-"], input="\n".join(batch) + "\n")
    inside = ["link set lo up", f"addr add {addrs[0]}/{NET.prefixlen} dev {peer_if}"]
    inside += [f"addr add {a}/32 dev {peer_if}" for a in addrs[1:]]
    inside += [f"link set {peer_if} up", f"route add default via {GW_SIDE} dev {peer_if} src {addrs[0]}"]
    sh(["ip", "-n", ns, "-batch", "-"], input="\n".join(inside) + "\n")
    rules = f"""table inet egwbench_load {{
  chain nat {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname "{host_if}" udp dport 53 redirect to :{gw.DNS_PORT}
    iifname "{host_if}" tcp dport 53 redirect to :{gw.DNS_PORT}
    iifname "{host_if}" meta l4proto tcp redirect to :{gw.TRANSPARENT_PORT}
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "{host_if}" drop
  }}
}}
"""
    sh(["nsenter", f"--net=/run/netns/{lab.gw_ns}", "--", "nft", "-f", "-"], input=rules)
    d = Path("/etc/netns") / ns
    d.mkdir(parents=True, exist_ok=True)
    (d / "resolv.conf").write_text(f"nameserver {GW_SIDE}\noptions timeout:1 attempts:2\n")


def drop_client_ns(ns: str) -> None:
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)


def wrk(ns: str, url: str, conns: int, seconds: int) -> tuple[float, int]:
    argv = ["ip", "netns", "exec", ns, "wrk", "-t", str(min(2, conns)), "-c", str(conns), "-d", f"{seconds}s",
            "--timeout", "5s", "-s", str(LUA), url]
    out = sh(argv, timeout=seconds + 30).stdout
    raw = json.loads(next(line for line in out.splitlines() if line.startswith("WRKJSON "))[8:])
    errors = {k: v for k, v in raw["errors"].items() if v}
    if errors:
        raise RuntimeError(f"wrk errors {errors} on {url}")
    return raw["requests"] / (raw["duration_us"] / 1e6), raw["requests"]


def one_request(src: str, origin: str, port: int) -> int:
    """GET http://allowed.test:PORT/ from `src` (runs in a thread inside the client namespace)."""
    with socket.create_connection((origin, port), timeout=10, source_address=(src, 0)) as s:
        s.sendall(f"GET /from-{src} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def traffic_from_every_source(ns: str, addrs: list[str], origin: str, port: int) -> list[int]:
    def run_all() -> list[int]:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:   # threads inherit the namespace
            return list(pool.map(lambda a: one_request(a, origin, port), addrs))
    return in_netns(ns, run_all)


def gateway_pid(gw: LabGateway) -> int:
    return gw.proc.pid


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--profile", metavar="DIR", help="py-spy the gateway during each req/s run (collapsed stacks)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        log("needs root")
        return 2
    n = args.sessions
    addrs = sources(n)
    tag = secrets.token_hex(2)
    lab = Lab(prefix=f"egs{tag}", nginx=True, record=False)
    client_ns = f"{lab.prefix}-ld"
    result: dict = {"sessions": n, "policy_rules": SCALE_POLICY.count("- name:"), "secrets_per_session": 3}
    gw = None
    try:
        lab.start()
        gw = LabGateway(lab)
        env = {f"EGWSCALE_{k}": "v-" + secrets.token_hex(16) for k in ("A", "B", "C")}
        gw.start(env=env)
        client = gw.client()
        specs = [{"name": f"TOKEN_{k}", "source": f"env://EGWSCALE_{k}", "hosts": [{"matchName": HOST}]}
                 for k in ("A", "B", "C")]
        make_client_ns(lab, client_ns, addrs, gw)
        ids = {}
        s0 = client.create_session("scale-0", SCALE_POLICY, sources=[addrs[0]], secrets=specs)
        ids[addrs[0]] = s0["id"]
        https = f"https://{HOST}:{lab.nginx_https_port}/"
        http = f"http://{HOST}:{lab.nginx_http_port}/"
        # warm-up: certificates minted, DNS cached, imports done
        probe = lab.run_in(client_ns, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-k", https])
        if probe.stdout != "200":
            denied = [e for e in gw.events() if e.get("decision") == "deny"][-3:]
            raise RuntimeError(f"probe from {addrs[0]}: {probe.stdout} {probe.stderr} denials: {denied}")
        wrk(client_ns, https, 10, 2)
        wrk(client_ns, http, 1, 1)
        pid = gateway_pid(gw)
        rps: dict[str, dict[str, list[float]]] = {"https_ka_c10": {"1": [], "n": []}, "http_ka_c1": {"1": [], "n": []}}
        cpu_us: dict[str, dict[str, list[float]]] = {k: {"1": [], "n": []} for k in rps}

        def measure(which: str) -> None:
            for key, url, conns in (("https_ka_c10", https, 10), ("http_ka_c1", http, 1)):
                spy = None
                if args.profile:
                    Path(args.profile).mkdir(parents=True, exist_ok=True)
                    out = Path(args.profile) / f"{key}-{which}-{len(rps[key][which])}.txt"
                    spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid),
                                            "-d", str(args.duration), "-f", "raw", "-o", str(out), "-r", "200"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                cpu0 = cpu_seconds(pid)
                r, count = wrk(client_ns, url, conns, args.duration)
                cpu = (cpu_seconds(pid) - cpu0) * 1e6 / max(1, count)
                if spy is not None:
                    spy.wait(args.duration + 30)
                rps[key][which].append(r)
                cpu_us[key][which].append(cpu)
                log(f"  {key} with {1 if which == '1' else n} session(s): {r:8.0f} req/s, "
                    f"gateway CPU {cpu:6.0f} us/request")

        measure("1")
        time.sleep(1)
        rss_before = rss_kib(pid)["rss_kib"]
        log(f"gateway RSS with 1 session: {rss_before} KiB; creating {n - 1} more sessions ...")
        lat = []
        for i, src in enumerate(addrs[1:], 1):
            t0 = time.perf_counter()
            s = client.create_session(f"scale-{i}", SCALE_POLICY, sources=[src], secrets=specs)
            lat.append((time.perf_counter() - t0) * 1000)
            ids[src] = s["id"]
        time.sleep(1)
        rss_after = rss_kib(pid)["rss_kib"]
        per = (rss_after - rss_before) / (n - 1) if n > 1 else 0.0
        log(f"gateway RSS with {n} sessions: {rss_after} KiB: {per:.1f} KiB per idle session")
        log(f"create latency p50 {pct(lat, 50):.1f} ms p99 {pct(lat, 99):.1f} ms")
        listed = client.list_sessions()
        assert len(listed) == n, f"{len(listed)} sessions listed, {n} expected"

        # real traffic from every session, then the flow log must attribute each to its owner
        t0 = time.perf_counter()
        spy = None
        if args.profile:
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid), "-d", "60",
                                    "-f", "raw", "-o", str(Path(args.profile) / "first-requests.txt"), "-r", "100",
                                    "--threads"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        codes = traffic_from_every_source(client_ns, addrs, lab.origin_addr, lab.nginx_http_port)
        spread_s = time.perf_counter() - t0
        if spy is not None:
            spy.send_signal(signal.SIGINT)   # py-spy writes its file on SIGINT
            spy.wait(30)
        bad = [a for a, c in zip(addrs, codes) if c != 200]
        deadline = time.monotonic() + 10
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            seen = {}
            for ev in gw.events(event="http"):
                url = ev.get("url", "")
                if "/from-" in url:
                    seen[url.rsplit("/from-", 1)[1]] = ev.get("session")
            if len(seen) >= n:
                break
            time.sleep(0.5)
        wrong = [a for a in addrs if seen.get(a) != ids[a]]
        log(f"one request from each of {n} sources in {spread_s:.1f} s: {n - len(bad)} x 200, "
            f"{n - len(wrong)} attributed to their own session")
        rss_traffic = rss_kib(pid)["rss_kib"]

        for r in range(args.rounds):
            measure("n")
        # back to 1 session for the interleaved second measurement of the 1-session case
        for src in addrs[1:]:
            client.delete_session(ids[src])
        time.sleep(1)
        for _ in range(args.rounds - 1):
            measure("1")

        med = {k: {w: statistics.median(v[w]) for w in v} for k, v in rps.items()}
        cmed = {k: {w: statistics.median(v[w]) for w in v} for k, v in cpu_us.items()}
        result.update({
            "rss_kib_1_session": rss_before, "rss_kib_n_sessions": rss_after,
            "rss_kib_n_sessions_after_traffic": rss_traffic,
            "rss_kib_per_idle_session": round(per, 1),
            "create_latency_ms": {"p50": round(pct(lat, 50), 2), "p99": round(pct(lat, 99), 2),
                                  "mean": round(statistics.mean(lat), 2), "max": round(max(lat), 2)},
            "rps": {k: {"1_session": round(v["1"]), f"{n}_sessions": round(v["n"]),
                        "ratio": round(v["n"] / v["1"], 3), "runs": rps[k],
                        "cpu_us_per_request": {"1_session": round(cmed[k]["1"]), f"{n}_sessions": round(cmed[k]["n"]),
                                               "ratio": round(cmed[k]["n"] / cmed[k]["1"], 3),
                                               "runs": cpu_us[k]}} for k, v in med.items()},
            "traffic_every_source": {"requests": n, "ok": n - len(bad), "attributed": n - len(wrong),
                                     "seconds": round(spread_s, 2)},
        })
    finally:
        if gw is not None:
            gw.stop()
        drop_client_ns(client_ns)
        lab.stop()

    r = result
    print(f"\n### {n} sessions on one gateway (policy {r['policy_rules']} rules, 3 secrets each)\n")
    print("| figure | value | target |\n|---|---|---|")
    ok = r["rss_kib_per_idle_session"] < RSS_TARGET_KB
    print(f"| gateway RSS, 1 session / {n} sessions | {r['rss_kib_1_session']} / {r['rss_kib_n_sessions']} KiB | |")
    print(f"| RSS per idle session | {r['rss_kib_per_idle_session']} KiB | < {RSS_TARGET_KB} KB "
          f"{'PASS' if ok else 'MISS'} |")
    c = r["create_latency_ms"]
    print(f"| session create (control API) p50 / p99 | {c['p50']} / {c['p99']} ms | |")
    for k, v in r["rps"].items():
        ok = v["ratio"] >= RPS_TARGET
        print(f"| {k} req/s, 1 / {n} sessions | {v['1_session']} / {v[f'{n}_sessions']} ({v['ratio']}x) | "
              f">= {RPS_TARGET}x {'PASS' if ok else 'MISS'} |")
    for k, v in r["rps"].items():
        c = v["cpu_us_per_request"]
        print(f"| {k} gateway CPU per request, 1 / {n} sessions | {c['1_session']} / {c[f'{n}_sessions']} us "
              f"({c['ratio']}x) | <= {1 / RPS_TARGET:.2f}x {'PASS' if c['ratio'] <= 1 / RPS_TARGET else 'MISS'} |")
    t = r["traffic_every_source"]
    print(f"| one request from every session's address | {t['ok']}/{t['requests']} answered 200, "
          f"{t['attributed']}/{t['requests']} logged under their own session ({t['seconds']} s) | all |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
