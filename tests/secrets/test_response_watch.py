"""ResponseWatch: real values in a streamed response body are masked before any byte of them leaves."""

from __future__ import annotations

import pytest

from gateway.secrets.response_watch import ResponseWatch, SecretInResponse

VALUE = b"sk-live-0123456789abcdef"
SAME = b"sk-live-PLACEHOLDER00000"  # as long as VALUE
SHORT = b"EGW_PH_1"
BODY = b"a" * 100 + VALUE + b"b" * 50 + VALUE + b"tail"


def stream(watch: ResponseWatch, pieces: list[bytes]) -> list[bytes]:
    return [watch.feed(p) for p in pieces] + [watch.feed(b"")]


def splits(body: bytes):
    """Every way of cutting `body` into two pieces, and into pieces of 1, 3 and 7 bytes."""
    for i in range(len(body) + 1):
        yield [body[:i], body[i:]]
    for n in (1, 3, 7):
        yield [body[i:i + n] for i in range(0, len(body), n)]


@pytest.mark.parametrize("fixed", [False, True])
def test_every_split_is_masked_and_no_part_of_a_value_leaves_early(fixed):
    for pieces in splits(BODY):
        watch = ResponseWatch([(VALUE, SAME)], fixed_length=fixed)
        out = stream(watch, [p for p in pieces if p])
        joined = b"".join(out)
        assert joined == BODY.replace(VALUE, SAME)
        assert watch.masked == 2
        # what had left after each piece never ends with the start of the value
        sent = b""
        for piece in out[:-1]:
            sent += piece
            assert not any(sent.endswith(VALUE[:k]) for k in range(4, len(VALUE) + 1)), pieces


@pytest.mark.parametrize("body, pairs, fixed, want", [
    (b"x" + VALUE + b"y", [(VALUE, SHORT)], False, b"x" + SHORT + b"y"),  # open length: any placeholder
    (b"no secret here", [(VALUE, SHORT)], True, b"no secret here"),
    (b"", [(VALUE, SHORT)], True, b""),
    # the longest form wins where forms overlap (JSON-escaped vs raw)
    (b'{"k":"' + VALUE + b'/x"}', [(VALUE + b"/x", b"LONGER-PH-OF-SAME-LEN-XX"), (VALUE, SAME)], False,
     b'{"k":"LONGER-PH-OF-SAME-LEN-XX"}'),
])
def test_table(body, pairs, fixed, want):
    watch = ResponseWatch(pairs, fixed_length=fixed)
    assert b"".join(stream(watch, [body[:5], body[5:]])) == want


def test_fixed_length_with_a_shorter_placeholder_is_cut_before_the_value_leaves():
    watch = ResponseWatch([(VALUE, SHORT)], fixed_length=True)
    sent = watch.feed(b"a" * 100 + VALUE[:10])
    assert VALUE[:4] not in sent
    with pytest.raises(SecretInResponse) as e:
        watch.feed(VALUE[10:] + b"rest")
    assert VALUE.decode() not in str(e.value) and SHORT.decode() in str(e.value)
