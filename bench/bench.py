"""egressgw benchmark: direct vs bare mitmdump vs egressgw, in one run.

Run as root via ``bash bench/run`` (or ``make bench``). See bench/README.md.

All traffic stays inside namespaces this script (and the lab) creates:

* direct   wrk in the lab's gateway namespace -> nginx in the origin namespace
* mitmdump wrk in a sandbox namespace (``netns.up``) whose TCP is redirected
           to ``mitmdump --mode transparent`` running in the gateway namespace
* egressgw wrk in a sandbox made by ``egressgw sandbox up`` with a ~20-rule
           policy, redirected to a real ``egressgw run`` (``LabGateway``)

Credentials section (same run, same gateway): sandbox A (the egressgw path's
sandbox, no secrets) against sandbox B (same policy, 10 secrets), each request
carrying three credential headers: placeholders of three of B's secrets in B
(so substitution runs on every request), random values of the same length in A.

Figures: requests/s (keep-alive and new connection per request, HTTP and
HTTPS), p50/p99 latency at 1 and 10 connections, bulk MB/s of a 1 MiB file
over HTTPS, and the proxies' RSS. Output: a markdown table on stdout,
bench/results/latest.{json,md}, optional py-spy profiles.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import string
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import extras  # noqa: E402
from gateway.lab import Lab  # noqa: E402
from gateway.lab.gateway import LabGateway  # noqa: E402
from gateway.policy import load_policy_text  # noqa: E402
from gateway.secrets.placeholders import CORE_RE, KNOWN_PREFIXES  # noqa: E402

LUA = BENCH / "wrk_report.lua"
HOST = "allowed.test"  # served by nginx on every origin address; the lab's cert names it
MITM_PORT = 15101  # mitmdump's transparent listener in the gateway namespace
MITM_DNS_PORT = 15153  # required by netns.up; nothing listens (the sandbox uses a hosts file)
MITM_POOL = "10.212.0.0/16"  # distinct from LabGateway's default pool (10.211.0.0/16)
THROUGHPUT_TARGET = 0.85  # egressgw >= 0.85 x mitmdump requests/s and MB/s
LATENCY_TARGET = 1.20  # egressgw p50 <= 1.2 x mitmdump p50
CRED_TARGET = 0.95  # requests/s with 10 secrets and substitution >= 0.95 x the same policy without secrets


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    pass


# ---- the policy egressgw enforces ------------------------------------------------------------

POLICY = """\
apiVersion: egressgw.dev/v1alpha1
kind: EgressPolicy
metadata:
  name: bench
spec:
  mode: enforce
  limits:  # the per-session rate limits would refuse the load itself (429): out of the way, still checked
    requestsPerSecond: 1000000
    tlsHandshakesPerSecond: 1000000
    connections: 100000
  detection:
    rules:
      # The credentials section's sandbox A sends random values shaped like these keys to the bench
      # origin (B sends placeholders): still scanned, allowed for that host only.
      openai-project-key: {allow: [{matchName: allowed.test}]}
      anthropic-api-key: {allow: [{matchName: allowed.test}]}
      gitlab-pat: {allow: [{matchName: allowed.test}]}
  egress:
    - name: anthropic-api
      hosts: [{matchName: api.anthropic.com}]
    - name: openai-api
      hosts: [{matchName: api.openai.com}]
    - name: github-git
      hosts: [{matchName: github.com}]
    - name: github-api
      hosts: [{matchName: api.github.com}]
    - name: github-downloads
      hosts: [{matchName: codeload.github.com}, {matchName: objects.githubusercontent.com},
              {matchName: raw.githubusercontent.com}]
      methods: [GET, HEAD]
    - name: github-ssh
      protocol: tcp
      hosts: [{matchName: github.com}]
      ports: [22]
    - name: pypi
      hosts: [{matchName: pypi.org}, {matchName: files.pythonhosted.org}]
      methods: [GET, HEAD]
    - name: npm
      hosts: [{matchName: registry.npmjs.org}]
      methods: [GET, HEAD]
    - name: crates
      hosts: [{matchName: crates.io}, {matchName: static.crates.io}, {matchName: index.crates.io}]
      methods: [GET]
    - name: go-modules
      hosts: [{matchName: proxy.golang.org}, {matchName: sum.golang.org}]
      methods: [GET]
    - name: debian
      hosts: [{matchName: deb.debian.org}, {matchPattern: "*.debian.org"}]
      ports: [80, 443]
      methods: [GET, HEAD]
    - name: docker-hub
      hosts: [{matchName: registry-1.docker.io}, {matchName: auth.docker.io},
              {matchPattern: "*.cloudflarestorage.com"}]
    - name: cdn
      hosts: [{matchPattern: "*.cdn.example.com"}]
    - name: api-example
      hosts: [{matchName: api.example.com}]
      methods: [GET, POST]
      paths: ["/v1/*", "/v2/*"]
    - name: huggingface
      hosts: [{matchName: huggingface.co}, {matchPattern: "*.hf.co"}]
      methods: [GET, HEAD]
    - name: sentry
      hosts: [{matchPattern: "*.ingest.sentry.io"}]
      methods: [POST]
      paths: ["/api/*"]
    - name: legacy
      hosts: [{matchName: legacy.example.com}]
      ports: [80, 8443]
      methods: [GET]
    - name: lab-other
      hosts: [{matchName: other.test}]
      methods: [GET]
      paths: ["/v1/*"]
    - name: lab-api
      hosts: [{matchName: api.allowed.test}]
      methods: [GET]
      paths: ["/v1/*"]
    - name: bench-origin
      hosts: [{matchName: allowed.test}]
      ports: [8080, 8443]   # listing 8080 is what allows plain HTTP there
      methods: [GET]
"""


# ---- the cases ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    key: str
    scheme: str  # http | https
    path: str
    conns: int
    threads: int
    close: bool = False  # new connection per request


def cases(bulk_conns: int) -> list[Case]:
    return [
        Case("http_ka_c10", "http", "/", 10, 2),
        Case("https_ka_c10", "https", "/", 10, 2),
        Case("http_new_c10", "http", "/", 10, 2, close=True),
        Case("https_new_c10", "https", "/", 10, 2, close=True),
        Case("http_ka_c1", "http", "/", 1, 1),
        Case("https_ka_c1", "https", "/", 1, 1),
        Case("https_new_c1", "https", "/", 1, 1, close=True),
        Case("https_bulk", "https", "/bytes/1m", bulk_conns, 2),
    ]


# (label, case, field, unit, kind) ; kind: "tput" (higher is better) or "lat" (lower is better)
ROWS: list[tuple[str, str, str, str, str]] = [
    ("HTTP keep-alive, 10 conn", "http_ka_c10", "rps", "req/s", "tput"),
    ("HTTPS keep-alive, 10 conn", "https_ka_c10", "rps", "req/s", "tput"),
    ("HTTP new conn/request, 10 conn", "http_new_c10", "rps", "req/s", "tput"),
    ("HTTPS new conn/request, 10 conn", "https_new_c10", "rps", "req/s", "tput"),
    ("HTTPS bulk 1 MiB, {bulk} conn", "https_bulk", "mbps", "MB/s", "tput"),
    ("HTTP p50, 1 conn", "http_ka_c1", "p50_ms", "ms", "lat"),
    ("HTTP p99, 1 conn", "http_ka_c1", "p99_ms", "ms", "info"),
    ("HTTPS p50, 1 conn", "https_ka_c1", "p50_ms", "ms", "lat"),
    ("HTTPS p99, 1 conn", "https_ka_c1", "p99_ms", "ms", "info"),
    ("HTTPS new conn/request p50, 1 conn", "https_new_c1", "p50_ms", "ms", "info"),
    ("HTTP p50, 10 conn", "http_ka_c10", "p50_ms", "ms", "lat"),
    ("HTTP p99, 10 conn", "http_ka_c10", "p99_ms", "ms", "info"),
    ("HTTPS p50, 10 conn", "https_ka_c10", "p50_ms", "ms", "lat"),
    ("HTTPS p99, 10 conn", "https_ka_c10", "p99_ms", "ms", "info"),
    ("proxy CPU/request, HTTP keep-alive 10 conn", "http_ka_c10", "proxy_cpu_us_per_req", "us", "info"),
    ("proxy CPU/request, HTTPS keep-alive 10 conn", "https_ka_c10", "proxy_cpu_us_per_req", "us", "info"),
    ("proxy CPU/request, HTTPS new conn 10 conn", "https_new_c10", "proxy_cpu_us_per_req", "us", "info"),
    ("proxy CPU/request, HTTPS bulk 1 MiB", "https_bulk", "proxy_cpu_us_per_req", "us", "info"),
]


# ---- the credentials section ---------------------------------------------------------------------

_HEX = "0123456789abcdef"
_ALNUM = string.ascii_letters + string.digits
_B64URL = _ALNUM + "-_"


def _rand(alphabet: str, n: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


# (name, a fresh fake value of the real credential's shape, source kind, header it is sent in or None).
# The values are random: nothing real is ever used, and placeholders take their prefix, length and alphabet.
BENCH_SECRETS: list[tuple[str, Any, str, str | None]] = [
    ("OPENAI_API_KEY", lambda: "sk-proj-" + _rand(_HEX, 48), "env", "Authorization: Bearer {}"),
    ("ANTHROPIC_API_KEY", lambda: "sk-ant-api03-" + _rand(_B64URL, 93) + "AA", "file", "x-api-key: {}"),
    ("GITLAB_TOKEN", lambda: "glpat-" + _rand(_B64URL, 20), "env", "PRIVATE-TOKEN: {}"),
    ("GITHUB_TOKEN", lambda: "ghp_" + _rand(_ALNUM, 36), "file", None),
    ("HF_TOKEN", lambda: "hf_" + _rand(string.ascii_letters, 34), "env", None),
    ("NPM_TOKEN", lambda: "npm_" + _rand(_ALNUM, 36), "file", None),
    ("PYPI_TOKEN", lambda: "pypi-AgEIcHlwaS5vcmc" + _rand(_B64URL, 160), "env", None),
    ("SLACK_BOT_TOKEN", lambda: f"xoxb-{_rand(string.digits, 12)}-{_rand(string.digits, 13)}-{_rand(_ALNUM, 24)}",
     "file", None),
    ("STRIPE_SECRET_KEY", lambda: "sk_live_" + _rand(_ALNUM, 99), "env", None),
    ("GOOGLE_API_KEY", lambda: "AIza" + _rand(_B64URL, 35), "file", None),
]
CRED_ENV_PREFIX = "EGWBENCH_"  # env:// sources read the gateway's EGWBENCH_<NAME>
CRED_CASES = ("https_ka_c10", "https_ka_c1")

# (label, case, field, unit, kind) for the credentials table; kind "tput" has the CRED_TARGET
CRED_ROWS: list[tuple[str, str, str, str, str]] = [
    ("HTTPS keep-alive, 10 conn", "https_ka_c10", "rps", "req/s", "tput"),
    ("HTTPS p50, 1 conn", "https_ka_c1", "p50_ms", "ms", "info"),
    ("HTTPS p99, 1 conn", "https_ka_c1", "p99_ms", "ms", "info"),
    ("HTTPS p50, 10 conn", "https_ka_c10", "p50_ms", "ms", "info"),
    ("proxy CPU/request, HTTPS keep-alive 10 conn", "https_ka_c10", "proxy_cpu_us_per_req", "us", "info"),
    ("proxy CPU/request, HTTPS 1 conn", "https_ka_c1", "proxy_cpu_us_per_req", "us", "info"),
]


def bench_secrets(gw_dir: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The 10 secrets of sandbox B: (the --secrets YAML list, the gateway's environment for env:// sources).

    Half the sources are env:// (set through LabGateway.start(env=...)), half file:// files in the gateway's
    directory (mode 0600); every secret is approved for the bench origin only, in headers (the default)."""
    sdir = gw_dir / "bench-secrets"
    sdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    specs, env = [], {}
    for name, make, kind, _header in BENCH_SECRETS:
        value = make()
        if kind == "env":
            env[CRED_ENV_PREFIX + name] = value
            source = f"env://{CRED_ENV_PREFIX}{name}"
        else:
            f = sdir / name
            f.write_text(value + "\n")
            f.chmod(0o600)
            source = f"file://{f}"
        specs.append({"name": name, "source": source, "hosts": [{"matchName": HOST}]})
    return specs, env


def lookalike(placeholder: str) -> str:
    """A random value of the placeholder's length, prefix and alphabet that is no placeholder (no marker+core)."""
    prefix = next((p for p in KNOWN_PREFIXES if placeholder.startswith(p)), "")
    tail = placeholder[len(prefix):]
    classes = (string.ascii_lowercase, string.ascii_uppercase, string.digits)
    alphabet = "".join(c for c in classes if any(ch in c for ch in tail))
    alphabet += "".join(sorted({ch for ch in tail if ch not in _ALNUM}))
    while True:
        value = prefix + _rand(alphabet, len(tail))
        if not CORE_RE.search(value):
            return value


# ---- small helpers ------------------------------------------------------------------------------


def ns_enter(ns: str) -> list[str]:
    # nsenter --net only: `ip netns exec` would also unshare the mount namespace, and a
    # sandbox namespace created there would be invisible (and vanish with the process).
    return ["nsenter", f"--net=/run/netns/{ns}", "--"]


def run(argv: list[str], *, timeout: float = 60, check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    p = subprocess.run(argv, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise BenchError(f"`{' '.join(argv)}` exited {p.returncode}:\n{p.stderr.strip() or p.stdout.strip()}")
    return p


def _tree(pid: int) -> list[int]:
    """pid and its descendants."""
    pids = [pid]
    children: dict[int, list[int]] = collections.defaultdict(list)
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children[ppid].append(int(d))
    i = 0
    while i < len(pids):
        pids.extend(children.get(pids[i], []))
        i += 1
    return pids


def cpu_seconds(pid: int) -> float:
    """user+system CPU seconds of pid and its descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / ticks


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (peak) of pid plus its descendants, in KiB."""
    out = {"rss_kib": 0, "hwm_kib": 0, "processes": 0}
    for p in _tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        out["rss_kib"] += int(fields.get("VmRSS", "0 kB").split()[0])
        out["hwm_kib"] += int(fields.get("VmHWM", "0 kB").split()[0])
        out["processes"] += 1
    return out


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        import mitmproxy.version

        mitm = mitmproxy.version.VERSION
    except Exception:  # noqa: BLE001
        mitm = "?"
    wrk = run(["wrk", "-v"], check=False).stdout.split(" [")[0].splitlines()
    nginx = run(["nginx", "-v"], check=False).stderr.strip()
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mitmproxy": mitm,
        "wrk": wrk[0].strip() if wrk else "?",
        "nginx": nginx.split("/", 1)[-1] if nginx else "?",
    }


def code_version() -> dict[str, Any]:
    """Which code was measured: commit, and the files modified since (the tree may be dirty)."""
    head = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=False).stdout.strip()
    dirty = run(["git", "-C", str(REPO), "status", "--porcelain", "--", "gateway", "netns"], check=False).stdout
    return {"commit": head or "?", "dirty_files": [line[3:] for line in dirty.splitlines() if line.strip()]}


def others_running(ours: tuple[str, ...]) -> dict[str, Any]:
    """Load average and network namespaces that are not this run's: other labs or tests on the machine
    compete for the same CPUs and make the figures noisy."""
    try:
        names = sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        names = []
    foreign = [n for n in names if not any(tag in n for tag in ours)]
    return {"loadavg_1m": float(Path("/proc/loadavg").read_text().split()[0]), "foreign_netns": foreign}


def preflight() -> None:
    if os.geteuid() != 0:
        raise BenchError("must run as root (it creates network namespaces, veths and nftables rules): sudo bash bench/run")
    missing = [c for c in ("wrk", "nginx", "nft", "ip", "nsenter", "curl") if shutil.which(c) is None]
    if missing:
        raise BenchError(f"missing commands: {' '.join(missing)} (fix: apt-get install -y wrk nginx nftables iproute2 util-linux curl)")
    if not LUA.exists():
        raise BenchError(f"{LUA} is missing")


def mitmdump_path() -> str:
    here = Path(sys.executable).parent / "mitmdump"
    if here.exists():
        return str(here)
    found = shutil.which("mitmdump")
    if not found:
        raise BenchError("mitmdump not found next to this Python nor on PATH (fix: install the project into this venv)")
    return found


# ---- load generation ------------------------------------------------------------------------------


class Runner:
    """Runs wrk cases inside one namespace; with `pid`, also what the proxy process spent."""

    def __init__(self, ns: str, warmup: float, duration: float, pid: int | None = None,
                 headers: tuple[str, ...] = (), script: Path | None = None):
        self.script = script or LUA  # wrk -s: the report script (with a request of its own, for POSTs)
        self.ns = ns
        self.warmup = warmup
        self.duration = duration
        self.pid = pid
        self.headers = headers  # extra request headers ("Name: value"), sent with every request

    def url(self, case: Case, lab: Lab) -> str:
        port = lab.nginx_https_port if case.scheme == "https" else lab.nginx_http_port
        return f"{case.scheme}://{HOST}:{port}{case.path}"

    def wrk(self, case: Case, lab: Lab, seconds: float) -> dict[str, Any]:
        argv = ["ip", "netns", "exec", self.ns, "wrk", "-t", str(case.threads), "-c", str(case.conns),
                "-d", f"{max(1, round(seconds))}s", "--timeout", "5s", "-s", str(self.script)]
        if case.close:
            argv += ["-H", "Connection: close"]
        for h in self.headers:
            argv += ["-H", h]
        argv.append(self.url(case, lab))
        p = run(argv, timeout=seconds + 30, check=False)
        m = re.search(r"^WRKJSON (\{.*\})$", p.stdout, re.M)
        if p.returncode != 0 or not m:
            raise BenchError(f"wrk failed ({p.returncode}) in {self.ns}: {' '.join(argv)}\n{p.stdout}\n{p.stderr}")
        raw = json.loads(m.group(1))
        secs = raw["duration_us"] / 1e6
        lat = raw["latency_us"]
        errors = {k: v for k, v in raw["errors"].items() if v}
        return {
            "rps": raw["requests"] / secs,
            "mbps": raw["bytes"] / secs / 1e6,
            "requests": raw["requests"],
            "seconds": round(secs, 3),
            "p50_ms": lat["p50"] / 1000,
            "p90_ms": lat["p90"] / 1000,
            "p99_ms": lat["p99"] / 1000,
            "mean_ms": lat["mean"] / 1000,
            "max_ms": lat["max"] / 1000,
            "errors": errors,
            "conns": case.conns,
            "threads": case.threads,
            "new_conn_per_request": case.close,
            "url": self.url(case, lab),
        }

    def measure(self, case: Case, lab: Lab, label: str) -> dict[str, Any]:
        """Warm-up run, then the measured run (plus the proxy's CPU time and RSS across it)."""
        if self.warmup > 0:
            self.wrk(case, lab, self.warmup)
        cpu0 = cpu_seconds(self.pid) if self.pid else None
        r = self.wrk(case, lab, self.duration)
        if self.pid and cpu0 is not None:
            cpu = cpu_seconds(self.pid) - cpu0
            r["proxy_cpu_s"] = round(cpu, 3)
            r["proxy_cpu_util"] = round(cpu / r["seconds"], 3)  # 1.0 = one core busy
            r["proxy_cpu_us_per_req"] = round(1e6 * cpu / r["requests"], 1) if r["requests"] else None
            r["proxy_rss_kib"] = rss_kib(self.pid)["rss_kib"]
        err = f"  ERRORS {r['errors']}" if r["errors"] else ""
        cpu_s = (f" proxy CPU {r['proxy_cpu_util']:4.0%} {r['proxy_cpu_us_per_req']:6.0f} us/req"
                 if r.get("proxy_cpu_us_per_req") else "")
        log(f"  {label:12s} {case.key:14s} {r['rps']:9.0f} req/s {r['mbps']:7.1f} MB/s "
            f"p50 {r['p50_ms']:7.3f} ms p99 {r['p99_ms']:7.3f} ms{cpu_s}{err}")
        return r


class _ProxyRunner(Runner):
    """wrk against a forward proxy: the connection goes to the proxy, the request line carries the
    absolute URI (the script's `request`)."""

    def __init__(self, *args: Any, proxy: str, **kw: Any):
        super().__init__(*args, **kw)
        self.proxy = proxy

    def url(self, case: Case, lab: Lab) -> str:
        return self.proxy + "/"


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One figure per field from several rounds of a case: the median (plus the rounds themselves)."""
    if len(rounds) == 1:
        return dict(rounds[0])
    out: dict[str, Any] = {}
    for k, v in rounds[0].items():
        vals = [r.get(k) for r in rounds]
        if k not in ("conns", "threads") and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vals):
            out[k] = statistics.median(vals)
        else:
            out[k] = v
    errors: dict[str, int] = collections.Counter()
    for r in rounds:
        errors.update(r.get("errors") or {})
    out["errors"] = dict(errors)
    out["rounds"] = [{k: r.get(k) for k in ("rps", "mbps", "p50_ms", "p99_ms", "proxy_cpu_us_per_req")} for r in rounds]
    out["rps_spread_pct"] = round(100 * (max(r["rps"] for r in rounds) - min(r["rps"] for r in rounds))
                                  / statistics.median(r["rps"] for r in rounds), 1)
    return out


def sanity(ns: str, lab: Lab, cacert: str | Path, what: str) -> None:
    """A verifying client (curl --cacert) gets nginx's answers over this path, HTTP and HTTPS."""
    checks = [
        (f"https://{HOST}:{lab.nginx_https_port}/", "ok"),
        (f"http://{HOST}:{lab.nginx_http_port}/", "ok"),
    ]
    for url, body in checks:
        p = run(["ip", "netns", "exec", ns, "curl", "-sS", "-m", "10", "--cacert", str(cacert),
                 "-w", "\n%{http_code}", url], check=False, timeout=30)
        text, _, code = p.stdout.rpartition("\n")
        if p.returncode != 0 or code != "200" or text.strip() != body:
            raise BenchError(f"{what}: sanity check {url} failed (exit {p.returncode}, status {code!r}): "
                             f"{p.stderr.strip()} {text.strip()[:200]}")
    url = f"https://{HOST}:{lab.nginx_https_port}/bytes/1m"
    p = run(["ip", "netns", "exec", ns, "curl", "-sS", "-m", "20", "--cacert", str(cacert), "-o", "/dev/null",
             "-w", "%{http_code} %{size_download}", url], check=False, timeout=30)
    if p.stdout.strip() != f"200 {1024 * 1024}":
        raise BenchError(f"{what}: sanity check {url} failed: {p.stdout.strip()} {p.stderr.strip()}")


# ---- profiling ----------------------------------------------------------------------------------------


def profile(pid: int, runner: Runner, lab: Lab, case: Case, seconds: float, out_dir: Path, tag: str) -> dict[str, Any]:
    """py-spy the proxy while `case` loads it; returns a summary (also written as text)."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists() and not shutil.which(pyspy):
        log("py-spy not installed (pip install py-spy): no profile")
        return {"error": "py-spy not installed"}
    raw_path = out_dir / f"profile-{tag}.collapsed"
    svg_path = out_dir / f"profile-{tag}.svg"
    common = ["--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200", "--nonblocking", "--idle"]
    spies = [
        subprocess.Popen([pyspy, "record", *common, "--format", "raw", "-o", str(raw_path)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True),
        subprocess.Popen([pyspy, "record", *common, "--format", "flamegraph", "-o", str(svg_path)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True),
    ]
    time.sleep(0.3)
    load = runner.wrk(case, lab, seconds + 2)
    for s in spies:
        try:
            _, err = s.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            s.kill()
            err = "timeout"
        if s.returncode != 0:
            log(f"py-spy exited {s.returncode}: {err.strip()[-500:]}")
    summary = summarize_profile(raw_path) if raw_path.exists() else {"error": "no raw profile"}
    summary["load"] = {k: load[k] for k in ("rps", "p50_ms", "p99_ms")}
    summary["case"] = case.key
    summary["svg"] = str(svg_path) if svg_path.exists() else None
    (out_dir / f"profile-{tag}.txt").write_text(format_profile(summary, tag))
    return summary


_ENTRY = {"<module> (gateway/__main__.py)", "main (gateway/cli.py)", "_run (gateway/commands/run.py)",
          "run (gateway/app.py)", "Gateway.run (gateway/app.py)"}
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _bucket(file: str) -> str:
    """Area of a py-spy frame's file (py-spy prints paths relative to sys.path: gateway/..., asyncio/...)."""
    f = file.replace("\\", "/")
    for marker in ("/site-packages/", "/lib/python3.12/", str(REPO) + "/"):
        if marker in f:
            f = f.split(marker, 1)[1]
    top = f.strip("<>").replace("frozen ", "").split("/", 1)[0].split(".", 1)[0]
    if top == "gateway" or top == "netns":
        return "egressgw (gateway/*)"
    areas = {
        "mitmproxy": "mitmproxy", "asyncio": "asyncio", "selectors": "asyncio",
        "ssl": "TLS (ssl / pyOpenSSL / cryptography)", "OpenSSL": "TLS (ssl / pyOpenSSL / cryptography)",
        "cryptography": "TLS (ssl / pyOpenSSL / cryptography)", "h11": "h11/h2", "h2": "h11/h2",
        "hpack": "h11/h2", "tornado": "tornado", "dns": "dnspython", "logging": "logging",
    }
    if top in areas:
        return areas[top]
    if top in sys.stdlib_module_names or top == "string":
        return "other stdlib (contextlib, dataclasses, encodings, ...)"
    return "other"


def summarize_profile(raw_path: Path) -> dict[str, Any]:
    total = 0
    idle = 0
    empty = 0
    ours = 0  # samples with a gateway/* frame other than the entry chain below
    self_fn: collections.Counter[str] = collections.Counter()
    incl_fn: collections.Counter[str] = collections.Counter()
    self_bucket: collections.Counter[str] = collections.Counter()
    incl_ours: collections.Counter[str] = collections.Counter()  # inclusive, gateway/* frames only
    incl_cred: collections.Counter[str] = collections.Counter()  # inclusive, credentials code only
    self_cred: collections.Counter[str] = collections.Counter()
    cred_any = 0  # samples with a credentials frame anywhere on the stack
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        frames = [f for f in stack.split(";") if f]
        if frames and frames[0].startswith("process "):
            frames = frames[1:]
        if frames and frames[0].startswith("thread "):
            frames = frames[1:]
        if not frames:  # no Python frame at that instant (native code, or a torn --nonblocking read)
            empty += count
            continue
        total += count
        parsed = []
        for fr in frames:
            m = _FRAME.match(fr)
            parsed.append((m.group("func"), m.group("file") or "") if m else (fr, ""))
        if not parsed:
            continue
        leaf_func, leaf_file = parsed[-1]
        if leaf_func.endswith((".select", ".poll")) and leaf_file.endswith("selectors.py"):
            idle += count  # waiting in epoll: the event loop had nothing to do
        if any(_bucket(file).startswith("egressgw") and f"{func} ({_short(file)})" not in _ENTRY
               for func, file in parsed):
            ours += count
        key = f"{leaf_func} ({_short(leaf_file)})"
        self_fn[key] += count
        if _is_cred(leaf_file):
            self_cred[key] += count
        if any(_is_cred(file) for _func, file in parsed):
            cred_any += count
        self_bucket[_bucket(leaf_file)] += count
        seen = set()
        for func, file in parsed:
            k = f"{func} ({_short(file)})"
            if k in seen:
                continue
            seen.add(k)
            incl_fn[k] += count
            if _bucket(file).startswith("egressgw") and k not in _ENTRY:
                incl_ours[k] += count
            if _is_cred(file):
                incl_cred[k] += count
    pct = (lambda c: round(100.0 * c / total, 1)) if total else (lambda c: 0.0)
    return {
        "samples": total,
        "samples_without_python_stack": empty,
        "idle_pct": pct(idle),
        "gateway_inclusive_pct": pct(ours),
        "self_by_area": {k: pct(v) for k, v in self_bucket.most_common()},
        "top_self": [(k, pct(v)) for k, v in self_fn.most_common(25)],
        "top_inclusive": [(k, pct(v)) for k, v in incl_fn.most_common(40)],
        "top_inclusive_gateway": [(k, pct(v)) for k, v in incl_ours.most_common(25)],
        "credentials_inclusive_pct": pct(cred_any),
        "credentials_self_pct": pct(sum(self_cred.values())),
        "credentials_inclusive": [(k, pct(v)) for k, v in incl_cred.most_common(25)],
        "credentials_self": [(k, pct(v)) for k, v in self_cred.most_common(15)],
    }


def _is_cred(file: str) -> bool:
    """A frame of the credentials code: the addon and what it calls in gateway/secrets/."""
    f = _short(file)
    return f == "gateway/addons/credentials.py" or f.startswith("gateway/secrets/")


def _short(file: str) -> str:
    f = file.replace("\\", "/")
    for marker in ("/site-packages/", "/lib/python3.12/", str(REPO) + "/"):
        if marker in f:
            return f.split(marker, 1)[1]
    return f


def format_profile(s: dict[str, Any], tag: str) -> str:
    if "error" in s:
        return f"profile {tag}: {s['error']}\n"
    lines = [f"profile {tag}: {s['samples']} samples under {s['case']} "
             f"({s['load']['rps']:.0f} req/s while sampled); event-loop idle {s['idle_pct']}%; "
             f"samples inside gateway/* code (inclusive): {s['gateway_inclusive_pct']}%", "",
             f"(percentages of the {s['samples']} samples with a Python stack; "
             f"{s['samples_without_python_stack']} samples had none)", "", "self time by area:"]
    lines += [f"  {v:5.1f}%  {k}" for k, v in s["self_by_area"].items()]
    lines += ["", "top self time:"] + [f"  {v:5.1f}%  {k}" for k, v in s["top_self"]]
    lines += ["", "top inclusive (gateway/* frames):"] + [f"  {v:5.1f}%  {k}" for k, v in s["top_inclusive_gateway"]]
    lines += ["", f"credentials code (gateway/addons/credentials.py, gateway/secrets/*): "
              f"{s['credentials_inclusive_pct']}% inclusive, {s['credentials_self_pct']}% self", "  inclusive:"]
    lines += [f"  {v:5.1f}%  {k}" for k, v in s["credentials_inclusive"]]
    lines += ["  self:"] + [f"  {v:5.1f}%  {k}" for k, v in s["credentials_self"]]
    lines += ["", "top inclusive (all):"] + [f"  {v:5.1f}%  {k}" for k, v in s["top_inclusive"]]
    return "\n".join(lines) + "\n"


# ---- the three paths ----------------------------------------------------------------------------------


@dataclass
class Target:
    """One way to the origin: where the client runs, what it trusts, which proxy process (if any)."""

    name: str
    runner: Runner
    cacert: Path
    pid: int | None = None


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        main_ = args.only in (None, "main")
        self.cases = [c for c in cases(args.bulk_conns) if main_ and (not args.cases or c.key in args.cases)]
        self.paths = args.paths if main_ else ["egressgw"]
        self.credentials = args.only in (None, "credentials") and "egressgw" in self.paths
        self.detection = args.only == "detection"  # bench/detection_cost.py; only when asked for
        self.extras = args.only in (None, "extras") and "egressgw" in self.paths  # bench/extras.py
        self.results: dict[str, Any] = {"paths": {}, "memory": {}, "profiles": {}}
        self.out = Path(args.out)
        self.tag = secrets.token_hex(2)
        self.stack = contextlib.ExitStack()  # everything we start/create, undone in reverse order
        self.gw: LabGateway | None = None
        self.egw_info: dict[str, Any] = {}  # `sandbox up --json` of the egressgw path's sandbox (= sandbox A)
        self.cred_env: dict[str, str] = {}  # the gateway's environment for the env:// secret sources
        self.cred_specs: list[dict[str, Any]] = []

    def close(self) -> None:
        """Undo everything (idempotent); a second Ctrl-C must not cut the teardown short."""
        old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.stack.close()
        except Exception as e:  # noqa: BLE001 - every callback has run; say what failed
            log(f"WARNING: cleanup: {e}")
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def run(self) -> dict[str, Any]:
        preflight()
        self.out.mkdir(parents=True, exist_ok=True)
        for old in self.out.glob("profile-*"):  # profiles of an earlier run would mislead
            old.unlink()
        a = self.args
        self.results["machine"] = machine()
        self.results["code"] = code_version()
        mine = (f"egb{self.tag}-", f"egw-bm{self.tag}", f"egw-be{self.tag}", f"egw-bc{self.tag}", f"egw-bn{self.tag}",
                f"egw-bf{self.tag}", f"egw-bx{self.tag}", f"egw-bp{self.tag}")  # bx/bp: the extras' own sandboxes
        self.results["activity"] = {"start": others_running(mine)}
        if self.results["activity"]["start"]["foreign_netns"]:
            log(f"WARNING: other namespaces exist ({' '.join(self.results['activity']['start']['foreign_netns'])}): "
                "another lab or test run may compete for the CPUs")
        self.results["config"] = {
            "warmup_s": a.warmup, "duration_s": a.duration, "rounds": a.rounds, "bulk_conns": a.bulk_conns,
            "reuse_idle_s": a.reuse_idle,
            "nginx_workers": a.nginx_workers, "policy_rules": POLICY.count("- name:"), "paths": self.paths,
            "cases": [c.key for c in self.cases], "only": a.only,
            "credentials": {"rounds": a.cred_rounds, "duration_s": a.cred_duration, "cases": list(CRED_CASES)}
            if self.credentials else None,
        }
        started = time.monotonic()
        self.stack.callback(self._last_resort)
        lab = Lab(prefix=f"egb{self.tag}", nginx=True, nginx_workers=a.nginx_workers, record=False)
        self.stack.callback(lab.stop)
        log(f"starting lab {lab.prefix} (nginx, DNS) ...")
        lab.start()
        targets_ = [getattr(self, f"setup_{p}")(lab) for p in self.paths]
        for t in targets_:
            sanity(t.runner.ns, lab, t.cacert, t.name)
            if t.pid:
                self.results["memory"][t.name] = {"start_rss_kib": rss_kib(t.pid)["rss_kib"]}
        cred = self.setup_credentials(lab, next(t for t in targets_ if t.name == "egressgw")) if self.credentials else None
        proxies = [t for t in targets_ if t.pid]
        measured: dict[str, dict[str, list[dict[str, Any]]]] = {t.name: {} for t in targets_}
        log(f"measuring {len(self.cases)} cases; proxies interleaved, {a.rounds} round(s) each, "
            f"{a.warmup:g} s warm-up + {a.duration:g} s per run")
        for case in self.cases:
            for t in targets_:
                if not t.pid:  # direct: one round (it is not what is being compared)
                    measured[t.name][case.key] = [t.runner.measure(case, lab, t.name)]
            for r in range(a.rounds):
                # alternate the order so neither proxy always runs first (drift, caches, nginx state)
                order = proxies if r % 2 == 0 else proxies[::-1]
                for t in order:
                    if t.name == "squid" and case.scheme == "https":
                        continue  # a forward proxy: wrk cannot tunnel through CONNECT (bench/extras.py)
                    measured[t.name].setdefault(case.key, []).append(t.runner.measure(case, lab, f"{t.name}#{r + 1}"))
        for name, per_case in measured.items():
            self.results["paths"][name] = {k: combine(v) for k, v in per_case.items() if v}
        for t in proxies:
            self.results["memory"][t.name].update(rss_kib(t.pid))
            before_bulk = [r.get("proxy_rss_kib") for k, r in self.results["paths"][t.name].items() if k != "https_bulk"]
            if before_bulk and all(before_bulk):
                # the 1 MiB bodies are buffered whole (several at once): most of the growth comes from them
                self.results["memory"][t.name]["before_bulk_rss_kib"] = max(before_bulk)
        if cred is not None:
            self.measure_credentials(lab, cred)
        if self.detection:
            self.measure_detection(lab, next(t for t in targets_ if t.name == "egressgw"))
        if self.extras:
            self.measure_extras(lab, next(t for t in targets_ if t.name == "egressgw"))
        self._flow_log_check()
        for t in proxies:
            if self.cases and (a.profile == "always"
                               or (a.profile == "auto" and t.name == "egressgw" and self._missed())):
                self.results["profiles"][t.name] = self._profile(t, lab)
        if cred is not None and (a.profile == "always" or (a.profile == "auto" and
                                                           self.results["credentials"]["result"] == "MISS")):
            self.results["credentials"]["profiles"] = self._profile_credentials(lab, cred)
        self.results["activity"]["end"] = others_running(mine)
        self.results["elapsed_s"] = round(time.monotonic() - started, 1)
        return self.results

    # -- the paths --------------------------------------------------------------------
    def setup_direct(self, lab: Lab) -> Target:
        log("path direct: wrk in the lab gateway namespace -> nginx")
        return Target("direct", Runner(lab.gw_ns, self.args.warmup, self.args.duration), Path(lab.ca_cert))

    def _netns_call(self, lab: Lab, code: str, *argv: str) -> str:
        return run([*ns_enter(lab.gw_ns), sys.executable, "-c", code, *argv],
                   cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)}).stdout

    def setup_mitmdump(self, lab: Lab) -> Target:
        log("path mitmdump: sandbox netns (netns.up) -> mitmdump --mode transparent -> nginx")
        base = lab.work / "mitmdump"
        confdir = base / "confdir"
        # The egressgw sandbox's state dir, deliberately: a netns state dir owns the egw* veths and
        # egressgw_* tables of its gateway namespace, and `up` sweeps those no state file of its own
        # claims -- so a second state dir in the same namespace would get its sandbox swept away.
        state = self.gateway(lab).dir / "state"
        confdir.mkdir(parents=True, exist_ok=True)
        state.mkdir(parents=True, exist_ok=True)
        name = f"bm{self.tag}"
        logf = open(base / "mitmdump.log", "ab")
        proc = subprocess.Popen(
            [*ns_enter(lab.gw_ns), mitmdump_path(), "--mode", f"transparent@0.0.0.0:{MITM_PORT}",
             "--set", "connection_strategy=lazy", "--set", f"ssl_verify_upstream_trusted_ca={lab.ca_cert}",
             "--set", f"confdir={confdir}", "-q"],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        self.stack.callback(_stop_group, proc)
        self._wait_listen(lab, proc, MITM_PORT, base / "mitmdump.log", "mitmdump")
        code = ("import json, sys, netns\n"
                "sb = netns.up(sys.argv[1], transparent_port=int(sys.argv[2]), dns_port=int(sys.argv[3]),"
                " pool=sys.argv[4], state_dir=sys.argv[5])\n"
                "print(json.dumps(sb.__dict__))\n")
        down = "import sys, netns\nnetns.down(sys.argv[1], state_dir=sys.argv[2])\n"
        self.stack.callback(lambda: self._netns_call(lab, down, name, str(state)))
        sb = json.loads(self._netns_call(lab, code, name, str(MITM_PORT), str(MITM_DNS_PORT), MITM_POOL, str(state)))
        etc = Path("/etc/netns") / sb["netns"]
        etc.mkdir(parents=True, exist_ok=True)
        self.stack.callback(shutil.rmtree, etc, True)
        # No DNS in this sandbox: `ip netns exec` bind-mounts this file over /etc/hosts.
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n{lab.hosts[HOST]} {HOST}\n")
        runner = Runner(sb["netns"], self.args.warmup, self.args.duration, pid=proc.pid)
        return Target("mitmdump", runner, confdir / "mitmproxy-ca-cert.pem", proc.pid)

    def setup_squid(self, lab: Lab) -> Target:
        log(f"path squid: wrk in the gateway namespace -> squid forward proxy 127.0.0.1:{extras.SQUID_PORT} -> nginx "
            "(HTTP only)")
        proc = extras.start_squid(lab, lab.work, HOST, _stop_group)
        self.stack.callback(_stop_group, proc)
        target = f"http://{HOST}:{lab.nginx_http_port}"
        runner = _ProxyRunner(lab.gw_ns, self.args.warmup, self.args.duration, pid=extras.squid_pid(proc),
                              script=extras.squid_script(LUA, lab.work, target + "/"),
                              proxy=f"http://127.0.0.1:{extras.SQUID_PORT}")
        return Target("squid", runner, Path(lab.ca_cert), runner.pid)

    def _extra_sandbox(self, lab: Lab, gw: LabGateway, what: str, policy_text: str, name: str) -> dict[str, Any]:
        """A sandbox with its own policy on the egressgw path's gateway (taken down at the end)."""
        policy = lab.work / f"{what}.yaml"
        policy.write_text(policy_text)
        load_policy_text(policy_text, str(policy))
        self.stack.callback(self._sandbox_down, gw, name)
        return gw.sandbox_up(name, policy)

    def measure_extras(self, lab: Lab, egw: Target) -> None:
        """DNS queries/s (direct vs through egressgw) and 1 GiB transfers through egressgw."""
        gw = self.gateway(lab)
        info = self._extra_sandbox(lab, gw, "bench-extras", extras.POLICY, f"bx{self.tag}")
        out: dict[str, Any] = {"policy": "bench-extras (1 rule; DNS rate limit raised; bench host exempt from the "
                                         "DNS tunnel volume signal)"}
        log("extras: DNS queries/s with dnsperf (direct to the lab resolver, then through egressgw)")
        out["dns"] = {
            "direct": extras.dnsperf(lab.gw_ns, lab.dns_addr, HOST, work=lab.work),
            "egressgw": extras.dnsperf(info["netns"], extras.nameserver(info["netns"]), HOST, work=lab.work),
        }
        for k, v in out["dns"].items():
            log(f"  dns {k:9s} {v['qps']:9.0f} q/s  avg {v['avg_ms']} ms  lost {v['lost']}")
        assert gw.proc is not None
        cacert = gw.dir / "ca" / "sandbox-ca-bundle.pem"
        log("extras: 1 GiB download (nginx) and 1 GiB upload (Python origin) through egressgw over HTTPS")
        out["download_1g"] = extras.transfer(info["netns"], gw.proc.pid, cacert,
                                             f"https://{HOST}:{lab.nginx_https_port}/bytes/1g")
        blob = extras.sparse_file(lab.work / "upload-1g")
        self.stack.callback(blob.unlink, True)
        out["upload_1g"] = extras.transfer(info["netns"], gw.proc.pid, cacert, f"https://{HOST}/upload-1g", upload=blob)
        log("extras: `inspect: false` (TLS passed through) vs intercepted, same host, same gateway")
        pinfo = self._extra_sandbox(lab, gw, "bench-passthrough", extras.PASSTHROUGH_POLICY, f"bp{self.tag}")
        out["passthrough_download_1g"] = extras.transfer(pinfo["netns"], gw.proc.pid, cacert,
                                                         f"https://{HOST}:{lab.nginx_https_port}/bytes/1g")
        ka = next(c for c in cases(self.args.bulk_conns) if c.key == "https_ka_c10")
        out["https_ka_c10"] = {
            "intercepted": Runner(info["netns"], self.args.warmup, self.args.duration, pid=gw.proc.pid).measure(
                ka, lab, "intercepted"),
            "passthrough": Runner(pinfo["netns"], self.args.warmup, self.args.duration, pid=gw.proc.pid).measure(
                ka, lab, "passthrough"),
        }
        for k in ("download_1g", "upload_1g", "passthrough_download_1g"):
            v = out[k]
            log(f"  {k:24s} {v['mbps']:7.1f} MB/s  gateway CPU {v['gateway_cpu_s_per_gb']} s/GB  "
                f"RSS {v['rss_start_mib']} -> peak {v['rss_peak_mib']} MiB (+{v['rss_growth_mib']})")
        self.results["extras"] = out

    def setup_egressgw(self, lab: Lab) -> Target:
        log("path egressgw: `egressgw sandbox up` sandbox -> egressgw run (LabGateway) -> nginx")
        policy_path = lab.work / "bench-policy.yaml"
        policy_path.write_text(POLICY)
        load_policy_text(POLICY, str(policy_path))  # fail early and clearly if the format moved on
        name = f"be{self.tag}"
        gw = self.gateway(lab)
        if self.credentials:
            # sandbox B's secrets: env:// sources are read from the gateway's own environment
            self.cred_specs, self.cred_env = bench_secrets(gw.dir)
        self.stack.callback(gw.stop)
        gw.start(env=self.cred_env)
        self.stack.callback(self._sandbox_down, gw, name)
        info = gw.sandbox_up(name, policy_path)
        self.egw_info = info
        assert gw.proc is not None
        # In this sandbox names resolve through the gateway's DNS listener (its resolv.conf).
        runner = Runner(info["netns"], self.args.warmup, self.args.duration, pid=gw.proc.pid)
        return Target("egressgw", runner, gw.dir / "ca" / "sandbox-ca-bundle.pem", gw.proc.pid)

    # -- the credentials section ------------------------------------------------------------
    def setup_credentials(self, lab: Lab, egw: Target) -> dict[str, Any]:
        """Sandbox B (the bench policy plus 10 secrets) next to the egressgw path's sandbox A (no secrets).

        Both send the same three credential headers: in B the placeholders of three of its secrets (substituted
        on every request), in A random values of the same lengths and prefixes that are no placeholders. One
        curl through each checks the answer and what the flow log says about secrets."""
        gw = self.gateway(lab)
        log(f"credentials: sandbox B = bench policy + {len(self.cred_specs)} secrets (--secrets), "
            f"sandbox A = the egressgw path's sandbox (no secrets)")
        secrets_path = gw.dir / "bench-secrets.yaml"
        secrets_path.write_text(yaml.safe_dump(self.cred_specs, sort_keys=False))
        name = f"bc{self.tag}"
        self.stack.callback(self._sandbox_down, gw, name)
        info = gw.sandbox_up(name, lab.work / "bench-policy.yaml", "--secrets", str(secrets_path))
        env = info.get("env", {})
        missing = [n for n, *_ in BENCH_SECRETS if not env.get(n)]
        if missing:
            raise BenchError(f"credentials: `sandbox up --secrets` gave no placeholder for {missing}")
        used = [(n, h) for n, _make, _kind, h in BENCH_SECRETS if h]
        b_headers = tuple(h.format(env[n]) for n, h in used)
        a_headers = tuple(h.format(lookalike(env[n])) for n, h in used)
        assert [len(x) for x in a_headers] == [len(x) for x in b_headers]
        dur = self.args.cred_duration
        a = Runner(egw.runner.ns, self.args.warmup, dur, pid=egw.pid, headers=a_headers)
        b = Runner(info["netns"], self.args.warmup, dur, pid=egw.pid, headers=b_headers)
        expected = sorted(f"{n}@headers" for n, _ in used)
        cred = {"A": a, "B": b, "sessions": {"A": self.egw_info["session"], "B": info["session"]},
                "expected": expected, "headers": [h.split(":", 1)[0] for _, h in used]}
        for key, runner in (("A", a), ("B", b)):
            self._cred_check(lab, egw.cacert, runner, cred["sessions"][key], expected if key == "B" else None, key)
        log(f"credentials: checked: B's requests go out with {', '.join(expected)} substituted; A's with none")
        return cred

    def _cred_check(self, lab: Lab, cacert: Path, runner: Runner, session: str, want: list[str] | None,
                    key: str) -> None:
        gw = self.gateway(lab)
        before = len(gw.events(event="http", session=session))
        argv = ["ip", "netns", "exec", runner.ns, "curl", "-sS", "-m", "10", "--cacert", str(cacert),
                "-w", "\n%{http_code}"]
        for h in runner.headers:
            argv += ["-H", h]
        url = f"https://{HOST}:{lab.nginx_https_port}/"
        p = run([*argv, url], check=False, timeout=30)
        text, _, code = p.stdout.rpartition("\n")
        if p.returncode != 0 or code != "200" or text.strip() != "ok":
            raise BenchError(f"credentials: sandbox {key}: {url} with the credential headers failed "
                             f"(exit {p.returncode}, status {code!r}): {p.stderr.strip()} {text.strip()[:300]}")
        deadline = time.monotonic() + 5
        while True:
            evs = gw.events(event="http", session=session)[before:]
            if evs or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if not evs:
            raise BenchError(f"credentials: sandbox {key}: no flow-log event for the check request")
        ev = evs[-1]
        got = ev.get("secrets")
        if ev.get("decision") != "allow" or ev.get("status") != 200 or (got or None) != want:
            raise BenchError(f"credentials: sandbox {key}: flow log says decision={ev.get('decision')} "
                             f"status={ev.get('status')} secrets={got} reason={ev.get('reason')} "
                             f"(expected allow, 200, secrets={want})")

    def measure_credentials(self, lab: Lab, cred: dict[str, Any]) -> None:
        a = self.args
        cs = [c for c in cases(a.bulk_conns) if c.key in CRED_CASES]
        log(f"credentials: measuring {', '.join(c.key for c in cs)}; sandboxes A/B interleaved, "
            f"{a.cred_rounds} round(s) each")
        gw = self.gateway(lab)
        counts0 = {k: len(gw.events(event="http", session=sid)) for k, sid in cred["sessions"].items()}
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {"A": {}, "B": {}}
        for case in cs:
            for r in range(a.cred_rounds):
                for k in (("A", "B") if r % 2 == 0 else ("B", "A")):
                    runs[k].setdefault(case.key, []).append(cred[k].measure(case, lab, f"cred-{k}#{r + 1}"))
        res = {k: {c: combine(v) for c, v in per.items()} for k, per in runs.items()}
        # what the gateway did with the measured requests: every one of B's substituted, none refused
        verify: dict[str, Any] = {}
        for k, sid in cred["sessions"].items():
            evs = gw.events(event="http", session=sid)[counts0[k]:]
            # Events without a status: flows that failed before an answer, e.g. wrk closing its connections
            # at the end of a run with requests in flight. Counted, and a few kept, but not held against B.
            done = [e for e in evs if e.get("status") is not None]
            want = cred["expected"] if k == "B" else None
            odd = [e for e in evs if e.get("status") is None or (e.get("secrets") or None) != want
                   or e.get("decision") != "allow"]
            verify[k] = {
                "http_events": len(evs),
                "answered": len(done),
                "without_answer": len(evs) - len(done),
                "with_secrets": sum(1 for e in evs if e.get("secrets")),
                "answered_with_expected_secrets": sum(1 for e in done if (e.get("secrets") or None) == want),
                "denied": sum(1 for e in evs if e.get("decision") != "allow"),
                "status_403": sum(1 for e in evs if e.get("status") == 403),
                "wrk_errors": sum(sum(r.get("errors", {}).values()) for r in res[k].values()),
                "odd_samples": [{f: e.get(f) for f in ("decision", "status", "reason", "secrets", "alert", "detail")}
                                for e in odd[:5]],
            }
        ok = (verify["B"]["answered"] > 0
              and all(v["answered_with_expected_secrets"] == v["answered"] for v in verify.values())
              and verify["A"]["with_secrets"] == 0
              and not any(v["denied"] or v["status_403"] or v["wrk_errors"] for v in verify.values()))
        if not ok:
            log(f"WARNING: credentials: unexpected flow-log / wrk figures: {verify}")
        rows = []
        for label, case, field, unit, kind in CRED_ROWS:
            av, bv = res["A"].get(case, {}).get(field), res["B"].get(case, {}).get(field)
            r = _ratio(bv, av)
            row = {"metric": label, "case": case, "field": field, "unit": unit, "A": av, "B": bv,
                   "ratio": round(r, 3) if r is not None else None}
            if kind == "tput" and r is not None:
                row.update(target=f">= {CRED_TARGET:.2f}x", result="PASS" if r >= CRED_TARGET else "MISS")
            rows.append(row)
        per_round = [round(b["rps"] / a_["rps"], 3) for a_, b in zip(runs["A"]["https_ka_c10"], runs["B"]["https_ka_c10"])
                     ] if "https_ka_c10" in runs["A"] else []
        tput = next((r for r in rows if "result" in r), None)
        self.results["credentials"] = {
            "secrets": len(self.cred_specs),
            "secret_names": [s_["name"] for s_ in self.cred_specs],
            "sources": {k: sum(1 for s_ in self.cred_specs if s_["source"].startswith(k)) for k in ("env://", "file://")},
            "headers": cred["headers"],
            "substituted_per_request": cred["expected"],
            "rounds": a.cred_rounds,
            "duration_s": a.cred_duration,
            "sessions": cred["sessions"],
            "A": res["A"], "B": res["B"],
            "rows": rows,
            "rps_ratio_per_round": per_round,
            "ratio": tput["ratio"] if tput else None,
            "target": f">= {CRED_TARGET:.2f}x",
            "result": tput["result"] if tput else None,
            "verify": verify,
            "verified": ok,
        }

    def _profile_credentials(self, lab: Lab, cred: dict[str, Any]) -> dict[str, Any]:
        out = {}
        case = next(c for c in cases(self.args.bulk_conns) if c.key == "https_ka_c10")
        for k in ("B", "A"):
            runner = cred[k]
            assert runner.pid is not None
            log(f"profiling egressgw (pid {runner.pid}) with py-spy for {self.args.profile_seconds:.0f}s "
                f"under {case.key} from sandbox {k} ...")
            out[f"sandbox {k} {case.key}"] = profile(runner.pid, runner, lab, case, self.args.profile_seconds,
                                                    self.out, f"egressgw-credentials-{k}-{case.key}")
        return out

    # -- the detection section (bench/detection_cost.py) -------------------------------------------
    def measure_detection(self, lab: Lab, egw: Target) -> None:
        import detection_cost as dc

        a, gw = self.args, self.gateway(lab)
        on_text, off_text = dc.policies(POLICY)
        data = dc.body()
        headers = (*dc.HEADERS, dc.auth_header())
        script = dc.lua_script(LUA, lab.work / "bench-post.lua", data)
        runners, sessions = {}, {}
        for key, text in (("on", on_text), ("off", off_text)):
            path = lab.work / f"bench-detection-{key}.yaml"
            path.write_text(text)
            name = f"b{'n' if key == 'on' else 'f'}{self.tag}"
            self.stack.callback(self._sandbox_down, gw, name)
            info = gw.sandbox_up(name, path)
            sessions[key] = info["session"]
            runners[key] = Runner(info["netns"], a.warmup, a.cred_duration, pid=egw.pid, headers=headers,
                                  script=script)
            # one curl: the POST is answered by nginx and logged as an allow without detections
            before = len(gw.events(event="http", session=info["session"]))
            argv = ["ip", "netns", "exec", info["netns"], "curl", "-sS", "-m", "10", "--cacert", str(egw.cacert),
                    "-w", "\n%{http_code}", "--data-binary", "@-"]
            for h in headers:
                argv += ["-H", h]
            p = run([*argv, f"https://{HOST}:{lab.nginx_https_port}/"], check=False, timeout=30, input=data.decode())
            ev = dc.wait_event(gw, info["session"], before)
            if not p.stdout.endswith("\n200") or ev is None or ev.get("decision") != "allow" or ev.get("detections"):
                raise BenchError(f"detection: sandbox {key}: check POST failed: {p.stdout[-300:]} {p.stderr[-300:]} "
                                 f"event={ev}")
        log(f"detection: sandboxes ON ({sessions['on']}) and OFF ({sessions['off']}, detection.enabled: false); "
            f"POST {len(data)} B, {len(headers) + 2} headers; {a.cred_rounds} interleaved round(s)")
        case = Case("https_post_c10", "https", "/", 10, 2)
        counts0 = {k: len(gw.events(event="http", session=s_)) for k, s_ in sessions.items()}
        runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
        for r in range(a.cred_rounds):
            for k in (("off", "on") if r % 2 == 0 else ("on", "off")):
                runs[k].append(runners[k].measure(case, lab, f"det-{k}#{r + 1}"))
        res = {k: combine(v) for k, v in runs.items()}
        verify = {k: dc.verify(gw.events(event="http", session=s_)[counts0[k]:], s_) for k, s_ in sessions.items()}
        rows = []
        for label, field, unit, target in (("requests/s", "rps", "req/s", None),
                                           ("gateway CPU/request", "proxy_cpu_us_per_req", "us", dc.DET_TARGET),
                                           ("p50 latency", "p50_ms", "ms", None)):
            on, off = res["on"].get(field), res["off"].get(field)
            ratio = _ratio(on, off)
            row = {"metric": label, "field": field, "unit": unit, "on": on, "off": off,
                   "ratio": round(ratio, 3) if ratio is not None else None}
            if target and ratio is not None:
                row.update(target=f"<= {target:.2f}x", result="PASS" if ratio <= target else "MISS")
            rows.append(row)
        cpu_on, cpu_off = res["on"].get("proxy_cpu_us_per_req"), res["off"].get("proxy_cpu_us_per_req")
        self.results["detection"] = {
            "body_bytes": len(data), "headers": len(headers) + 2, "rounds": a.cred_rounds,
            "duration_s": a.cred_duration, "sessions": sessions, "on": res["on"], "off": res["off"],
            "rows": rows, "verify": verify,
            "cpu_ratio_per_round": [round(x["proxy_cpu_us_per_req"] / y["proxy_cpu_us_per_req"], 3)
                                    for x, y in zip(runs["on"], runs["off"])],
            "added_cpu_us": (cpu_on - cpu_off) if cpu_on and cpu_off else None,
            "added_cpu_pct": (100 * (cpu_on - cpu_off) / cpu_off) if cpu_on and cpu_off else None,
        }
        missed = any(r_.get("result") == "MISS" for r_ in rows)
        if a.profile == "always" or (a.profile == "auto" and missed):
            # where detection's time goes: the gateway under the ON sandbox's load (frames of
            # gateway/addons/detection.py, gateway/exfil/*, gateway/detect/* in the .txt)
            log(f"profiling egressgw with py-spy for {a.profile_seconds:.0f}s under the detection POST (sandbox ON)")
            self.results["detection"]["profile"] = profile(egw.pid, runners["on"], lab, case, a.profile_seconds,
                                                           self.out, "egressgw-detection-on")

    def _last_resort(self) -> None:
        """Runs last: remove any sandbox namespace of this run that the normal teardown left behind."""
        for name in (f"bm{self.tag}", f"be{self.tag}", f"bc{self.tag}", f"bn{self.tag}", f"bf{self.tag}"):
            ns = f"egw-{name}"
            if os.path.lexists(f"/run/netns/{ns}"):
                log(f"WARNING: {ns} was left behind; deleting it")
                run(["ip", "netns", "del", ns], check=False)
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)

    @staticmethod
    def _sandbox_down(gw: LabGateway, name: str) -> None:
        r = gw.cli("sandbox", "down", name, check=False)
        if r.returncode != 0:
            log(f"WARNING: egressgw sandbox down {name} failed ({r.returncode}): {r.stderr.strip()[-800:]}")

    def gateway(self, lab: Lab) -> LabGateway:
        """The LabGateway (created, not started, on first use)."""
        if self.gw is None:
            reuse = self.args.reuse_idle
            self.gw = LabGateway(lab, name="egressgw",
                                 extra_config={"upstream": {"reuseIdleSeconds": reuse}} if reuse is not None else None)
        return self.gw

    def _flow_log_check(self) -> None:
        gw = self.gw
        if gw is None or gw.proc is None:
            return
        events_ = gw.events()
        denied = sum(1 for e in events_ if e.get("decision") == "deny")
        allowed_http = sum(1 for e in events_ if e.get("event") == "http" and e.get("decision") == "allow")
        reasons = collections.Counter(f"{e.get('event')}:{e.get('reason')}" for e in events_ if e.get("decision") == "deny")
        self.results["egressgw_flow_log"] = {"http_allow_events": allowed_http, "deny_events": denied,
                                             "deny_reasons": dict(reasons)}
        if denied:
            log(f"WARNING: egressgw denied {denied} flows during the bench: {dict(reasons)}")

    def _profile(self, t: Target, lab: Lab) -> dict[str, Any]:
        out = {}
        for key in self.args.profile_case:
            case = next((c for c in cases(self.args.bulk_conns) if c.key == key))
            log(f"profiling {t.name} (pid {t.pid}) with py-spy for {self.args.profile_seconds:.0f}s under {key} ...")
            assert t.pid is not None
            out[key] = profile(t.pid, t.runner, lab, case, self.args.profile_seconds, self.out, f"{t.name}-{key}")
        return out

    def _missed(self) -> bool:
        return any(t["result"] == "MISS" for t in targets(self.results))

    @staticmethod
    def _wait_listen(lab: Lab, proc: subprocess.Popen, port: int, logfile: Path, what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"{what} exited with {proc.returncode}:\n{_tail(logfile)}")
            out = run([*ns_enter(lab.gw_ns), "ss", "-Hltn", f"sport = :{port}"], check=False).stdout
            if out.strip():
                return
            time.sleep(0.1)
        raise BenchError(f"{what} not listening on :{port} after {timeout}s:\n{_tail(logfile)}")


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _stop_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


# ---- reporting ------------------------------------------------------------------------------------------


def _get(results: dict[str, Any], path: str, case: str, field: str) -> float | None:
    return results["paths"].get(path, {}).get(case, {}).get(field)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for label, case, field, _unit, kind in ROWS:
        if kind == "info":
            continue
        r = _ratio(_get(results, "egressgw", case, field), _get(results, "mitmdump", case, field))
        if r is None:
            continue
        if kind == "tput":
            ok, goal = r >= THROUGHPUT_TARGET, f">= {THROUGHPUT_TARGET:.2f}x"
        else:
            ok, goal = r <= LATENCY_TARGET, f"<= {LATENCY_TARGET:.2f}x"
        out.append({"metric": label.format(bulk=results["config"]["bulk_conns"]), "case": case, "field": field,
                    "ratio": round(r, 3), "target": goal, "result": "PASS" if ok else "MISS"})
    return out


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "ms":
        return f"{v:.3f}"
    if unit == "MB/s":
        return f"{v:.1f}"
    if unit == "us":
        return f"{v:,.0f}"
    return f"{v:,.0f}"


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    c = results["config"]
    lines = [
        "# egressgw benchmark",
        "",
        f"machine: {m['nproc']} CPU, {m['cpu']}, kernel {m['kernel']}, Python {m['python']}, "
        f"mitmproxy {m['mitmproxy']}, {m['wrk']}, nginx {m['nginx']}",
        f"code: {results.get('code', {}).get('commit', '?')}"
        + (f" + {len(results['code']['dirty_files'])} modified files under gateway/ netns/"
           if results.get("code", {}).get("dirty_files") else ""),
        f"each case: {c['warmup_s']:g} s warm-up + {c['duration_s']:g} s measured with wrk, "
        f"proxies {c['rounds']} interleaved round(s) (median), direct 1; "
        f"keep-alive unless noted; 10 conn = wrk -t2 -c10, 1 conn = wrk -t1 -c1; "
        f"egressgw policy: {c['policy_rules']} rules",
    ]
    if c.get("cases"):
        lines += render_main(results)
    if results.get("credentials"):
        lines += render_credentials(results["credentials"])
    if results.get("extras"):
        lines += render_extras(results["extras"])
    if results.get("detection"):
        import detection_cost

        lines += detection_cost.render(results["detection"])
    act = results.get("activity", {})
    foreign = sorted(set(act.get("start", {}).get("foreign_netns", [])) | set(act.get("end", {}).get("foreign_netns", [])))
    if foreign:
        lines += ["", f"WARNING: other network namespaces existed during the run ({', '.join(foreign)}): "
                  "another lab/test run probably shared the CPUs; treat the figures as noisy"]
    lines.append("")
    lines.append(f"elapsed: {results.get('elapsed_s', 0):.0f} s")
    return "\n".join(lines) + "\n"


def render_main(results: dict[str, Any]) -> list[str]:
    c = results["config"]
    lines = [
        "",
        "| metric | direct | squid | mitmdump | egressgw | egressgw/mitmdump | egressgw/squid | egressgw/direct "
        "| target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    tmap = {(t["case"], t["field"]): t for t in targets(results)}
    for label, case, field, unit, _kind in ROWS:
        d, sq, mi, e = (_get(results, p, case, field) for p in ("direct", "squid", "mitmdump", "egressgw"))
        rm, rs, rd = _ratio(e, mi), _ratio(e, sq), _ratio(e, d)
        t = tmap.get((case, field))
        tcell = f"{t['result']} ({t['target']})" if t else ""
        lines.append(f"| {label.format(bulk=c['bulk_conns'])} ({unit}) | {_fmt(d, unit)} | {_fmt(sq, unit)} | "
                     f"{_fmt(mi, unit)} | {_fmt(e, unit)} | {f'{rm:.2f}x' if rm else '-'} | "
                     f"{f'{rs:.2f}x' if rs else '-'} | {f'{rd:.2f}x' if rd else '-'} | {tcell} |")
    mem = results.get("memory", {})
    mrow = []
    labels = {"start_rss_kib": "proxy RSS before load (MiB)",
              "before_bulk_rss_kib": "proxy RSS after all but the bulk case (MiB)",
              "rss_kib": "proxy RSS after run (MiB)",
              "hwm_kib": "proxy peak RSS (MiB)"}
    for key, label in labels.items():
        mi = mem.get("mitmdump", {}).get(key)
        e = mem.get("egressgw", {}).get(key)
        r = _ratio(e, mi)
        sq = mem.get("squid", {}).get(key)
        sqc = f"{sq / 1024:.1f}" if sq is not None else "-"
        mrow.append(f"| {label} | - | {sqc} | {mi / 1024:.1f} | {e / 1024:.1f} | {f'{r:.2f}x' if r else '-'} | - | - | |"
                    if mi is not None and e is not None else
                    f"| {label} | - | {sqc} | {_fmt(mi and mi / 1024, 'MB/s')} | {_fmt(e and e / 1024, 'MB/s')} "
                    f"| - | - | - | |")
    lines += mrow
    errs = []
    for path, rs in results["paths"].items():
        for case, r in rs.items():
            if r.get("errors"):
                errs.append(f"{path}/{case}: {r['errors']}")
    tl = targets(results)
    if tl:
        passed = sum(t["result"] == "PASS" for t in tl)
        lines += ["", f"targets (egressgw vs bare mitmdump): {passed}/{len(tl)} PASS"]
        lines += [f"- {t['result']}  {t['metric']}: {t['ratio']:.2f}x (target {t['target']})" for t in tl]
    if errs:
        lines += ["", "wrk errors (socket errors / non-2xx):"] + [f"- {e}" for e in errs]
    fl = results.get("egressgw_flow_log")
    if fl:
        lines += ["", f"egressgw flow log: {fl['http_allow_events']} allowed http events, {fl['deny_events']} denials"
                      + (f" ({', '.join(f'{k}: {v}' for k, v in fl.get('deny_reasons', {}).items())})" if fl['deny_events'] else "")]
    for tag, p in ((f"{proxy} {case}", p) for proxy, ps in results.get("profiles", {}).items()
                   if proxy != "credentials" for case, p in ps.items()):
        if "error" in p:
            continue
        lines += ["", f"profile {tag} ({p['load']['rps']:.0f} req/s while sampled, {p['samples']} samples, "
                  f"idle {p['idle_pct']}%, in gateway/* code {p['gateway_inclusive_pct']}% incl.): "
                  + ", ".join(f"{k} {v}%" for k, v in list(p["self_by_area"].items())[:6])]
        lines += [f"- self {v}%  {k}" for k, v in p["top_self"][:8]]
        if p["top_inclusive_gateway"]:
            lines += [f"- incl {v}%  {k}" for k, v in p["top_inclusive_gateway"][:8]]
    return lines


def render_extras(x: dict[str, Any]) -> list[str]:
    lines = ["", f"## DNS and 1 GiB transfers (egressgw sandbox with the {x['policy']})", ""]
    dns = x.get("dns")
    if dns:
        d, e = dns["direct"], dns["egressgw"]
        r = _ratio(e["qps"], d["qps"])
        lines += ["| metric | direct (lab resolver) | egressgw | egressgw/direct |", "|---|---:|---:|---:|",
                  f"| DNS queries/s, dnsperf -c 4 -q 64, one name (A + AAAA) | {d['qps']:,.0f} | {e['qps']:,.0f} | "
                  f"{f'{r:.2f}x' if r else '-'} |",
                  f"| DNS average latency (ms) | {d['avg_ms']} | {e['avg_ms']} | |",
                  f"| DNS queries lost | {d['lost']} | {e['lost']} | |", ""]
    rows = [(k, x[k]) for k in ("download_1g", "upload_1g", "passthrough_download_1g") if k in x]
    names = {"download_1g": "download (nginx), intercepted", "upload_1g": "upload (Python origin, detection on)",
             "passthrough_download_1g": "download (nginx), `inspect: false`"}
    if rows:
        lines += ["| 1 GiB over HTTPS through egressgw (curl) | MB/s | gateway CPU s/GB | gateway RSS start → peak (MiB) "
                  "| growth (MiB) | target |", "|---|---:|---:|---:|---:|---|"]
        for k, v in rows:
            ok = "PASS" if v["rss_growth_mib"] < 64 else "MISS"
            cpu = v.get("gateway_cpu_s_per_gb")
            lines.append(f"| {names[k]} | {v['mbps']:.1f} | {'-' if cpu is None else cpu} | "
                         f"{v['rss_start_mib']} → {v['rss_peak_mib']} | "
                         f"{v['rss_growth_mib']} | {ok} (< 64 MiB); bulk ≥ 1 GB/s: "
                         f"{'PASS' if v['mbps'] >= 1000 else 'MISS'} |")
    ka = x.get("https_ka_c10")
    if ka:
        i, p = ka["intercepted"]["rps"], ka["passthrough"]["rps"]
        dl = _ratio(x.get("passthrough_download_1g", {}).get("mbps"), x.get("download_1g", {}).get("mbps"))
        lines += ["", "| `inspect: false` vs intercepted | intercepted | passthrough | ratio | target |",
                  "|---|---:|---:|---:|---|",
                  f"| HTTPS keep-alive, 10 conn (req/s) | {i:,.0f} | {p:,.0f} | {p / i:.2f}x | "
                  f"{'PASS' if p / i >= 5 else 'MISS'} (≥ 5x) |"]
        if dl:
            lines.append(f"| 1 GiB download (MB/s) | {x['download_1g']['mbps']:.1f} | "
                         f"{x['passthrough_download_1g']['mbps']:.1f} | {dl:.2f}x | {'PASS' if dl >= 5 else 'MISS'} "
                         f"(≥ 5x) |")
    return lines


def render_credentials(cr: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"## credentials: {cr['secrets']} secrets in the session, substitution on",
        "",
        f"egressgw sandbox B: bench policy + {cr['secrets']} secrets ({cr['sources'].get('env://', 0)} env://, "
        f"{cr['sources'].get('file://', 0)} file://, approved for {HOST}, parts [headers]); every request carries "
        f"{', '.join(cr['headers'])} with placeholders of {len(cr['substituted_per_request'])} of them, substituted. "
        f"Sandbox A: same policy, no secrets, same headers with random values of the same lengths. "
        f"Same gateway; {cr['rounds']} interleaved A/B round(s) of {cr.get('duration_s', 0):g} s (median).",
        "",
        "| metric | A: no secrets | B: 10 secrets | B/A | target |",
        "|---|---:|---:|---:|---|",
    ]
    for row in cr["rows"]:
        unit = row["unit"]
        tcell = f"{row['result']} ({row['target']})" if row.get("result") else ""
        r = row["ratio"]
        lines.append(f"| {row['metric']} ({unit}) | {_fmt(row['A'], unit)} | {_fmt(row['B'], unit)} | "
                     f"{f'{r:.2f}x' if r else '-'} | {tcell} |")
    if cr.get("result"):
        lines += ["", f"target (requests/s with {cr['secrets']} secrets vs without): {cr['result']}  "
                  f"{cr['ratio']:.2f}x (target {cr['target']}); B/A per round: "
                  + ", ".join(f"{x:.2f}x" for x in cr.get("rps_ratio_per_round", []))]
    v = cr["verify"]
    lines += ["", f"checked: B: {v['B']['answered_with_expected_secrets']}/{v['B']['answered']} answered requests "
              f"(incl. warm-ups) logged with secrets {cr['substituted_per_request']}, {v['B']['denied']} denied, "
              f"{v['B']['status_403']} 403, {v['B']['wrk_errors']} wrk errors; A: {v['A']['with_secrets']}/"
              f"{v['A']['http_events']} with secrets, {v['A']['denied']} denied, {v['A']['wrk_errors']} wrk errors; "
              f"flows without an answer (client gone at a run's end): B {v['B']['without_answer']}, "
              f"A {v['A']['without_answer']}"
              + ("" if cr["verified"] else "  -- UNEXPECTED, see verify.*.odd_samples in the JSON")]
    for tag, p in cr.get("profiles", {}).items():
        if "error" in p:
            lines += ["", f"profile {tag}: {p['error']}"]
            continue
        lines += ["", f"profile egressgw, load from {tag} ({p['load']['rps']:.0f} req/s while sampled, "
                  f"{p['samples']} samples, idle {p['idle_pct']}%): credentials code "
                  f"(gateway/addons/credentials.py, gateway/secrets/*) {p['credentials_inclusive_pct']}% inclusive, "
                  f"{p['credentials_self_pct']}% self"]
        lines += [f"- incl {v_}%  {k}" for k, v_ in p["credentials_inclusive"][:10]]
        lines += [f"- self {v_}%  {k}" for k, v_ in p["credentials_self"][:6]]
    return lines


# ---- main ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per case (default 5)")
    ap.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per case (default 1; 0 = none)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="measured runs per case and proxy, interleaved mitmdump/egressgw; median reported (default 2)")
    ap.add_argument("--cases", nargs="+", choices=[c.key for c in cases(1)], help="only these cases")
    ap.add_argument("--bulk-conns", type=int, default=4, help="connections for the 1 MiB download (default 4)")
    ap.add_argument("--nginx-workers", type=int, default=2)
    ap.add_argument("--paths", nargs="+", default=["direct", "squid", "mitmdump", "egressgw"],
                    choices=["direct", "squid", "mitmdump", "egressgw"])
    ap.add_argument("--profile", choices=["auto", "always", "never"], default="auto",
                    help="py-spy the proxies: auto = egressgw only, if it misses a target (default)")
    ap.add_argument("--profile-case", nargs="+", default=["https_ka_c10", "https_new_c10"],
                    choices=[c.key for c in cases(1)], help="load(s) to profile under (default: %(default)s)")
    ap.add_argument("--profile-seconds", type=float, default=10.0)
    ap.add_argument("--only", choices=["main", "credentials", "detection", "extras"],
                    help="run one section: main (direct / squid / mitmdump / egressgw), credentials "
                         "(egressgw without secrets vs with 10 secrets), extras (DNS queries/s, 1 GiB "
                         "download and upload), or detection (a small POST with detection on vs off; only "
                         "when asked for); default main, credentials and extras")
    ap.add_argument("--cred-rounds", type=int, default=6,
                    help="credentials section: measured runs per case and sandbox, interleaved A/B (default 6)")
    ap.add_argument("--cred-duration", type=float, default=3.0,
                    help="credentials section: measured seconds per run (default 3; after the --warmup)")
    ap.add_argument("--reuse-idle", type=float, default=None, metavar="SECONDS",
                    help="egressgw's upstream.reuseIdleSeconds (default: the gateway's, 2; 0 = no upstream reuse)")
    ap.add_argument("--out", default=str(BENCH / "results"), help="results directory")
    args = ap.parse_args(argv)

    bench = Bench(args)
    atexit.register(bench.close)

    def on_signal(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored (`cmd &`)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        results = bench.run()
    except BenchError as e:
        log(f"FAILED: {e}")
        return 2
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    except SystemExit as e:
        log("stopped by a signal; cleaning up")
        return int(e.code or 1)
    finally:
        bench.close()
    results["targets"] = targets(results)
    det = results.get("detection")
    cpu_row = next((r for r in det["rows"] if r.get("result")), None) if det else None
    if cpu_row:
        results["targets"].append({"metric": "detection: gateway CPU/request, small POST, on vs off",
                                   "case": "https_post_c10", "field": cpu_row["field"], "ratio": cpu_row["ratio"],
                                   "target": cpu_row["target"], "result": cpu_row["result"]})
    cr = results.get("credentials")
    if cr and cr.get("result"):
        results["targets"].append({"metric": "credentials: HTTPS keep-alive, 10 conn, 10 secrets vs none",
                                   "case": "https_ka_c10", "field": "rps", "ratio": cr["ratio"],
                                   "target": cr["target"], "result": cr["result"]})
    md = render(results)
    out = Path(args.out)
    (out / "latest.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "latest.md").write_text(md)
    print(md, end="")
    log(f"wrote {out / 'latest.json'} and {out / 'latest.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
