"""gateway/logindex/index.py: incremental, follows rotation, notices changed files, rebuildable, holds no text."""

from __future__ import annotations

import sqlite3

import pytest

from gateway.logindex import QueryError
from gateway.logindex.index import LogIndex, default_index_path, is_index_file, log_files, search
from gateway.logindex.query import Filter
from tests.logquery.conftest import KEY, T0, event, write

from gateway.log.writer import FlowLog


def http(i: int, session: str = "s-a", host: str = "a.test", decision: str = "allow") -> dict:
    return event("http", T0 + i, session=session, dest_host=host, method="GET", url=f"https://{host}/{i}?token=",
                 status=200 if decision == "allow" else 403, decision=decision, reason="allowed" if decision == "allow"
                 else "host-not-allowed")


def times(hits) -> list[int]:
    return [int(h.event["url"].rsplit("/", 1)[1].split("?")[0]) for h in hits]


def test_incremental_updates_read_only_what_is_new(tmp_path):
    log = tmp_path / "flows.jsonl"
    writer = FlowLog(log, key=KEY)
    for i in range(50):
        writer.write(http(i))
    with LogIndex(tmp_path / "ix") as index:
        assert index.update(log_files([log])).added == 50
        assert index.update(log_files([log])).added == 0  # nothing new: nothing read
        for i in range(50, 80):
            writer.write(http(i))
        assert index.update(log_files([log])).added == 30
        writer.close()  # adds a "stop" checkpoint: not an event
        assert index.update(log_files([log])).added == 0
        assert times(search(index, Filter(), log_files([log]))) == list(range(80))


def test_rotation_moves_rows_with_the_file(tmp_path):
    log = tmp_path / "flows.jsonl"
    writer = FlowLog(log, key=KEY, rotate_bytes=4096, keep=0)
    for i in range(10):
        writer.write(http(i))
    with LogIndex(tmp_path / "ix") as index:
        first = index.update(log_files([log])).added
        for i in range(10, 60):  # several rotations: flows.jsonl -> flows.jsonl.N
            writer.write(http(i))
        writer.close()
        files = log_files([log])
        assert len(files) > 3
        stats = index.update(files)
        assert stats.added == 60 - first and not stats.reindexed  # the renamed file kept its rows
        assert times(search(index, Filter(), files)) == list(range(60))
        # Only the rotated files named: only their events.
        rotated = [f for f in files if f != log]
        got = times(search(index, Filter(), rotated))
        assert got and got == list(range(got[0], got[-1] + 1)) and got[-1] < 59


def test_retention_deleting_a_file_forgets_its_rows(tmp_path):
    log = tmp_path / "flows.jsonl"
    write(log, [http(i) for i in range(40)], rotate_bytes=4096)
    with LogIndex(tmp_path / "ix") as index:
        index.update(log_files([log]))
        oldest = log_files([log])[0]
        oldest.unlink()
        index.update(log_files([log]))
        assert index.prune() == 1
        got = times(search(index, Filter(), log_files([log])))
        assert got[-1] == 39 and got[0] > 0


def test_a_file_replaced_or_truncated_is_indexed_again(tmp_path):
    log = tmp_path / "flows.jsonl"
    write(log, [http(i) for i in range(20)])
    with LogIndex(tmp_path / "ix") as index:
        index.update(log_files([log]))
        log.unlink()
        write(log, [http(i, host="b.test") for i in range(100, 105)])  # a new log under the same name
        index.update(log_files([log]))
        index.prune()
        hits = list(search(index, Filter(), log_files([log])))
        assert times(hits) == list(range(100, 105)) and {h.event["dest_host"] for h in hits} == {"b.test"}
        # Truncated in place (same first line, shorter file): indexed from the start again.
        data = log.read_bytes()
        lines = data.splitlines(keepends=True)
        log.write_bytes(b"".join(lines[:3]))
        stats = index.update(log_files([log]))
        assert stats.reindexed == [str(log)]
        assert times(search(index, Filter(), log_files([log]))) == [100, 101]  # line 1 is the "open" checkpoint


def test_a_record_not_where_the_index_says_sends_the_file_back(tmp_path, capsys):
    log = tmp_path / "flows.jsonl"
    write(log, [http(i) for i in range(30)])
    with LogIndex(tmp_path / "ix") as index:
        index.update(log_files([log]))
        # Someone removes a line in the middle (log verify would call it tampering): offsets shift.
        lines = log.read_bytes().splitlines(keepends=True)
        del lines[10]
        log.write_bytes(b"".join(lines))
        got = times(search(index, Filter(), log_files([log])))
        assert len(got) == 29 and 9 not in got or len(set(got)) == 29
        assert "changed since it was indexed" in capsys.readouterr().err
        # The results are the log's, not the index's memory of it.
        assert got == sorted(got)


def test_the_index_can_be_deleted_or_corrupt(tmp_path):
    log = tmp_path / "flows.jsonl"
    write(log, [http(i) for i in range(15)])
    path = tmp_path / "ix.sqlite"
    with LogIndex(path) as index:
        index.update(log_files([log]))
    path.write_bytes(b"this is not a database" * 100)
    with LogIndex(path) as index:  # rebuilt, not a crash
        index.update(log_files([log]))
        assert times(search(index, Filter(), log_files([log]))) == list(range(15))
    # An index of an older schema is dropped too.
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '0' WHERE key = 'schema'")
    db.commit()
    db.close()
    with LogIndex(path) as index:
        assert index.update(log_files([log])).added == 15


def test_the_index_holds_filter_columns_only(fleet_log, tmp_path):
    """URLs, client addresses, details, credential names, answers: none of it is copied into the index."""
    path, _ = fleet_log
    files = log_files([path])
    with LogIndex(tmp_path / "ix.sqlite") as index:
        index.update(files)
        dump = "\n".join(index.db.iterdump())
    from gateway.log.reader import iter_records

    urls = {r.event["url"] for r in iter_records(files) if r.event.get("url")}
    secrets = {s for r in iter_records(files) for s in r.event.get("secrets") or ()}
    clients = {r.event["client"] for r in iter_records(files) if r.event.get("client")}
    assert urls and secrets and clients
    for text in (*urls, *secrets, *clients, "AKIA[REDACTED"):
        assert text not in dump


def test_default_index_is_a_dot_file_beside_the_log(tmp_path):
    log = tmp_path / "flows.jsonl"
    assert default_index_path([log]) == tmp_path / ".flows.jsonl.idx.sqlite"
    assert default_index_path([tmp_path]) == tmp_path / ".egressgw.idx.sqlite"
    assert is_index_file(default_index_path([log]))
    write(log, [http(0)])
    (tmp_path / ".flows.jsonl.idx.sqlite").write_text("x")
    assert log_files([tmp_path]) == [log]  # a directory's listing never takes the index for a log


def test_missing_log_is_a_clear_error(tmp_path):
    with pytest.raises(QueryError, match="no such log file.*fix:"):
        log_files([tmp_path / "nope.jsonl"])


def test_index_in_an_unwritable_place_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(QueryError, match="--index"):
        LogIndex(blocker / "sub" / "ix.sqlite")


def test_bulk_build_drops_and_rebuilds_the_btrees(fleet_log, tmp_path, monkeypatch):
    from gateway.logindex import index as ix

    path, sessions = fleet_log
    files = log_files([path])
    flt = Filter(sessions=(sessions[0].id,), decision="deny")
    with LogIndex(tmp_path / "slow") as slow:
        slow.update(files)
        expected = [h.event for h in search(slow, flt, files)]
    monkeypatch.setattr(ix, "BULK_BYTES", 1)
    dropped = []
    real = LogIndex._update_file

    def spy(self, p, stats):
        names = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        dropped.append(not (set(ix._INDEX_NAMES) & names))
        return real(self, p, stats)

    monkeypatch.setattr(LogIndex, "_update_file", spy)
    with LogIndex(tmp_path / "bulk") as bulk:
        assert bulk.update(files).added == 3000
        assert dropped and all(dropped)  # no B-tree kept up to date row by row
        names = {r[0] for r in bulk.db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert set(ix._INDEX_NAMES) <= names
        assert [h.event for h in search(bulk, flt, files)] == expected and expected
