"""Helpers for the netns tests: namespaces, the test gateway, listeners.

Everything runs inside namespaces the test creates (t-gw-*, t-or-*, and the
sandboxes' egw-t*), and is removed by finalizers even when a test fails.
Code under test runs "in the gateway namespace" by calling it from a thread
that has entered it (netns.run.in_netns), or from a subprocess started with
`ip netns exec`.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from netns import naming  # noqa: E402
from netns.run import in_netns  # noqa: E402

T_PORT = 18080   # transparent listener port used by the tests
D_PORT = 15353   # DNS listener port used by the tests
SO_ORIGINAL_DST = 80


# ----------------------------------------------------------------- environment

@functools.cache
def netns_unavailable() -> str | None:
    """Why the end-to-end namespace tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "nft", "setpriv"):
        if not shutil.which(tool):
            return f"needs {tool}"
    probe = f"t-probe-{secrets.token_hex(3)}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"`ip netns add` does not work here: {r.stderr.strip()}"
    try:
        r = subprocess.run(["ip", "netns", "exec", probe, "nft", "list", "ruleset"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            return f"nftables does not work in a namespace: {r.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def sh(argv: list[str], *, check: bool = True, input: str | None = None,
       timeout: float = 30) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{argv} exited {r.returncode}: {r.stderr}")
    return r


class Namespace:
    """A network namespace the test created: run code, commands and sockets in it."""

    def __init__(self, name: str):
        self.name = name
        self.path = naming.netns_path(name)

    def call(self, fn, *args, **kwargs):
        return in_netns(self.path, fn, *args, **kwargs)

    def sh(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        return sh(["ip", "netns", "exec", self.name, *argv], **kw)

    def socket(self, family=socket.AF_INET, type=socket.SOCK_STREAM, proto=0) -> socket.socket:
        return self.call(socket.socket, family, type, proto)

    def exists(self) -> bool:
        return os.path.exists(self.path)


def add_netns(name: str) -> Namespace:
    sh(["ip", "netns", "add", name])
    sh(["ip", "-n", name, "link", "set", "lo", "up"])
    return Namespace(name)


def del_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


# ---------------------------------------------------------------- the gateway

class Gateway(Namespace):
    """Test gateway namespace G plus a private state dir and sandbox-name prefix."""

    def __init__(self, name: str, state_dir: str, prefix: str):
        super().__init__(name)
        self.state_dir = state_dir
        self.prefix = prefix

    def sbname(self, suffix: str) -> str:
        return f"{self.prefix}-{suffix}"

    def up(self, suffix: str, **kw):
        import netns
        kw.setdefault("transparent_port", T_PORT)
        kw.setdefault("dns_port", D_PORT)
        return self.call(netns.up, self.sbname(suffix), state_dir=self.state_dir, **kw)

    def down(self, suffix: str) -> bool:
        import netns
        return self.call(netns.down, self.sbname(suffix), state_dir=self.state_dir)

    def sweep(self) -> list[str]:
        import netns
        return self.call(netns.sweep_orphans, self.state_dir)

    def enter(self) -> list[str]:
        """argv prefix that runs a command in G's network namespace only. (Not
        `ip netns exec`: its private mount namespace would hide the sandboxes'
        /run/netns pins from everyone else; `up` refuses to run there.)"""
        return ["nsenter", f"--net={self.path}", "--"]

    def python(self, code: str, *, check: bool = True) -> subprocess.CompletedProcess:
        """Run Python code in a fresh process inside G (like the egressgw CLI would)."""
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        r = subprocess.run(self.enter() + [sys.executable, "-c", code],
                           capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"python in {self.name} exited {r.returncode}: {r.stderr}")
        return r

    def links(self) -> dict[str, dict]:
        return {it["ifname"]: it for it in json.loads(self.sh(["ip", "-j", "addr", "show"]).stdout)}

    def tables(self) -> list[str]:
        out = json.loads(self.sh(["nft", "-j", "list", "tables"]).stdout)["nftables"]
        return [it["table"]["name"] for it in out if "table" in it]

    def counter(self, table: str, comment: str) -> int:
        """Packets counted by the rule carrying `comment` in G's table."""
        out = json.loads(self.sh(["nft", "-j", "list", "table", "inet", table]).stdout)
        for it in out["nftables"]:
            rule = it.get("rule")
            if rule and rule.get("comment") == comment:
                for e in rule["expr"]:
                    if "counter" in e:
                        return e["counter"]["packets"]
        raise AssertionError(f"no rule with comment {comment!r} in {table}")

    def drop_counter(self, table: str, chain: str, index: int = 0) -> int:
        out = json.loads(self.sh(["nft", "-j", "list", "table", "inet", table]).stdout)
        rules = [it["rule"] for it in out["nftables"] if "rule" in it and it["rule"]["chain"] == chain]
        counters = [e["counter"]["packets"] for r in rules for e in r["expr"] if "counter" in e]
        return counters[index]


ORIGIN_G, ORIGIN_ADDR = "192.0.2.1", "192.0.2.2"   # addresses the test creates itself


# ---------------------------------------------------------------- listeners

def original_dst(conn: socket.socket) -> tuple[str, int]:
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack("!H", raw[2:4])[0]
    return socket.inet_ntoa(raw[4:8]), port


class TcpListener:
    """Accepts in a thread; records (peer, original destination, first bytes)."""

    def __init__(self, ns: Namespace, addr: str, port: int):
        self.sock = ns.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((addr, port))
        self.sock.listen(16)
        self.conns: list[dict] = []
        self._stop = False
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                c, peer = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with c:
                try:
                    dst = original_dst(c)
                except OSError:
                    dst = None
                c.settimeout(1)
                try:
                    data = c.recv(100)
                    c.sendall(b"ok:" + data)
                except OSError:
                    data = b""
                self.conns.append({"peer": peer, "orig_dst": dst, "data": data})

    def wait(self, n: int, timeout: float = 3.0) -> list[dict]:
        end = time.monotonic() + timeout
        while len(self.conns) < n and time.monotonic() < end:
            time.sleep(0.01)
        return self.conns

    def close(self) -> None:
        self._stop = True
        self.sock.close()


class UdpListener:
    """Records (source, data) and echoes each datagram back."""

    def __init__(self, ns: Namespace, addr: str, port: int, family=socket.AF_INET):
        self.sock = ns.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((addr, port))
        self.got: list[tuple] = []
        self._stop = False
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                data, src = self.sock.recvfrom(2048)
            except (TimeoutError, OSError):
                continue
            self.got.append((src, data))
            try:
                self.sock.sendto(b"re:" + data, src)
            except OSError:
                pass

    def wait(self, n: int, timeout: float = 3.0) -> list[tuple]:
        end = time.monotonic() + timeout
        while len(self.got) < n and time.monotonic() < end:
            time.sleep(0.01)
        return self.got

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def make_sandbox(**kw):
    """A Sandbox record for rendering tests (nothing is created)."""
    from netns import Sandbox
    base = dict(name="agent-7", netns="egw-agent-7", host_if="egwh3", sandbox_if="egws3",
                host_addr="10.211.0.13", sandbox_addr="10.211.0.14", prefix=30, index=3,
                table="egressgw_agent_7", transparent_port=8080, dns_port=5353,
                session_id=None, created=0.0)
    base.update(kw)
    return Sandbox(**base)
