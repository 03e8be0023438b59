"""Writing query results: an aligned table, JSON lines (the native events) or CSV.

Values in the log are already cleaned (no control characters). CSV cells that a
spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab, CR first) get a
leading `'`: the URL, host and DNS name come from the sandbox.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from typing import TextIO

FORMATS = ("table", "jsonl", "csv")

# (heading, width cap) for the table; the CSV has every field.
TABLE_COLUMNS = (
    ("time", 27), ("session", 20), ("event", 7), ("decision", 8), ("host", 40), ("port", 5),
    ("what", 30), ("status", 8), ("reason", 28), ("rule", 20), ("out", 9), ("in", 9), ("alert", 5),
)

CSV_FIELDS = (
    "time", "event", "session", "client", "dest_host", "dest_ip", "dest_port", "sni", "method", "url", "status",
    "bytes_out", "bytes_in", "decision", "rule", "reason", "dns_qname", "dns_qtype", "dns_rcode", "dns_answers",
    "duration_ms", "secrets", "alert", "detections", "detail",
)


def table_row(e: dict) -> list[str]:
    kind = e.get("event", "")
    if kind == "dns":
        what = f"{e.get('dns_qtype', '')} {e.get('dns_qname', '')}".strip()
        status = e.get("dns_rcode", "")
    elif kind == "http":
        what = f"{e.get('method', '')} {e.get('url', '')}".strip()
        status = e.get("status", "")
    else:
        what = e.get("detail", "") if kind == "session" else (e.get("sni") or "")
        status = e.get("status", "")
    host = e.get("dest_host") or e.get("sni") or e.get("dns_qname") or e.get("dest_ip") or ""
    alert = "yes" if e.get("alert") or e.get("detections") else ""
    return [_s(v) for v in (
        e.get("time", ""), e.get("session", ""), kind, e.get("decision", ""), host, e.get("dest_port", ""),
        what, status, e.get("reason", ""), e.get("rule", ""), e.get("bytes_out", ""), e.get("bytes_in", ""), alert,
    )]


def _s(v) -> str:
    if v is None:
        return ""
    if isinstance(v, list):
        return " ".join(_s(x) for x in v)
    return str(v)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


class TableWriter:
    """Column widths from the first rows seen (up to `sample`), then streamed with those widths.

    `sample=0` (for `log tail`) prints each row at once, at the columns' full widths."""

    def __init__(self, out: TextIO, sample: int = 500):
        self.out = out
        self.sample = sample
        self.buffer: list[list[str]] = []
        self.widths: list[int] | None = None
        self.rows = 0

    def write(self, event: dict) -> None:
        row = table_row(event)
        self.rows += 1
        if self.widths is None and self.sample == 0:
            self.widths = [cap for _, cap in TABLE_COLUMNS]
            self._line([h for h, _ in TABLE_COLUMNS])
        if self.widths is None:
            self.buffer.append(row)
            if len(self.buffer) >= self.sample:
                self._flush_buffer()
        else:
            self._line(row)

    def _flush_buffer(self) -> None:
        widths = [len(h) for h, _ in TABLE_COLUMNS]
        for row in self.buffer:
            widths = [max(w, len(c)) for w, c in zip(widths, row)]
        self.widths = [min(w, cap) for w, (_, cap) in zip(widths, TABLE_COLUMNS)]
        self._line([h for h, _ in TABLE_COLUMNS])
        for row in self.buffer:
            self._line(row)
        self.buffer = []

    def _line(self, row: list[str]) -> None:
        assert self.widths is not None
        cells = [_fit(c, w).ljust(w) for c, w in zip(row, self.widths)]
        self.out.write("  ".join(cells).rstrip() + "\n")

    def close(self) -> None:
        if self.widths is None:
            self._flush_buffer()
        self.out.flush()


class JsonlWriter:
    def __init__(self, out: TextIO):
        self.out = out
        self.rows = 0

    def write(self, event: dict) -> None:
        self.out.write(json.dumps(event, ensure_ascii=True, separators=(",", ":")) + "\n")
        self.rows += 1

    def close(self) -> None:
        self.out.flush()


_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(v) -> str:
    if isinstance(v, (list, dict)):
        text = json.dumps(v, ensure_ascii=True, separators=(",", ":")) if isinstance(v, dict) or (
            v and isinstance(v[0], dict)) else " ".join(_s(x) for x in v)
    else:
        text = _s(v)
    if text.startswith(_FORMULA) and not _is_number(text):
        text = "'" + text
    return text


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


class CsvWriter:
    def __init__(self, out: TextIO):
        self.out = out
        self.w = csv.writer(out, lineterminator="\n")
        self.w.writerow(CSV_FIELDS)
        self.rows = 0

    def write(self, event: dict) -> None:
        self.w.writerow([csv_cell(event.get(f)) for f in CSV_FIELDS])
        self.rows += 1

    def close(self) -> None:
        self.out.flush()


def writer_for(fmt: str, out: TextIO):
    if fmt == "jsonl":
        return JsonlWriter(out)
    if fmt == "csv":
        return CsvWriter(out)
    return TableWriter(out)


def write_all(fmt: str, out: TextIO, events: Iterable[dict]) -> int:
    w = writer_for(fmt, out)
    for e in events:
        w.write(e)
    w.close()
    return w.rows
