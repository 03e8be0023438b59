"""The table-driven corpus: every positive caught, false positives on real clean payloads counted.

Positives: 3 known values x every encoding (raw, base64/base64url at 3 alignments with and without
padding, base32 at 5 alignments and lower case, hex both cases, %-encoding single/double, full and
partial, JSON \\u full and partial, quoted-printable with soft breaks, MIME base64, reversed) x every
container/channel (plain, gzip, deflate zlib/raw, br, zstd, sniffed gzip/zstd, gzip-in-gzip,
multipart identity/base64/QP, form field, JSON string, query string, header), and one sample per rule
in several containers. Negatives: a wheel, tarballs, mitmproxy's minified JS, CSS, fonts and images,
stdlib sources, generated JSON API bodies, access logs and form posts.
"""

from __future__ import annotations

import base64
import collections
import gzip
import os
from pathlib import Path

import pytest

from gateway.detect import DecodeLimit, Detector, KnownValue, builtin_rules

from . import corpus

# Documented bound (docs/detection.md): rule false positives on the clean corpus.
MAX_RULE_FALSE_POSITIVES = 8

CASES = corpus.positive_cases()


@pytest.fixture(scope="module")
def det() -> Detector:
    return Detector(builtin_rules(), [KnownValue(f"canary:{k}", v) for k, v in corpus.VALUES.items()])


def _scan(det, p):
    try:
        return det.scan(p.data, p.part, content_type=p.content_type, content_encoding=p.content_encoding)
    except DecodeLimit as e:  # pragma: no cover - a positive must not hit a bound
        pytest.fail(f"{p.name}: decode limit {e.reason}")


@pytest.mark.parametrize(("vname", "ename", "cname", "payload", "expected", "part"), CASES,
                         ids=[c[3].name for c in CASES])
def test_known_value_positive(det, vname, ename, cname, payload, expected, part):
    hits = [h for h in _scan(det, payload) if h.rule == "known-value"]
    assert hits, f"missed {payload.name}"
    assert {h.label for h in hits} == {f"canary:{vname}"}
    assert any(h.part == part for h in hits), [h.part for h in hits]
    assert any(corpus.encoding_matches(expected, h.encoding, cname) for h in hits), [h.encoding for h in hits]
    for h in hits:
        low = h.context.lower().encode()
        assert corpus.VALUES[vname].lower() not in low


RULE_CONTAINERS = ["plain", "gzip", "br", "multipart", "multipart-b64", "json", "form"]


@pytest.mark.parametrize("cname", RULE_CONTAINERS)
@pytest.mark.parametrize("rule_id", sorted(corpus.rule_samples()))
def test_rule_positive(det, rule_id, cname):
    sample = b"config:\n" + corpus.rule_samples()[rule_id] + b"\n# end\n"
    if cname == "json" and rule_id in ("gcp-service-account-key", "gcp-service-account-email"):
        pytest.skip("the sample is itself JSON")
    data, ct, ce, part, pname = corpus.CONTAINERS[cname](sample)
    hits = det.scan(data, pname, content_type=ct, content_encoding=ce)
    assert rule_id in {h.rule for h in hits}, f"{rule_id} in {cname}: {[h.rule for h in hits]}"


@pytest.mark.parametrize("rule_id", sorted(corpus.rule_samples()))
def test_rule_positive_inside_base64(det, rule_id):
    sample = b"config:\n" + corpus.rule_samples()[rule_id] + b"\n# end\n"
    for blob in (base64.b64encode(sample * 2), base64.encodebytes(sample * 2)):
        hits = det.scan(b"data=" + blob, "body")
        assert rule_id in {h.rule for h in hits if "base64" in h.encoding}


def test_clean_corpus_false_positives(det, tmp_path):
    """Scan every clean payload with 1,000 unrelated known values: known-value FPs must be 0, rule FPs
    are counted per rule and payload kind, reported, and bounded."""
    import random

    rnd = random.Random(9)
    values = [KnownValue(f"secret:{i}", base64.b64encode(rnd.randbytes(18))) for i in range(1000)]
    big = det.with_values(values)
    clean = corpus.clean_corpus()
    assert {p.kind for p in clean} >= {"wheel", "tarball", "js", "image", "source", "json", "text", "form"}
    fp: collections.Counter[tuple[str, str]] = collections.Counter()
    examples = {}
    size = 0
    for p in clean:
        size += len(p.data)
        for h in big.scan(p.data, p.part, content_type=p.content_type, content_encoding=p.content_encoding):
            fp[(h.rule, p.kind)] += 1
            examples.setdefault(h.rule, f"{p.name}: {h.context}")
    lines = ["| rule | payload kind | false positives |", "|---|---|---|"]
    lines += [f"| {r} | {k} | {n} |" for (r, k), n in sorted(fp.items())] or ["| (none) | | 0 |"]
    lines += ["", f"clean corpus: {len(clean)} payloads, {size / 1e6:.1f} MB"]
    lines += [f"- {r}: `{e}`" for r, e in sorted(examples.items())]
    report = "\n".join(lines)
    out = Path(os.environ.get("EGRESSGW_REPORT_DIR", tmp_path)) / "detect-false-positives.md"
    out.write_text(report + "\n")
    print("\n" + report)
    assert sum(n for (r, _k), n in fp.items() if r == "known-value") == 0
    assert sum(fp.values()) <= MAX_RULE_FALSE_POSITIVES, report


def test_corpus_is_built_from_real_files():
    assert zip_is_a_wheel(corpus.wheel("idna"))
    assert gzip.decompress(corpus.tarball("json"))[257:262] == b"ustar"
    assert any(n.endswith(".js") for n, _ in corpus.static_files())
    assert any(n.endswith(".png") or n.endswith(".ico") for n, _ in corpus.static_files())


def zip_is_a_wheel(data: bytes) -> bool:
    import io
    import zipfile

    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    return any(n.endswith("METADATA") for n in names) and any(n.endswith(".py") for n in names)


def test_every_positive_with_a_combined_database():
    """With >= COMBINE_MIN values, values, rules and shapes share one hyperscan database: the same
    corpus must come out the same."""
    import random

    from gateway.detect.matcher import COMBINE_MIN

    rnd = random.Random(4)
    values = [KnownValue(f"canary:{k}", v) for k, v in corpus.VALUES.items()]
    values += [KnownValue(f"secret:{i}", base64.b64encode(rnd.randbytes(18))) for i in range(COMBINE_MIN)]
    big = Detector(builtin_rules(), values)
    assert big._vm.rules is not None
    missed = []
    for vname, _ename, cname, payload, expected, part in CASES:
        hits = [h for h in _scan(big, payload) if h.rule == "known-value"]
        if not (hits and {h.label for h in hits} == {f"canary:{vname}"} and any(h.part == part for h in hits)
                and any(corpus.encoding_matches(expected, h.encoding, cname) for h in hits)):
            missed.append(payload.name)
    assert missed == []
    for rule_id, sample in corpus.rule_samples().items():
        assert rule_id in {h.rule for h in big.scan(b"config:\n" + sample + b"\n# end\n", "body")}
