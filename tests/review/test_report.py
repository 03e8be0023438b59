"""gateway/review/report.py and charts.py: what the page shows, and that nothing from the log can script it."""

from __future__ import annotations

import shlex
from html.parser import HTMLParser

import pytest

from gateway.log.events import rfc3339
from gateway.review import charts
from gateway.review.aggregate import Aggregator
from gateway.review.integrity import Integrity
from gateway.review.report import CSP, render

T0 = 1_795_000_000.0
PAYLOADS = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(2)>',
    "</style><script>alert(3)</script>",
    "</textarea><svg onload=alert(4)>",
    "javascript:alert(5)",
    "'><a href=\"https://evil.test/x\">click</a>",
    "</title><iframe src=//evil.test>",
    "]]><foreignObject><body onload=alert(6)>",
    "{{7*7}}${7*7}<!--",
]

SAFE_TAGS = {"html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "h3", "p", "div", "span",
             "code", "nav", "a", "section", "table", "thead", "tbody", "tr", "th", "td", "details", "summary", "br",
             "b", "i", "svg", "g", "rect", "line", "text", "footer"}


class Tags(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> Tags:
    p = Tags()
    p.feed(page)
    return p


def hostile_events(payload: str) -> list[dict]:
    s = "s-" + payload
    base = {"session": s, "client": payload}
    return [
        {"time": rfc3339(T0), "event": "session", "session": s, "rule": payload, "detail": f"created: {payload}"},
        {"time": rfc3339(T0 + 1), "event": "dns", **base, "dns_qname": payload, "dns_qtype": payload,
         "dns_rcode": "NXDOMAIN", "decision": "deny", "reason": payload},
        {"time": rfc3339(T0 + 2), "event": "dns", **base, "dns_qname": payload + ".t.x", "dns_rcode": "REFUSED",
         "decision": "deny", "reason": "dns-tunnel", "detections": [{"rule": "dns-tunnel:" + payload}]},
        {"time": rfc3339(T0 + 3), "event": "tls", **base, "sni": payload, "dest_host": payload, "decision": "deny",
         "reason": payload, "detail": payload},
        {"time": rfc3339(T0 + 4), "event": "http", **base, "dest_host": payload, "method": payload,
         "url": "https://x.test/" + payload, "status": 403, "decision": payload, "reason": "placeholder-" + payload,
         "rule": payload, "secrets": [payload + "@" + payload], "alert": True, "bytes_out": 10,
         "detections": [{"rule": payload, "label": payload, "part": payload, "encoding": payload,
                         "context": payload, "action": payload, "offset": payload}]},
        {"time": rfc3339(T0 + 5), "event": "http", **base, "dest_host": payload, "method": "GET",
         "url": "https://" + payload, "status": 200, "decision": "allow", "bytes_out": 99, "bytes_in": 5,
         "secrets": [payload]},
        {"time": payload, "event": "tcp", **base, "dest_host": payload, "decision": "deny", "reason": payload},
    ]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_no_log_field_can_inject_markup(payload):
    page = render(Aggregator().add_all(hostile_events(payload)), ["/var/log/" + payload],
                  Integrity("tampered", payload), title=payload)
    parsed = parse(page)
    for tag, attrs in parsed.tags:
        assert tag in SAFE_TAGS, tag
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)
            assert name not in ("src", "srcset", "action", "formaction", "background", "ping")
            if name == "href":
                assert value.startswith("#"), value
    assert "<script" not in page.lower() and "<iframe" not in page.lower() and "<img" not in page.lower()
    text = "".join(parsed.text)
    assert payload in text or payload.replace("\n", "") in text  # shown as text, not executed
    metas = [a for t, a in parsed.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert metas == [{"http-equiv": "Content-Security-Policy", "content": CSP}]


def test_the_page_loads_nothing():
    page = render(Aggregator().add_all(hostile_events("x")), ["flows.jsonl"], Integrity("ok", "OK"))
    assert CSP.startswith("default-src 'none'")
    for tag, attrs in parse(page).tags:
        for name, value in attrs.items():
            assert "//" not in (value or "") or (tag == "svg" and name == "xmlns"), (tag, name, value)
    assert "@import" not in page and "url(" not in page


@pytest.mark.parametrize("status, css, words", [
    ("ok", "ok", "verified"), ("chain-only", "warn", "checkpoints not verified"), ("truncated", "warn", "torn"),
    ("tampered", "bad", "TAMPERED"), ("unverified", "warn", "NOT VERIFIED"),
])
def test_integrity_verdict_line(status, css, words):
    page = render(Aggregator(), ["f"], Integrity(status, "the detail"))
    assert f'<div class="verdict {css}" id="integrity">' in page and words in page and "the detail" in page


def test_detail_tables_stop_and_say_how_to_see_the_rest(fleet_events):
    agg = Aggregator().add_all(fleet_events)
    page = render(agg, ["/logs/flows jsonl"], Integrity("ok", "OK"), top=5, session_details=2)
    assert "more hosts not in this report" in page
    assert "more reason/host pairs not in this report" in page
    assert "more alerts" in page
    cmd = shlex.join(["egressgw", "log", "query", "/logs/flows jsonl", "--decision", "deny"])
    from html import escape

    assert escape(cmd) in page
    assert page.count('<details class="session"') == 2
    assert "more sessions not shown" in page


def test_charts_are_bounded_and_escaped():
    assert charts.bins([0, 1, 2, 9.99, 10], 0, 10, 5) == [2, 1, 0, 0, 2]
    assert charts.bins([0, 5], 0, 10, 2, [3, 4]) == [3, 4]
    svg = charts.timeline(list(range(1000)), [5.5], 0, 999, n=50)
    assert svg.count("<rect") <= 2 * 50 and svg.startswith("<svg") and svg.endswith("</svg>")
    assert "No requests" in charts.timeline([], [], None, None)
    bars = charts.hbars([("<b>x</b>", 10, 20)])
    assert "<b>" not in bars and "&lt;b&gt;x&lt;/b&gt;" in bars
    assert charts.human_bytes(0) == "0 B" and charts.human_bytes(1536) == "1.5 KiB"


@pytest.fixture(scope="module")
def fleet_events():
    from gateway.lab import flowlog
    import random

    rng = random.Random(3)
    sess, order = flowlog.plan(4000, 12, 3600, T0, 3)
    return [flowlog.make(rng, sess[k], j, t) for t, k, j in order]
