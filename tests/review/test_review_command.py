"""`egressgw review`: the file it writes, the integrity verdict of `log verify`, errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.lab.flowlog import generate

KEY = bytes(range(32))


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    base = tmp_path_factory.mktemp("review")
    key_file = base / "log.key"
    key_file.write_text(KEY.hex() + "\n")
    key_file.chmod(0o600)
    logs = base / "logs"
    sessions = generate(logs / "flows.jsonl", 2500, n_sessions=15, rotate_bytes=700_000, key=KEY, span=3600,
                        t0=1_795_000_000.0)
    return logs, key_file, sessions


def review(capsys, *args) -> tuple[int, str]:
    code = main(["review", *map(str, args)])
    return code, capsys.readouterr().err


def verdict(page: str) -> str:
    return re.search(r'<div class="verdict (\w+)" id="integrity">(.*?)</div>', page).group(1, 2)


def test_review_with_the_key_says_verified(logdir, tmp_path, capsys):
    logs, key_file, sessions = logdir
    out = tmp_path / "report.html"
    code, err = review(capsys, logs / "flows.jsonl", "-o", out, "--key-file", key_file)
    page = out.read_text()
    css, text = verdict(page)
    assert code == 0 and css == "ok" and "Log integrity: verified" in text and "OK: 2500 records" in text
    assert "2,500 events" in err and "MB" in err
    for s in sessions[:3]:
        assert s.id in page
    assert out.stat().st_mode & 0o777 == 0o644


def test_review_without_a_key_checks_the_chain_only(logdir, tmp_path, capsys, monkeypatch):
    logs, _, _ = logdir
    monkeypatch.delenv("EGRESSGW_CONFIG", raising=False)
    out = tmp_path / "r.html"
    code, _ = review(capsys, logs, "-o", out, "--no-key")
    css, text = verdict(out.read_text())
    assert code == 0 and css == "warn" and "checkpoints not verified" in text


def test_review_of_a_tampered_log_says_so_and_fails(logdir, tmp_path, capsys):
    logs, key_file, _ = logdir
    copy = tmp_path / "logs"
    copy.mkdir()
    for p in logs.iterdir():
        if p.name.startswith("flows.jsonl"):
            (copy / p.name).write_bytes(p.read_bytes())
    victim = sorted(copy.glob("flows.jsonl.*"))[0]
    lines = victim.read_bytes().splitlines(keepends=True)
    lines[40] = lines[40].replace(b'"decision":"deny"', b'"decision":"allow"', 1).replace(
        b'"allow"', b'"allow" ', 1)
    victim.write_bytes(b"".join(lines))
    out = tmp_path / "r.html"
    code, err = review(capsys, copy, "-o", out, "--key-file", key_file)
    css, text = verdict(out.read_text())
    assert code == 1 and css == "bad" and "TAMPERED" in text and f"{victim.name}:41" in text


def test_review_filters(logdir, tmp_path, capsys):
    logs, key_file, sessions = logdir
    out = tmp_path / "one.html"
    code, err = review(capsys, logs, "-o", out, "--session", sessions[2].id, "--no-verify")
    page = out.read_text()
    assert code == 0 and sessions[2].id in page and sessions[3].id not in page
    assert "NOT VERIFIED" in page and "--no-verify" in page


def test_review_will_not_write_into_the_log_directory(logdir, capsys):
    logs, _, _ = logdir
    code, err = review(capsys, logs, "-o", logs / "report.html", "--no-verify")
    assert code == 1 and "not inside the log directory" in err and not (logs / "report.html").exists()
    code, err = review(capsys, logs / "flows.jsonl", "-o", logs / "flows.jsonl", "--no-verify")
    assert code == 1 and "is one of the logs" in err


def test_review_bad_key_file_is_an_error(logdir, tmp_path, capsys):
    logs, _, _ = logdir
    code, err = review(capsys, logs, "-o", tmp_path / "r.html", "--key-file", tmp_path / "missing.key")
    assert code == 1 and "missing.key" in err and not Path(tmp_path / "r.html").exists()


def test_parallel_pass_equals_one_pass(logdir, monkeypatch):
    """Files read by several processes and merged: the same numbers as one process reading them all."""
    from gateway.commands import review as cmd
    from gateway.logindex.index import log_files
    from gateway.logindex.query import Filter

    logs, _, _ = logdir
    files = log_files([logs])
    assert len(files) >= 3
    one, _ = cmd.aggregate_files(files, Filter())
    monkeypatch.setattr(cmd, "PARALLEL_BYTES", 0)
    monkeypatch.setattr(cmd.os, "cpu_count", lambda: 3)
    many, cpu = cmd.aggregate_files(files, Filter())
    assert cpu > 0  # it did use worker processes
    a, b = one.overall(), many.overall()
    for name in ("events", "requests", "allowed", "refused", "reported", "dns", "dns_refused", "nxdomain", "alerts",
                 "bytes_out", "bytes_in", "findings_total", "first", "last"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.hosts.rows == b.hosts.rows and a.refusals.counts == b.refusals.counts
    assert a.credentials == b.credentials and a.reasons == b.reasons and a.tunnels.counts == b.tunnels.counts
    assert sorted(a.t_ok) == sorted(b.t_ok) and sorted(a.v_bytes) == sorted(b.v_bytes)
    assert [f.time for f in a.findings] == [f.time for f in b.findings]
    for sid, s in one.sessions.items():
        t = many.sessions[sid]
        assert (s.name, s.policy, s.events, s.refused, s.alerts) == (t.name, t.policy, t.events, t.refused, t.alerts)
        assert [f.time for f in s.findings] == [f.time for f in t.findings]
