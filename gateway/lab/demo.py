"""`make demo`: a gateway, a sandbox, one allowed and one refused request, the log and the metrics.

Everything runs in namespaces the demo creates (a local origin and resolver
included) and is removed at the end; `--keep` leaves it running until Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path

from gateway.lab import Lab
from gateway.lab.gateway import LabGateway

POLICY = Path(__file__).resolve().parents[2] / "policies" / "demo" / "demo.yaml"
BOLD, DIM, GREEN, RED, RESET = ("\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m") if sys.stdout.isatty() else ("",) * 5


def say(text: str = "") -> None:
    print(text, flush=True)


def show(gw: LabGateway, name: str, title: str, *cmd: str) -> int:
    say(f"\n{BOLD}{title}{RESET}\n{DIM}$ egressgw sandbox exec {name} -- {shlex.join(cmd)}{RESET}")
    r = gw.sandbox_exec(name, *cmd)
    for line in (r.stdout + r.stderr).strip().splitlines():
        say(f"  {line}")
    return r.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__)
    parser.add_argument("--keep", action="store_true", help="leave everything running until Ctrl-C")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        say("the demo creates network namespaces and nftables rules: run it as root (sudo make demo)")
        return 1
    name = "demo"
    with Lab() as lab:
        gw = LabGateway(lab).start()
        try:
            gw.sandbox_down(name)  # a demo left over from an interrupted run
            info = gw.sandbox_up(name, POLICY)
            say(f"{BOLD}sandbox {name}{RESET}: namespace {info['netns']}, address {info['address']}, "
                f"session {info['session']}, policy {POLICY.relative_to(Path.cwd()) if POLICY.is_relative_to(Path.cwd()) else POLICY}")
            say(f"{DIM}origin and resolver: namespace {lab.origin_ns} (allowed.test, denied.test, ...); "
                f"gateway: namespace {lab.gw_ns}{RESET}")
            ok = show(gw, name, "1. allowed: GET https://allowed.test/", "curl", "-sS", "-m", "5", "https://allowed.test/")
            refused_dns = show(gw, name, "2. refused: https://denied.test/ (the gateway's DNS says NXDOMAIN)",
                               "curl", "-sS", "-m", "5", "https://denied.test/")
            refused_tls = show(gw, name, "3. refused: the address forced by hand (cut at the TLS ClientHello)",
                               "curl", "-sS", "-m", "5", "--resolve", "denied.test:443:198.18.1.12",
                               "https://denied.test/")
            refused_method = show(gw, name, "4. refused: POST to an allowed host whose rule allows GET only",
                                  "curl", "-sS", "-m", "5", "-X", "POST", "-d", "x=1", "https://allowed.test/")
            say(f"\n{BOLD}flow log{RESET} {gw.log_path}")
            for e in gw.events():
                if e["event"] == "session":
                    continue
                what = e.get("url") or e.get("dns_qname") or e.get("sni") or e.get("dest_host") or ""
                colour = GREEN if e.get("decision") == "allow" else RED
                say(f"  {e['event']:<5} {colour}{e.get('decision', ''):<6}{RESET} {what:<32} "
                    f"{e.get('rule') or e.get('reason', '')}")
            say(f"\n{BOLD}metrics{RESET} http://127.0.0.1:{gw.METRICS_PORT}/metrics in namespace {lab.gw_ns}")
            for line in gw.metrics().splitlines():
                if line.startswith(("egressgw_requests_total", "egressgw_dns_queries_total", "egressgw_active")):
                    say(f"  {line}")
            passed = ok == 0 and refused_dns != 0 and refused_tls != 0 and refused_method == 0
            last = [e for e in gw.events(event="http") if e.get("method") == "POST"]
            passed = passed and bool(last) and last[-1]["decision"] == "deny"
            if args.keep:
                say(f"\n{BOLD}left running.{RESET} In another terminal, as root:")
                say(f"  egressgw sandbox exec {name} --config {gw.config_path} -- curl https://allowed.test/")
                say(f"  tail -f {gw.log_path}")
                say(f"  nsenter --net=/run/netns/{lab.gw_ns} curl -s 127.0.0.1:{gw.METRICS_PORT}/metrics")
                say("Ctrl-C here removes everything.")
                try:
                    signal.pause()
                except KeyboardInterrupt:
                    pass
            say(f"\n{GREEN if passed else RED}demo {'ok' if passed else 'FAILED'}{RESET}; cleaning up")
            return 0 if passed else 1
        finally:
            gw.sandbox_down(name)
            gw.stop()


if __name__ == "__main__":
    sys.exit(main())
