"""The benchmark's other measurements (bench/bench.py calls them in the same run):

* squid     Debian's squid as a plain forward proxy (wrk sends absolute-URI requests to it) in the
            lab's gateway namespace: the reference for what a non-Python proxy costs. HTTP only:
            wrk cannot tunnel through CONNECT, and squid does not intercept TLS without ssl-bump.
* dns       queries/s with dnsperf: straight at the lab's resolver (direct), and from a sandbox
            through egressgw's DNS listener (policy check, tunnel detection, forward upstream,
            flow log), for one cacheable name.
* transfer  a 1 GiB download (nginx) and a 1 GiB upload (the lab's Python origin) through
            egressgw over HTTPS with curl: MB/s and how far the gateway's RSS rose above where it
            started (sampled every 50 ms).
* passthrough  the same 1 GiB download and HTTPS keep-alive requests/s from a sandbox whose policy
            names the host `inspect: false` (TLS passed through by SNI, not intercepted), against
            the intercepting sandbox, in the same run.

Everything runs in the namespaces the lab and the bench create; nothing leaves them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

SQUID_PORT = 15128
DNS_SECONDS = 5
GIB = 1 << 30

# A policy for the DNS and transfer sandbox: the bench host allowed, its names exempt from the
# tunnel detector's volume signal (dnsperf asks one name tens of thousands of times), the DNS rate
# limit out of the way. Everything else (policy, detection on bodies, flow log) stays on.
POLICY = """\
apiVersion: egressgw.dev/v1alpha1
kind: EgressPolicy
metadata:
  name: bench-extras
spec:
  mode: enforce
  limits:
    dnsQueriesPerSecond: 1000000
    requestsPerSecond: 100000
  detection:
    rules:
      dns-tunnel: {allow: [{matchName: allowed.test}]}
  egress:
    - name: bench-origin
      hosts: [{matchName: allowed.test}]
      ports: [80, 443, 8080, 8443]
"""


PASSTHROUGH_POLICY = """\
apiVersion: egressgw.dev/v1alpha1
kind: EgressPolicy
metadata:
  name: bench-passthrough
spec:
  mode: enforce
  limits:
    requestsPerSecond: 100000
  egress:
    - name: bench-origin
      hosts: [{matchName: allowed.test}]
      ports: [443, 8443]
      inspect: false
"""


def _run(argv: list[str], timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()[-800:]}")
    return p


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0])


# ---- squid ------------------------------------------------------------------------------------------

def start_squid(lab, work: Path, host: str, stop_group) -> subprocess.Popen:
    """squid -N (foreground) in the lab's gateway namespace on 127.0.0.1:SQUID_PORT, no cache, no
    access log, `host` resolved from a hosts file (squid asks no resolver for it)."""
    squid = shutil.which("squid") or "/usr/sbin/squid"
    base = work / "squid"
    base.mkdir(parents=True, exist_ok=True)
    shutil.chown(base, "proxy", "proxy")
    (base / "hosts").write_text(f"{lab.hosts[host]} {host}\n")
    conf = base / "squid.conf"
    conf.write_text(f"""\
http_port 127.0.0.1:{SQUID_PORT}
http_access allow all
cache deny all
cache_mem 0 MB
access_log none
cache_store_log none
cache_log {base / 'cache.log'}
pid_filename {base / 'squid.pid'}
coredump_dir {base}
hosts_file {base / 'hosts'}
dns_nameservers {lab.dns_addr}
workers 1
max_filedescriptors 16384
shutdown_lifetime 1 seconds
via off
forwarded_for delete
client_persistent_connections on
server_persistent_connections on
""")
    _run([squid, "-k", "parse", "-f", str(conf)])
    log = open(base / "squid.out", "ab")
    proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{lab.gw_ns}", "--", squid, "-N", "-f", str(conf)],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"squid exited ({proc.returncode}): {(base / 'cache.log').read_text()[-1500:]}")
        probe = subprocess.run(["nsenter", f"--net=/run/netns/{lab.gw_ns}", "--", "curl", "-sS", "-m", "3", "-x",
                                f"http://127.0.0.1:{SQUID_PORT}", f"http://{host}:{lab.nginx_http_port}/"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == "ok":
            return proc
        time.sleep(0.3)
    stop_group(proc)
    raise RuntimeError(f"squid did not serve within 20 s: {(base / 'cache.log').read_text()[-1500:]}")


def squid_script(base_lua: Path, work: Path, target_url: str) -> Path:
    """A wrk script sending absolute-URI requests (forward-proxy form) plus the JSON report."""
    path = work / "squid" / "wrk_proxy.lua"
    path.write_text(base_lua.read_text() + f"""
-- forward-proxy form: the request line carries the absolute URI, the connection goes to squid
request = function()
  return wrk.format("GET", "{target_url}", {{["Host"] = "{target_url.split('/')[2]}"}})
end
""")
    return path


def squid_pid(proc: subprocess.Popen) -> int:
    """The squid worker doing the proxying (its children), for CPU and RSS."""
    out = _run(["pgrep", "-P", str(proc.pid)], check=False).stdout.split()
    kids = [int(p) for p in out]
    while kids:  # nsenter -> squid master -> squid worker (kid1)
        deeper = [int(p) for k in kids for p in _run(["pgrep", "-P", str(k)], check=False).stdout.split()]
        if not deeper:
            return kids[-1]
        kids = deeper
    return proc.pid


# ---- DNS ----------------------------------------------------------------------------------------------

def dnsperf(ns: str, server: str, name: str, seconds: float = DNS_SECONDS, clients: int = 4,
            work: Path | None = None) -> dict[str, Any]:
    """dnsperf in namespace `ns` against `server`: queries/s, lost queries, average latency."""
    qfile = (work or Path("/tmp")) / f"dnsperf-{os.getpid()}.txt"
    qfile.write_text(f"{name} A\n{name} AAAA\n" * 50)
    p = _run(["ip", "netns", "exec", ns, "dnsperf", "-s", server, "-d", str(qfile), "-l", str(seconds),
              "-c", str(clients), "-q", "64", "-t", "2"], timeout=seconds + 60, check=False)
    qfile.unlink(missing_ok=True)
    text = p.stdout
    qps = re.search(r"Queries per second:\s+([\d.]+)", text)
    lost = re.search(r"Queries lost:\s+(\d+)", text)
    sent = re.search(r"Queries sent:\s+(\d+)", text)
    lat = re.search(r"Average Latency \(s\):\s+([\d.]+)", text)
    if p.returncode != 0 or not qps:
        raise RuntimeError(f"dnsperf failed in {ns} ({p.returncode}): {p.stderr.strip()[-500:]} {text[-500:]}")
    return {"qps": float(qps.group(1)), "sent": int(sent.group(1)) if sent else None,
            "lost": int(lost.group(1)) if lost else None,
            "avg_ms": round(float(lat.group(1)) * 1000, 3) if lat else None}


def nameserver(netns: str) -> str:
    """The resolver a sandbox's /etc/resolv.conf names (its gateway-side address)."""
    for line in Path("/etc/netns", netns, "resolv.conf").read_text().splitlines():
        if line.startswith("nameserver"):
            return line.split()[1]
    raise RuntimeError(f"no nameserver in /etc/netns/{netns}/resolv.conf")


# ---- 1 GiB transfers ---------------------------------------------------------------------------------

class _Peak:
    """Samples a process's RSS every 50 ms while a transfer runs."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, _rss_kib(pid), threading.Event()
        self.start = self.peak
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, _rss_kib(self.pid))
            except (OSError, IndexError):
                return
            time.sleep(0.05)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by `pid` and every process below it (worker processes)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue  # the process ended meanwhile
    return total


def transfer(ns: str, pid: int, cacert: Path, url: str, upload: Path | None = None) -> dict[str, Any]:
    """One curl transfer in `ns` (a download to /dev/null, or an upload of `upload`): MB/s, the
    gateway's CPU seconds per GB moved (steadier than MB/s on shared CPUs) and its RSS growth."""
    argv = ["ip", "netns", "exec", ns, "curl", "-sS", "-m", "300", "--cacert", str(cacert), "-o", "/dev/null",
            "-w", "%{http_code} %{size_download} %{size_upload} %{time_total}"]
    if upload is not None:
        argv += ["-T", str(upload), "-H", "Content-Type: application/octet-stream"]
    cpu0 = _tree_cpu_s(pid)
    with _Peak(pid) as peak:
        p = _run(argv + [url], timeout=330, check=False)
    cpu = _tree_cpu_s(pid) - cpu0
    parts = p.stdout.split()
    if p.returncode != 0 or len(parts) != 4 or parts[0] != "200":
        raise RuntimeError(f"transfer {url} failed ({p.returncode}): {p.stdout} {p.stderr.strip()[-300:]}")
    moved = int(parts[2] if upload is not None else parts[1])
    seconds = float(parts[3])
    return {"bytes": moved, "seconds": round(seconds, 2), "mbps": round(moved / seconds / 1e6, 1),
            "gateway_cpu_s_per_gb": round(cpu / (moved / 1e9), 2) if moved else None,
            "rss_start_mib": round(peak.start / 1024, 1), "rss_peak_mib": round(peak.peak / 1024, 1),
            "rss_growth_mib": round((peak.peak - peak.start) / 1024, 1)}


def sparse_file(path: Path, size: int = GIB) -> Path:
    """A file of `size` zero bytes that takes no disk space."""
    with open(path, "wb") as f:
        f.truncate(size)
    os.chmod(path, 0o644)
    return path
