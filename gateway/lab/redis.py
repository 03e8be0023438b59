"""A throwaway redis-server for tests: own port, own directory, no persistence, loopback only.

Optionally inside a network namespace (`netns=`), so gateways in the lab's
gateway namespace reach it on 127.0.0.1.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path


class RedisServer:
    def __init__(self, workdir: str | Path, port: int, netns: str | None = None):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.netns = netns
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> "RedisServer":
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not installed (fix: apt-get install redis-server; see scripts/bootstrap)")
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", str(self.dir / "redis.log")]
        if self.netns:
            argv = ["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.log()}")
            if self.ping():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server not answering on port {self.port}: {self.log()}")

    def ping(self) -> bool:
        """redis-cli comes with redis-server (Debian: redis-tools, a dependency)."""
        argv = ["redis-cli", "-p", str(self.port), "ping"]
        if self.netns:
            argv = ["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True).stdout.strip() == "PONG"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()  # like a crash: no goodbye to the clients
            self.proc.wait(5)

    def log(self) -> str:
        try:
            return (self.dir / "redis.log").read_text(errors="replace")[-2000:]
        except FileNotFoundError:
            return ""

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
