"""gateway/log/events.py: clean(), strip_query_values(), make_event()."""

from __future__ import annotations

import json
import re
from datetime import datetime

import pytest

from gateway.log import events
from gateway.log.events import FIELDS, KINDS, MAX_FIELD, clean, make_event, strip_query_values


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("plain.test", "plain.test"),
        ("a\r\nb", "a\\x0d\\x0ab"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("nul\x00", "nul\\x00"),
        ("tab\t", "tab\\x09"),
        ("del\x7f", "del\\x7f"),
        ("c1\x85next\x9b", "c1\\x85next\\x9b"),  # NEL and CSI in their one-byte C1 forms
        ("ls\u2028ps\u2029", "ls\\u2028ps\\u2029"),
        ("\u00e9t\u00e9 \u4e2d", "\u00e9t\u00e9 \u4e2d"),  # printable non-ASCII stays (JSON escapes it later)
        ("\u00a0nbsp", "\u00a0nbsp"),  # U+00A0 is not a C1 control
        (42, "42"),
        (None, "None"),
    ],
)
def test_clean_escapes_controls(raw, expected):
    assert clean(raw) == expected


@pytest.mark.parametrize("ch", [chr(c) for c in [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]])
def test_clean_leaves_no_control_character(ch):
    out = clean(f"x{ch}y")
    assert out.startswith("x\\") and out.endswith("y")
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029" for c in out)


def test_clean_caps_length():
    assert clean("a" * MAX_FIELD) == "a" * MAX_FIELD
    long = clean("a" * (MAX_FIELD + 1))
    assert long == "a" * MAX_FIELD + "…[truncated]"
    assert clean("b" * 1_000_000, limit=10) == "b" * 10 + "…[truncated]"


def test_clean_caps_length_of_escaped_text():
    # Escaping expands each control character to four; the output is still bounded.
    out = clean("\n" * 100_000, limit=100)
    assert out.endswith("…[truncated]")
    assert len(out) == 100 + len("…[truncated]")
    assert "\n" not in out


@pytest.mark.parametrize(
    "url, expected",
    [
        ("https://a.test/p", "https://a.test/p"),
        ("https://a.test/p?token=s3cret&x=1", "https://a.test/p?token=&x="),
        ("https://a.test/p?flag&key=v=w", "https://a.test/p?flag=&key="),
        ("https://a.test/p?a=1&&b=2", "https://a.test/p?a=&b="),
        ("https://a.test/p#frag", "https://a.test/p"),
        ("https://a.test/p?a=1#frag=secret", "https://a.test/p?a="),
        ("https://a.test:8443/v1/x?q=1", "https://a.test:8443/v1/x?q="),
        ("/relative?a=b", "/relative?a="),
        ("https://a.test/p?x=%0d%0a", "https://a.test/p?x="),
        # not parseable by urlsplit (bad IPv6 literal): query and fragment dropped all the same
        ("http://[::1/p?token=s3cret", "http://[::1/p"),
        ("http://[::1/p#s3cret", "http://[::1/p"),
    ],
)
def test_strip_query_values(url, expected):
    assert strip_query_values(url) == expected


@pytest.mark.parametrize(
    "url", ["", "?", "#", "??==&&", "http://", "https://a.test/\r\n?x=\x1b", "\x00" * 10, "a" * 5000])
def test_strip_query_values_survives_garbage(url):
    out = strip_query_values(url)
    assert isinstance(out, str)
    assert "\r" not in out and "\n" not in out and "\x1b" not in out and "\x00" not in out
    assert len(out) <= MAX_FIELD + len("…[truncated]")


def test_strip_query_values_escapes_controls_in_the_path():
    assert strip_query_values("https://a.test/a\x1b[2Kb?x=1") == "https://a.test/a\\x1b[2Kb?x="
    # urlsplit itself drops CR, LF and TAB (WHATWG); either way none reaches the log
    assert strip_query_values("https://a.test/a\r\nb?x=1") == "https://a.test/ab?x="


def test_make_event_refuses_unknown_kind():
    with pytest.raises(ValueError, match="unknown event kind 'ftp'"):
        make_event("ftp")


def test_make_event_refuses_unknown_fields():
    with pytest.raises(ValueError, match=r"unknown flow-log fields: \['host', 'user'\]"):
        make_event(events.HTTP, host="a.test", user="x")


@pytest.mark.parametrize("kind", KINDS)
def test_make_event_time_and_kind_come_first(kind):
    event = make_event(kind)
    assert list(event) == ["time", "event"]
    assert event["event"] == kind
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", event["time"])
    datetime.fromisoformat(event["time"].replace("Z", "+00:00"))


def test_make_event_field_order_is_the_declared_order_whatever_the_call_order():
    lists = {"dns_answers": ["1"], "secrets": ["1"], "detections": [{"rule": "r"}]}
    values = {name: lists.get(name, 1) for name in reversed(FIELDS[2:])}
    event = make_event(events.HTTP, **values)
    assert list(event) == list(FIELDS)


def test_make_event_omits_none():
    event = make_event(events.TCP, session="s-1", dest_host=None, dest_port=22, rule=None)
    assert event.keys() == {"time", "event", "session", "dest_port"}


@pytest.mark.parametrize("field", ["dest_host", "sni", "method", "dns_qname", "detail", "client"])
def test_make_event_cleans_sandbox_text_fields(field):
    event = make_event(events.HTTP, **{field: 'evil\r\n{"event":"http","decision":"allow"}'})
    assert event[field] == 'evil\\x0d\\x0a{"event":"http","decision":"allow"}'


def test_make_event_caps_sandbox_text():
    assert make_event(events.TLS, sni="a" * 10_000)["sni"].endswith("…[truncated]")


def test_make_event_cleans_dns_answers_and_keeps_numbers():
    event = make_event(events.DNS, dns_answers=["198.18.1.10", "x\ny" + "z" * 300], dest_port=53, status=200,
                       bytes_out=0, duration_ms=1.5)
    assert event["dns_answers"][0] == "198.18.1.10"
    assert event["dns_answers"][1].startswith("x\\x0ay") and event["dns_answers"][1].endswith("…[truncated]")
    assert (event["dest_port"], event["status"], event["bytes_out"], event["duration_ms"]) == (53, 200, 0, 1.5)


def test_rfc3339():
    assert events.rfc3339(0) == "1970-01-01T00:00:00.000000Z"
    assert events.rfc3339(1_700_000_000.25) == "2023-11-14T22:13:20.250000Z"


def test_event_is_json_serialisable():
    event = make_event(events.DNS, session="s", dns_qname="a.test", dns_answers=["198.18.1.10"])
    assert json.loads(json.dumps(event)) == event


def test_detections_keep_only_their_keys_and_are_cleaned():
    event = make_event(events.HTTP, detections=[{"rule": "known-value", "label": "canary:c1", "part": "query",
                                                  "offset": 3, "encoding": "base64", "context": "a\nb",
                                                  "action": "block", "raw_span": (1, 2), "value": "x"}])
    (d,) = event["detections"]
    assert set(d) == set(events.DETECTION_KEYS) and d["offset"] == 3 and d["context"] == "a\\x0ab"
