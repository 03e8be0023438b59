"""deploy/container/Containerfile and deploy/compose/compose.yaml: checked as text (no image can be pulled here)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _froms(text: str) -> list[str]:
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    return [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], f) for f in re.findall(r"^FROM (\S+)", text, re.M)]


def test_containerfile_is_multi_stage_pinned_and_non_root():
    text = (DEPLOY / "container" / "Containerfile").read_text()
    froms = _froms(text)
    assert len(froms) == 2 and "AS build" in text and "COPY --from=build" in text
    for image in froms:
        name, _, tag = image.rpartition(":")
        assert "@sha256:" in image or re.fullmatch(r"\d+\.\d+\.\d+-slim-\w+", tag), image  # exact release tag
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] == "1337:1337"
    # Everything the build copies exists in the tree.
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for path in src.split():
            assert (ROOT / path).exists(), path


def test_compose_sandbox_has_only_the_gateway_as_a_way_out():
    doc = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    nets, svc = doc["networks"], doc["services"]
    sandbox, gateway = svc["sandbox"], svc["gateway"]
    sandbox_nets = sandbox["networks"] if isinstance(sandbox["networks"], list) else list(sandbox["networks"])
    assert sandbox_nets == ["sandboxnet"] and nets["sandboxnet"]["internal"] is True
    assert "network_mode" not in sandbox and "ports" not in sandbox
    assert set(gateway["networks"]) == {"sandboxnet", "egress"} and not nets["egress"].get("internal")
    # The proxy listens on the gateway's sandbox-network address only; the credentials are a secret file.
    gw_addr = gateway["networks"]["sandboxnet"]["ipv4_address"]
    config = yaml.safe_load(doc["configs"]["gateway-config"]["content"])
    assert config["listen"]["proxy"] == f"{gw_addr}:3128"
    assert "HTTPS_PROXY" not in sandbox["environment"] and "/run/secrets/proxy_url" in " ".join(sandbox["command"])
    for s in (sandbox, gateway):
        assert s["cap_drop"] == ["ALL"] and s["read_only"] is True and s["user"] != "0"
    assert gateway["user"].split(":")[0] == "1337"
