"""Gateway CPU per new HTTPS connection through a real lab gateway: ca.leafKey `ca` vs `ecdsa`.

    sudo .venv/bin/python bench/leaf_key_lab.py [--connections 300] [--rounds 2]

A lab with nginx (`Lab(nginx=True)`), one `egressgw run` (`LabGateway`) and one sandbox with
bench.py's policy; the clients run in the sandbox against https://allowed.test:8443/ (nginx):

  full     python3: N connections one after another, each a full TLS handshake (no session offered),
           a GET, close: what curl, a new process, or requests/Go without a session cache do
  resumed  the same, each offering the previous connection's TLS session (ticket)
  wrk      wrk -t2 -c10 -d5s -H 'Connection: close' (bench.py's https_new_c10): wrk keeps its TLS
           session across its reconnections (SSL_clear), so it resumes too

The figure is the gateway's CPU (user+system from /proc) per connection. The gateway restarts with the
other leafKey between blocks (ca, ecdsa, ca, ecdsa, ...); the sandbox and its session stay (sqlite store).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import POLICY, cpu_seconds  # noqa: E402  (bench.py puts the repository on sys.path)
from gateway.lab.gateway import LabGateway  # noqa: E402
from gateway.lab.topology import Lab  # noqa: E402

CLIENT = r'''
import os, socket, ssl, sys
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
n, resume, session, reused = int(sys.argv[1]), sys.argv[2] == "resumed", None, 0
for _ in range(n):
    s = ctx.wrap_socket(socket.create_connection(("allowed.test", 8443)), server_hostname="allowed.test",
                        session=session)
    s.sendall(b"GET / HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:100]
    reused += s.session_reused
    if resume:
        session = s.session
    s.close()
print(reused)
'''


def measure(gw: LabGateway, sandbox: str, kind: str, n: int) -> tuple[float, str]:
    """(gateway CPU µs per connection, what the client said)."""
    assert gw.proc is not None
    if kind == "wrk":
        argv = ["wrk", "-t2", "-c10", "-d5s", "-H", "Connection: close", "https://allowed.test:8443/"]
    else:
        gw.sandbox_exec(sandbox, "python3", "-c", CLIENT, "5", kind, timeout=60)  # the leaf minted and cached
        argv = ["python3", "-c", CLIENT, str(n), kind]
    before = cpu_seconds(gw.proc.pid)
    r = gw.sandbox_exec(sandbox, *argv, timeout=600)
    spent = cpu_seconds(gw.proc.pid) - before
    if r.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {r.stderr.strip()[-800:]}")
    if kind == "wrk":
        done = int(re.search(r"(\d+) requests in", r.stdout).group(1))
        rps = re.search(r"Requests/sec:\s*([\d.]+)", r.stdout).group(1)
        return spent / done * 1e6, f"{done} requests, {rps} req/s"
    return spent / n * 1e6, f"{r.stdout.strip()}/{n} resumed"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=300, help="python connections per block (default 300)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    results: dict[tuple[str, str], list[float]] = {}
    with Lab(nginx=True) as lab:
        gw = LabGateway(lab, name="leafkey")
        config = yaml.safe_load(gw.config_path.read_text())
        policy = lab.work / "bench-policy.yaml"
        policy.write_text(POLICY)
        sandbox = "leafkey"
        try:
            for rnd in range(args.rounds):
                for leaf_key in ("ca", "ecdsa"):
                    config["ca"]["leafKey"] = leaf_key
                    gw.config_path.write_text(yaml.safe_dump(config))
                    gw.stop()
                    gw.start()
                    if not results:
                        gw.sandbox_up(sandbox, policy)
                    for kind in ("full", "resumed", "wrk"):
                        per, said = measure(gw, sandbox, kind, args.connections)
                        results.setdefault((kind, leaf_key), []).append(per)
                        print(f"round {rnd} leafKey {leaf_key:5} {kind:7} {per:6.0f} µs/conn ({said})", flush=True)
        finally:
            gw.sandbox_down(sandbox)
            gw.stop()
    print("| client | leafKey ca: gateway CPU µs/conn | leafKey ecdsa | ca - ecdsa |")
    print("|---|---:|---:|---:|")
    for kind in ("full", "resumed", "wrk"):
        a, b = (statistics.median(results[(kind, k)]) for k in ("ca", "ecdsa"))
        runs = {k: ", ".join(f"{x:.0f}" for x in results[(kind, k)]) for k in ("ca", "ecdsa")}
        print(f"| {kind} | {a:.0f} ({runs['ca']}) | {b:.0f} ({runs['ecdsa']}) | {a - b:.0f} |")


if __name__ == "__main__":
    main()
