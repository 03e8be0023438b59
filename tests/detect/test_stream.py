"""StreamScan: matches across chunk borders, redaction before bytes leave, bounded memory."""

from __future__ import annotations

import base64
import gzip
import os
import tracemalloc
import zlib

import brotli
import pytest
import zstandard

from gateway.detect import DecodeLimit, Detector, KnownValue, Limits, builtin_rules

CANARY = b"strm-Hq3Vz8Kp1Lw6Ny2Tb7Xc4"


@pytest.fixture(scope="module")
def det() -> Detector:
    return Detector(builtin_rules(), [KnownValue("canary:s", CANARY)])


def _run(st, chunks):
    out, hits = [], []
    for c in chunks:
        o, h = st.feed(c)
        out.append(o)
        hits += h
    o, h = st.finish()
    out.append(o)
    hits += h
    return b"".join(out), hits


def _filler(n: int, seed: int = 1) -> bytes:
    return base64.b64encode(os.urandom(n * 3 // 4 + 3))[:n].replace(b"+", b" ").replace(b"/", b"\n")


@pytest.mark.parametrize("cut", [1, 5, len(CANARY) // 2, len(CANARY) - 1])
@pytest.mark.parametrize("form", ["raw", "base64", "hex"])
def test_value_straddling_a_chunk_border_is_found_once_and_redacted(det, cut, form):
    enc = {"raw": CANARY, "base64": base64.b64encode(CANARY), "hex": CANARY.hex().encode()}[form]
    pre, post = _filler(70000), _filler(50000)
    data = pre + b" " + enc + b" " + post
    border = len(pre) + 1 + cut
    chunks = [data[:border], data[border:]]
    st = det.stream("body", redact=True)
    out, hits = _run(st, chunks)
    assert [(h.label, h.encoding, h.offset) for h in hits] == [("canary:s", form, len(pre) + 1 + (0 if form != "base64" else hits[0].offset - len(pre) - 1))]
    assert enc not in out and b"[REDACTED:known-value]" in out
    assert out.startswith(pre) and out.endswith(post)


def test_many_small_chunks_and_offsets_are_absolute(det):
    data = _filler(300000) + CANARY + _filler(999) + b" ghp_" + b"a1B2c3D4e5" * 3 + b"Zz9Yy8 " + CANARY
    st = det.stream("body")
    out, hits = _run(st, [data[i : i + 997] for i in range(0, len(data), 997)])
    assert out == data  # no redaction asked: bytes pass unchanged
    got = [(h.rule, h.offset) for h in hits]
    assert ("known-value", 300000) in got and ("known-value", len(data) - len(CANARY)) in got
    assert ("github-pat", 300000 + len(CANARY) + 1000) in got
    assert len(got) == 3


def test_nothing_leaves_before_the_overlap_is_scanned(det):
    st = det.stream("body", redact=True)
    out1, hits1 = st.feed(_filler(5000) + CANARY[:10])
    assert CANARY[:10] not in out1 and hits1 == []
    out2, hits2 = st.feed(CANARY[10:] + b" tail")
    out3, _ = st.finish()
    assert [h.label for h in hits2] == ["canary:s"]
    assert CANARY not in out1 + out2 + out3


def test_redact_predicate(det):
    data = _filler(2000) + CANARY + b" password=Q9x!Lm2#Rt7$ " + _filler(100)
    st = det.stream("body", redact=lambda h: h.rule == "known-value")
    out, hits = _run(st, [data])
    assert {h.rule for h in hits} == {"known-value", "generic-secret-assignment"}
    assert CANARY not in out and b"Q9x!Lm2#Rt7$" in out


@pytest.mark.parametrize(
    ("ce", "compress"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("br", brotli.compress),
        ("zstd", lambda d: zstandard.ZstdCompressor().compress(d)),
        (None, gzip.compress),  # sniffed
    ],
)
def test_compressed_streams(det, ce, compress):
    data = _filler(400000) + CANARY + _filler(1000)
    payload = compress(data)
    st = det.stream("body", content_encoding=ce)
    out, hits = _run(st, [payload[i : i + 4096] for i in range(0, len(payload), 4096)])
    assert out == payload  # compressed bytes are forwarded unchanged (block, don't redact)
    assert [(h.label, h.offset, h.raw_span) for h in hits] == [("canary:s", 400000, None)]
    assert hits[0].part.startswith("body>")


def test_compressed_bytes_are_held_until_their_text_is_scanned(det):
    data = _filler(200000) + CANARY + _filler(100)
    payload = zlib.compress(data)
    st = det.stream("body", content_encoding="deflate")
    released = 0
    found_at = None
    for i in range(0, len(payload), 512):
        o, h = st.feed(payload[i : i + 512])
        released += len(o)
        if h and found_at is None:
            found_at = released
    assert found_at is not None
    # the decoded position of the canary maps into compressed bytes that had not been released
    assert found_at < len(payload)


def test_stream_bomb_is_refused(det):
    limits = Limits(max_ratio=100, ratio_floor=1 << 20)
    d = Detector(builtin_rules(), limits=limits)
    payload = gzip.compress(b"\0" * (64 << 20))
    st = d.stream("body", content_encoding="gzip")
    with pytest.raises(DecodeLimit, match="ratio"):
        _run(st, [payload[i : i + 65536] for i in range(0, len(payload), 65536)])


def test_multipart_stream_is_scanned_by_shape(det):
    b = "bnd"
    body = (f"--{b}\r\nContent-Disposition: form-data; name=\"f\"\r\nContent-Transfer-Encoding: base64\r\n\r\n").encode()
    body += base64.encodebytes(_filler(3000) + CANARY + _filler(3000)) + f"\r\n--{b}--\r\n".encode()
    st = det.stream("body", content_type=f"multipart/form-data; boundary={b}")
    _out, hits = _run(st, [body[i : i + 1000] for i in range(0, len(body), 1000)])
    assert [h.label for h in hits] == ["canary:s"]


def test_memory_is_bounded_for_a_huge_body(det):
    """1 GB (EGRESSGW_DETECT_STREAM_MB to change) in 1 MiB chunks generated on the fly: the peak
    stays a few MiB, and a value straddling a chunk border deep inside is still found."""
    import resource

    total_mb = int(os.environ.get("EGRESSGW_DETECT_STREAM_MB", "1024"))
    chunk = 1 << 20
    words = b"upload part of a large log file with ordinary text and numbers 12345 "
    base = (words * (chunk // len(words) + 1))[:chunk]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    target = (total_mb // 2) * chunk - 7  # straddles a border
    st = det.stream("body", redact=True)
    tracemalloc.start()
    try:
        hits = []
        sent = 0
        pos = 0
        while pos < total_mb * chunk:
            c = bytearray(base)
            if pos <= target < pos + chunk:
                k = target - pos
                c[k : k + len(CANARY)] = CANARY[: chunk - k]
            if pos <= target + len(CANARY) and target < pos:
                done = pos - target
                c[: len(CANARY) - done] = CANARY[done:]
            o, h = st.feed(bytes(c))
            sent += len(o)
            hits += h
            pos += chunk
        o, h = st.finish()
        sent += len(o)
        hits += h
        _cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(h.label, h.offset) for h in hits] == [("canary:s", target)]
    assert sent == total_mb * chunk - len(CANARY) + len(b"[REDACTED:known-value]")
    assert peak < 16 * chunk, f"peak {peak / chunk:.1f} MiB"
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
    assert grown_kib < 64 * 1024, f"RSS grew by {grown_kib / 1024:.0f} MiB"
