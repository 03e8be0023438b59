"""End-to-end fixtures: a real lab (origin + DNS namespaces), a real gateway, real sandboxes.

Each test module gets its own lab and gateway (module scope): a module that
stops its gateway cannot disturb another. Tests need root and `ip netns`;
without them they are skipped, and the rest of the suite still runs.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import textwrap
from pathlib import Path

import pytest

from gateway.lab import Lab
from gateway.lab.gateway import LabGateway

pytestmark = pytest.mark.netns


def _netns_available() -> bool:
    if os.geteuid() != 0:
        return False
    name = f"egwprobe{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        return False
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return subprocess.run(["nft", "--version"], capture_output=True).returncode == 0


NETNS = _netns_available()


def pytest_collection_modifyitems(config, items):
    if NETNS:
        return
    skip = pytest.mark.skip(reason="needs root, ip netns and nftables")
    for item in items:
        if "e2e" in str(item.fspath):
            item.add_marker(skip)


def policy_text(name: str, rules: str, mode: str = "enforce") -> str:
    return (
        "apiVersion: egressgw.dev/v1alpha1\nkind: EgressPolicy\n"
        f"metadata:\n  name: {name}\nspec:\n  mode: {mode}\n  egress:\n"
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

    def policy_file(self, name: str, rules: str, mode: str = "enforce") -> Path:
        path = self.tmp / f"{name}-{secrets.token_hex(3)}.yaml"
        path.write_text(policy_text(name, rules, mode))
        return path

    def up(self, rules: str, mode: str = "enforce", *extra: str) -> "Box":
        name = f"t{self.tag}{len(self.names)}"
        info = self.gw.sandbox_up(name, self.policy_file(name, rules, mode), *extra)
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


@pytest.fixture(scope="module")
def lab():
    with Lab() as lab:
        yield lab


@pytest.fixture(scope="module")
def gateway(lab):
    gw = LabGateway(lab).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def sandboxes(gateway, tmp_path_factory):
    boxes = Sandboxes(gateway, tmp_path_factory.mktemp("policies"))
    yield boxes
    boxes.cleanup()


@pytest.fixture(scope="module")
def leak_counter(lab):
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
