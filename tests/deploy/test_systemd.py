"""deploy/systemd: units that systemd itself accepts, with the hardening the gateway needs and no more."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

UNITS = DEPLOY / "systemd"
ANALYZE = shutil.which("systemd-analyze")


def _unit(name: str) -> dict[str, list[str]]:
    """Key -> every value it is given (systemd allows repeats), for [Service]."""
    values: dict[str, list[str]] = {}
    section = None
    for line in (UNITS / name).read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def _installed_copy(tmp_path, name: str, instance: str | None = None):
    """The unit with ExecStart pointing at this checkout's egressgw (verify checks the binary exists)."""
    egressgw = shutil.which("egressgw") or "/work/venv/bin/egressgw"
    text = (UNITS / name).read_text().replace("/usr/local/bin/egressgw", egressgw)
    target = tmp_path / (name.replace("@.", f"@{instance}.") if instance else name)
    target.write_text(text)
    return target


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("name, instance", [("egressgw.service", None), ("egressgw-sandbox@.service", "agent-1")])
def test_systemd_analyze_verify_accepts_the_unit(tmp_path, name, instance):
    _installed_copy(tmp_path, "egressgw.service")  # the sandbox unit Requires= it
    unit = _installed_copy(tmp_path, name, instance)
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"}
    r = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", r.stderr


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")
def test_gateway_unit_exposure_is_low(tmp_path):
    unit = _installed_copy(tmp_path, "egressgw.service")
    r = subprocess.run([ANALYZE, "security", "--offline=true", "--threshold=25", str(unit)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    assert "Overall exposure level" in r.stdout


def test_gateway_unit_hardening():
    s = _unit("egressgw.service")
    assert s["User"] == ["egressgw"]
    assert s["CapabilityBoundingSet"] == [""] and s["AmbientCapabilities"] == [""]  # it needs none
    for key, want in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                      "PrivateTmp": "yes", "Restart": "on-failure"}.items():
        assert s[key] == [want], key
    assert set(s["ReadWritePaths"][0].split()) == {"/var/lib/egressgw", "/var/log/egressgw", "/run/egressgw"}
    assert int(s["LimitNOFILE"][0]) >= 65536 and s["RestartSec"]
    assert s["RuntimeDirectoryPreserve"] == ["yes"]  # sandbox state files survive a gateway restart


def test_sandbox_unit_has_only_the_capabilities_it_justifies():
    s = _unit("egressgw-sandbox@.service")
    caps = set(s["CapabilityBoundingSet"][0].split())
    assert caps == {"CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_DAC_OVERRIDE"}
    text = (UNITS / "egressgw-sandbox@.service").read_text()
    for cap in caps:
        assert f"#   {cap}" in text, f"{cap} has no justification comment"
    # No private mount namespace: the /run/netns pin must be visible host-wide.
    assert not {"PrivateTmp", "ProtectSystem", "ProtectHome", "PrivateMounts"} & set(s)
    assert s["ExecStop"][0].split()[1:3] == ["sandbox", "down"]
