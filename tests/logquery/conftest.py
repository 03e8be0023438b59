"""Flow logs for the query tests, written by the gateway's own writer (chain, checkpoints, rotation)."""

from __future__ import annotations

import pytest

from gateway.lab.flowlog import generate
from gateway.log import events as ev
from gateway.log.writer import FlowLog

KEY = bytes(range(32))
T0 = 1_795_000_000.0  # 2026-11-18T11:06:40Z


def event(kind: str, t: float, **fields) -> dict:
    e = ev.make_event(kind, **fields)
    e["time"] = ev.rfc3339(t)
    return e


def write(path, events, **kw) -> FlowLog:
    log = FlowLog(path, key=KEY, **kw)
    try:
        for e in events:
            log.write(e)
    finally:
        log.close()
    return log


@pytest.fixture(scope="session")
def fleet_log(tmp_path_factory):
    """3,000 synthetic events of 20 sessions in a live file and its rotated files (read-only for tests)."""
    path = tmp_path_factory.mktemp("fleet") / "flows.jsonl"
    sessions = generate(path, 3000, n_sessions=20, rotate_bytes=600_000, key=KEY, span=3600, t0=T0)
    return path, sessions


@pytest.fixture
def fleet_copy(fleet_log, tmp_path):
    """A private copy of the fleet log a test may change."""
    import shutil

    src, sessions = fleet_log
    dst = tmp_path / "logs"
    dst.mkdir()
    for p in src.parent.iterdir():
        if p.name.startswith("flows.jsonl"):
            shutil.copy2(p, dst / p.name)
    return dst / "flows.jsonl", sessions
