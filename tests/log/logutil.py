"""Helpers for flow-log tests: write a real log, read and rewrite its lines."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.log import events
from gateway.log.reader import CHAIN_KEY, chain_of
from gateway.log.writer import FlowLog

KEY = bytes(range(32))


def sample_event(i: int) -> dict:
    return events.make_event(events.HTTP, session="s-1", client=f"10.211.0.2:{40000 + i}", dest_host="allowed.test",
                             dest_ip="198.18.1.10", dest_port=443, method="GET", url=f"https://allowed.test/{i}?q=",
                             status=200, bytes_out=0, bytes_in=24, decision="allow", rule="r", reason="allowed")


def write_log(directory: Path, n: int = 40, *, rotate_bytes: int = 0, keep: int = 0, every: int = 5,
              fmt: str = "ocsf", close: bool = True, key: bytes | None = KEY) -> FlowLog:
    log = FlowLog(directory / "flows.jsonl", format=fmt, rotate_bytes=rotate_bytes, keep=keep,
                  checkpoint_every=every, key=key)
    for i in range(n):
        log.write(sample_event(i))
    if close:
        log.close()
    return log


def read_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def chain_fields(line: bytes) -> dict:
    return chain_of(json.loads(line))


def set_chain(record: dict, fields: dict) -> None:
    if "unmapped" in record and "class_uid" in record:
        record["unmapped"][CHAIN_KEY] = fields
    else:
        record[CHAIN_KEY] = fields


def dumps(record: dict) -> bytes:
    return (json.dumps(record, ensure_ascii=True, separators=(",", ":")) + "\n").encode()


def event_lines(lines: list[bytes]) -> list[int]:
    """Indexes of the lines that are events (not checkpoints)."""
    return [i for i, line in enumerate(lines) if "reason" not in chain_fields(line)]
