"""A known value cut into pieces across several fields of one request (detection._across_hits)."""

from __future__ import annotations

import base64

import pytest

from gateway.addons.detection import _across_hits
from gateway.detect import Detector, KnownValue, RulePack

SECRET = "sk-live-4f9c2a7d1e8b6035aa91"
B64 = base64.b64encode(SECRET.encode())
REV = SECRET[::-1].encode()


def joined() -> Detector:
    return Detector(RulePack(()), [KnownValue("API_KEY", SECRET.encode())])


def halves(data: bytes) -> tuple[bytes, bytes]:
    return data[: len(data) // 2], data[len(data) // 2:]


@pytest.mark.parametrize("fragments, found", [
    ([("header:x-a", halves(SECRET.encode())[0]), ("header:x-b", halves(SECRET.encode())[1])], True),
    ([("header:x-a", halves(B64)[0]), ("header:x-b", halves(B64)[1])], True),  # base64, split mid-run
    ([("header:x-a", halves(REV)[0]), ("cookie:sid", halves(REV)[1])], True),  # reversed, header + cookie
    # sent second half first: found in the reverse order
    ([("query:a", halves(B64)[1]), ("header:x-b", b"plain"), ("header:x-c", halves(B64)[0])], False),
    ([("query:a", halves(B64)[1]), ("header:x-c", halves(B64)[0])], True),
    # the whole value inside one field: the head scan reports it, not this one
    ([("header:x-a", SECRET.encode()), ("header:x-b", b"other")], False),
    ([("header:x-a", b"hello"), ("header:x-b", b"world")], False),
    ([("header:x-a", halves(B64)[0])], False),  # one field only
])
def test_across_fields(fragments, found):
    hits = _across_hits(joined(), fragments)
    assert bool(hits) is found, hits
    assert all(h.raw_span is None and h.part == "split:request" for h in hits)
    assert all(SECRET not in h.context for h in hits)
