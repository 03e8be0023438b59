"""A real egressgw process inside a lab's gateway namespace.

Used by the demo, the end-to-end tests and the benchmark: writes a config
that points upstream DNS and the origin CA at the lab, starts `egressgw run`
under `ip netns exec`, waits until its listeners are up, and drives
`egressgw sandbox ...` in the same namespace.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from gateway.errors import ControlAPIError
from gateway.log import reader
from gateway.sessions.client import ControlClient


class GatewayError(RuntimeError):
    pass


class LabGateway:
    TRANSPARENT_PORT = 15001
    DNS_PORT = 15353
    PROXY_PORT = 3128
    METRICS_PORT = 9469

    def __init__(self, lab, name: str = "gw", pool: str = "10.211.0.0/16", extra_config: dict | None = None,
                 port_offset: int = 0, workers: int | str | None = None):
        """`port_offset` moves every listener, so several gateways (replicas) share the gateway namespace.
        `workers`: the config's `workers` (None: not set, one process); worker k listens on each port + k."""
        self.lab = lab
        for attr in ("TRANSPARENT_PORT", "DNS_PORT", "PROXY_PORT", "METRICS_PORT"):
            setattr(self, attr, getattr(type(self), attr) + port_offset)
        self.dir = Path(lab.work) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        # Sandboxed processes run as nobody and must read the CA bundle under this directory.
        for d in (Path(lab.work), self.dir):
            d.chmod(0o755)
        self.log_path = self.dir / "log" / "flows.jsonl"  # its own directory: the key must be outside it
        self.log_key = self.dir / "log.key"
        self.stderr_path = self.dir / "gateway.stderr"
        self.control_sock = self.dir / "control.sock"
        self.config_path = self.dir / "config.yaml"
        config = {
            "listen": {
                "transparent": f"0.0.0.0:{self.TRANSPARENT_PORT}",
                "dns": f"0.0.0.0:{self.DNS_PORT}",
                "proxy": f"127.0.0.1:{self.PROXY_PORT}",
                "control": f"unix://{self.control_sock}",
                "metrics": f"127.0.0.1:{self.METRICS_PORT}",
            },
            "upstream": {"dns": [f"{lab.dns_addr}:{lab.dns_port}"], "caBundle": str(lab.ca_cert)},
            "ca": {"dir": str(self.dir / "ca")},
            "log": {"path": str(self.log_path), "hmacKeyFile": str(self.log_key)},
            "control": {"tokenFile": str(self.dir / "control.token")},
            "sandbox": {"pool": pool, "stateDir": str(self.dir / "state")},
            "sessions": {"store": f"sqlite://{self.dir / 'sessions.db'}"},
        }
        if workers is not None:
            config["workers"] = workers
        for section, values in (extra_config or {}).items():
            config.setdefault(section, {}).update(values)
        self.config_path.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen | None = None

    # -- process -------------------------------------------------------------------------------
    def start(self, timeout: float = 20.0, env: dict[str, str] | None = None) -> "LabGateway":
        """Start the gateway; `env` adds variables to its environment (env:// secret sources)."""
        if self.proc and self.proc.poll() is None:
            return self
        stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            [*self._enter(), sys.executable, "-m", "gateway", "run", "--config", str(self.config_path)],
            stdout=stderr, stderr=stderr, start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        stderr.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise GatewayError(f"gateway exited with {self.proc.returncode}:\n{self.stderr()}")
            try:
                if self.client().health().get("status") == "ok":
                    return self
            except ControlAPIError:
                pass
            time.sleep(0.05)
        self.stop()
        raise GatewayError(f"gateway not ready after {timeout}s:\n{self.stderr()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def _enter(self) -> list[str]:
        # nsenter, not `ip netns exec`: the latter also unshares the mount namespace, and the sandbox
        # namespaces `egressgw sandbox up` creates there would be invisible to everyone else.
        return ["nsenter", f"--net=/run/netns/{self.lab.gw_ns}", "--"]

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def client(self) -> ControlClient:
        token_file = self.dir / "control.token"
        token = token_file.read_text().strip() if token_file.exists() else ""
        return ControlClient(f"unix://{self.control_sock}", token, timeout=5)

    # -- CLI in the gateway namespace -------------------------------------------------------------
    def cli(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        i = args.index("--") if "--" in args else len(args)
        argv = [*self._enter(), sys.executable, "-m", "gateway", *args[:i],
                "--config", str(self.config_path), *args[i:]]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise GatewayError(f"egressgw {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def sandbox_up(self, name: str, policy_path: str | os.PathLike, *extra: str) -> dict:
        out = self.cli("sandbox", "up", name, "--policy", str(policy_path), "--json", *extra)
        return json.loads(out.stdout)

    def sandbox_down(self, name: str) -> None:
        self.cli("sandbox", "down", name, check=False)

    def sandbox_exec(self, name: str, *cmd: str, user: str = "nobody", timeout: float = 30,
                     ) -> subprocess.CompletedProcess:
        return self.cli("sandbox", "exec", name, "--user", user, "--", *cmd, check=False, timeout=timeout)

    # -- what it wrote -------------------------------------------------------------------------
    def events(self, **match) -> list[dict]:
        out = []
        for rec in reader.iter_records([self.log_path]):
            if all(rec.event.get(k) == v for k, v in match.items()):
                out.append(rec.event)
        return out

    def metrics(self) -> str:
        result = self.lab.run_in(self.lab.gw_ns, ["curl", "-s", f"http://127.0.0.1:{self.METRICS_PORT}/metrics"],
                                 capture_output=True, text=True)
        return result.stdout
