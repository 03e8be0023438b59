"""The detection decoders (gateway/detect/) as properties.

- Decode views and the whole scan never raise on any input, except DecodeLimit (a documented bound).
- Every encoding of a random known value, in every container, is found: the property version of the
  table-driven corpus (tests/detect/test_corpus.py), with values drawn at random instead of three fixed ones.
"""

from __future__ import annotations

import functools

from hypothesis import assume, given
from hypothesis import strategies as st

from gateway.detect import DecodeLimit, Detector, KnownValue, builtin_rules
from gateway.detect import decode

from tests.detect import corpus  # noqa: E402  (the corpus of the table-driven tests)

CTYPES = st.sampled_from([None, "text/plain", "application/json", "application/x-www-form-urlencoded",
                          "multipart/form-data; boundary=b", "multipart/form-data", "application/octet-stream",
                          "message/rfc822", "text/plain; charset=utf-16"])
CODINGS = st.sampled_from([None, "gzip", "deflate", "br", "zstd", "gzip, gzip", "identity", "x-bogus", "gzip,,br"])
PARTS = st.sampled_from(["body", "query", "path", "header:authorization", "header:cookie", "url"])
# bytes that make decoders work: escapes, base64/hex runs, MIME boundaries, compression magic
SPICY = st.lists(st.sampled_from([b"%", b"%25", b"%4", b"\\u00", b"\\u", b"=\r\n", b"=4", b"--b\r\n", b"\r\n\r\n",
                                  b"Content-Transfer-Encoding: base64\r\n", b"\x1f\x8b\x08", b"\x28\xb5\x2f\xfd",
                                  b"QUJD", b"0123456789abcdef", b"==", b"&", b"=", b"\"", b"\\", b"A" * 40]),
                 max_size=20).map(b"".join)
DATA = st.one_of(st.binary(max_size=600), SPICY, st.tuples(SPICY, st.binary(max_size=60), SPICY).map(b"".join))


@functools.lru_cache(maxsize=1)
def rules_only() -> Detector:
    return Detector(builtin_rules(), [KnownValue("canary:fixed", b"cnry_Tk7Qm2Vx9Lp4Rz8Wn3Yb6Hd1Fs5Gj0")])


@given(DATA, PARTS, CTYPES, CODINGS)
def test_scan_never_raises_but_decode_limit(data, part, ctype, coding):
    try:
        hits = rules_only().scan(data, part, content_type=ctype, content_encoding=coding)
    except DecodeLimit:
        return
    for h in hits:
        assert h.rule and h.part


@given(DATA)
def test_views_never_raise(data):
    for view in (lambda: decode.url_view(data), lambda: decode.url_view(data, form=True),
                 lambda: decode.url_view(data, window=64), lambda: decode.json_view(data),
                 lambda: decode.json_view(data, window=64), lambda: decode.qp_view(data)):
        out, mapping = view()
        assert isinstance(out, bytes)
        if out:
            start, end = mapping.span(0, len(out))
            assert 0 <= start <= end <= len(data)
    for block in (decode.base64_blocks(data, 8), decode.hex_blocks(data, 8)):
        for start, end, raw in block:
            assert 0 <= start < end <= len(data) and isinstance(raw, bytes)
    decode.form_fields(data)
    decode.multipart(data, "multipart/form-data; boundary=b", 16)
    decode.sniff(data)


@given(DATA, st.sampled_from([["gzip"], ["deflate"], ["br"], ["zstd"], ["gzip", "gzip"]]))
def test_inflate_raises_only_value_error(data, codings):
    try:
        out, bound = decode.inflate(data, codings, decode.Limits())
    except ValueError:
        return
    assert isinstance(out, bytes) and (bound is None or isinstance(bound, str))


VALUE = st.one_of(
    st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=12, max_size=48),
    st.text("abcdefXYZ0123456789 !@#$%^&*()+=/?<>[]{}|~中文é", min_size=10, max_size=30),
).map(str.encode)


@given(VALUE, st.sampled_from(sorted(corpus.ENCODINGS)), st.sampled_from(sorted(corpus.CONTAINERS)))
def test_every_encoding_of_a_random_value_is_found(value, ename, cname):
    assume(len(set(value)) >= 6)  # a value of one or two repeated bytes is not a credential
    assume(corpus.applicable(value, ename, cname))
    encoded = corpus.ENCODINGS[ename][0](value)
    data, ctype, coding, _expected_part, pname = corpus.CONTAINERS[cname](encoded)
    det = rules_only().with_values([KnownValue("canary:random", value)])
    try:
        hits = det.scan(data, pname, content_type=ctype, content_encoding=coding)
    except DecodeLimit as e:
        raise AssertionError(f"{ename} in {cname}: decode limit {e.reason}") from None
    assert any(h.rule == "known-value" and h.label == "canary:random" for h in hits), (value, ename, cname)


# JSON text as a sandbox writes it: non-ASCII characters raw, escapes of every kind (surrogate pairs,
# lone surrogates, escaped slashes), and sometimes bytes that are not UTF-8
JSON_PIECES = st.lists(st.one_of(
    st.text(max_size=12),
    st.sampled_from(["\\n", "\\\"", "\\\\", "\\/", "\\t", "\\u00e9", "\\u2014", "\\ud83d\\ude00", "\\ud83d", "\\ude00",
                     "\\u0041", "é", "—", "😀", "/", "\\\\/"]),
), max_size=30).map("".join)


@given(JSON_PIECES, st.booleans())
def test_json_view_fast_paths_decode_as_the_per_escape_path(text, broken):
    data = text.encode("utf-8", "surrogatepass")
    if broken:
        data += b"\xff\xfe"  # not UTF-8: the per-escape path must be taken
    slow, slow_map = decode.unescape(data, decode._JSON, decode._json)
    fast, fast_map = decode.json_view(data)
    assert fast == slow
    if fast:
        assert fast_map.span(0, len(fast)) == slow_map.span(0, len(slow))
        mid = len(fast) // 2
        assert fast_map.span(mid, len(fast)) == slow_map.span(mid, len(slow))
