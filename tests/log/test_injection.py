"""Log injection: hostile values in every sandbox-controlled field cannot forge, split or hide records.

Every payload goes through the real path (events.make_event -> mapper -> FlowLog) in every
output format; every line of the file must then be exactly one valid JSON record, plain ASCII,
free of control characters, and the reader must give back exactly the events written.
"""

from __future__ import annotations

import json

import pytest

from gateway.log import events, reader, verify
from gateway.log.writer import FORMATS, FlowLog

from .logutil import KEY

FORGED = '{"time":"2026-01-01T00:00:00Z","event":"http","decision":"allow","dest_host":"ok.test"}'
PAYLOADS = {
    "crlf": f"evil.test\r\n{FORGED}\r\n",
    "lf-only": f"evil.test\n{FORGED}\n",
    "ansi": "evil.test\x1b[2K\x1b[1A\x1b[32mallowed\x1b[0m\x1b]0;title\x07",
    "unicode-separators": f"evil.test\u2028{FORGED}\u2029\u0085",
    "nul": "evil\x00.test\x00",
    "quotes-backslashes": 'evil.test\\",\\"decision\\":\\"allow\\"}\\n"}{"a":"\\u000a',
    "bidi": "evil.test\u202egnp.exe\u2066x\u2069",
    "lone-surrogate": "evil\udcff\ud800.test",
    "overlong": "a" * 200_000 + "\n" + FORGED,
    "del-c1": "evil\x7f\x9b2J.test",
}

# Every field whose value can come from the sandbox, and how the gateway fills it.
SANDBOX_FIELDS = {
    "dest_host": lambda p: p,
    "sni": lambda p: p,
    "method": lambda p: p,
    "client": lambda p: p,
    "detail": lambda p: p,
    "dns_qname": lambda p: p,
    "url": lambda p: events.strip_query_values(f"https://a.test/{p}?{p}={p}#{p}"),
    "dns_answers": lambda p: [p, p],
    "secrets": lambda p: [p],
}

BAD = set(range(0x20)) | {0x7F}


def hostile_event(kind: str, payload: str) -> dict:
    return events.make_event(kind, decision="deny", reason="host-not-allowed",
                             **{name: make(payload) for name, make in SANDBOX_FIELDS.items()})


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", PAYLOADS)
def test_payload_in_every_field_stays_one_record(tmp_path, fmt, name):
    payload = PAYLOADS[name]
    path = tmp_path / "flows.jsonl"
    log = FlowLog(path, format=fmt, key=KEY)
    sent = [hostile_event(kind, payload) for kind in events.KINDS]
    for e in sent:
        log.write(e)
    log.close()
    raw = path.read_bytes()
    assert raw.isascii()
    lines = raw.split(b"\n")
    assert lines[-1] == b"" and len(lines) - 1 == len(sent) + 2  # open + records + stop, nothing more
    for line in lines[:-1]:
        assert not (set(line) & BAD), line[:200]
        record = json.loads(line)
        assert isinstance(record, dict)
        for value in _strings(record):
            assert not any(ord(c) in BAD or 0x80 <= ord(c) < 0xA0 or c in "\u2028\u2029\u202e"
                           or 0xD800 <= ord(c) < 0xE000 for c in value), value[:100]
            assert len(value) <= events.MAX_FIELD * 4 + 64  # capped (an escaped char takes up to 6)
    got = [r.event for r in reader.iter_records([path])]
    assert got == sent  # nothing forged, nothing lost
    assert not any(e.get("dest_host") == "ok.test" for e in got)
    assert verify.verify([path], KEY).exit_code == verify.OK


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_sandbox_fields_table_covers_every_cleaned_field():
    """If a new sandbox-controlled field is added to events.py, it must be added here too."""
    assert events._SANDBOX_TEXT <= set(SANDBOX_FIELDS)
