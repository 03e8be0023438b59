"""An SQLite index over flow-log files, built incrementally; the log stays the source of truth.

Per file the index keeps where it stopped (byte offset, line) and the hash of
the file's first line, which names the file whatever it is called now: after
rotation (`flows.jsonl` renamed `flows.jsonl.3`) the rows follow the file; a
file that shrank or whose first line changed is indexed again from the start.
Per record it keeps only the columns filters use plus the record's place
(file, offset, line, chain sequence number). Results are read back from the log, and a
record that is no longer where the index says sends that file back to be
indexed again. Delete the index file at any time; the next query rebuilds it.

It holds no event text beyond what filters need (time, kind, session, host,
decision, rule, reason, alert), all of which the log already holds, cleaned.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.log import reader
from gateway.logindex import QueryError
from gateway.logindex.jsonline import loads
from gateway.logindex.query import Filter, event_time, host_of, is_alert

SCHEMA_VERSION = "2"
SUFFIX = ".idx.sqlite"
BATCH = 20_000
BULK_BYTES = 64 << 20  # new bytes past which indexes are dropped and built again at the end
_INSERT = "INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    head TEXT NOT NULL UNIQUE,      -- sha256 of the first line: the file's identity
    offset INTEGER NOT NULL,        -- bytes read: always the end of a complete line
    lines INTEGER NOT NULL,         -- lines read
    records INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    file INTEGER NOT NULL,
    off INTEGER NOT NULL,
    line INTEGER NOT NULL,
    seq INTEGER,                    -- chain sequence number: checked when the record is read back
    ts REAL,
    kind TEXT,
    session TEXT,
    host TEXT,
    rhost TEXT,
    decision TEXT,
    rule TEXT,
    reason TEXT,
    alert INTEGER NOT NULL DEFAULT 0
);
"""

_INDEXES = (
    "CREATE INDEX IF NOT EXISTS ev_ts ON events (ts)",
    "CREATE INDEX IF NOT EXISTS ev_session ON events (session, ts)",
    "CREATE INDEX IF NOT EXISTS ev_host ON events (host, ts)",
    "CREATE INDEX IF NOT EXISTS ev_rhost ON events (rhost)",
    "CREATE INDEX IF NOT EXISTS ev_decision ON events (decision, ts)",
    "CREATE INDEX IF NOT EXISTS ev_kind ON events (kind, ts)",
    "CREATE INDEX IF NOT EXISTS ev_rule ON events (rule, ts)",
    "CREATE INDEX IF NOT EXISTS ev_alert ON events (ts) WHERE alert = 1",
    "CREATE INDEX IF NOT EXISTS ev_place ON events (file, off)",
)
_INDEX_NAMES = [s.split()[5] for s in _INDEXES]


def default_index_path(logs: Sequence[str | os.PathLike]) -> Path:
    """`.<first log>.idx.sqlite` beside the log (for a directory: `<dir>/.egressgw.idx.sqlite`).

    A dot file, so that a directory given to `log verify`, `review` or `query` (`reader.expand`)
    does not take the index for a log."""
    first = Path(logs[0])
    if first.is_dir():
        return first / ".egressgw.idx.sqlite"
    return first.with_name("." + first.name + SUFFIX)


def is_index_file(path: Path) -> bool:
    name = path.name
    return SUFFIX in name or name.endswith((".sqlite-journal", ".sqlite-wal", ".sqlite-shm"))


def log_files(logs: Sequence[str | os.PathLike]) -> list[Path]:
    """The log files named (a directory or a live path stands for its rotated set), oldest first."""
    files = [p for p in reader.expand(list(logs)) if not is_index_file(p)]
    missing = [str(p) for p in files if not p.exists()]
    if missing:
        raise QueryError(f"no such log file: {', '.join(missing)} (fix: give the flow log path, "
                         "e.g. /var/log/egressgw/flows.jsonl, or its directory)")
    return files


def _head(path: Path) -> str | None:
    """sha256 of the first complete line, None while the file has none."""
    with open(path, "rb") as f:
        line = f.readline(1 << 20)
    if not line.endswith(b"\n"):
        return None
    return hashlib.sha256(line).hexdigest()


@dataclass
class UpdateStats:
    files: int = 0
    added: int = 0
    reindexed: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class Hit:
    path: str
    line: int
    offset: int
    event: dict


class StaleIndex(Exception):
    """A record is not where the index says: the file changed under it."""

    def __init__(self, file_id: int):
        self.file_id = file_id


class LogIndex:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self.db = self._open()
        except sqlite3.DatabaseError:
            # Not an index we can use (corrupt, foreign, older schema): it is only a cache.
            self._drop_files()
            self.db = self._open()

    def _drop_files(self) -> None:
        for suffix in ("", "-journal", "-wal", "-shm"):
            try:
                os.unlink(str(self.path) + suffix)
            except FileNotFoundError:
                pass

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        except (OSError, sqlite3.OperationalError) as e:
            raise QueryError(f"cannot open index {self.path}: {e} (fix: pass --index PATH somewhere writable)") from None
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")  # a torn index is rebuilt from the log
            db.execute("PRAGMA temp_store=MEMORY")
            db.execute("PRAGMA cache_size=-65536")
            version = None
            if db.execute("SELECT 1 FROM sqlite_master WHERE name='meta'").fetchone():
                row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                version = row[0] if row else None
                if version != SCHEMA_VERSION:
                    raise sqlite3.DatabaseError(f"index schema {version}, want {SCHEMA_VERSION}")
            db.executescript(_SCHEMA)
            for stmt in _INDEXES:
                db.execute(stmt)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        except sqlite3.OperationalError as e:
            db.close()
            raise QueryError(f"cannot use index {self.path}: {e} (fix: pass --index PATH somewhere writable)") from None
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "LogIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- building -----------------------------------------------------------------------------

    def update(self, files: Sequence[Path]) -> UpdateStats:
        """Bring the index up to date with `files` (as `log_files` returns them)."""
        t0 = time.monotonic()
        stats = UpdateStats(files=len(files))
        known = dict(self.db.execute("SELECT path, offset FROM files").fetchall())
        pending = 0
        for p in files:
            try:
                pending += max(0, p.stat().st_size - known.get(str(p), 0))
            except OSError:
                pass
        total = self.db.execute("SELECT COALESCE(SUM(records), 0) FROM files").fetchone()[0]
        # A bulk load (a first build, or far more new than old) builds the B-trees once at the end:
        # several times faster than keeping them all up to date row by row. Small appends keep them.
        bulk = pending > BULK_BYTES and pending > total * 200
        if bulk:
            for name in _INDEX_NAMES:
                self.db.execute(f"DROP INDEX IF EXISTS {name}")
        try:
            for path in files:
                stats.added += self._update_file(path, stats)
        finally:
            if bulk:  # (if this is cut short, opening the index creates them again)
                for stmt in _INDEXES:
                    self.db.execute(stmt)
        if stats.added and (bulk or stats.added > total):
            self.db.execute("ANALYZE")
        stats.seconds = time.monotonic() - t0
        return stats

    def _update_file(self, path: Path, stats: UpdateStats) -> int:
        try:
            size = path.stat().st_size
            head = _head(path)
        except OSError as e:
            raise QueryError(f"cannot read log {path}: {e}") from None
        if head is None:
            return 0
        db = self.db
        row = db.execute("SELECT id, path, offset, lines FROM files WHERE head = ?", (head,)).fetchone()
        if row is not None and size < row[2]:
            self._forget(row[0])  # truncated: whatever it held before may have changed
            stats.reindexed.append(str(path))
            row = None
        if row is None:
            db.execute("BEGIN IMMEDIATE")
            # Another file used to live under this name: it moved (rotation) or is gone; park it.
            db.execute("UPDATE files SET path = '' WHERE path = ? AND head != ?", (str(path), head))
            cur = db.execute("INSERT INTO files (path, head, offset, lines, records) VALUES (?, ?, 0, 0, 0)",
                             (str(path), head))
            db.execute("COMMIT")
            file_id, offset, lines = cur.lastrowid, 0, 0
        else:
            file_id, old_path, offset, lines = row
            if old_path != str(path):
                db.execute("BEGIN IMMEDIATE")
                db.execute("UPDATE files SET path = '' WHERE path = ? AND id != ?", (str(path), file_id))
                db.execute("UPDATE files SET path = ? WHERE id = ?", (str(path), file_id))
                db.execute("COMMIT")
        if offset >= size:
            return 0
        return self._append(file_id, path, offset, lines, size)

    def _append(self, file_id: int, path: Path, offset: int, lines: int, size: int) -> int:
        """Index the complete lines after `offset` (read as `reader.iter_file` does, without re-reading
        the part already indexed to count lines: the line count is kept)."""
        db = self.db
        added = 0
        db.execute("BEGIN IMMEDIATE")
        try:
            batch: list[tuple] = []
            row = self._row
            with open(path, "rb") as f:
                f.seek(offset)
                pos = offset
                for line in f:
                    if not line.endswith(b"\n"):
                        break  # torn (or still being written): read again next time
                    lines += 1
                    r = row(file_id, pos, lines, line)
                    pos += len(line)
                    if r is not None:
                        batch.append(r)
                        if len(batch) >= BATCH:
                            db.executemany(_INSERT, batch)
                            added += len(batch)
                            batch.clear()
            if batch:
                db.executemany(_INSERT, batch)
                added += len(batch)
            db.execute("UPDATE files SET offset = ?, lines = ?, records = records + ? WHERE id = ?",
                       (pos, lines, added, file_id))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return added

    @staticmethod
    def _row(file_id: int, offset: int, line_no: int, line: bytes) -> tuple | None:
        try:
            raw = loads(line)
        except ValueError:
            return None  # a corrupt line: `log verify` names it; readers skip it
        e = reader.native_event(raw)
        if e is None:
            return None  # a checkpoint
        chain = reader.chain_of(raw)
        seq = chain.get("seq") if chain else None
        host = host_of(e)  # "" when none: a glob like `*` matches it, as in Python
        return (file_id, offset, line_no, seq if isinstance(seq, int) else None, event_time(e), e.get("event"),
                e.get("session"), host, host[::-1], e.get("decision"), e.get("rule"),
                e.get("reason"), 1 if is_alert(e) else 0)

    def _forget(self, file_id: int) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM events WHERE file = ?", (file_id,))
        db.execute("DELETE FROM files WHERE id = ?", (file_id,))
        db.execute("COMMIT")

    def prune(self) -> int:
        """Forget files that are no longer on disk under any name the index knows."""
        gone = [fid for fid, p in self.db.execute("SELECT id, path FROM files").fetchall()
                if not p or not os.path.exists(p)]
        for fid in gone:
            self._forget(fid)
        return len(gone)

    # --- querying -----------------------------------------------------------------------------

    def file_ids(self, files: Sequence[Path]) -> dict[int, str]:
        wanted = {str(p) for p in files}
        return {fid: p for fid, p in self.db.execute("SELECT id, path FROM files") if p in wanted}

    def count(self, flt: Filter, files: Sequence[Path]) -> int:
        ids = self.file_ids(files)
        if not ids:
            return 0
        where, params = flt.sql()
        sql = f"SELECT COUNT(*) FROM events WHERE {where} AND file IN ({','.join('?' * len(ids))})"
        return self.db.execute(sql, [*params, *ids]).fetchone()[0]

    def places(self, flt: Filter, files: Sequence[Path], limit: int | None = None,
               newest_first: bool = False) -> list[tuple]:
        """(file id, offset, line, seq, ts) of matching records, in time order."""
        ids = self.file_ids(files)
        if not ids:
            return []
        where, params = flt.sql()
        order = "DESC" if newest_first else "ASC"
        sql = (f"SELECT file, off, line, seq, ts FROM events WHERE {where} "
               f"AND file IN ({','.join('?' * len(ids))}) ORDER BY ts {order}, file {order}, off {order}")
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self.db.execute(sql, [*params, *ids]).fetchall()

    def paths(self) -> dict[int, str]:
        return dict(self.db.execute("SELECT id, path FROM files").fetchall())

    def read(self, places: Iterable[tuple], chunk: int = 4096) -> Iterator[Hit]:
        """The records at `places`, read from the log, in the order given.

        Raises StaleIndex when a record is not there any more: not at a line start, not an
        event, or another record (its chain sequence number or time differ)."""
        paths = self.paths()
        handles: dict[int, object] = {}
        try:
            pending = iter(places)
            while True:
                block = [p for _, p in zip(range(chunk), pending)]
                if not block:
                    return
                got: dict[tuple[int, int], Hit] = {}
                for fid, off, line, seq, ts in sorted(block):  # each file front to back
                    f = handles.get(fid)
                    if f is None:
                        try:
                            f = handles[fid] = open(paths[fid], "rb")
                        except (OSError, KeyError):
                            raise StaleIndex(fid) from None
                    f.seek(max(off - 1, 0))
                    if off and f.read(1) != b"\n":  # not a line start any more
                        raise StaleIndex(fid)
                    data = f.readline()
                    try:
                        raw = loads(data)
                        event = reader.native_event(raw)
                    except ValueError:
                        raise StaleIndex(fid) from None
                    if event is None or event_time(event) != ts:
                        raise StaleIndex(fid)
                    if seq is not None:
                        chain = reader.chain_of(raw)
                        if not chain or chain.get("seq") != seq:
                            raise StaleIndex(fid)
                    got[(fid, off)] = Hit(paths[fid], line, off, event)
                for fid, off, *_ in block:
                    yield got[(fid, off)]
        finally:
            for f in handles.values():
                f.close()

    def forget(self, file_id: int) -> None:
        self._forget(file_id)


def search(index: LogIndex, flt: Filter, files: Sequence[Path], limit: int | None = None,
           newest_first: bool = False) -> Iterator[Hit]:
    """Matching records read back from the log; a changed file is indexed again and the query rerun."""
    for attempt in range(3):
        yielded = 0
        try:
            for hit in index.read(index.places(flt, files, limit, newest_first)):
                yielded += 1
                yield hit
            return
        except StaleIndex as e:
            if yielded or attempt == 2:
                raise QueryError(f"the log changed while it was being read ({index.paths().get(e.file_id)}); "
                                 "run the query again (and `egressgw log verify` if it should not have)") from None
            print(f"egressgw: {index.paths().get(e.file_id) or 'a log file'} changed since it was indexed; "
                  "indexing it again", file=sys.stderr)
            index.forget(e.file_id)
            index.update(files)
