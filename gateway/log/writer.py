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
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._file = os.fdopen(fd, "a", encoding="utf-8")
        self.records = 0

    def write(self, event: dict) -> None:
        line = json.dumps(event, ensure_ascii=True, separators=(",", ":")) + "\n"
        try:
            self._file.write(line)
            self._file.flush()
        except (OSError, ValueError) as e:
            raise LogWriteError(f"cannot write flow log {self.path}: {e}") from e
        self.records += 1

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass
