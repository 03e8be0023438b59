"""gateway/logindex/output.py: table, JSON lines and CSV."""

from __future__ import annotations

import csv
import io
import json

import pytest

from gateway.logindex.output import CSV_FIELDS, TABLE_COLUMNS, csv_cell, table_row, write_all

EVENTS = [
    {"time": "2026-11-18T11:06:40.000000Z", "event": "dns", "session": "s-1", "dns_qname": "a.test",
     "dns_qtype": "A", "dns_rcode": "NOERROR", "dns_answers": ["198.18.0.1", "198.18.0.2"], "decision": "allow"},
    {"time": "2026-11-18T11:06:41.000000Z", "event": "http", "session": "s-1", "dest_host": "a.test",
     "dest_port": 443, "method": "POST", "url": "https://a.test/up?k=", "status": 403, "decision": "deny",
     "reason": "placeholder-not-approved", "secrets": ["OPENAI_API_KEY@headers"], "alert": True,
     "detections": [{"rule": "aws-access-key", "part": "body", "context": "k=AKIA[REDACTED:16]"}]},
    {"time": "2026-11-18T11:06:42.000000Z", "event": "http", "session": "s-2", "dest_host": "=cmd|' /C calc'!A0",
     "url": "https://x.test/" + "p" * 200, "decision": "allow", "bytes_out": 12, "bytes_in": -3},
]


def test_jsonl_is_the_native_events():
    out = io.StringIO()
    assert write_all("jsonl", out, EVENTS) == 3
    assert [json.loads(line) for line in out.getvalue().splitlines()] == EVENTS


def test_csv_has_every_field_and_defuses_formulas():
    out = io.StringIO()
    write_all("csv", out, EVENTS)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert list(rows[0]) == list(CSV_FIELDS)
    assert rows[0]["dns_answers"] == "198.18.0.1 198.18.0.2"
    assert rows[1]["secrets"] == "OPENAI_API_KEY@headers" and rows[1]["alert"] == "True"
    assert json.loads(rows[1]["detections"])[0]["rule"] == "aws-access-key"
    assert rows[2]["dest_host"] == "'=cmd|' /C calc'!A0"  # a spreadsheet shows it, does not run it


@pytest.mark.parametrize("value, cell", [
    ("=1+1", "'=1+1"), ("+x", "'+x"), ("-x", "'-x"), ("@SUM(A1)", "'@SUM(A1)"), ("-3", "-3"), ("-1.5", "-1.5"),
    ("plain", "plain"), (None, ""), (7, "7"),
])
def test_csv_cell(value, cell):
    assert csv_cell(value) == cell


def test_table_aligns_and_caps_widths():
    out = io.StringIO()
    write_all("table", out, EVENTS)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == [h for h, _ in TABLE_COLUMNS]
    assert "A a.test" in lines[1] and "NOERROR" in lines[1]
    assert "POST https://a.test/up?k=" in lines[2] and "yes" in lines[2]
    assert "…" in lines[3] and "p" * 200 not in lines[3]  # long values are cut, columns stay aligned
    starts = [line.index("s-") for line in lines[1:]]
    assert len(set(starts)) == 1


def test_table_row_kinds():
    assert table_row(EVENTS[0])[6] == "A a.test"
    assert table_row({"event": "session", "detail": "created: agent"})[6] == "created: agent"
    assert table_row({"event": "tls", "sni": "s.test"})[6] == "s.test"


def test_empty_results_print_the_heading_only():
    out = io.StringIO()
    assert write_all("table", out, []) == 0
    assert out.getvalue().split() == [h for h, _ in TABLE_COLUMNS]
