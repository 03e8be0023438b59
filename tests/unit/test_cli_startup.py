"""The `egressgw` command's start-up: each command imports only its own module (the gateway's,
with mitmproxy, took ~1 s of every `sandbox up`), and a command run as a process collects no
garbage while it imports and freezes what start-up made (gateway/gctune.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import gc, json, sys
from gateway.cli import build_parser
build_parser({argv!r})
print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} | {{m for m in sys.modules if m.startswith('gateway.')}})))
"""


def _modules(argv: list[str]) -> set[str]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


@pytest.mark.parametrize("argv", [
    ["sandbox", "up", "a", "--policy", "p.yaml"],
    ["sandbox", "list"],
    ["session", "list"],
    ["policy", "check", "p.yaml"],
    ["log", "query", "x"],
    ["review", "x"],
    ["run", "--config", "c.yaml"],      # mitmproxy comes when the gateway starts, not to parse its options
])
def test_parsing_a_command_imports_only_its_module(argv):
    mods = _modules(argv)
    assert f"gateway.commands.{argv[0]}" in mods
    assert "mitmproxy" not in mods and "gateway.app" not in mods
    assert "botocore" not in mods            # the secrets parser (SigV4) is imported when secrets are given
    others = {f"gateway.commands.{c}" for c in ("run", "policy", "sandbox", "session", "log", "review")} - {
        f"gateway.commands.{argv[0]}", "gateway.commands.common"}
    assert not (mods & others)


@pytest.mark.parametrize("argv", [[], ["--help"], ["nonsense"]])
def test_run_help_and_mistakes_see_every_command(argv):
    mods = _modules(argv)
    assert {f"gateway.commands.{c}" for c in ("run", "policy", "sandbox", "session", "log", "review")} <= mods


def test_a_command_process_freezes_its_start_up_and_collects_afterwards():
    code = ("import gc, sys; sys.argv = ['egressgw', 'policy', 'check', '/nonexistent.yaml']; "
            "from gateway import cli; rc = cli.main(); "
            "print(gc.isenabled(), gc.get_freeze_count() > 10000, rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split()[:2] == ["True", "True"], out.stderr   # collecting again, start-up frozen


def test_a_call_from_python_leaves_the_collector_alone():
    import gc

    from gateway.cli import main
    frozen = gc.get_freeze_count()
    assert main(["policy", "check", "/nonexistent.yaml"]) != 0
    assert gc.isenabled() and gc.get_freeze_count() == frozen
