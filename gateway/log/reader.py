"""Reading the flow log: the one way to get events back out of it.

Every record on disk is one JSON line in one of the formats the writer can
produce (OCSF, ECS, or the native flat event); all three carry the native event
(`gateway.log.events.make_event`) unchanged, so a reader gets the same dict
whatever the format. Chain checkpoint records carry no event and are skipped.

A log is a live file plus its rotated files `<live>.<n>`, `n` growing with age
of rotation (the highest number is the newest rotated file). `expand()` turns a
directory or a live path into that ordered list.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

CHAIN_KEY = "egressgw_chain"
_ROTATED = re.compile(r"^(?P<base>.+)\.(?P<n>\d+)$")


@dataclass(frozen=True)
class Record:
    path: str
    line: int  # 1-based line number in `path`
    offset: int  # byte offset of the line start in `path`
    event: dict  # the native flat event, as events.make_event built it
    raw: dict  # the record as written (OCSF / ECS / native, with its chain fields)
    seq: int | None = None  # the chain sequence number, None for an unchained (old) record


def native_event(raw: dict) -> dict | None:
    """The native event inside a record of any format, or None for a checkpoint record."""
    if not isinstance(raw, dict):
        return None
    unmapped = raw.get("unmapped")
    if "class_uid" in raw and isinstance(unmapped, dict):  # OCSF
        event = unmapped.get("egressgw")
        return event if isinstance(event, dict) else None
    if "ecs" in raw and isinstance(raw.get("egressgw"), dict):  # ECS
        return raw["egressgw"]
    if "event" in raw and isinstance(raw["event"], str):  # native flat
        if CHAIN_KEY in raw:
            return {k: v for k, v in raw.items() if k != CHAIN_KEY}
        return raw
    return None


def chain_of(raw: dict) -> dict | None:
    """The chain fields (`seq`, `prev`, and for a checkpoint `hmac`, `reason`...) of a record."""
    if not isinstance(raw, dict):
        return None
    chain = raw.get(CHAIN_KEY)
    if chain is None and isinstance(raw.get("unmapped"), dict):
        chain = raw["unmapped"].get(CHAIN_KEY)
    return chain if isinstance(chain, dict) else None


def _rotation_index(path: Path, base: str) -> int | None:
    m = _ROTATED.match(path.name)
    if m and m.group("base") == base:
        return int(m.group("n"))
    return None


def rotated_files(live: str | os.PathLike) -> list[tuple[int, Path]]:
    """`(n, path)` of the rotated files of a live log path, oldest first."""
    live = Path(live)
    try:
        names = os.listdir(live.parent)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        n = _rotation_index(Path(name), live.name)
        if n is not None and (live.parent / name).is_file():
            out.append((n, live.parent / name))
    return sorted(out)


def _looks_like_log(path: Path) -> bool:
    """A flow log starts with a JSON object (or is still empty and named like one).

    Keeps other files that live beside a log (an index, a config) out of a directory's logs.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(1)
    except OSError:
        return False
    return head == b"{" or (head == b"" and path.suffix in (".jsonl", ".json", ".log"))


def _live_files_in(directory: Path) -> list[Path]:
    """Live logs in a directory: log files that are not `<other>.<n>` of another file there."""
    names = set(os.listdir(directory))
    live = set()
    for name in names:
        if name.startswith("."):
            continue
        m = _ROTATED.match(name)
        if m and m.group("base") in names:
            continue
        if not (directory / name).is_file() or not _looks_like_log(directory / name):
            continue
        # a rotated file whose live file is gone stands for its log
        live.add(m.group("base") if m else name)
    return [directory / n for n in sorted(live)]


def expand(paths: Sequence[str | os.PathLike] | str | os.PathLike) -> list[Path]:
    """A directory or a live path -> its rotated files oldest first, then the live file.

    A rotated file named explicitly (`flows.jsonl.3`) stands for itself.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for live in _live_files_in(p):
                out.extend(x for _, x in rotated_files(live))
                if live.exists():
                    out.append(live)
        elif _ROTATED.match(p.name) and p.exists() and (p.parent / _ROTATED.match(p.name).group("base")).exists():
            out.append(p)
        else:
            out.extend(x for _, x in rotated_files(p))
            if p.exists() or not out:
                out.append(p)
            for worker_log in worker_logs(p):  # `workers: N`: each worker's own chained file beside it
                out.extend(x for _, x in rotated_files(worker_log))
                if worker_log.exists():
                    out.append(worker_log)
    seen: set[Path] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


def worker_logs(live: Path) -> list[Path]:
    """The per-worker logs of a live path (flows.jsonl -> flows-w0.jsonl, flows-w1.jsonl ...; gateway/workers.py),
    live or only rotated, by worker number."""
    pattern = re.compile(re.escape(live.stem) + r"-w(\d+)" + re.escape(live.suffix) + r"(?:\.\d+)?$")
    try:
        names = os.listdir(live.parent)
    except OSError:
        return []
    found: dict[int, Path] = {}
    for name in names:
        m = pattern.match(name)
        if m:
            found[int(m.group(1))] = live.with_name(f"{live.stem}-w{m.group(1)}{live.suffix}")
    return [found[k] for k in sorted(found)]


def _record(path: str, line_no: int, offset: int, line: bytes) -> Record | None:
    try:
        raw = json.loads(line)
    except ValueError:
        return None  # a torn or corrupt line: `log verify` reports it; readers skip it
    event = native_event(raw)
    if event is None:
        return None
    chain = chain_of(raw)
    seq = chain.get("seq") if chain else None
    return Record(path, line_no, offset, event, raw, seq if isinstance(seq, int) else None)


def iter_file(path: str | os.PathLike, *, start_offset: int = 0) -> Iterator[Record]:
    """Event records of one file from `start_offset` (a line start); a torn last line is skipped."""
    path = str(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        f.seek(start_offset)
        offset = start_offset
        line_no = 0
        if start_offset:
            # Line numbers are counted from the start of the file.
            f.seek(0)
            line_no = f.read(start_offset).count(b"\n")
        for line in f:
            line_no += 1
            if line.endswith(b"\n"):
                rec = _record(path, line_no, offset, line)
                if rec is not None:
                    yield rec
            offset += len(line)


def iter_records(paths: Sequence[str | os.PathLike], *, start_offset: int = 0) -> Iterator[Record]:
    """Event records of every file, in order; `start_offset` applies to the first file.

    Each path is expanded (`expand`): a directory or live path yields its rotated set in order.
    """
    first = True
    for path in expand(paths):
        yield from iter_file(path, start_offset=start_offset if first else 0)
        first = False


def _same_file(path: Path, ino) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == ino


def _rotated_numbers(live: Path) -> list[int]:
    """Rotation numbers present for a live path (names only: no stat per file)."""
    try:
        names = os.listdir(live.parent)
    except FileNotFoundError:
        return []
    prefix = live.name + "."
    return sorted(int(n[len(prefix):]) for n in names if n.startswith(prefix) and n[len(prefix):].isdigit())


def follow(path: str | os.PathLike, *, poll: float = 0.2,
           stop: Callable[[], bool] | None = None, from_start: bool = False) -> Iterator[Record]:
    """`tail -f` a live log across rotation: yields event records as they are appended.

    Starts at the end of the live file (or its start with `from_start`). When the live file is
    rotated (renamed to `<live>.<n>` and a new one created), the rest of the old file is read
    to its end, then every file rotated after it, then the new live file from its start.
    Returns when `stop()` is true (checked whenever there is nothing new to read).
    """
    path = Path(path)
    # no: rotation number of the open file (None while it is the live one); floor: the highest
    # rotation number that existed when the live file was opened (its own number will be higher)
    cur: dict = {"f": None, "ino": None, "name": str(path), "offset": 0, "line": 0, "pending": b"",
                 "no": None, "floor": 0}

    def rotated(n: int) -> Path:
        return path.with_name(f"{path.name}.{n}")

    def switch(name: Path, at_end: bool = False, no: int | None = None) -> bool:
        floor = cur["floor"]
        if no is None:  # before the open: whatever number the file we open gets is above it
            nums = _rotated_numbers(path)
            floor = nums[-1] if nums else 0
        try:
            nf = open(name, "rb")
        except FileNotFoundError:
            return False
        if cur["f"] is not None:
            cur["f"].close()
        st = os.fstat(nf.fileno())
        cur.update(f=nf, ino=(st.st_dev, st.st_ino), name=str(name), offset=0, line=0, pending=b"", no=no,
                   floor=floor)
        if at_end:
            data = nf.read()
            cut = data.rfind(b"\n") + 1
            cur.update(offset=cut, line=data[:cut].count(b"\n"), pending=data[cut:])
        return True

    def drain() -> Iterator[Record]:
        chunk = cur["f"].read() if cur["f"] is not None else b""
        if not chunk:
            return
        data = cur["pending"] + chunk
        start = 0
        while (nl := data.find(b"\n", start)) >= 0:
            line = data[start:nl + 1]
            cur["line"] += 1
            rec = _record(cur["name"], cur["line"], cur["offset"], line)
            cur["offset"] += len(line)
            start = nl + 1
            if rec is not None:
                yield rec
        cur["pending"] = data[start:]

    def my_number() -> int | None:
        """The rotation number the open file got: it was the live file, so it is above `floor`."""
        if cur["no"] is not None:
            return cur["no"]
        n = cur["floor"] + 1
        while rotated(n).exists():
            if _same_file(rotated(n), cur["ino"]):
                return n
            n += 1
        # a gap (retention removed a file while we lagged): every number above the floor
        for n in _rotated_numbers(path):
            if n > cur["floor"] and _same_file(rotated(n), cur["ino"]):
                return n
        return None

    def next_after(mine: int | None, before_open: bool = False) -> tuple[Path, int] | None:
        """The oldest file rotated after number `mine` that is not the one open (None: none).

        `before_open`: only one rotated before the open file. The open file (live when it was
        opened) may have been rotated by now, and others after it: those come after it."""
        if mine is None:
            return None
        if rotated(mine + 1).exists():  # the usual case: the next number
            candidates = [mine + 1]
        else:  # a gap (removed by retention while we lagged): look at what is there
            candidates = [n for n in _rotated_numbers(path) if n > mine]
        for n in candidates:
            if not _same_file(rotated(n), cur["ino"]):
                return rotated(n), n
            if before_open:
                return None
        return None

    switch(path, at_end=not from_start)
    try:
        while True:
            got = False
            for rec in drain():
                got = True
                yield rec
            if got:
                continue
            try:
                st = os.stat(path)
                live = (st.st_dev, st.st_ino)
            except FileNotFoundError:
                live = None
            if cur["f"] is None:
                if live is not None and switch(path):
                    continue
            elif live is not None and live != cur["ino"]:
                # The file we read is no longer the live one: finish it (under its new name),
                # then go on in order.
                mine = my_number()
                if mine is not None:
                    cur["name"], cur["no"] = str(rotated(mine)), mine
                else:  # already removed by retention (we still hold it open): go on above `floor`
                    mine = cur["floor"]
                yield from drain()
                nxt = next_after(mine)
                if nxt is not None and switch(nxt[0], no=nxt[1]):
                    continue
                switch(path)
                # The live file may have been rotated again between the look and the open: then
                # the files rotated in between come first.
                nxt = next_after(mine, before_open=True)
                if nxt is not None:
                    switch(nxt[0], no=nxt[1])
                continue
            if stop is not None and stop():
                return
            time.sleep(poll)
    finally:
        if cur["f"] is not None:
            cur["f"].close()
