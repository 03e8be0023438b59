"""gateway/log/verify.py: every way of tampering with a log is caught and named (file:line).

Each case writes a real rotated log with the real writer, damages it the way an attacker
(or a crash) would, and checks the first finding `verify` reports and the exit code.
"""

from __future__ import annotations

import json
import os

import pytest

from gateway.cli import main
from gateway.log import chain, verify
from gateway.log.reader import CHAIN_KEY

from .logutil import KEY, chain_fields, dumps, event_lines, read_lines, write_lines, write_log

ROTATE = 8000  # ~6 OCSF records per file


@pytest.fixture
def log_dir(tmp_path):
    d = tmp_path / "log"
    write_log(d, 40, rotate_bytes=ROTATE, every=5)
    return d


def files(d):
    return sorted((p for p in d.iterdir() if p.name != "flows.jsonl"), key=lambda p: int(p.suffix[1:])) + [
        d / "flows.jsonl"]


def test_the_fixture_is_a_rotated_log_with_checkpoints(log_dir):
    fs = files(log_dir)
    assert [p.name for p in fs[:3]] == ["flows.jsonl.1", "flows.jsonl.2", "flows.jsonl.3"] and len(fs) >= 5
    result = verify.verify([log_dir], KEY)
    assert result.exit_code == verify.OK, result.summary()
    assert result.summary() == f"OK: 40 records, {result.checkpoints} checkpoints, {len(fs)} files"
    assert result.checkpoints >= 2 * (len(fs) - 1) + 40 // 5 - 1  # open + rotate per file, interval, stop


# -- tampering: each returns (path, line) where verify must point, and a phrase it must say ----------

def edit_field(d):
    p = d / "flows.jsonl.2"
    lines = read_lines(p)
    i = event_lines(lines)[1]
    rec = json.loads(lines[i])
    rec["unmapped"]["egressgw"]["dest_host"] = "evil.test"
    rec["dst_endpoint"]["hostname"] = "evil.test"
    lines[i] = dumps(rec)
    write_lines(p, lines)
    return p, i + 1, "altered"


def edit_decision_last_record(d):
    p = d / "flows.jsonl"
    lines = read_lines(p)
    i = event_lines(lines)[-1]
    lines[i] = lines[i].replace(b'"decision":"allow"', b'"decision":"deny"')
    write_lines(p, lines)
    return p, i + 1, "altered"


def delete_line(d):
    p = d / "flows.jsonl.3"
    lines = read_lines(p)
    i = event_lines(lines)[1]
    seq = chain_fields(lines[i])["seq"]
    del lines[i]
    write_lines(p, lines)
    return p, i + 1, f"removed: record seq {seq} missing"


def swap_lines(d):
    p = d / "flows.jsonl.2"
    lines = read_lines(p)
    i = event_lines(lines)[1]
    lines[i], lines[i + 1] = lines[i + 1], lines[i]
    write_lines(p, lines)
    return p, i + 1, "reordered"


def duplicate_line(d):
    p = d / "flows.jsonl.2"
    lines = read_lines(p)
    i = event_lines(lines)[1]
    lines.insert(i + 1, lines[i])
    write_lines(p, lines)
    return p, i + 2, "reordered or duplicated"


def cut_rotated_file(d):
    p = d / "flows.jsonl.2"
    lines = read_lines(p)
    write_lines(p, lines[:-2])
    return p, len(lines) - 2, "does not end with its rotate checkpoint"


def drop_middle_file(d):
    (d / "flows.jsonl.3").unlink()
    return d / "flows.jsonl.4", 1, "missing rotated file flows.jsonl.3"


def drop_newest_rotated_file(d):
    last = files(d)[-2]
    last.unlink()
    return d / "flows.jsonl", 1, f"missing rotated file {last.name}"


def drop_oldest_file(d):
    (d / "flows.jsonl.1").unlink()
    return d / "flows.jsonl.1", 0, "missing rotated file"


def replace_checkpoint_hmac(d):
    p = d / "flows.jsonl.2"
    lines = read_lines(p)
    ckpts = [i for i, line in enumerate(lines) if "reason" in chain_fields(line)]
    i, j = ckpts[0], ckpts[-1]
    rec = json.loads(lines[i])
    rec["unmapped"][CHAIN_KEY]["hmac"] = chain_fields(lines[j])["hmac"]
    lines[i] = dumps(rec)
    write_lines(p, lines)
    return p, i + 1, "checkpoint HMAC mismatch"


def forge_chain_without_key(d):
    """Edit a record, then re-hash every later `prev` through every later file: all a forger can do."""
    p = d / "flows.jsonl.2"
    fs = files(d)
    per_file = [read_lines(f) for f in fs]
    fi = fs.index(p)
    i = event_lines(per_file[fi])[0]
    rec = json.loads(per_file[fi][i])
    rec["unmapped"]["egressgw"]["url"] = "https://allowed.test/innocent"
    per_file[fi][i] = dumps(rec)
    prev = chain.line_hash(per_file[fi][i])
    for k in range(fi, len(fs)):
        for j in range(i + 1 if k == fi else 0, len(per_file[k])):
            rec = json.loads(per_file[k][j])
            rec["unmapped"][CHAIN_KEY]["prev"] = prev
            per_file[k][j] = dumps(rec)
            prev = chain.line_hash(per_file[k][j])
        write_lines(fs[k], per_file[k])
    nxt = next(k for k in range(i + 1, len(per_file[fi])) if "reason" in chain_fields(per_file[fi][k]))
    return p, nxt + 1, "checkpoint HMAC mismatch"


def forge_chain_dropping_checkpoints(d):
    """Drop the (unforgeable) checkpoints of the live file and renumber and re-hash what is left."""
    p = d / "flows.jsonl"
    lines = read_lines(p)
    first = chain_fields(lines[0])
    kept = [line for line in lines if "reason" not in chain_fields(line)]
    write_lines(p, _renumber(kept, first["seq"], first["prev"]))
    return p, 1, "does not start with its open checkpoint"


def _renumber(lines, seq, prev):
    out = []
    for line in lines:
        rec = json.loads(line)
        fields = dict(chain_fields(line))
        fields["seq"], fields["prev"] = seq, prev
        rec["unmapped"][CHAIN_KEY] = fields
        new = dumps(rec)
        out.append(new)
        prev, seq = chain.line_hash(new), seq + 1
    return out


def cut_head_up_to_a_restart(d):
    """Remove the start of the live file up to the open checkpoint a restart wrote."""
    from gateway.log.writer import FlowLog
    from .logutil import sample_event

    log = FlowLog(d / "flows.jsonl", rotate_bytes=ROTATE, checkpoint_every=5, key=KEY)
    log.write(sample_event(1000))
    log.close()
    p = d / "flows.jsonl"
    lines = read_lines(p)
    opens = [i for i, line in enumerate(lines) if chain_fields(line).get("reason") == "open"]
    assert len(opens) == 2
    write_lines(p, lines[opens[1]:])
    return p, 1, "removed: this checkpoint was written at byte"


def garbage_line_inside(d):
    p = d / "flows.jsonl.2"
    lines = read_lines(p)
    i = event_lines(lines)[1]
    lines[i] = lines[i][:40] + b"\n"
    write_lines(p, lines)
    return p, i + 1, "not a valid JSON record"


def renamed_files_swapped(d):
    a, b = d / "flows.jsonl.2", d / "flows.jsonl.3"
    tmp = d / "x"
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    return a, 1, "missing rotated file"


CASES = [edit_field, edit_decision_last_record, delete_line, swap_lines, duplicate_line, cut_rotated_file,
         drop_middle_file, drop_newest_rotated_file, drop_oldest_file, replace_checkpoint_hmac,
         forge_chain_without_key, forge_chain_dropping_checkpoints, garbage_line_inside, renamed_files_swapped,
         cut_head_up_to_a_restart]


@pytest.mark.parametrize("tamper", CASES, ids=lambda f: f.__name__)
def test_tampering_is_named(log_dir, tamper, capsys):
    path, line, phrase = tamper(log_dir)
    result = verify.verify([log_dir], KEY)
    assert result.exit_code == verify.TAMPERED, result.summary()
    assert result.error.path == str(path), result.summary()
    assert result.error.line == line, result.summary()
    assert phrase in result.error.message, result.summary()
    # the command says the same, with exit code 1
    assert main(["log", "verify", "--key-file", str(write_key(log_dir.parent)), str(log_dir)]) == 1
    out = capsys.readouterr().out
    where = f"{path}:{line}" if line else str(path)
    assert f"TAMPERED: {where}: " in out and phrase in out


def write_key(d):
    p = d / "verify.key"
    if not p.exists():
        fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, KEY.hex().encode())
        os.close(fd)
    return p


def test_a_wrong_key_fails_at_the_first_checkpoint(log_dir):
    result = verify.verify([log_dir], b"\x01" * 32)
    assert result.exit_code == verify.TAMPERED
    assert (result.error.path, result.error.line) == (str(log_dir / "flows.jsonl.1"), 1)
    assert "HMAC mismatch" in result.error.message


def test_without_the_key_a_rewritten_chain_passes_the_chain_check(log_dir):
    """What --no-key gives up: a forger who re-hashes the chain is only caught by the HMAC."""
    forge_chain_without_key(log_dir)
    assert verify.verify([log_dir], None).exit_code == verify.OK
    assert verify.verify([log_dir], KEY).exit_code == verify.TAMPERED


def test_torn_last_line_is_truncation_not_tampering(log_dir, capsys):
    p = log_dir / "flows.jsonl"
    data = p.read_bytes()
    p.write_bytes(data[:-1][: data[:-1].rfind(b"\n") + 1] + data[data[:-1].rfind(b"\n") + 1:][:100])
    result = verify.verify([log_dir], KEY)
    assert result.exit_code == verify.TRUNCATED
    assert result.error is None
    n = p.read_bytes().count(b"\n") + 1
    assert (result.truncated.path, result.truncated.line) == (str(p), n)
    assert "torn" in result.truncated.message
    assert main(["log", "verify", "--key-file", str(write_key(log_dir.parent)), str(log_dir)]) == 3
    assert f"TRUNCATED: {p}:{n}: truncated" in capsys.readouterr().out


def test_verify_given_single_files_and_live_path(log_dir, capsys):
    key = str(write_key(log_dir.parent))
    assert main(["log", "verify", "--key-file", key, str(log_dir / "flows.jsonl")]) == 0  # live path: whole set
    assert "OK: 40 records" in capsys.readouterr().out
    assert main(["log", "verify", "--key-file", key, str(log_dir / "flows.jsonl.2")]) == 0  # one rotated file
    assert main(["log", "verify", "--key-file", key, str(log_dir / "nope.jsonl")]) == 2
    assert "no such log file" in capsys.readouterr().err
    assert main(["log", "verify", "--key-file", str(log_dir.parent / "missing.key"), str(log_dir)]) == 2


@pytest.mark.parametrize("fmt", ["ocsf", "ecs", "native"])
def test_every_format_verifies_and_reads_back(tmp_path, fmt):
    from gateway.log import reader
    from .logutil import sample_event

    d = tmp_path / fmt
    write_log(d, 12, rotate_bytes=4000, every=4, fmt=fmt)
    assert verify.verify([d], KEY).summary().startswith("OK: 12 records")
    got = [r.event for r in reader.iter_records([d])]
    want = [sample_event(i) for i in range(12)]
    assert [{k: v for k, v in e.items() if k != "time"} for e in got] == \
        [{k: v for k, v in e.items() if k != "time"} for e in want]
    p = d / "flows.jsonl"
    lines = read_lines(p)
    i = event_lines(lines)[0]
    lines[i] = lines[i].replace(b"allowed.test/", b"allowed.test/x", 1)
    write_lines(p, lines)
    result = verify.verify([d], KEY)
    assert (result.exit_code, result.error.path, result.error.line) == (verify.TAMPERED, str(p), i + 1)
