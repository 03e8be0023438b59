"""The request head in one engine call (gateway/exfil/joined.py), masked placeholders, and value sets
compiled off the event loop (gateway/addons/detection.py), with the real engine."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time

import pytest

from gateway.exfil import detectors as detectors_mod
from gateway.addons.refuse import META
from gateway.detect import Detector, KnownValue, builtin_rules
from gateway.exfil.joined import scan_parts

from .test_detection_addon import CANARY, REAL, flow_for, make, through

DET = Detector(builtin_rules(), [KnownValue("canary:c1", CANARY.encode())])
GH = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"  # GitHub token shape


def _alone(parts):
    """Each part scanned by itself: what the joined scan must reproduce."""
    out = []
    for label, data in parts:
        out += DET.scan(data, label)
    return sorted((h.part, h.offset, h.length, h.rule, h.label, h.encoding, h.raw_span) for h in out)


# (case, parts): every hit of the joined scan is the hit of the part scanned alone, same label and offsets.
CASES = [
    ("canary-in-a-header", [("path", b"/v1/x"), ("header:x-a", b"pre " + CANARY.encode()), ("header:x-b", b"zzz")]),
    ("base64-in-a-cookie", [("path", b"/"), ("cookie:sid", base64.b64encode(CANARY.encode())), ("header:ua", b"curl")]),
    ("rule-in-the-path", [("path", b"/repos/" + GH.encode()), ("header:accept", b"*/*")]),
    ("query-field-names", [("path", b"/s"), ("query", b"q=hello&d=" + CANARY.encode().hex().encode())]),
    ("several-parts-hit", [("header:a", CANARY.encode()), ("header:b", GH.encode()), ("cookie:c", CANARY[::-1].encode())]),
    ("nothing", [("path", b"/index.html"), ("header:accept", b"text/html"), ("header-names", b"Accept\nHost")]),
]


@pytest.mark.parametrize("case, parts", CASES, ids=[c[0] for c in CASES])
def test_joined_scan_equals_scanning_each_part(case, parts):
    joined = scan_parts(DET, parts)
    got = sorted((h.part, h.offset, h.length, h.rule, h.label, h.encoding, h.raw_span) for h in joined)
    assert got == _alone(parts)
    if case != "nothing":
        assert got
    for h in joined:  # a context shows its own part only, the match redacted
        data = dict(parts)[h.part.split(">")[0]]
        assert CANARY not in h.context and GH not in h.context
        assert all(c in data.decode("latin-1") for c in h.context.split(f"[REDACTED:{h.rule}]") if c)


def test_a_neighbours_bytes_never_show_in_a_context():
    hits = scan_parts(DET, [("header:x-a", CANARY.encode()), ("header:x-b", b"neighbour-private-bytes")])
    assert [h.part for h in hits] == ["header:x-a"] and "neighbour" not in hits[0].context


def test_a_value_cut_over_two_parts_is_found_but_not_redactable():
    b64 = base64.b64encode(b"prefix " + CANARY.encode() + b" suffix")
    hits = scan_parts(DET, [("header:x-a", b64[:20]), ("header:x-b", b64[20:])])
    # one base64 block per part: scanned alone neither part holds the value; joined it need not be found
    # either, but anything found there must not claim a place it cannot be redacted in
    assert all(h.raw_span is None or h.raw_span[1] <= len(b64[:20]) for h in hits if h.part == "header:x-a")


def test_placeholder_masking_keeps_other_hits_and_redaction_in_place(monkeypatch):
    addon, session, _ = make(monkeypatch, "    action: redact\n")
    ph = session.secrets["KEY"].placeholder
    f = through(addon, flow_for(session, headers=[("Authorization", f"Bearer {ph}"),
                                                  ("X-D", f"{ph} {CANARY} {ph}")]))
    assert f.response is None
    assert f.request.headers["X-D"] == f"{ph} [REDACTED:known-value] {ph}"  # offsets held after masking
    assert f.request.headers["Authorization"] == f"Bearer {ph}"  # Credentials substitutes it next
    assert [d["label"] for d in f.metadata[META]["detections"]] == ["canary:c1"]


def test_raw_placeholder_next_to_a_real_value_is_still_blocked(monkeypatch):
    addon, session, _ = make(monkeypatch)
    ph = session.secrets["KEY"].placeholder
    f = through(addon, flow_for(session, headers=[("X-D", ph + base64.b64encode(REAL.encode()).decode())]))
    assert f.response.status_code == 403
    assert "secret:KEY" in {d["label"] for d in f.metadata[META]["detections"]}


def test_repeated_header_hits_are_refused_not_redacted(monkeypatch):
    addon, session, _ = make(monkeypatch, "    action: redact\n")
    f = through(addon, flow_for(session, headers=[("X-D", "a"), ("X-D", f"b {CANARY}")]))
    assert f.response.status_code == 403 and CANARY not in f.response.get_text()


def _big_canary_set(registry, session, n=999):  # with c1: the 1,000 a session may hold
    values = [secrets.token_hex(16).encode() for _ in range(n)]
    registry.add_canaries(session.id, values, [f"bulk{i}" for i in range(n)])
    return values


def test_a_large_value_set_compiles_off_the_event_loop(monkeypatch):
    addon, session, _ = make(monkeypatch)
    values = _big_canary_set(addon.registry, session)

    async def scenario():
        gaps, stop = [], False

        async def ticker():
            last = time.perf_counter()
            while not stop:
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        tick = asyncio.ensure_future(ticker())
        f = flow_for(session, path="/x?d=" + base64.b64encode(values[777]).decode())
        start = time.perf_counter()
        await addon.requestheaders(f)
        took = time.perf_counter() - start
        stop = True
        await tick
        return f, took, max(gaps)

    f, took, worst_gap = asyncio.run(scenario())
    assert f.response.status_code == 403 and "canary:bulk777" in f.response.get_text()
    # the compile took a while, yet the loop kept turning (on the loop it was one gap as long as the
    # compile); a loaded machine delays a 5 ms sleep too, so the bound is relative to the compile
    assert took > 0.3 and worst_gap < max(0.25, took / 4), (took, worst_gap)


def test_a_compile_that_takes_too_long_refuses_detection_not_ready(monkeypatch):
    addon, session, _ = make(monkeypatch)
    _big_canary_set(addon.registry, session)
    monkeypatch.setattr(detectors_mod, "COMPILE_WAIT", 0.01)

    async def scenario():
        f = flow_for(session, path="/x?d=1")
        await addon.requestheaders(f)
        first = f.response.status_code, f.metadata[META]["reason"], f.response.get_text()
        # the compile goes on: a later request finds it done and is scanned
        monkeypatch.setattr(detectors_mod, "COMPILE_WAIT", 60)
        g = flow_for(session, path=f"/x?d={CANARY}")
        await addon.requestheaders(g)
        return first, g

    (status, reason, text), g = asyncio.run(scenario())
    assert (status, reason) == (503, "detection-not-ready") and "not ready" in text
    assert g.response.status_code == 403 and g.metadata[META]["reason"] == "exfiltration"
