"""Many small parts (path, query, headers, cookies, names) through the engine in ONE call.

The engine's cost is mostly per call (containers, views, result bookkeeping: tens of
microseconds each), not per byte, and a request head has a dozen small parts. So the
parts are joined into one buffer, separated by a blank line (`\\n\\n`: no base64, hex,
percent, JSON or quoted-printable run crosses it, the same separator the engine uses to
batch decoded blocks), scanned once, and every hit is mapped back to its part with an
offset->part table: the part's label (`query>form[NAME]` for query fields), offsets and
`raw_span` relative to the part, and a context cut from the part's own bytes only (a
neighbour's bytes never show in another part's context).

A match that crosses a separator (a value cut in two and sent in two headers: found
through a decoded view spanning both) belongs to the part it starts in and has no
`raw_span`: it cannot be redacted in place, only refused. Nothing here imports mitmproxy.
"""

from __future__ import annotations

import dataclasses
from bisect import bisect_right

from gateway.detect.decode import field_at, form_fields
from gateway.detect.scanner import context

SEP = b"\n\n"
LABEL = "request-head"


def scan_parts(detector, parts: list[tuple[str, bytes]]) -> list:
    """Every hit in `parts` ((label, bytes), labels unique), as if each had been scanned alone.

    Raises what `Detector.scan` raises (DecodeLimit, with the hits it found mapped back)."""
    parts = [(label, data) for label, data in parts if data]
    if not parts:
        return []
    starts: list[int] = []
    pos = 0
    for _label, data in parts:
        starts.append(pos)
        pos += len(data) + len(SEP)
    buf = SEP.join(data for _label, data in parts)
    from gateway.detect import DecodeLimit

    try:
        hits = detector.scan(buf, LABEL)
    except DecodeLimit as e:
        raise DecodeLimit(e.part, e.reason, _map(e.hits, parts, starts)) from None
    return _map(hits, parts, starts)


def _map(hits, parts, starts) -> list:
    out = []
    by_part: dict[int, list] = {}
    for h in hits:
        i = max(0, bisect_right(starts, h.offset) - 1)
        label, data = parts[i]
        off = h.offset - starts[i]
        if off >= len(data):  # starts in a separator: belongs to the next part
            if i + 1 >= len(parts):
                continue
            i += 1
            label, data = parts[i]
            off = 0
        end = min(len(data), off + h.length)
        raw = None
        if h.raw_span is not None and h.offset + h.length <= starts[i] + len(data):
            raw = (h.raw_span[0] - starts[i], h.raw_span[1] - starts[i])
        name = label
        suffix = h.part[len(LABEL):] if h.part.startswith(LABEL) else ""
        if label == "query":
            name = f"query>form[{field_at(form_fields(data), off)}]"
        by_part.setdefault(i, []).append((off, end, h.rule))
        out.append((i, dataclasses.replace(h, part=name + suffix, offset=off, length=end - off, raw_span=raw)))
    result = []
    for i, h in out:
        result.append(dataclasses.replace(h, context=context(parts[i][1], (h.offset, h.offset + h.length),
                                                             by_part[i])))
    result.sort(key=lambda h: (h.part, h.offset, h.rule))
    return result
