"""Literal forms of a known value: the bytes it becomes under each encoding.

A value is found in one pass of a literal multi-pattern database by precomputing
what it looks like encoded. For block encodings that depend on where the value
starts (base64 at 3 alignments, base32 at 5), only the *stable middle* is used:
the output characters whose bits come from the value alone, so neighbouring
bytes and padding do not matter. Encodings whose alphabet is case-insensitive
(hex, %XX, \\u00XX, =XX) are matched caselessly.

What literal forms cannot see (partial %-encoding, QP soft line breaks, MIME
line breaks, partially escaped JSON) is handled by decoded views in `views.py`.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

MIN_VALUE_LEN = 8
HALF = "base64-half"  # a trigger form, never reported


@dataclass(frozen=True)
class Form:
    pattern: bytes
    encoding: str
    caseless: bool


def _middle(encoded: bytes, bits_per_char: int, lead_bits: int, value_bits: int) -> bytes:
    """Characters of `encoded` whose bits lie entirely inside the value's bit range."""
    first = -(-lead_bits // bits_per_char)  # ceil
    last = (lead_bits + value_bits) // bits_per_char  # exclusive
    return encoded[first:last]


def base64_forms(value: bytes) -> list[bytes]:
    out = []
    for k in range(3):
        enc = base64.b64encode(b"\0" * k + value)
        out.append(_middle(enc, 6, 8 * k, 8 * len(value)))
    return out


def base32_forms(value: bytes) -> list[bytes]:
    out = []
    for k in range(5):
        enc = base64.b32encode(b"\0" * k + value)
        out.append(_middle(enc, 5, 8 * k, 8 * len(value)))
    return out


def forms(value: bytes) -> list[Form]:
    """Every literal form of `value` (deduplicated by pattern and case rule)."""
    if len(value) < MIN_VALUE_LEN:
        raise ValueError(f"known values must be at least {MIN_VALUE_LEN} bytes")
    hexed = value.hex().encode()
    out: list[Form] = [Form(value, "raw", False), Form(value[::-1], "reversed", False)]
    for b in base64_forms(value):
        out.append(Form(b, "base64", False))
        url = b.translate(_B64URL)
        if url != b:
            out.append(Form(url, "base64url", False))
    out += [Form(b, "base32", True) for b in base32_forms(value)]
    # halves of each base64 middle: not hits, triggers. A MIME line break inside a value's base64
    # leaves one half intact, and the decoded-block view then finds the value.
    for b in base64_forms(value):
        h = len(b) // 2
        if h >= 5:
            out += [Form(b[:h], HALF, False), Form(b[-h:], HALF, False)]
    out.append(Form(hexed, "hex", True))
    pct = b"".join(b"%" + hexed[i : i + 2] for i in range(0, len(hexed), 2))
    out.append(Form(pct, "url", True))
    out.append(Form(pct.replace(b"%", b"%25"), "url2", True))
    out.append(Form(b"".join(b"\\u00" + hexed[i : i + 2] for i in range(0, len(hexed), 2)), "json-u", True))
    out.append(Form(pct.replace(b"%", b"="), "qp", True))
    seen: set[tuple[bytes, bool]] = set()
    uniq = []
    for f in out:
        key = (f.pattern.lower() if f.caseless else f.pattern, f.caseless)
        if key not in seen and f.pattern:
            seen.add(key)
            uniq.append(f)
    return uniq


_B64URL = bytes.maketrans(b"+/", b"-_")
