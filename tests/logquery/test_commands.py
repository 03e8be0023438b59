"""`egressgw log query|tail|har` as a user runs them."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.log.reader import iter_records
from gateway.log.writer import FlowLog
from tests.logquery.conftest import KEY, T0, event

ROOT = Path(__file__).resolve().parents[2]


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_query_formats_and_filters(fleet_copy, capsys):
    log, sessions = fleet_copy
    s = sessions[0].id
    code, out, err = run(capsys, "log", "query", str(log), "--session", s, "--format", "jsonl")
    assert code == 0 and "indexed" in err
    got = [json.loads(line) for line in out.splitlines()]
    expected = [r.event for r in iter_records([log]) if r.event.get("session") == s]
    assert got == sorted(expected, key=lambda e: e["time"]) and got
    assert (log.parent / ".flows.jsonl.idx.sqlite").exists()
    # The second time nothing is indexed, and the answer is the same.
    code, out2, err = run(capsys, "log", "query", str(log), "--session", s, "--format", "jsonl")
    assert out2 == out and "indexed" not in err
    code, out, _ = run(capsys, "log", "query", str(log.parent), "--decision", "deny", "--kind", "dns", "--count")
    assert int(out) == sum(1 for r in iter_records([log]) if r.event.get("decision") == "deny"
                           and r.event["event"] == "dns")
    code, out, _ = run(capsys, "log", "query", str(log), "--alerts", "--format", "csv", "--limit", "3",
                       "--newest-first")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 3 and all(r["alert"] == "True" or r["detections"] for r in rows)
    assert rows[0]["time"] >= rows[1]["time"] >= rows[2]["time"]
    code, out, _ = run(capsys, "log", "query", str(log), "--host", "*.example.net", "--limit", "5")
    lines = out.splitlines()
    assert lines[0].startswith("time") and len(lines) == 6 and all(".example.net" in line for line in lines[1:])


def test_query_no_index_gives_the_same(fleet_copy, capsys):
    log, sessions = fleet_copy
    args = ["log", "query", str(log), "--since", "2026-11-18T11:20:00Z", "--until", "2026-11-18T11:30:00Z",
            "--kind", "http", "--format", "jsonl"]
    _, a, _ = run(capsys, *args)
    _, b, _ = run(capsys, *args, "--no-index")
    assert a == b and a.count("\n") > 10


def test_index_option_and_rebuild(fleet_copy, capsys, tmp_path):
    log, _ = fleet_copy
    ix = tmp_path / "elsewhere" / "my.sqlite"
    _, out, err = run(capsys, "log", "query", str(log), "--index", str(ix), "--count")
    assert ix.exists() and "indexed 3000" in err
    _, out2, err = run(capsys, "log", "query", str(log), "--index", str(ix), "--count", "--rebuild")
    assert out2 == out and "indexed 3000" in err


@pytest.mark.parametrize("args, message", [
    (["--since", "yesterday"], "fix: write RFC3339"),
    (["--since=-1h", "--until", "2h"], "swap them"),  # `2h` means 2 h ago, like `-2h`
    (["--limit", "-1"], "--limit"),
])
def test_query_errors_are_clear(fleet_copy, capsys, args, message):
    log, _ = fleet_copy
    code, out, err = run(capsys, "log", "query", str(log), *args)
    assert code == 1 and message in err and "Traceback" not in err


def test_query_missing_log(capsys, tmp_path):
    code, _, err = run(capsys, "log", "query", str(tmp_path / "none.jsonl"))
    assert code == 1 and "no such log file" in err


def test_har_command(fleet_copy, capsys, tmp_path):
    log, sessions = fleet_copy
    s = sessions[0].id
    out_path = tmp_path / "s.har"
    code, _, err = run(capsys, "log", "har", str(log), "--session", s, "-o", str(out_path))
    har = json.loads(out_path.read_text())
    http = [r.event for r in iter_records([log]) if r.event.get("session") == s and r.event["event"] == "http"]
    assert code == 0 and len(har["log"]["entries"]) == len(http) > 0
    assert har["log"]["entries"][0]["_egressgw"]["log"].startswith(str(log.parent))
    code, _, err = run(capsys, "log", "har", str(log), "--session", "s-nope", "-o", str(out_path))
    assert code == 1 and "no events of session 's-nope'" in err


def test_tail_follows_across_rotation_with_filters(tmp_path):
    """A real `egressgw log tail` process while the real writer creates, appends and rotates the log."""
    log = tmp_path / "flows.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "log", "tail", str(log), "--from-start",
                             "--decision", "deny", "--host", "*.bad.test", "--format", "jsonl", "--limit", "10"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    writer = None
    try:
        assert "following" in proc.stderr.readline()
        time.sleep(1)
        writer = FlowLog(log, key=KEY, rotate_bytes=4096, keep=0)
        for i in range(40):
            decision = "deny" if i % 2 else "allow"
            host = f"h{i}.bad.test" if i % 4 != 3 else f"h{i}.ok.test"
            writer.write(event("http", T0 + i, session="s-1", dest_host=host, decision=decision, reason="x"))
            time.sleep(0.05)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        if writer is not None:
            writer.close()
    assert len(list(log.parent.glob("flows.jsonl.*"))) >= 2  # it did rotate while tail followed
    got = [json.loads(line) for line in out.splitlines()]
    expected = [f"h{i}.bad.test" for i in range(40) if i % 2 and i % 4 != 3]  # i = 1, 5, 9, ... 37
    assert [e["dest_host"] for e in got] == expected, err
    assert proc.returncode == 0
