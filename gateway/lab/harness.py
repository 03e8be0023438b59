"""Test harness over a lab gateway: sandboxes a test module creates (`Sandboxes`), a handle to run
attacks inside one (`Box`), and a packet counter on the origin namespace (`leak_counter`).

Shared by `tests/e2e` and `tests/adversarial` (their conftests turn these into pytest fixtures).
Nothing here imports mitmproxy or pytest.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Callable

from .gateway import LabGateway


def netns_available() -> bool:
    """Root, `ip netns` and nftables: what the end-to-end and adversarial tests need."""
    if os.geteuid() != 0:
        return False
    name = f"egwprobe{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        return False
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return subprocess.run(["nft", "--version"], capture_output=True).returncode == 0


def policy_text(name: str, rules: str, mode: str = "enforce", extra_spec: str = "") -> str:
    return (
        "apiVersion: egressgw.dev/v1alpha1\nkind: EgressPolicy\n"
        f"metadata:\n  name: {name}\nspec:\n  mode: {mode}\n"
        + textwrap.indent(textwrap.dedent(extra_spec).strip("\n"), "  ") + ("\n" if extra_spec else "")
        + "  egress:\n"
        + textwrap.indent(textwrap.dedent(rules).strip("\n"), "    ")
        + "\n"
    )


class Sandboxes:
    """Creates sandboxes for a test module and removes them at the end."""

    def __init__(self, gw: LabGateway, tmp: Path):
        self.gw = gw
        self.tmp = tmp
        self.names: list[str] = []
        self.tag = secrets.token_hex(2)

    def policy_file(self, name: str, rules: str, mode: str = "enforce", extra_spec: str = "") -> Path:
        path = self.tmp / f"{name}-{secrets.token_hex(3)}.yaml"
        path.write_text(policy_text(name, rules, mode, extra_spec))
        return path

    def up(self, rules: str, mode: str = "enforce", *extra: str, extra_spec: str = "") -> "Box":
        name = f"t{self.tag}{len(self.names)}"
        info = self.gw.sandbox_up(name, self.policy_file(name, rules, mode, extra_spec), *extra)
        self.names.append(name)
        return Box(self.gw, name, info)

    def cleanup(self) -> None:
        for name in self.names:
            self.gw.sandbox_down(name)


class Box:
    def __init__(self, gw: LabGateway, name: str, info: dict):
        self.gw, self.name, self.info = gw, name, info
        self.session = info["session"]
        self.address = info["address"]
        self.env = info["env"]

    def run(self, *cmd: str, user: str = "nobody", timeout: float = 30) -> subprocess.CompletedProcess:
        return self.gw.sandbox_exec(self.name, *cmd, user=user, timeout=timeout)

    def curl(self, url: str, *extra: str, user: str = "nobody") -> tuple[int, str]:
        """(HTTP status, body); status 0 when no HTTP answer came back."""
        r = self.run("curl", "-sS", "-m", "5", "-w", "\n%{http_code}", *extra, url, user=user)
        body, _, code = r.stdout.rpartition("\n")
        return int(code or 0), body.strip()

    def python(self, code: str, user: str = "nobody") -> subprocess.CompletedProcess:
        return self.run("python3", "-c", textwrap.dedent(code), user=user)

    def events(self, **match) -> list[dict]:
        return self.gw.events(session=self.session, **match)

    def events_since(self, start: int, want: Callable[[list[dict]], bool] | None = None,
                     timeout: float = 2.0) -> list[dict]:
        """This session's flow-log events after the first `start` ones; waits up to `timeout` for
        `want(events)` (the log is written as flows end, a moment after the client gave up)."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.events()[start:]
            if want is None or want(events) or time.monotonic() > deadline:
                return events
            time.sleep(0.1)


def leak_counter(lab) -> Callable[[], int]:
    """Counts packets reaching the origin namespace from anywhere but the gateway's own address.

    (IPv6 link-local chatter of the lab's own veth is not traffic from a sandbox.)"""
    script = (
        "table inet egwleak {\n"
        "  chain watch {\n"
        "    type filter hook prerouting priority -400;\n"
        f"    ip saddr != {lab.gw_addr} counter\n"
        "    ip6 saddr != fe80::/10 counter\n"
        "  }\n"
        "}\n"
    )
    lab.run_in(lab.origin_ns, ["nft", "-f", "-"], input=script, check=True)

    def leaked() -> int:
        out = lab.run_in(lab.origin_ns, ["nft", "list", "table", "inet", "egwleak"], check=True).stdout
        return sum(int(tok) for tok in out.split("packets ")[1:] for tok in [tok.split()[0]])

    return leaked


# A WebSocket client run inside a sandbox: argv host, message; prints the echoed message.
WS_CLIENT = """
import os, socket, ssl, sys
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage
host, message = sys.argv[1], sys.argv[2]
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
sock = ctx.wrap_socket(socket.create_connection((host, 443), timeout=5), server_hostname=host)
ws = WSConnection(ConnectionType.CLIENT)
sock.sendall(ws.send(Request(host=host, target="/ws")))

def wait(kind):
    while True:
        for event in ws.events():
            if isinstance(event, kind):
                return event
            if isinstance(event, CloseConnection):
                sys.exit("closed")
        data = sock.recv(65536)
        if not data:
            sys.exit("connection closed")
        ws.receive_data(data)

wait(AcceptConnection)
sock.sendall(ws.send(TextMessage(data=message)))
print(wait(TextMessage).data)
"""
