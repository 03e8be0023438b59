"""Check a flow log's hash chain and keyed checkpoints; name the first spot that is wrong.

`verify(paths, key)` walks each log (a live file and its rotated files, in
order) line by line and stops at the first integrity failure: a record altered
(its hash does not match the next record's `prev`), removed or reordered (a gap
or step back in `seq`), a line that is not a record, a rotated file missing or
cut short, a checkpoint whose HMAC does not verify, or too many records without
one. A torn last line (a crash in the middle of a write) is reported as
truncation, distinct from tampering; a torn line the gateway declared in a
checkpoint when it started again is noted, not failed.

Exit codes of `egressgw log verify`: 0 intact, 1 tampering or corruption found,
2 cannot verify (no such file, unreadable key), 3 intact except a torn last line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from gateway.log import chain
from gateway.log.reader import _ROTATED, chain_of, expand

OK, TAMPERED, UNVERIFIABLE, TRUNCATED = 0, 1, 2, 3


@dataclass(frozen=True)
class Finding:
    path: str
    line: int  # 0: about the whole file
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}" if self.line else f"{self.path}: {self.message}"


@dataclass
class Result:
    records: int = 0
    checkpoints: int = 0
    files: int = 0
    error: Finding | None = None  # the first tampering / corruption found
    truncated: Finding | None = None  # a torn last line
    notes: list[Finding] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.error:
            return TAMPERED
        return TRUNCATED if self.truncated else OK

    def summary(self) -> str:
        counts = f"{self.records} records, {self.checkpoints} checkpoints, {self.files} files"
        if self.error:
            return f"TAMPERED: {self.error}"
        if self.truncated:
            return f"TRUNCATED: {self.truncated}; otherwise OK: {counts}"
        return f"OK: {counts}"


class _Stop(Exception):
    pass


def log_sets(paths) -> list[list[Path]]:
    """Group the files named (directories and live paths expanded) into logs, each in order."""
    groups: dict[str, list[Path]] = {}
    for p in expand(paths):
        m = _ROTATED.match(p.name)
        base = str(p.parent / m.group("base")) if m else str(p)
        groups.setdefault(base, []).append(p)
    out = []
    for base, files in groups.items():
        def order(p: Path) -> tuple[int, int]:
            m = _ROTATED.match(p.name)
            return (0, int(m.group("n"))) if m and str(p.parent / m.group("base")) == base else (1, 0)
        out.append(sorted(dict.fromkeys(files), key=order))
    return out


def _lines(path: Path):
    with open(path, "rb") as f:
        offset = 0
        for n, line in enumerate(f, 1):
            yield n, offset, line
            offset += len(line)


_CHAIN_MARK = b'"egressgw_chain":'
_DECODE = json.JSONDecoder().raw_decode


def _fast_chain(line: bytes) -> dict | None:
    """The chain fields of a line the writer wrote, without parsing the whole record.

    The writer puts them last, so they are the last `"egressgw_chain":` of the line (inside a
    JSON string that text would read `\\"egressgw_chain\\":`). Only a line that ends right after
    them (closing at most the `unmapped` object and the record) takes this path; anything
    else is parsed in full. A line that is not JSON but ends like a record still cannot pass:
    its hash is in the next record's `prev`, and the chain is signed by the checkpoints.
    """
    at = line.rfind(_CHAIN_MARK)
    if at < 0:
        return None
    try:
        text = line[at + len(_CHAIN_MARK):].decode("ascii")
        fields, end = _DECODE(text)
    except (UnicodeDecodeError, ValueError):
        return None
    if text[end:] not in ("}\n", "}}\n") or not isinstance(fields, dict):
        return None
    if not line.startswith(b"{"):
        return None
    return fields


def _find_seq(path: Path, seq: int, after_line: int) -> int | None:
    for n, _, line in _lines(path):
        if n <= after_line:
            continue
        try:
            fields = chain_of(json.loads(line))
        except ValueError:
            continue
        if fields and fields.get("seq") == seq:
            return n
    return None


class _Walker:
    def __init__(self, result: Result, key: bytes | None):
        self.r = result
        self.key = key

    def fail(self, path, line: int, message: str) -> None:
        self.r.error = Finding(str(path), line, message)
        raise _Stop

    def walk(self, files: list[Path]) -> None:
        prev_hash: str | None = None
        exp_seq: int | None = None
        prev_at: tuple[Path, int] | None = None  # where the last chained line was
        every: int | None = None
        since = 0
        last_reason: str | None = None
        last_open: dict | None = None
        unchained = 0
        started = False
        for fi, path in enumerate(files):
            self.r.files += 1
            m = _ROTATED.match(path.name)
            live_name = files[-1].name if not _ROTATED.match(files[-1].name) else None
            rot_no = int(m.group("n")) if m and (live_name is None or m.group("base") == live_name) else None
            torn: list[tuple[int, int, str]] = []  # undeclared invalid lines: (line, offset, sha)
            first = True
            first_chained = True
            last_line = 0
            ends_torn = False
            for n, offset, line in _lines(path):
                last_line = n
                if not line.endswith(b"\n"):
                    ends_torn = True
                    if fi < len(files) - 1:
                        self.fail(path, n, "truncated: a rotated file ends in the middle of a record")
                    self.r.truncated = Finding(str(path), n, f"truncated: the last record is torn ({len(line)} bytes "
                                               "without an end of line: the gateway stopped during a write)")
                    break
                fields = _fast_chain(line)
                if fields is None:
                    try:
                        raw = json.loads(line)
                    except ValueError:
                        torn.append((n, offset, chain.line_hash(line)))
                        continue
                    fields = chain_of(raw)
                if fields is None or not isinstance(fields.get("seq"), int) or not isinstance(fields.get("prev"), str):
                    if not started:
                        unchained += 1
                        continue
                    self.fail(path, n, "a record without chain fields where a chained record was expected "
                                       "(inserted or altered)")
                seq, prev = fields["seq"], fields["prev"]
                is_ckpt = "reason" in fields
                if torn:
                    declared = {(t.get("offset"), t.get("sha256")) for t in fields.get("torn") or []
                                if isinstance(t, dict)} if is_ckpt else set()
                    for tn, toff, tsha in torn:
                        if (toff, tsha) not in declared:
                            self.fail(path, tn, "not a valid JSON record (altered or corrupted)")
                    for tn, _, _ in torn:
                        self.r.notes.append(Finding(str(path), tn, "a record torn by a crash, declared by the "
                                                    "gateway when it started again"))
                    torn = []
                if is_ckpt and fields.get("reason") == "open" and isinstance(fields.get("offset"), int) \
                        and fields["offset"] != offset:
                    self.fail(path, n, f"removed: this checkpoint was written at byte {fields['offset']} of its "
                                       f"file, it is now at byte {offset} (lines before it were removed or "
                                       "inserted)")
                if exp_seq is not None and seq != exp_seq:
                    if seq > exp_seq:
                        if first and fi > 0:
                            self.fail(path, n, self._gap_message(files[fi - 1], path, exp_seq, seq))
                        later = _find_seq(path, exp_seq, n)
                        if later is not None:
                            self.fail(path, n, f"reordered: record seq {seq} comes before seq {exp_seq} "
                                               f"(line {later})")
                        self.fail(path, n, f"removed: record{'s' if seq - exp_seq > 1 else ''} seq {exp_seq}"
                                           f"{'..' + str(seq - 1) if seq - exp_seq > 1 else ''} missing before "
                                           "this line")
                    self.fail(path, n, f"reordered or duplicated: record seq {seq} after seq {exp_seq - 1}")
                if prev_hash is not None and prev != prev_hash:
                    ppath, pline = prev_at
                    if pline == 0:
                        self.fail(path, n, "altered: `prev` does not match the previous record")
                    self.fail(ppath, pline, f"altered: this record's SHA-256 does not match `prev` of the next "
                                            f"record ({path.name}:{n})")
                if not started:
                    started = True
                    if unchained:
                        self.r.notes.append(Finding(str(path), 0, f"{unchained} records before the chain starts "
                                                    "(written by an older egressgw, not verifiable)"))
                    if seq != 0:
                        self.r.notes.append(Finding(str(path), n, f"the log starts at record seq {seq}: earlier "
                                                    "records are in files not given or removed by retention "
                                                    "(log.keep)"))
                if first_chained and not (is_ckpt and fields.get("reason") == "open"):
                    self.fail(path, n, "the file does not start with its open checkpoint (removed or replaced)")
                first_chained = False
                if is_ckpt:
                    self._checkpoint(path, n, fields)
                    reason = fields.get("reason")
                    if isinstance(fields.get("every"), int) and fields["every"] > 0:
                        every = fields["every"]
                    if reason == "open":
                        last_open = fields
                        if rot_no is not None and fields.get("file_no") != rot_no:
                            self.fail(path, n, f"file is named .{rot_no} but was written as file "
                                               f"{fields.get('file_no')} (renamed or swapped)")
                    since = 0
                    self.r.checkpoints += 1
                    last_reason = reason
                else:
                    since += 1
                    self.r.records += 1
                    last_reason = None
                    if every is not None and since > every:
                        self.fail(path, n, f"{since} records since the last checkpoint, at most {every} expected "
                                           "(a checkpoint was removed)")
                prev_hash = chain.line_hash(line)
                prev_at = (path, n)
                exp_seq = seq + 1
                first = False
            if torn:
                tn = torn[0][0]
                self.fail(path, tn, "not a valid JSON record (altered or corrupted)")
            if fi < len(files) - 1 and started and last_reason != "rotate" and not ends_torn:
                self.fail(path, last_line, "truncated: this rotated file does not end with its rotate checkpoint "
                                           "(records at its end were removed)")
        if last_open is not None and files:
            self._missing_files(files, last_open)
        if started and last_reason != "stop":
            self.r.notes.append(Finding(str(files[-1]), 0, f"{since} records after the last checkpoint: the "
                                        "gateway is running or did not stop cleanly (they are chained but not "
                                        "yet covered by a checkpoint)"))

    def _gap_message(self, before: Path, after: Path, exp_seq: int, seq: int) -> str:
        a = _ROTATED.match(before.name)
        b = _ROTATED.match(after.name)
        names = ""
        if a:
            lo = int(a.group("n")) + 1
            hi = int(b.group("n")) if b else None
            if hi is not None and hi > lo:
                names = ", ".join(f"{a.group('base')}.{i}" for i in range(lo, hi)) + " "
            elif hi is None:
                names = f"{a.group('base')}.{lo} "
        return (f"missing rotated file {names}(records seq {exp_seq}..{seq - 1} are absent between "
                f"{before.name} and {after.name})")

    def _missing_files(self, files: list[Path], last_open: dict) -> None:
        live = files[-1]
        if _ROTATED.match(live.name):
            return
        oldest, file_no = last_open.get("oldest"), last_open.get("file_no")
        if not isinstance(oldest, int) or not isinstance(file_no, int):
            return
        present = {p.name for p in files}
        for i in range(oldest, file_no):
            name = f"{live.name}.{i}"
            if name not in present and not (live.parent / name).exists():
                self.fail(live.parent / name, 0, f"missing rotated file (the checkpoint written when {live.name} "
                                                 f"was opened lists files .{oldest} to .{file_no - 1})")

    def _checkpoint(self, path, n: int, fields: dict) -> None:
        if self.key is None:
            return
        if "hmac" not in fields:
            self.fail(path, n, "checkpoint without an HMAC (replaced or written without a key)")
        if not chain.check(self.key, fields):
            self.fail(path, n, "checkpoint HMAC mismatch: forged or replaced (or verified with a different key)")


def verify(paths, key: bytes | None) -> Result:
    """Verify every log named in `paths` (files or directories); stops at the first failure."""
    result = Result()
    for files in log_sets(paths):
        for p in files:
            if not p.exists():
                raise FileNotFoundError(p)
        try:
            _Walker(result, key).walk(files)
        except _Stop:
            return result
    return result


def exists_any(paths) -> bool:
    return any(os.path.exists(p) for p in expand(paths))
