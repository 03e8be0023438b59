"""Detector.scan: offsets, raw spans, redaction, contexts that never carry the secret, bounds."""

from __future__ import annotations

import base64
import gzip
import json
import zlib
from urllib.parse import quote_from_bytes

import pytest

from gateway.detect import DecodeLimit, Detector, Hit, KnownValue, Limits, builtin_rules
from gateway.detect.forms import base32_forms, base64_forms, forms

CANARY = b"cnry-Zq8Lw3Xv7Np2Rt6Ys1Ku5"
LABEL = "canary:c1"


@pytest.fixture(scope="module")
def det() -> Detector:
    return Detector(builtin_rules(), [KnownValue(LABEL, CANARY)])


def _encodings_of(value: bytes) -> list[bytes]:
    return [f.pattern for f in forms(value)] + [value.lower(), value.upper()]


def _assert_no_secret(text: str, value: bytes = CANARY) -> None:
    low = text.lower().encode()
    for enc in _encodings_of(value):
        assert enc.lower() not in low, "secret (or an encoding of it) leaked"


def test_stable_middles_are_independent_of_neighbours():
    v = CANARY
    for k, mid in enumerate(base64_forms(v)):
        for pre in (b"", b"A", b"AB", b"\xff\x00"):
            if len(pre) % 3 == k:
                assert mid in base64.b64encode(pre + v + b"zz")
    for k, mid in enumerate(base32_forms(v)):
        assert mid in base64.b32encode(b"ABCD"[:k] + v + b"?")


def test_short_values_are_refused_without_echoing_them():
    with pytest.raises(ValueError) as e:
        KnownValue("secret:short", b"abc123")
    assert "abc123" not in str(e.value) and "secret:short" in str(e.value)
    assert "cnry" not in repr(KnownValue(LABEL, CANARY))


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        (b"x=" + CANARY + b"&y=1", "raw"),
        (b"x=" + quote_from_bytes(CANARY, safe=b"").encode(), "raw"),  # nothing to encode: raw
        (b"x=" + b"".join(b"%%%02x" % c for c in CANARY), "url"),
        (b"x=" + CANARY[:5] + b"".join(b"%%%02X" % c for c in CANARY[5:9]) + CANARY[9:], "url"),
        (json.dumps({"k": "".join("\\u%04x" % c if i % 2 else chr(c) for i, c in enumerate(CANARY))}).encode(), "json-u"),
    ],
)
def test_raw_span_maps_back_through_escape_views(det, data, encoding):
    hits = det.scan(data, "body")
    kv = [h for h in hits if h.rule == "known-value"]
    assert kv and kv[0].label == LABEL
    s, e = kv[0].raw_span
    assert data[:s].endswith((b"x=", b'"k": "', b"x=" + b""))
    out = det.redact(data, kv)
    assert b"[REDACTED:known-value]" in out
    assert CANARY not in out and not det.scan(out, "body")


def test_redact_replaces_every_occurrence_and_keeps_the_rest(det):
    data = b"a " + CANARY + b" b " + base64.b64encode(CANARY) + b" c " + CANARY.hex().encode() + b" d"
    hits = det.scan(data, "body")
    assert sorted(h.encoding for h in hits) == ["base64", "hex", "raw"]
    out = det.redact(data, hits)
    assert out.startswith(b"a [REDACTED:known-value] b ") and out.endswith(b" d")
    assert det.scan(out, "body") == []


def test_redact_merges_overlapping_spans(det):
    data = b"password=" + CANARY + b"Q9#"
    hits = det.scan(data, "body")
    assert {h.rule for h in hits} == {"known-value", "generic-secret-assignment"}
    out = det.redact(data, hits)
    assert out.count(b"[REDACTED:") == 1 and CANARY not in out


def test_hits_in_containers_have_no_raw_span(det):
    hits = det.scan(gzip.compress(b"hello " + CANARY), "body", content_encoding="gzip")
    assert [(h.part, h.raw_span, h.offset) for h in hits] == [("body>gzip", None, 6)]


def test_context_never_carries_the_secret_even_when_adjacent(det):
    data = CANARY + b"|" + base64.b64encode(CANARY) + b"|" + CANARY[::-1] + b"|" + b"%" + b"%".join(b"%02x" % c for c in CANARY)
    hits = det.scan(data, "body")
    assert len(hits) == 4
    for h in hits:
        assert len(h.context) <= 80 and h.context.isprintable()
        _assert_no_secret(h.context)
        _assert_no_secret(repr(h))


def test_multipart_parts_and_transfer_encodings(det):
    b = "XyZ"
    body = (
        f"--{b}\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nnothing\r\n"
        f"--{b}\r\nContent-Disposition: form-data; name=\"doc\"; filename=\"x.bin\"\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode() + base64.encodebytes(b"x" * 70 + CANARY) + f"\r\n--{b}\r\nContent-Disposition: form-data; name=\"plain\"\r\n\r\n".encode() + CANARY + f"\r\n--{b}--\r\n".encode()
    hits = det.scan(body, "body", content_type=f"multipart/form-data; boundary={b}")
    got = {(h.part, h.encoding, h.raw_span is not None) for h in hits}
    assert ("body>multipart[doc]", "base64", False) in got
    assert ("body>multipart[plain]", "raw", True) in got
    plain = next(h for h in hits if h.part == "body>multipart[plain]")
    assert body[plain.raw_span[0] : plain.raw_span[1]] == CANARY


def test_form_fields_are_named(det):
    data = b"a=1&user%5Bnote%5D=" + quote_from_bytes(b"see " + CANARY).encode() + b"&z=2"
    hits = det.scan(data, "body", content_type="application/x-www-form-urlencoded")
    assert [h.part for h in hits] == ["body>form[user?note?]"]  # '[', ']' and '>' never appear in a name


def test_sniffed_containers_and_nesting(det):
    inner = zlib.compress(b"v=" + CANARY)
    hits = det.scan(gzip.compress(inner), "body")
    assert [h.part for h in hits] == ["body>gzip>deflate"]


def test_decompression_bomb_raises_decode_limit_with_hits_so_far():
    det = Detector(builtin_rules(), [KnownValue(LABEL, CANARY)], limits=Limits(max_output=1 << 20))
    bomb = gzip.compress(CANARY + b"\0" * (50 << 20))
    with pytest.raises(DecodeLimit) as e:
        det.scan(bomb, "body", content_encoding="gzip")
    assert e.value.part == "body>gzip" and "exceeds" in e.value.reason
    assert [h.label for h in e.value.hits] == [LABEL]
    _assert_no_secret(str(e.value))


def test_ratio_limit():
    det = Detector(builtin_rules(), limits=Limits(max_ratio=50, ratio_floor=1 << 20))
    with pytest.raises(DecodeLimit, match="ratio"):
        det.scan(gzip.compress(b"a" * (8 << 20)), "body", content_encoding="gzip")


def test_nesting_depth_limit():
    det = Detector(builtin_rules(), limits=Limits(max_depth=2))
    data = b"hello"
    for _ in range(5):
        data = gzip.compress(data)
    with pytest.raises(DecodeLimit, match="nesting"):
        det.scan(data, "body")


def test_corrupt_declared_encoding_is_scanned_as_is(det):
    hits = det.scan(b"not gzip " + CANARY, "body", content_encoding="gzip")
    assert [(h.part, h.encoding) for h in hits] == [("body", "raw")]


def test_with_values_reuses_rules_and_caches_value_dbs(det):
    other = det.with_values([KnownValue("canary:c2", b"another-canary-value-123")])
    assert other._engine is det._engine
    again = det.with_values([KnownValue("canary:c2", b"another-canary-value-123")])
    assert again._vm is other._vm
    assert [h.label for h in other.scan(b"x another-canary-value-123", "q")] == ["canary:c2"]
    assert other.scan(CANARY, "q") == []


def test_value_dbs_cache_is_bounded(det):
    for i in range(det._engine.cache_size + 5):
        det.with_values([KnownValue("v", b"value-number-%04d" % i)])
    assert len(det._engine.cache) <= det._engine.cache_size


def test_hit_is_frozen_and_has_the_documented_fields(det):
    h = det.scan(CANARY, "header:authorization")[0]
    assert isinstance(h, Hit)
    assert (h.rule, h.label, h.part, h.offset, h.length, h.encoding, h.action) == (
        "known-value", LABEL, "header:authorization", 0, len(CANARY), "raw", None)
    with pytest.raises(AttributeError):
        h.rule = "x"  # type: ignore[misc]


def test_empty_and_binary_inputs(det):
    assert det.scan(b"", "body") == []
    assert det.scan(bytes(range(256)) * 100, "body") == []


def test_engine_imports_nothing_from_mitmproxy():
    import subprocess
    import sys

    code = "import sys, gateway.detect; print(any(m.split('.')[0] == 'mitmproxy' for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_confirm_windows_of_exact_rules_find_what_a_whole_pass_finds():
    """Rules compiled exactly into hyperscan get confirmation windows that end just past each reported
    end offset, and rules with start offsets (SOM) are confirmed from each reported start: on samples
    packed densely among noise and each other, the confirmed matches equal a Python `re` pass over
    the whole data."""
    import random

    from gateway.detect.matcher import RuleMatcher
    from gateway.detect.scanner import _confirm

    from .corpus import rule_samples

    pack = builtin_rules()
    rm = RuleMatcher(pack)
    samples = list(rule_samples().values())
    rnd = random.Random(7)
    noise = [b" ", b"\n", b"x", b"=", b'"', b"password: ", b"token=", b"\\n", b"ab12", b"&"]
    checked = 0
    for _ in range(60):
        data = b"".join(rnd.choice(samples) + b"".join(rnd.choice(noise) for _ in range(rnd.randint(0, 6)))
                        for _ in range(rnd.randint(1, 8)))
        hits, _shapes = rm.scan(data)
        for ri in rm.exact | rm.som:
            rule = rm.rules[ri]
            whole = [m.span() for m in rule.compiled.finditer(data)]
            got = [m.span() for m in _confirm(rule.compiled, data, list(hits.get(ri) or []), rule.max_len, len(data),
                                              *rm.confirm[ri])]
            assert got == whole, rule.id
            checked += len(whole)
    assert checked > 100
    assert {rm.rules[i].id for i in rm.som} >= {"generic-secret-assignment", "jwt", "github-pat"}


def test_url_view_decoded_only_around_escapes_a_value_form_can_hold():
    """A body dense with escapes no value form contains (%20, %3A) and no rule keyword: the URL view
    is decoded only around the escapes that can be part of a value, and a partly percent-encoded
    value far inside is still found, with its raw span; a rule keyword makes the view whole again."""
    value = b"Pw-Zq8Lw3Xv7Np2!Rt6"
    det = Detector(builtin_rules(), [KnownValue("v", value)])
    filler = b"".join(b"q=is%3Aopen+label%3Abug%20%20x&" for _ in range(400))
    enc = value.replace(b"!", b"%21").replace(b"Zq", b"%5Aq")
    body = filler + b"v=" + enc + b"&" + filler
    hits = det.scan(body, "body")
    assert [(h.rule, h.label) for h in hits] == [("known-value", "v")]
    assert hits[0].raw_span == (len(filler) + 2, len(filler) + 2 + len(enc))
    # a rule match needs the whole view: a keyword anywhere keeps it
    secret = b"api_key%3D%22" + b"Zk9Qx2Lm7Rt4Vb8Nc1Wd" + b"%22"
    hits = det.scan(filler + secret + filler, "body")
    assert "generic-secret-assignment" in {h.rule for h in hits}
    # ... also when the keyword itself is percent-encoded (the gate reads the undecoded bytes)
    secret = b"p%61ss%77ord%3D%22" + b"Zk9Qx2Lm7Rt4Vb8Nc1Wd" + b"%22"
    hits = det.scan(filler + secret + filler, "body")
    assert "generic-secret-assignment" in {h.rule for h in hits}


def test_url_view_gate_needs_only_rule_keywords_when_no_block_can_be_split():
    """Without escapes that can split a base64 block (%2B %2F %3D, line breaks) the URL view decodes
    no blocks, so only the rule keywords open it whole (a SHA holding 717e, the hex form of the azure
    keyword "q~", no longer does); a keyword with percent-encoded bytes still does, and the match maps
    back to the encoded bytes."""
    det = Detector(builtin_rules(), [])
    rm = det._engine.rules
    sha = b"6f996ea8717e6a065d2a62aa0c5e1f23b4d5e6f7"
    assert rm.has_keyword(sha, blocks=True) and not rm.has_keyword(sha, blocks=False)
    secret = b"Zq8Lw3Xv7Np2Rt6Yb"
    body = b"sha=" + sha + b"&q=is%3Aopen+label%3Abug&p%61ssword%3A%20" + secret + b"&x=1"
    hits = [h for h in det.scan(body, "body") if h.rule == "generic-secret-assignment"]
    assert hits and hits[0].raw_span is not None
    assert body[hits[0].raw_span[0] : hits[0].raw_span[1]] == secret


def test_url_view_skipped_when_the_main_pass_sees_no_significant_escape():
    """With a combined value database the main pass reports whether any escape decodes to a byte of
    some value's forms ("pct-sig"): a body with only %3A/%20 gets no URL view at all, and a value
    with one such byte percent-encoded is still found with its raw span."""
    import random

    rnd = random.Random(11)
    values = [KnownValue(f"v{i}", ("Pw-" + "".join(rnd.choice("abcdefghkmnpqrstuvwxyz23456789") for _ in range(17))).encode())
              for i in range(100)]
    det = Detector(builtin_rules(), values)
    assert det._vm.sig_shape
    filler = b"".join(b"q=is%3Aopen+label%3Abug%20%20x&" for _ in range(400))
    assert "pct-sig" not in det._vm.scan_all(filler)[2]
    assert det.scan(filler, "body") == []
    value = values[42].value
    enc = value[:5] + b"%" + value[5:6].hex().upper().encode() + value[6:]
    body = filler + b"v=" + enc + b"&" + filler
    assert "pct-sig" in det._vm.scan_all(body)[2]
    hits = det.scan(body, "body")
    assert [(h.rule, h.label) for h in hits] == [("known-value", "v42")]
    assert body[hits[0].raw_span[0] : hits[0].raw_span[1]] == enc
