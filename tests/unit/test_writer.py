"""gateway/log/writer.py: one JSON line per event, fail closed on write errors.

Rotation, the hash chain and checkpoints are tested in tests/log/.
"""

from __future__ import annotations

import json
import os
import stat

import pytest

from gateway.log import events, reader
from gateway.log.writer import FlowLog, LogWriteError


def lines(path) -> list[str]:
    return path.read_text().splitlines()


def logged(path) -> list[dict]:
    """The native events in a log, as the reader gives them back."""
    return [r.event for r in reader.iter_records([path])]


def test_creates_the_file_and_parent_directories(tmp_path):
    path = tmp_path / "a" / "b" / "flows.jsonl"
    log = FlowLog(path)
    assert path.exists() and path.read_text() == ""
    assert stat.S_IMODE(path.stat().st_mode) & 0o007 == 0  # not world-readable
    log.close()


def test_one_json_line_per_event_in_order(tmp_path):
    path = tmp_path / "flows.jsonl"
    log = FlowLog(path)
    sent = [events.make_event(events.DNS, dns_qname=f"n{i}.test", dns_answers=["198.18.1.10"]) for i in range(3)]
    for e in sent:
        log.write(e)
    assert log.records == 3
    assert logged(path) == sent
    # one open checkpoint, then one line per event: compact separators, ASCII only
    assert len(lines(path)) == 4
    assert all(line.startswith('{"class_uid":') and ", " not in line for line in lines(path))
    log.close()


def test_each_record_is_on_disk_before_write_returns(tmp_path):
    path = tmp_path / "flows.jsonl"
    log = FlowLog(path)
    log.write({"event": "http", "n": 1})
    assert logged(path) == [{"event": "http", "n": 1}]  # read by another file object, no close
    log.close()


def test_appends_to_an_existing_log(tmp_path):
    path = tmp_path / "flows.jsonl"
    path.write_text('{"old":true}\n')
    log = FlowLog(path)
    log.write({"event": "http", "new": True})
    log.close()
    assert json.loads(lines(path)[0]) == {"old": True}  # untouched
    assert logged(path) == [{"event": "http", "new": True}]


def test_log_injection_payload_stays_on_one_line(tmp_path):
    path = tmp_path / "flows.jsonl"
    log = FlowLog(path)
    payload = 'evil.test\r\n{"time":"x","event":"http","decision":"allow"}\n\u2028\x1b[2K'
    log.write(events.make_event(events.HTTP, dest_host=payload, sni=payload, detail=payload,
                                url=events.strip_query_values(f"https://a.test/{payload}?x={payload}")))
    # even a raw (uncleaned) value cannot break the line: JSON escapes it
    log.write({"event": "http", "raw": payload})
    log.close()
    text = path.read_text()
    assert text.count("\n") == 4  # open checkpoint, 2 records, stop checkpoint
    first, second = logged(path)
    assert "\n" not in first["dest_host"] and "\r" not in first["dest_host"]
    assert first["dest_host"].startswith("evil.test\\x0d\\x0a{")
    assert second["raw"] == payload
    assert text.isascii()


def test_write_to_a_full_device_raises(tmp_path):
    log = FlowLog("/dev/full")
    with pytest.raises(LogWriteError, match=r"cannot write flow log /dev/full: .*No space left on device"):
        log.write({"event": "http"})
    assert log.records == 0
    log.close()


def test_failed_record_never_reaches_the_file_later(tmp_path):
    """A record whose write failed (and whose flow was refused) must not appear once the disk recovers.

    Before the fix the writer was buffered: the failed line stayed in the buffer and was flushed
    with the next successful write, logging `allow` for a flow that was in fact refused.
    """
    log = FlowLog("/dev/full")
    for i in range(2):
        with pytest.raises(LogWriteError):
            log.write({"event": "http", "n": i, "decision": "allow"})
    # the disk "recovers": the same descriptor now points at a regular file
    good = tmp_path / "recovered.jsonl"
    fd = os.open(good, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, log._fd)
    os.close(fd)
    log.write({"event": "http", "n": 2})
    log.close()
    assert logged(good) == [{"event": "http", "n": 2}]
    assert log.records == 1


def test_write_after_close_raises(tmp_path):
    log = FlowLog(tmp_path / "flows.jsonl")
    log.close()
    with pytest.raises(LogWriteError, match="flows.jsonl"):
        log.write({"event": "dns"})
    log.close()  # idempotent


def test_unwritable_location_fails_at_open(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        FlowLog(tmp_path / "file" / "flows.jsonl")  # parent is a regular file
