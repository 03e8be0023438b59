"""The flow-log writer: the only code that writes the log file.

Append-only newline-delimited JSON (OCSF by default, ECS or the native flat
event on request), every line chained to the one before it (`chain.py`), with
a keyed checkpoint when a file is opened, every `checkpoint_every` records, at
rotation and at a clean close. Each record is handed to the kernel with an
unbuffered `os.write` before `write()` returns, so a record exists before the
gateway answers the sandbox. A write failure raises `LogWriteError`; callers
refuse the flow rather than let unlogged traffic through (fail closed).

Rotation is by size: the live file `flows.jsonl` is renamed `flows.jsonl.<n>`
with `n` growing (the highest number is the newest rotated file; names never
change after rotation), and only the newest `keep` rotated files are kept.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from gateway.errors import EgressgwError
from gateway.log import chain, ecs, ocsf
from gateway.log.reader import CHAIN_KEY, chain_of, rotated_files

FORMATS = ("ocsf", "ecs", "native")
TAIL_WINDOW = 1 << 20


class LogWriteError(EgressgwError):
    """The flow log could not be written; egress must stop."""


try:
    import orjson
except ImportError:  # optional speed-up: the stdlib encoder writes the same records
    orjson = None

_ENCODE = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), check_circular=False).encode


def _dumps(record: dict) -> bytes:
    """One compact JSON line, pure ASCII (non-ASCII text is \\u-escaped, so no byte can split a line)."""
    if orjson is not None:
        try:
            data = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        except TypeError:  # e.g. a lone surrogate or a huge int: the stdlib copes
            data = None
        if data is not None and data.isascii():
            return data
    return (_ENCODE(record) + "\n").encode("ascii")


def _attach(record: dict, fmt: str, chain_fields: dict) -> dict:
    if fmt == "ocsf":
        record["unmapped"][CHAIN_KEY] = chain_fields
    else:
        record[CHAIN_KEY] = chain_fields
    return record


def tail_state(path: Path) -> tuple[int, str, tuple[int, bytes] | None] | None:
    """(next seq, hash of the last complete line, torn tail (offset, bytes) or None) of a log file.

    None when the file is missing or empty.
    """
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return None
            start = max(0, size - TAIL_WINDOW)
            f.seek(start)
            data = f.read()
            if start and b"\n" not in data[:-1]:  # one enormous line: read it all
                f.seek(0)
                data, start = f.read(), 0
    except FileNotFoundError:
        return None
    torn = None
    if not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        torn = (start + cut, data[cut:])
        data = data[:cut]
    lines = data.splitlines(keepends=True)
    if start:
        lines = lines[1:]  # the first one may be cut by the window
    if not lines:
        return 0, chain.GENESIS, torn
    prev = chain.line_hash(lines[-1])
    for back, line in enumerate(reversed(lines)):
        try:
            fields = chain_of(json.loads(line))
        except ValueError:
            fields = None
        if fields and isinstance(fields.get("seq"), int):
            return fields["seq"] + 1 + back, prev, torn
    return len(lines), prev, torn  # an unchained (older format) log: the chain starts after it


class FlowLog:
    def __init__(self, path: str | os.PathLike, *, format: str = "ocsf", rotate_bytes: int = 0, keep: int = 10,
                 checkpoint_every: int = 1000, key: bytes | None = None, log_name: str = "flow"):
        if format not in FORMATS:
            raise ValueError(f"unknown log format {format!r}")
        self.path = Path(path)
        self.format = format
        self.rotate_bytes = rotate_bytes
        self.keep = keep
        self.checkpoint_every = max(1, checkpoint_every)
        self.key = key
        self.log_name = log_name
        self._map = ocsf.to_ocsf if format == "ocsf" else ecs.to_ecs if format == "ecs" else None
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records = 0  # event records written by this writer
        self.checkpoints = 0
        rotated = rotated_files(self.path)
        self._file_no = rotated[-1][0] + 1 if rotated else 1
        state = tail_state(self.path)
        if state is None and rotated:
            state = tail_state(rotated[-1][1])
            if state is not None:
                state = (state[0], state[1], None)  # a rotated file's torn tail cannot be repaired
        self._seq, self._prev, torn = state if state is not None else (0, chain.GENESIS, None)
        self._torn: list[tuple[int, bytes]] = [torn] if torn else []  # torn lines not yet declared
        self._torn_open = bool(torn)  # the last torn line still lacks its newline
        # Unbuffered: a record whose write failed must not linger in a buffer and reach the
        # file later, after its flow was refused.
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._size = os.fstat(self._fd).st_size
        self._regular = os.path.isfile(self.path)
        self._need_open = True  # write an "open" checkpoint before the first record
        self._since = 0  # event records since the last checkpoint
        self._rotate_marked = False  # the current file already ends with its "rotate" checkpoint
        self._oldest_kept: int | None = None
        self._renamed = False  # rotation renamed the live file but could not create the new one yet

    # -- building lines ------------------------------------------------------------------------
    def _checkpoint_line(self, seq: int, prev: str, reason: str, **extra) -> bytes:
        fields: dict = {"seq": seq, "prev": prev, "reason": reason, **extra}
        if self.key is not None:
            fields["hmac"] = chain.sign(self.key, fields)
        now_ms = int(time.time() * 1000)
        if self.format == "ocsf":
            rec = ocsf.checkpoint(fields, now_ms, self.log_name)
        elif self.format == "ecs":
            rec = ecs.checkpoint(fields, now_ms, self.log_name)
        else:
            from gateway.log.events import rfc3339
            rec = {"time": rfc3339(now_ms / 1000), "checkpoint": reason}
        return _dumps(_attach(rec, self.format, fields))

    def _event_line(self, event: dict, seq: int, prev: str) -> bytes:
        if self._map is None:
            rec = dict(event)
        else:
            rec = self._map(event, seq, self.log_name)
        return _dumps(_attach(rec, self.format, {"seq": seq, "prev": prev}))

    def _oldest(self) -> int:
        """The oldest rotated file that should exist: as found at start, then as this writer pruned.

        Kept in memory, so a file deleted behind the writer's back is still listed in the next
        open checkpoint and `verify` reports it missing.
        """
        if self._oldest_kept is None:
            rotated = rotated_files(self.path)
            self._oldest_kept = rotated[0][0] if rotated else self._file_no
        return self._oldest_kept

    # -- writing -------------------------------------------------------------------------------
    # A batch is a list of (kind, bytes): "end" (a lone newline that ends a torn line; not
    # chained), "checkpoint" or "event". It is written with as few os.write calls as possible.
    def _write_batch(self, batch: list[tuple[str, bytes]]) -> None:
        data = b"".join(line for _, line in batch)
        view = memoryview(data)
        written = 0
        try:
            if self._fd < 0:
                raise ValueError("flow log is closed")
            while written < len(data):
                written += os.write(self._fd, view[written:])
        except (OSError, ValueError) as e:
            self._commit(batch, written)
            raise LogWriteError(f"cannot write flow log {self.path}: {e}") from e
        self._commit(batch, written)

    def _commit(self, batch: list[tuple[str, bytes]], written: int) -> None:
        """Advance the chain over the lines that reached the file; remember a torn one."""
        at = 0
        for kind, line in batch:
            if at + len(line) > written:
                if written > at:
                    self._torn.append((self._size + at, line[: written - at]))
                    self._torn_open = True
                break
            at += len(line)
            if kind == "end":
                self._torn_open = False
                continue
            self._seq += 1
            self._prev = chain.line_hash(line)
            if kind == "checkpoint":
                self._since = 0
                self.checkpoints += 1
                self._need_open = False
                self._torn = []
            else:
                self._since += 1
                self.records += 1
        self._size += written

    def _prefix(self) -> tuple[list[tuple[str, bytes]], int, str]:
        """The lines due before the next record: end a torn line, an "open" or "interval" checkpoint."""
        seq, prev = self._seq, self._prev
        batch: list[tuple[str, bytes]] = []
        if self._torn_open:
            batch.append(("end", b"\n"))
        if self._need_open or self._torn:
            # `offset`: where in its file this line starts, so cutting the head of a file is seen
            extra: dict = {"file_no": self._file_no, "oldest": self._oldest(), "every": self.checkpoint_every,
                           "offset": self._size + sum(len(line) for _, line in batch)}
            if self._torn:
                extra["torn"] = [{"offset": off, "sha256": chain.line_hash(part + b"\n")} for off, part in self._torn]
            batch.append(("checkpoint", self._checkpoint_line(seq, prev, "open", **extra)))
        elif self._since >= self.checkpoint_every:
            batch.append(("checkpoint", self._checkpoint_line(seq, prev, "interval")))
        else:
            return batch, seq, prev
        return batch, seq + 1, chain.line_hash(batch[-1][1])

    def write(self, event: dict) -> None:
        with self._lock:
            if self._fd < 0:
                raise LogWriteError(f"cannot write flow log {self.path}: flow log is closed")
            if self.rotate_bytes and self._regular and self._size >= self.rotate_bytes:
                self._rotate()
            batch, seq, prev = self._prefix()
            batch.append(("event", self._event_line(event, seq, prev)))
            self._write_batch(batch)

    def _rotate(self) -> None:
        """Close the live file with a "rotate" checkpoint, rename it, prune, open a new one."""
        if not self._rotate_marked:
            batch: list[tuple[str, bytes]] = [("end", b"\n")] if self._torn_open else []
            extra: dict = {"file_no": self._file_no}
            if self._torn:
                extra["torn"] = [{"offset": off, "sha256": chain.line_hash(part + b"\n")} for off, part in self._torn]
            batch.append(("checkpoint", self._checkpoint_line(self._seq, self._prev, "rotate", **extra)))
            self._write_batch(batch)
            self._rotate_marked = True
        target = self.path.with_name(f"{self.path.name}.{self._file_no}")
        try:
            if not self._renamed:
                if os.path.lexists(target):
                    raise OSError(f"{target} already exists")
                os.rename(self.path, target)
                self._renamed = True
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as e:
            raise LogWriteError(f"cannot rotate flow log {self.path}: {e}") from e
        self._renamed = False
        os.close(self._fd)
        self._fd = fd
        self._size = 0
        self._file_no += 1
        self._rotate_marked = False
        self._need_open = True
        self._since = 0
        oldest = self._oldest()
        if self.keep > 0 and self._file_no - self.keep > oldest:
            self._oldest_kept = self._file_no - self.keep
            for n, old in rotated_files(self.path):
                if n < self._oldest_kept:
                    try:
                        old.unlink()
                    except OSError:
                        pass  # retention is best effort; the chain still verifies

    def close(self) -> None:
        """Write the "stop" checkpoint (best effort) and close the file."""
        with self._lock:
            if self._fd >= 0 and not self._need_open and not self._torn and not self._torn_open:
                try:
                    self._write_batch([("checkpoint", self._checkpoint_line(self._seq, self._prev, "stop"))])
                except LogWriteError:
                    pass
            fd, self._fd = self._fd, -1
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
