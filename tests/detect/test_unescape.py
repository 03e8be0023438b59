"""gateway/detect/_unescape.c against the pure-Python paths it replaces, and the detector without it.

The C module is optional (setup.py): each function must give what decode.py's Python gives, on tables
of edge cases and as hypothesis properties, and a detector built without it must still catch the whole
positive corpus.
"""

from __future__ import annotations

import random
import re
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.detect import DecodeLimit, Detector, KnownValue, builtin_rules, decode, matcher

from . import corpus

needs_c = pytest.mark.skipif(not decode.NATIVE, reason="gateway/detect/_unescape.c not built")
c = decode._native


def test_the_c_module_is_built_where_there_is_a_c_compiler():
    """A silent fallback would hide a broken build: CI has gcc, so there the module must be there."""
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler here")
    assert decode.NATIVE and Detector(builtin_rules()).stats["c_views"] is True


@pytest.mark.parametrize(("data", "expected"), [
    (b"", b""),
    (b"plain", b"plain"),
    (b"a\\u00e9b", "aéb".encode()),
    (b"\\u0041\\u0042", b"AB"),
    (b"\\ud83d\\ude00", "😀".encode()),  # a pair written as two escapes: one character
    (b"\\ud83d", b"\xed\xa0\xbd"),  # a lone surrogate keeps its three bytes
    (b"\\ud83dx\\ude00", b"\xed\xa0\xbdx\xed\xb8\x80"),  # not adjacent: two lone ones
    (b"\\ud83d\\ud83d\\ude00", b"\xed\xa0\xbd" + "😀".encode()),
    (b"\\\\u0041", b"\\u0041"),  # an escaped backslash, then text
    (b"\\/\\\"\\\\\\b\\f\\n\\r\\t", b'/"\\\b\f\n\r\t'),
    (b"\\x", b"\\x"), (b"\\", b"\\"), (b"a\\", b"a\\"),  # a backslash that starts no escape stays
    (b"\\u12", b"\\u12"), (b"\\u12g4", b"\\u12g4"), (b"\\U0041", b"\\U0041"),
    (b"\xff\\n\xfe", b"\xff\n\xfe"),  # bytes that are not UTF-8 are copied
    (b"\\u0000", b"\x00"),
])
@needs_c
def test_json_unescape(data, expected):
    assert c.json_unescape(data) == expected
    assert c.json_unescape(bytearray(data)) == expected
    assert decode.unescape(data, decode._JSON, decode._json)[0] == expected or b"\\" not in data


@pytest.mark.parametrize(("data", "form", "expected"), [
    (b"", False, b""),
    (b"a%41", False, b"aA"),
    (b"%4", False, b"%4"), (b"%", False, b"%"), (b"a%4g", False, b"a%4g"),
    (b"%%41", False, b"%A"),
    (b"%255C", False, b"%5C"),  # one level per view
    (b"a+b%2B", True, b"a b+"),  # '+' is a space in forms; an escaped one stays '+'
    (b"a+b", False, b"a+b"),
    (b"%e4%B8%ad", False, "中".encode()),
    (b"%00%ff", False, b"\x00\xff"),
])
@needs_c
def test_url_unescape(data, form, expected):
    assert c.url_unescape(data, form) == expected
    assert decode.unquote_fast(data.replace(b"+", b" ") if form else data) == expected


JSONISH = st.lists(st.one_of(
    st.binary(max_size=8),
    st.sampled_from([b"\\", b"\\\\", b"\\u", b"\\u00", b"\\u00e9", b"\\ud83d", b"\\ude00", b"\\uDBFF", b"\\uDC00",
                     b"\\/", b"\\n", b"\\\"", b"\\x", b"u0041", b"\xff"]),
), max_size=40).map(b"".join)
URLISH = st.lists(st.one_of(
    st.binary(max_size=8),
    st.sampled_from([b"%", b"%4", b"%41", b"%2B", b"%2b", b"%25", b"%5C", b"%5c", b"%0A", b"%3D", b"+", b"%g1", b"%%"]),
), max_size=40).map(b"".join)


@settings(deadline=None, max_examples=200)
@given(JSONISH)
@needs_c
def test_json_unescape_is_the_per_escape_path(data):
    assert c.json_unescape(data) == decode.unescape(data, decode._JSON, decode._json)[0]


@settings(deadline=None, max_examples=200)
@given(URLISH, st.booleans())
@needs_c
def test_url_unescape_is_unquote(data, form):
    assert c.url_unescape(data, form) == decode.unquote_fast(data.replace(b"+", b" ") if form else data)


_SHAPE_RX = {1: matcher.SHAPES["pct"][0], 2: matcher.SHAPES["pct-b64"][0], 4: matcher.SHAPES["pct-bs"][0]}


@settings(deadline=None, max_examples=200)
@given(URLISH, st.sets(st.integers(0, 255)))
@needs_c
def test_pct_shapes_are_the_shape_expressions(data, sig):
    """The C percent shapes say what the hyperscan expressions they replace would say."""
    table = bytes(1 if b in sig else 0 for b in range(256))
    bits = c.pct_shapes(data, table)
    for bit, rx in _SHAPE_RX.items():
        assert bool(bits & bit) == (re.search(rx, data) is not None), (bit, data)
    sig_rx = b"%(?:" + b"|".join(b"%02X" % b for b in sig) + b")" if sig else None
    assert bool(bits & 8) == (sig_rx is not None and re.search(sig_rx, data, re.I) is not None)


@needs_c
def test_pct_shapes_refuses_a_short_table():
    with pytest.raises(ValueError, match="256 bytes"):
        c.pct_shapes(b"%41", b"\x01")


@settings(deadline=None, max_examples=200)
@given(st.binary(min_size=1, max_size=300), st.integers(0, 3000), st.sampled_from(["json", "url", "form"]))
def test_sparse_windows_decode_every_escape_and_map_it_back(secret_tail, where, kind):
    """A long body with one escaped value somewhere: the windowed view (C, around each escape) holds
    the value decoded, and its span maps back to exactly the escaped bytes."""
    value = b"Vq7-" + secret_tail.hex().encode()[:40]
    if kind == "json":
        enc = b"".join(b"\\u%04x" % ch for ch in value[:6]) + value[6:]
        filler = b'{"k": "some text here"}, ' * 400
    else:
        enc = b"".join(b"%%%02X" % ch for ch in value[:6]) + value[6:]
        filler = b"q=some+text+here&" * 400
    where = min(where, len(filler))
    data = filler[:where] + enc + filler[where:]
    view, mapping = (decode.json_view(data, window=64) if kind == "json"
                     else decode.url_view(data, form=kind == "form", window=64))
    at = view.find(value)
    assert at >= 0
    assert mapping.span(at, at + len(value)) == (where, where + len(enc))


def test_a_form_space_far_from_any_escape_is_decoded():
    """In a form, '+' is an escape too: the windows of a sparse URL view open around it as well as
    around each '%' (review finding: a value written with '+' 1,500 bytes from the one '%' was missed)."""
    det = Detector(builtin_rules(), [KnownValue("pw", b"correct horse battery staple")])
    body = b"a=%21&filler=" + b"x" * 1500 + b"&password=correct+horse+battery+staple&" + b"y" * 1500
    hits = det.scan(body, "body", content_type="application/x-www-form-urlencoded")
    assert [(h.rule, h.label) for h in hits if h.rule == "known-value"] == [("known-value", "pw")]
    view, mapping = decode.url_view(body, form=True, window=64)
    at = view.find(b"correct horse battery staple")
    assert at >= 0 and body[slice(*mapping.span(at, at + 28))] == b"correct+horse+battery+staple"


def test_windows_never_split_an_escape():
    """Escapes every 100 bytes on a 64-byte window: windows merge, and every escape is decoded."""
    data = b"".join(b"x" * 94 + b"\\u0041" for _ in range(50))
    view, _m = decode.json_view(data, window=64)
    assert b"\\u" not in view and view.count(b"A") == 50


def test_keyword_shapes_answer_as_the_keyword_pass_does():
    """With a combined database, has_keyword() answers from the main pass's shapes when no escape
    decodes to a keyword byte: never 'no' where its own pass says 'yes'."""
    rnd = random.Random(5)
    values = [KnownValue(f"v{i}", f"Pw-{rnd.getrandbits(80):020x}".encode()) for i in range(80)]
    det = Detector(builtin_rules(), values)
    rm = det._engine.rules
    assert det._vm.sig_shape and rm.kw_db is not None
    pieces = [b"password", b"PRIVATE KEY", b"PRIVATE+KEY", b"PRIVATE%20KEY", b"p%61ssword", b"tok%65n", b"sk-ant-",
              b"%3A", b"%20", b"%2B", b"+", b" ", b"x", b"LS0tLS1CRUdJT", b"414b4941", b"QUtJQ", b"%41KIA", b"hello"]
    checked = 0
    for _ in range(3000):
        data = b"".join(rnd.choice(pieces) for _ in range(rnd.randint(1, 6)))
        shapes = det._vm.scan_all(data)[2]
        for blocks in (False, True):
            want = rm.has_keyword(data, blocks)
            got = rm.has_keyword(data, blocks, shapes)
            assert got or not want, (data, blocks, shapes)
            checked += "pct-sig" not in shapes
    assert checked > 1000


def test_the_pure_python_views_catch_the_whole_corpus(monkeypatch):
    """Built without a C compiler, the detector falls back to decode.py's Python views and compiles
    the percent shapes into hyperscan again: every positive of the table-driven corpus is still caught."""
    monkeypatch.setattr(decode, "_native", None)
    det = Detector(builtin_rules(), [KnownValue(f"canary:{k}", v) for k, v in corpus.VALUES.items()])
    rm = det._engine.rules
    assert not rm.native and not det.stats["c_views"]
    assert "pct" in {rm._names[i - rm.shape_base] for i in rm.expressions[1] if i >= rm.shape_base}
    missed = []
    cases = corpus.positive_cases()
    for vname, _ename, _cname, payload, _expected, _part in cases:
        try:
            hits = det.scan(payload.data, payload.part, content_type=payload.content_type,
                            content_encoding=payload.content_encoding)
        except DecodeLimit as e:
            hits = e.hits
        if not any(h.rule == "known-value" and h.label == f"canary:{vname}" for h in hits):
            missed.append(payload.name)
    assert len(cases) > 300 and missed == []
