"""gateway/log/writer.py: rotation, retention, the chain across files and restarts, fail-closed writes."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from gateway.log import chain, reader, verify
from gateway.log.writer import FlowLog, LogWriteError

from .logutil import KEY, chain_fields, read_lines, sample_event, write_log


def events_of(d):
    return [r.event for r in reader.iter_records([d])]


def urls(d):
    return [e["url"] for e in events_of(d)]


def test_rotation_keeps_the_newest_files_and_the_chain_runs_across_them(tmp_path):
    d = tmp_path / "log"
    write_log(d, 60, rotate_bytes=6000, keep=2, every=10)
    names = sorted(p.name for p in d.iterdir())
    rotated = sorted(int(n.rsplit(".", 1)[1]) for n in names if n != "flows.jsonl")
    assert len(rotated) == 2 and rotated[1] == rotated[0] + 1 and rotated[0] > 1  # older ones pruned
    files = reader.expand([d])
    assert [p.name for p in files] == [f"flows.jsonl.{n}" for n in rotated] + ["flows.jsonl"]
    # each file opens with a checkpoint chained to the last line of the file before it
    for before, after in zip(files, files[1:]):
        first = chain_fields(read_lines(after)[0])
        assert first["reason"] == "open" and first["prev"] == chain.line_hash(read_lines(before)[-1])
        assert chain_fields(read_lines(before)[-1])["reason"] == "rotate"
    result = verify.verify([d], KEY)
    assert result.exit_code == verify.OK, result.summary()
    assert any("starts at record seq" in n.message for n in result.notes)  # earlier files went by retention
    # what remains is the newest events, in order
    got = urls(d)
    assert got == [f"https://allowed.test/{i}?q=" for i in range(60 - len(got), 60)]
    assert all(os.path.getsize(p) <= 6000 + 2000 for p in files)


def test_keep_zero_keeps_every_rotated_file(tmp_path):
    d = tmp_path / "log"
    write_log(d, 30, rotate_bytes=5000, keep=0)
    assert (d / "flows.jsonl.1").exists()
    assert len(urls(d)) == 30


def test_restart_continues_the_chain(tmp_path):
    d = tmp_path / "log"
    write_log(d, 7, every=3)
    log = FlowLog(d / "flows.jsonl", checkpoint_every=3, key=KEY)
    log.write(sample_event(100))
    log.close()
    seqs = [chain_fields(line)["seq"] for line in read_lines(d / "flows.jsonl")]
    assert seqs == list(range(len(seqs)))
    reasons = [chain_fields(line).get("reason") for line in read_lines(d / "flows.jsonl")]
    assert reasons.count("open") == 2 and reasons.count("stop") == 2
    assert verify.verify([d], KEY).exit_code == verify.OK
    assert urls(d)[-1] == "https://allowed.test/100?q="


def test_restart_after_rotation_continues_from_the_newest_rotated_file(tmp_path):
    d = tmp_path / "log"
    write_log(d, 20, rotate_bytes=5000)
    (d / "flows.jsonl").unlink()  # e.g. the live file was moved away by hand: chain from the last rotated
    (d / "flows.jsonl").write_bytes(b"")
    log = FlowLog(d / "flows.jsonl", rotate_bytes=5000, key=KEY)
    log.write(sample_event(99))
    log.close()
    newest = reader.expand([d])[-2]
    first = chain_fields(read_lines(d / "flows.jsonl")[0])
    assert first["prev"] == chain.line_hash(read_lines(newest)[-1])


def test_crash_torn_line_is_declared_when_the_gateway_starts_again(tmp_path):
    d = tmp_path / "log"
    write_log(d, 5, close=False)
    with open(d / "flows.jsonl", "ab") as f:  # a crash in the middle of a write
        f.write(b'{"class_uid":4002,"class_name":"HTTP Act')
    assert verify.verify([d], KEY).exit_code == verify.TRUNCATED
    log = FlowLog(d / "flows.jsonl", key=KEY)
    log.write(sample_event(6))
    log.close()
    result = verify.verify([d], KEY)
    assert result.exit_code == verify.OK, result.summary()
    assert [n.line for n in result.notes if "torn by a crash" in n.message] == [7]  # after open + 5 records
    assert len(urls(d)) == 6
    # the torn line cannot be swapped for something else afterwards
    lines = read_lines(d / "flows.jsonl")
    lines[6] = b'{"class_uid":4002,"class_name":"HTTP Acx\n'
    (d / "flows.jsonl").write_bytes(b"".join(lines))
    result = verify.verify([d], KEY)
    assert (result.exit_code, result.error.line) == (verify.TAMPERED, 7)


def test_an_unwritable_rotation_target_stops_egress_until_it_is_fixed(tmp_path):
    d = tmp_path / "log"
    log = FlowLog(d / "flows.jsonl", rotate_bytes=5000, key=KEY)
    i = 0
    while not (d / "flows.jsonl.1").exists():
        log.write(sample_event(i))
        i += 1
    blocker = d / "flows.jsonl.2"
    blocker.mkdir()  # the next rotation target is taken
    ok = i
    with pytest.raises(LogWriteError, match="cannot rotate flow log"):
        for i in range(i, i + 50):
            log.write(sample_event(i))
            ok += 1
    with pytest.raises(LogWriteError):
        log.write(sample_event(1000))  # still refused: nothing is written while it cannot rotate
    assert len(urls(d)) == ok
    blocker.rmdir()
    log.write(sample_event(1001))
    log.close()
    assert urls(d)[-1] == "https://allowed.test/1001?q=" and len(urls(d)) == ok + 1
    assert verify.verify([d], KEY).exit_code == verify.OK


@pytest.fixture
def tiny_fs(tmp_path):
    """A 64 KiB tmpfs: a disk that really fills up."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount tmpfs: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_fails_closed_and_loses_no_answered_record(tiny_fs):
    filler = tiny_fs / "filler"
    filler.write_bytes(b"x" * 16384)  # something the operator can delete to free space
    d = tiny_fs / "log"
    log = FlowLog(d / "flows.jsonl", rotate_bytes=8192, keep=0, checkpoint_every=7, key=KEY)
    answered, refused = [], []
    for i in range(200):
        try:
            log.write(sample_event(i))
        except LogWriteError as e:
            assert "No space left on device" in str(e)
            refused.append(i)
        else:
            answered.append(i)
    assert len(answered) > 20 and refused  # it filled up, after rotating a few times
    assert (d / "flows.jsonl.2").exists()
    assert refused == list(range(refused[0], 200))  # after the first failure, nothing goes through
    logged = [int(e["url"].rsplit("/", 1)[1].split("?")[0]) for e in events_of(d)]
    assert logged == answered  # every answered flow has its record; no refused one has a record
    assert verify.verify([d], KEY).exit_code in (verify.OK, verify.TRUNCATED)  # a torn tail at most
    filler.unlink()
    log.write(sample_event(500))
    log.close()
    result = verify.verify([d], KEY)
    assert result.exit_code == verify.OK, result.summary()
    assert events_of(d)[-1]["url"] == "https://allowed.test/500?q="


def test_a_log_file_deleted_under_a_running_writer_is_reported(tmp_path):
    d = tmp_path / "log"
    log = write_log(d, 30, rotate_bytes=5000, keep=0, close=False)
    (d / "flows.jsonl.1").unlink()  # "freeing space" by hand
    for i in range(30, 60):
        log.write(sample_event(i))
    log.close()
    result = verify.verify([d], KEY)
    assert result.exit_code == verify.TAMPERED
    assert result.error.path == str(d / "flows.jsonl.1") and "missing rotated file" in result.error.message


def test_a_partial_write_leaves_a_declared_torn_line(tmp_path):
    """A write cut short by the device: the record is refused, its bytes are declared torn next time."""
    d = tmp_path / "log"
    log = FlowLog(d / "flows.jsonl", key=KEY)
    log.write(sample_event(0))
    real_write = os.write
    calls = {"n": 0}

    def short_then_fail(fd, data):
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data[:50]))
        raise OSError(28, "No space left on device")

    os.write = short_then_fail
    try:
        with pytest.raises(LogWriteError, match="No space left"):
            log.write(sample_event(1))
    finally:
        os.write = real_write
    log.write(sample_event(2))
    log.close()
    assert urls(d) == ["https://allowed.test/0?q=", "https://allowed.test/2?q="]
    result = verify.verify([d], KEY)
    assert result.exit_code == verify.OK, result.summary()
    assert [n.line for n in result.notes if "torn by a crash" in n.message] == [3]


def test_checkpoints_come_every_n_records(tmp_path):
    d = tmp_path / "log"
    write_log(d, 25, every=10)
    reasons = [chain_fields(line).get("reason") for line in read_lines(d / "flows.jsonl")]
    assert reasons[0] == "open" and reasons[-1] == "stop"
    gaps, run = [], 0
    for r in reasons[1:]:
        if r is None:
            run += 1
        else:
            gaps.append(run)
            run = 0
    assert gaps == [10, 10, 5]


def test_a_record_is_written_in_one_line_before_write_returns(tmp_path):
    d = tmp_path / "log"
    log = FlowLog(d / "flows.jsonl", key=KEY)
    log.write(sample_event(1))
    raw = (d / "flows.jsonl").read_bytes()
    assert raw.endswith(b"\n") and json.loads(raw.splitlines()[-1])["unmapped"]["egressgw"]["url"].endswith("/1?q=")
    log.close()
