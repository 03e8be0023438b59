"""The flow-log writer: the only code that writes the log file.

Append-only newline-delimited JSON. Each record is flushed to the kernel
before the caller goes on, so a record exists before the gateway answers the
sandbox. A write failure raises `LogWriteError`; callers refuse the flow
rather than let unlogged traffic through (fail closed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from gateway.errors import EgressgwError


class LogWriteError(EgressgwError):
    """The flow log could not be written; egress must stop."""


class FlowLog:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered: a record whose write failed must not linger in a buffer and reach the
        # file later, after its flow was refused.
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._partial = False  # a failed write left a partial line: end it before the next record
        self.records = 0

    def write(self, event: dict) -> None:
        line = json.dumps(event, ensure_ascii=True, separators=(",", ":")) + "\n"
        data = memoryview((b"\n" if self._partial else b"") + line.encode("ascii"))
        try:
            if self._fd < 0:
                raise ValueError("flow log is closed")
            while data:
                n = os.write(self._fd, data)
                self._partial = True
                data = data[n:]
            self._partial = False
        except (OSError, ValueError) as e:
            raise LogWriteError(f"cannot write flow log {self.path}: {e}") from e
        self.records += 1

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
