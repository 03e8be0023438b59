"""Record files: writing, filtering, clearing (no network)."""

from __future__ import annotations

import threading

from gateway.lab.records import Recorder, clear_records, decode_body, header, read_records


def test_write_read_filter(tmp_path):
    path = tmp_path / "r.jsonl"
    rec = Recorder(path)
    rec.write("http", method="GET", path="/a", headers=[["Host", "x.test"]], body="", body_encoding="utf-8")
    rec.write("http", method="POST", path="/b/c", body="AAE=", body_encoding="base64")
    rec.write("tcp", local_port=22)
    assert [r["path"] for r in read_records(path, kind="http")] == ["/a", "/b/c"]
    assert read_records(path, method={"POST", "PUT"})[0]["path"] == "/b/c"
    assert read_records(path, path__contains="/b")[0]["method"] == "POST"
    assert read_records(path, local_port=lambda p: p and p < 100)[0]["kind"] == "tcp"
    assert read_records(path, nosuchfield=1) == []
    first, second = read_records(path, kind="http")
    assert header(first, "host") == "x.test" and header(first, "missing") is None
    assert decode_body(second) == b"\x00\x01"
    assert first["time"].endswith("Z") and isinstance(first["ts"], float)


def test_concurrent_writers_and_clear(tmp_path):
    path = tmp_path / "r.jsonl"
    rec = Recorder(path)

    def many(n):
        for i in range(200):
            rec.write("udp", n=n, i=i, data="x" * 500)

    threads = [threading.Thread(target=many, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(read_records(path)) == 800
    clear_records(path)
    assert read_records(path) == []
    rec.write("udp", n=9)  # O_APPEND: continues at offset 0
    assert [r["n"] for r in read_records(path)] == [9]
    # a torn last line is skipped
    with open(path, "ab") as f:
        f.write(b'{"kind": "ud')
    assert len(read_records(path)) == 1
    assert read_records(tmp_path / "missing.jsonl") == []
    Recorder(None).write("http")  # records nothing, no error
