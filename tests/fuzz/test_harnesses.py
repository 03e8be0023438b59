"""The atheris harnesses of fuzz/ (DNS path, policy loader): past findings replay clean, and each
harness runs briefly (~10 s of fuzzing, plus instrumentation start-up) without a finding.

The long run is `make fuzz` (python -m fuzz all --seconds 600); see docs/hardening.md."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    # tests/fuzz is itself a package named `fuzz` to pytest: load the top-level harness files by path
    spec = importlib.util.spec_from_file_location(f"egressgw_fuzz_{name}", ROOT / "fuzz" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dns_harness, policy_harness = _load("dns"), _load("policy")
SECONDS = int(os.environ.get("EGRESSGW_FUZZ_SECONDS", "10"))
REGRESSIONS = sorted((ROOT / "fuzz" / "regressions").iterdir())


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.name for p in REGRESSIONS])
def test_past_findings_replay_clean(path):
    target = (dns_harness if path.name.startswith("dns-") else policy_harness).Target()
    target(path.read_bytes())  # raises Finding on a regression


def test_the_dns_harness_catches_what_it_must():
    """The harness is not vacuous: a name the policy denies that reaches the resolver is a finding."""
    from gateway.policy import load_policy_text

    target = dns_harness.Target()
    # a gate that wrongly allows denied.test (its session got a looser policy than the harness's oracle)
    target.registry.replace_policy(target.session.id, load_policy_text(dns_harness.POLICY.replace(
        "matchName: allowed.test", "matchName: denied.test")))
    denied = dns_harness.seeds()[4]
    assert b"\x06denied\x04test" in denied
    with pytest.raises(dns_harness.Finding, match="reached the upstream resolver"):
        target(denied)


@pytest.mark.parametrize("harness", ["dns", "policy"])
def test_harness_runs_briefly_without_a_finding(harness, tmp_path):
    env = {"EGRESSGW_FUZZ_SEED": "1", **os.environ,
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "fuzz", harness, "--seconds", str(SECONDS), "--corpus", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=SECONDS + 120)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert "no finding" in proc.stdout
    runs = proc.stdout.split(f"fuzz {harness}: ")[1].split(" runs")[0]
    assert runs == "?" or int(runs) > 100, proc.stdout
