"""The detector: known values and credential rules through containers and encodings.

`Detector.scan` takes one part of a message (a body, a header value, a query string...) and
returns `Hit`s. Inside, a part goes through:

1. containers: Content-Encoding (or magic-byte sniffing) -> gzip/deflate/br/zstd, multipart parts
   (per-part Content-Transfer-Encoding), form fields (for naming);
2. views: the part's bytes, plus decoded views built only when a hyperscan *shape* says the bytes
   need them (percent escapes, JSON escapes, QP soft breaks, base64 and hex blocks);
3. two hyperscan passes per view: the literal forms of the known values, and the rules.

Offsets of matches in escape views are mapped back to the original bytes, so `redact()` can
replace them in place (`Hit.raw_span`). Nothing here imports mitmproxy.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from .decode import (
    BoundedSink,
    DecodeLimit,
    Inflater,
    Limits,
    _Bound,
    base64_blocks,
    base64_body,
    field_at,
    form_fields,
    hex_blocks,
    inflate,
    json_view,
    multipart,
    parse_codings,
    qp_view,
    sig_windows,
    sniff,
    url_view,
)
from .forms import HALF, MIN_VALUE_LEN
from .matcher import RuleMatcher, ValueMatcher
from .rules import RulePack

KNOWN = "known-value"
CONTEXT_MAX = 80
_SIDE = 24


@dataclass(frozen=True)
class KnownValue:
    """A value that must not leave: a secret, a placeholder, a canary. `label` is what gets logged."""

    label: str
    value: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.value, bytes):
            raise TypeError(f"known value {self.label!r}: value must be bytes")
        if len(self.value) < MIN_VALUE_LEN:
            raise ValueError(f"known value {self.label!r} is shorter than {MIN_VALUE_LEN} bytes (fix: use a longer value)")


@dataclass(frozen=True)
class Hit:
    rule: str
    label: str | None
    description: str
    part: str
    offset: int
    length: int
    encoding: str
    context: str
    raw_span: tuple[int, int] | None
    action: str | None


# --- internal scan state ------------------------------------------------------------------------


@dataclass
class _Part:
    label: str
    data: bytes  # the part's own bytes (after decompression / transfer decoding)
    raw_base: int | None  # where data[0] sits in the bytes passed to scan(); None if not in place
    is_form: bool = False
    _fields: tuple[list[int], list[str]] | None = None

    @property
    def form(self) -> tuple[list[int], list[str]] | None:
        """Field offsets and names of a form part, computed only when a hit needs naming."""
        if not self.is_form:
            return None
        if self._fields is None:
            self._fields = form_fields(self.data)
        return self._fields


@dataclass
class _View:
    part: _Part
    data: bytes
    chain: tuple[str, ...]
    to_part: Callable[[int, int], tuple[int, int]] | None  # view span -> part span; None: not mappable
    region: tuple[int, int]  # the part span this view was derived from
    depth: int
    form: bool = False
    fresh_blocks: bool = True  # look for base64/hex blocks in this view
    url_made_escapes: bool = False  # a URL view whose decoding produced backslashes (%5C)
    # batched blocks: (start of each block in this view, its span in the parent view, parent's map)
    blocks: tuple[list[int], list[tuple[int, int]], Callable[[int, int], tuple[int, int]] | None] | None = None

    @property
    def binary(self) -> bool:
        """Binary content (images, archives, fonts) gets no escape views: a NUL in the first 8 KiB."""
        return self.data.find(b"\0", 0, 8192) >= 0


@dataclass
class _Found:
    rule: str
    label: str | None
    vi: int  # value index (-1 for rules)
    description: str
    action: str | None
    part: _Part
    view_span: tuple[int, int]
    part_span: tuple[int, int] | None
    region: tuple[int, int]
    encoding: str


@dataclass
class _Acc:
    found: list[_Found] = field(default_factory=list)
    limits: list[tuple[str, str]] = field(default_factory=list)
    seen_blocks: set[int] = field(default_factory=set)


def _encoding(chain: tuple[str, ...], form_enc: str | None) -> str:
    parts = list(chain)
    if form_enc and (form_enc != "raw" or not parts):
        parts.append(form_enc)
    if not parts:
        return "raw"
    out: list[str] = []
    for p in parts:
        if p == "url" and out and out[-1] == "url":
            out[-1] = "url2"
        else:
            out.append(p)
    return "+".join(out)


class _Engine:
    """Compiled rules plus a bounded cache of compiled value databases (shared by with_values)."""

    def __init__(self, rules: RulePack, limits: Limits, cache_size: int = 32):
        self.pack = rules
        self.rules = RuleMatcher(rules)
        self.limits = limits
        self.cache: OrderedDict[tuple, ValueMatcher] = OrderedDict()
        self.cache_size = cache_size

    def values_matcher(self, values: tuple[KnownValue, ...]) -> ValueMatcher:
        key = tuple(v.value for v in values)
        vm = self.cache.get(key)
        if vm is None:
            vm = ValueMatcher([v.value for v in values], self.rules)
            self.cache[key] = vm
            while len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        else:
            self.cache.move_to_end(key)
        return vm


class Detector:
    def __init__(self, rules: RulePack, values: Iterable[KnownValue] = (), *, limits: Limits | None = None,
                 _engine: _Engine | None = None):
        self._engine = _engine or _Engine(rules, limits or Limits())
        self.rules = self._engine.pack
        self.limits = self._engine.limits
        self.values: tuple[KnownValue, ...] = tuple(values)
        for v in self.values:
            if not isinstance(v, KnownValue):
                raise TypeError("values must be KnownValue instances")
        self._vm = self._engine.values_matcher(self.values)
        # escape views decode this far around each escape: a value form or a typical rule match fits
        self._window = max(512, self._vm.max_len)
        self._url_sig = re.compile(self._vm.sig_escapes)

    def __repr__(self) -> str:
        return f"Detector(rules={len(self.rules.rules)}, values={len(self.values)})"

    def with_values(self, values: Iterable[KnownValue]) -> Detector:
        """A detector with the same compiled rules and another set of known values."""
        return Detector(self.rules, values, _engine=self._engine)

    @property
    def overlap(self) -> int:
        """Bytes a stream holds back: the longest literal form or rule match, plus decoder slack."""
        return max(self._vm.max_len * 3, self._engine.rules.max_len) + 256

    @property
    def stats(self) -> dict[str, object]:
        rm = self._engine.rules
        return {
            "rules": len(rm.rules),
            "prefiltered": [rm.rules[i].id for i in rm.prefiltered],
            "python_fallback": [rm.rules[i].id for i in rm.fallback],
            "values": len(self.values),
            "value_patterns": len(self._vm.entries),
            "c_views": rm.native,  # gateway/detect/_unescape.c built (else the slower pure-Python views)
        }

    # --- one-shot scan ----------------------------------------------------------------------

    def scan(self, data: bytes, part: str, *, content_type: str | None = None,
             content_encoding: str | None = None) -> list[Hit]:
        """Every hit in `data`. Raises DecodeLimit (with the hits found so far) if a bound was hit."""
        acc = _Acc()
        self._scan_part(data, part, content_type, content_encoding, 0, 0, (), acc)
        hits = self._finish(acc)
        if acc.limits:
            where, reason = acc.limits[0]
            raise DecodeLimit(where, reason, hits)
        return hits

    def redact(self, data: bytes, hits: list[Hit]) -> bytes:
        """Replace each hit's raw_span with b"[REDACTED:<rule>]". Hits without raw_span are skipped
        (they are inside compressed or block-encoded content: block such bodies instead)."""
        spans = sorted((h.raw_span[0], h.raw_span[1], h.rule) for h in hits if h.raw_span)
        out: list[bytes] = []
        pos = 0
        i = 0
        while i < len(spans):
            s, e, rule = spans[i]
            i += 1
            while i < len(spans) and spans[i][0] < e:
                e = max(e, spans[i][1])
                i += 1
            if s < pos:
                s = pos
            out.append(data[pos:s])
            out.append(f"[REDACTED:{rule}]".encode())
            pos = max(pos, e)
        out.append(data[pos:])
        return b"".join(out)

    def stream(self, part: str, *, content_type: str | None = None, content_encoding: str | None = None,
               redact: Callable[[Hit], bool] | bool | None = None) -> StreamScan:
        return StreamScan(self, part, content_type, content_encoding, redact)

    # --- containers -------------------------------------------------------------------------

    def _scan_part(self, data: bytes, label: str, ct: str | None, ce: str | None, raw_base: int | None,
                   depth: int, chain: tuple[str, ...], acc: _Acc) -> None:
        lim = self.limits
        if depth > lim.max_depth:
            acc.limits.append((label, f"nesting deeper than {lim.max_depth}"))
            return
        codings = parse_codings(ce)
        if codings is None:
            codings = []  # unknown coding: scan the bytes as they are
        if not codings:
            sniffed = sniff(data)
            if sniffed and depth >= lim.max_depth:
                acc.limits.append((label, f"nesting deeper than {lim.max_depth}"))
            elif sniffed:
                codings = [sniffed]
        if codings:
            try:
                out, bound = inflate(data, codings, lim)
            except ValueError:
                out, bound = None, None
            if out is not None:
                sub = label + "".join(f">{c}" for c in codings)
                if bound:
                    acc.limits.append((sub, bound))
                self._scan_part(out, sub, ct, None, None, depth + 1, chain, acc)
                return
        if ct:
            parts = multipart(data, ct, lim.max_parts)
            if parts is not None:
                for p in parts:
                    body = data[p.start : p.end]
                    sub = f"{label}>multipart[{p.name}]"
                    base = raw_base + p.start if raw_base is not None else None
                    sub_chain = chain
                    if p.transfer_encoding == "base64":
                        body = base64_body(body)
                        base, sub_chain = None, chain + ("base64",)
                    elif p.transfer_encoding == "quoted-printable":
                        body, _m = qp_view(body)
                        base, sub_chain = None, chain + ("qp",)
                    self._scan_part(body, sub, p.content_type, p.content_encoding, base, depth + 1, sub_chain, acc)
                if len(parts) >= lim.max_parts:
                    acc.limits.append((label, f"more than {lim.max_parts} multipart parts"))
                return
        is_form = (ct or "").split(";", 1)[0].strip().lower() == "application/x-www-form-urlencoded" or label == "query"
        part = _Part(label, data, raw_base, is_form)
        view = _View(part, data, chain, _identity, (0, len(data)), depth, is_form)
        self._scan_view(view, acc)

    # --- views ------------------------------------------------------------------------------

    def _scan_view(self, view: _View, acc: _Acc) -> None:
        data = view.data
        part = view.part
        halves = False
        if self._vm.rules is not None:
            values, rule_hits, shapes = self._vm.scan_all(data)
        else:
            values = self._vm.scan(data)
            rule_hits, shapes = self._engine.rules.scan(data)
        for vi, enc, s, e in values:
            if enc == HALF:
                halves = True
                continue
            self._add(acc, view, KNOWN, self.values[vi].label, vi, "known value", None, (s, e), _encoding(view.chain, enc))
        if halves:
            shapes.setdefault("b64", [])
        lowered: bytes | None = None
        global_allow = self.rules.allowlist
        rules = self._engine.rules.rules
        confirm = self._engine.rules.confirm
        n = len(data)
        for ri in sorted(rule_hits):
            rule = rules[ri]
            if rule.keywords and rule.hs is None:
                if lowered is None:
                    lowered = data.lower()
                if not any(k in lowered for k in rule._kw):  # type: ignore[attr-defined]
                    continue
            for m in _confirm(rule.compiled, data, rule_hits[ri], rule.max_len, n, *confirm[ri]):
                s, e = rule.secret_span(m)
                if e <= s or not rule.accepts(data[s:e], m.group(0), global_allow):
                    continue
                self._add(acc, view, rule.id, None, -1, rule.description, rule.action, (s, e), _encoding(view.chain, None))
        depth = view.depth + 1
        if depth > self.limits.max_depth:
            return
        win = self._window
        rm = self._engine.rules
        chain = view.chain
        binary = view.binary
        # Escape views: decoded only where needed (windows around sparse escapes), and they look for
        # base64/hex blocks again only if their escapes can have split a block (%2B %2F %3D, \/).
        if not binary and "pct" in shapes and chain.count("url") < 3:
            # blocks are decoded in the URL view only where its escapes can split one (%2B %2F %3D,
            # line breaks): without those, halves, hex forms and keywords' block forms do not matter
            blocks = "pct-b64" in shapes
            if (blocks and (halves or "hex" in shapes)) or self._engine.rules.has_keyword(
                    data, blocks, shapes if self._vm.sig_shape else None):
                # the "odd" hints are only in the shapes when the Python views run (else None: unused)
                dec, m = url_view(data, form=view.form, window=win, odd=None if rm.native else "pct-odd" in shapes)
            else:
                # No rule can match in the URL view (no keyword, plain or percent-encoded) and no
                # base64/hex block is to be decoded: only the known values' literal forms can match,
                # and only around escapes that decode to a byte of one of them. Decode just there.
                # (the main pass said whether there is any such escape at all: shape "pct-sig")
                if self._vm.sig_shape and "pct-sig" not in shapes:
                    dec = b""
                else:
                    dec, m = sig_windows(data, self._url_sig, win, view.form)
            if dec:
                self._scan_view(_View(part, dec, view.chain + ("url",), _compose(view.to_part, m.span), view.region, depth,
                                      view.form, fresh_blocks=blocks, url_made_escapes="pct-bs" in shapes), acc)
        # a JSON view of a URL view only when the URL decoding made new escapes (%5C): otherwise the
        # URL view of the JSON view (below) is the same bytes
        if not binary and "json" in shapes and chain.count("json-u") < 2 and (
                not chain or chain[-1] != "url" or view.url_made_escapes):
            dec, m = json_view(data, window=win, odd=None if rm.native else "json-odd" in shapes)
            self._scan_view(_View(part, dec, view.chain + ("json-u",), _compose(view.to_part, m.span), view.region, depth,
                                  fresh_blocks=b"\\/" in data), acc)
        if not binary and "qp" in shapes and chain.count("qp") < 2:
            dec, m = qp_view(data, window=win)
            if dec != data:
                self._scan_view(_View(part, dec, view.chain + ("qp",), _compose(view.to_part, m.span), view.region, depth), acc)
        blocks: list[tuple[str, list[tuple[int, int, bytes]]]] = []
        if "b64" in shapes and view.fresh_blocks:
            blocks.append(("base64", base64_blocks(data, self.limits.max_blocks)))
        if "hex" in shapes and view.fresh_blocks:
            blocks.append(("hex", hex_blocks(data, self.limits.max_blocks)))
        # decoded blocks are batched: one view per (encoding, text|binary) instead of one per block
        for enc, found in blocks:
            batches: dict[bool, tuple[list[bytes], list[int], list[tuple[int, int]]]] = {}
            for s, e, dec in found:
                key = hash(dec)
                if key in acc.seen_blocks:
                    continue
                acc.seen_blocks.add(key)
                if sniff(dec):
                    region = view.to_part(s, e) if view.to_part else view.region
                    self._scan_block(dec, part, view.chain + (enc,), region, depth, acc)
                    continue
                pieces, starts, spans = batches.setdefault(dec.isascii(), ([], [], []))
                starts.append(starts[-1] + len(pieces[-1]) + 2 if pieces else 0)
                pieces.append(dec)
                spans.append((s, e))
            for text, (pieces, starts, spans) in batches.items():
                # binary blocks (images, random bytes) get no further decoded views
                self._scan_view(
                    _View(part, b"\n\n".join(pieces), view.chain + (enc,), None, view.region,
                          depth if text else self.limits.max_depth, blocks=(starts, spans, view.to_part)),
                    acc,
                )

    def _scan_block(self, data: bytes, part: _Part, chain: tuple[str, ...], region: tuple[int, int], depth: int,
                    acc: _Acc) -> None:
        codings = [] if depth >= self.limits.max_depth else ([c] if (c := sniff(data)) else [])
        if codings:
            try:
                data, bound = inflate(data, codings, self.limits)
            except ValueError:
                bound = None
            else:
                chain = chain + tuple(codings)
                if bound:
                    acc.limits.append((part.label, bound))
        self._scan_view(_View(part, data, chain, None, region, depth if data.isascii() else self.limits.max_depth), acc)

    def _add(self, acc: _Acc, view: _View, rule: str, label: str | None, vi: int, desc: str, action: str | None,
             span: tuple[int, int], encoding: str) -> None:
        pspan = view.to_part(*span) if view.to_part else None
        region = view.region
        if view.blocks is not None:
            starts, spans, parent_map = view.blocks
            s, e = spans[max(0, bisect_right(starts, span[0]) - 1)]
            region = parent_map(s, e) if parent_map else view.region
        acc.found.append(_Found(rule, label, vi, desc, action, view.part, span, pspan, region, encoding))

    # --- results ----------------------------------------------------------------------------

    def _finish(self, acc: _Acc, offset_base: int = 0) -> list[Hit]:
        kept: list[_Found] = []
        mapped: dict[tuple, list[tuple[int, int]]] = {}
        for f in acc.found:
            if f.part_span is None:
                continue
            key = (id(f.part), f.rule, f.vi)
            spans = mapped.setdefault(key, [])
            if any(s < f.part_span[1] and f.part_span[0] < e for s, e in spans):
                continue
            spans.append(f.part_span)
            kept.append(f)
        # matches in block views (not mappable): keep those not already explained by mapped ones
        unmapped: dict[tuple, list[_Found]] = {}
        for f in acc.found:
            if f.part_span is None:
                unmapped.setdefault((id(f.part), f.rule, f.vi, f.region), []).append(f)
        for (pid, rule, vi, region), fs in unmapped.items():
            inside = sum(1 for s, e in mapped.get((pid, rule, vi), ()) if region[0] <= s and e <= region[1])
            kept.extend(fs[inside:])
        # redaction spans per part, for contexts
        red: dict[int, list[tuple[int, int, str]]] = {}
        for f in kept:
            red.setdefault(id(f.part), []).append((*(f.part_span or f.region), f.rule))
        hits = []
        for f in kept:
            span = f.part_span or f.region
            raw = None
            if f.part_span is not None and f.part.raw_base is not None:
                raw = (f.part.raw_base + f.part_span[0] + offset_base, f.part.raw_base + f.part_span[1] + offset_base)
            label = f.part.label
            form = f.part.form
            if form is not None:
                label = f"{label}>form[{field_at(form, span[0])}]"
            hits.append(
                Hit(
                    rule=f.rule,
                    label=f.label,
                    description=f.description,
                    part=label,
                    offset=span[0] + offset_base,
                    length=span[1] - span[0],
                    encoding=f.encoding,
                    context=context(f.part.data, span, red[id(f.part)]),
                    raw_span=raw,
                    action=f.action,
                )
            )
        hits.sort(key=lambda h: (h.part, h.offset, h.rule))
        return hits


def _window_matches(rx: re.Pattern[bytes], data: bytes, lo: int, hi: int):
    """`rx`'s matches in data[lo:hi]; one that reaches `hi` (before the data's end) may continue past
    the window, so it is re-run unbounded from its start (and dropped if it no longer matches)."""
    for m in rx.finditer(data, lo, hi):
        if m.end() == hi and hi < len(data):
            m = rx.match(data, m.start())
            if m is None:
                continue
        yield m


def _confirm(rx: re.Pattern[bytes], data: bytes, hits: list[tuple[int, int]] | None, max_len: int, n: int,
             exact: bool = False, som: bool = False, min_width: int = 0):
    """Matches of `rx` near hyperscan's (start, end) offsets of the rule's prefilter (all data if None),
    the matches a `finditer` over the whole data yields there.

    `exact`: hyperscan ran the rule's own expression (not a prefilter approximation), so it reported
    the end of every match: a match starts at most max_len before one of those ends, and the window
    need not reach further past it (measured: halves the confirm cost of keyword rules whose `(?i)`
    alternations Python `re` tries at every position).

    `som`: the starts are hyperscan's leftmost start offsets. A match of `rx` at p has a prefilter
    match starting in [p, p + 8] (a stripped token-start group) and ending at some reported end
    e >= p + min_width, so `re` searches from 8 bytes before that start and stops once a match ends
    past e - min_width (any later match has its own report): one match attempt per report instead of
    one per byte of a max_len window (the generic `password=` rule: 70 us -> a few per candidate)."""
    if hits is None:
        yield from rx.finditer(data)
        return
    after = 8 if exact else max_len + 8
    if som:
        hits.sort()
        last = 0
        for s, e in hits:
            if e - min_width < last:  # every match this report can start is inside one already yielded
                continue
            lo, hi = max(0, s - 8, last), min(n, e + after)
            for m in _window_matches(rx, data, lo, hi):
                last = m.end()
                yield m
                if last > e - min_width:
                    break
        return
    ends = sorted(e for _s, e in hits)
    windows: list[list[int]] = []
    for end in ends:
        lo, hi = max(0, end - max_len - 8), min(n, end + after)  # slack: delimiters around a token
        if windows and lo <= windows[-1][1]:
            windows[-1][1] = hi
        else:
            windows.append([lo, hi])
    last = -1
    for lo, hi in windows:
        for m in _window_matches(rx, data, lo, hi):
            if m.start() < last:
                continue
            last = m.end()
            yield m


def _identity(s: int, e: int) -> tuple[int, int]:
    return s, e


def _compose(outer: Callable[[int, int], tuple[int, int]] | None, inner: Callable[[int, int], tuple[int, int]]):
    if outer is None:
        return None
    if outer is _identity:
        return inner
    return lambda s, e: outer(*inner(s, e))


_UNPRINTABLE = re.compile(rb"[^\x20-\x7e]")


def context(data: bytes, span: tuple[int, int], redactions: list[tuple[int, int, str]]) -> str:
    """<= 80 printable chars around span; every known match inside the window is redacted."""
    lo = max(0, span[0] - _SIDE)
    hi = min(len(data), span[1] + _SIDE)
    cuts = sorted((max(s, lo), min(e, hi), r) for s, e, r in redactions if s < hi and e > lo)
    pieces: list[str] = []
    pos = lo
    for s, e, r in cuts:
        if s > pos:
            pieces.append(_UNPRINTABLE.sub(b".", data[pos:s]).decode("ascii"))
        if e > pos:
            pieces.append(f"[REDACTED:{r}]")
            pos = e
    if pos < hi:
        pieces.append(_UNPRINTABLE.sub(b".", data[pos:hi]).decode("ascii"))
    text = "".join(pieces)
    if len(text) > CONTEXT_MAX:
        # trim from both ends, keeping the redaction marker of this hit intact
        marker = text.find("[REDACTED:")
        start = max(0, min(marker - 10, len(text) - CONTEXT_MAX))
        text = text[start : start + CONTEXT_MAX]
    return text


# --- streaming ----------------------------------------------------------------------------------


class StreamScan:
    """Scans a body chunk by chunk with bounded memory.

    `feed(chunk)` returns the bytes that are safe to forward now and the hits found in this call.
    A tail of `Detector.overlap` bytes is held back so a match across a chunk border is found (and
    redacted or blocked) before any of it leaves. With `redact` (True or a predicate on Hit), hits
    with a raw span are replaced by `[REDACTED:<rule>]` in the returned bytes.

    Compressed streams (Content-Encoding, or sniffed magic) are decompressed incrementally; the
    compressed bytes are held back until the decoded text they produce is past the overlap, and
    cannot be redacted in place (raw_span is None): block instead.
    """

    def __init__(self, det: Detector, part: str, ct: str | None, ce: str | None,
                 redact: Callable[[Hit], bool] | bool | None = None):
        self.det = det
        self.part = part
        # multipart boundaries do not survive windowing: windows are scanned by shape instead
        self.ct = None if (ct or "").lower().lstrip().startswith("multipart/") else ct
        self.overlap = det.overlap
        self.window = max(1 << 20, 4 * self.overlap)
        self.redact_pred: Callable[[Hit], bool] | None = (
            (lambda h: True) if redact is True else (redact if callable(redact) else None)
        )
        codings = parse_codings(ce)
        self.codings: list[str] | None = codings or None  # None: identity (or sniff on first chunk)
        self._sniff = not codings
        self._inflaters: list[Inflater] = []
        self._sinks: list[BoundedSink] = []
        # identity state
        self.buf = bytearray()  # raw bytes not yet forwarded
        self.base = 0  # stream offset of buf[0]
        self.scanned_to = 0  # stream offset up to which matches are complete and reported
        self.pending: list[tuple[int, int, str]] = []  # redactions not yet emitted (stream offsets)
        # decoded state (compressed streams)
        self.dec = bytearray()
        self.dec_base = 0
        self.dec_total = 0
        self.held: list[tuple[bytes, int]] = []  # (compressed chunk, decoded total after it)
        self.seen: set[tuple] = set()
        self.hits: list[Hit] = []
        self._fresh: list[Hit] = []
        self.total_in = 0
        self.finished = False

    # identity -----------------------------------------------------------------------------

    def _scan_window(self, data: bytes, base: int, part: str, in_place: bool) -> list[Hit]:
        try:
            hits = self.det.scan(data, part, content_type=self.ct)
        except DecodeLimit as e:
            raise DecodeLimit(e.part, e.reason, [self._shift(h, base, in_place) for h in e.hits]) from None
        return [self._shift(h, base, in_place) for h in hits]

    @staticmethod
    def _shift(h: Hit, base: int, in_place: bool) -> Hit:
        raw = (h.raw_span[0] + base, h.raw_span[1] + base) if (h.raw_span and in_place) else None
        return replace(h, offset=h.offset + base, raw_span=raw)

    def _new(self, hits: list[Hit], prev_end: int) -> list[Hit]:
        out = []
        for h in hits:
            key = (h.rule, h.label, h.encoding, h.offset)
            if key in self.seen:
                continue
            if h.raw_span is not None and h.raw_span[1] <= prev_end:
                continue  # complete in the previous window: already reported
            self.seen.add(key)
            out.append(h)
            if len(self.seen) > 100_000:  # bounded; offsets only grow, old keys cannot recur
                self.seen.clear()
        return out

    def _identity_feed(self, chunk: bytes, final: bool) -> tuple[bytes, list[Hit]]:
        self.buf += chunk
        data = bytes(self.buf)
        hits = self._new(self._scan_window(data, self.base, self.part, True), self.scanned_to)
        self.scanned_to = self.base + len(data)
        if self.redact_pred is not None:
            self.pending += [(h.raw_span[0], h.raw_span[1], h.rule) for h in hits if h.raw_span and self.redact_pred(h)]
        cut = self.base + len(data) if final else max(self.base, self.base + len(data) - self.overlap)
        for s, e, _r in self.pending:
            if s < cut < e:
                cut = s
        out_len = cut - self.base
        out = self._emit(data[:out_len], self.base, cut)
        del self.buf[:out_len]
        self.base = cut
        self.hits += hits
        return out, hits

    def _emit(self, data: bytes, start: int, end: int) -> bytes:
        if not self.pending:
            return data
        now = [p for p in self.pending if p[0] < end]
        self.pending = [p for p in self.pending if p[0] >= end]
        fake = [Hit(r, None, "", "", 0, 0, "", "", (s - start, e - start), None) for s, e, r in now]
        return self.det.redact(data, fake)

    # compressed ---------------------------------------------------------------------------

    def _decoded(self, piece: bytes) -> None:
        self.dec += piece
        self.dec_total += len(piece)
        if len(self.dec) >= self.window:
            self._scan_decoded(False)

    def _scan_decoded(self, final: bool) -> None:
        data = bytes(self.dec)
        label = self.part + "".join(f">{c}" for c in self.codings or [])
        hits = self._new(self._scan_window(data, self.dec_base, label, False), -1)
        self._fresh += hits
        keep = 0 if final else min(len(data), self.overlap)
        drop = len(data) - keep
        del self.dec[:drop]
        self.dec_base += drop

    def _compressed_feed(self, chunk: bytes, final: bool) -> tuple[bytes, list[Hit]]:
        self._fresh = []
        if chunk:
            self._sinks[0].inp += len(chunk)
            try:
                self._inflaters[0].feed(chunk, self._sinks[0])
            except _Bound as b:
                raise DecodeLimit(self.part, b.reason, self.hits + self._fresh) from None
            except Exception as e:  # corrupt data: nothing after this point can be inspected
                raise DecodeLimit(self.part, f"invalid {self.codings[0]} data ({e.__class__.__name__})",
                                  self.hits + self._fresh) from None
            self.held.append((chunk, self.dec_total))
        if final:
            self._scan_decoded(True)
        elif self.dec:
            # scan what has been decoded so far so held compressed bytes can be released
            self._scan_decoded(False)
        safe = self.dec_total if final else self.dec_total - self.overlap
        out = []
        while self.held and (final or self.held[0][1] <= safe):
            out.append(self.held.pop(0)[0])
        self.hits += self._fresh
        return b"".join(out), self._fresh

    def _setup_codings(self, first: bytes) -> None:
        if self._sniff:
            s = sniff(first)
            self.codings = [s] if s else None
            self._sniff = False
        if self.codings:
            infl = [Inflater(c) for c in self.codings]
            sinks = [BoundedSink(self.det.limits, self.det.limits.stream_max_output, None) for _ in infl]
            for i in range(len(infl)):
                sinks[i].forward = _chain(infl[i + 1], sinks[i + 1]) if i + 1 < len(infl) else self._decoded
            self._inflaters = infl
            self._sinks = sinks

    # public -------------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> tuple[bytes, list[Hit]]:
        if self.finished:
            raise ValueError("stream already finished")
        if self._sniff or (self.codings and not self._inflaters):
            if not chunk:
                return b"", []
            self._setup_codings(chunk)
        self.total_in += len(chunk)
        if self.codings:
            return self._compressed_feed(chunk, False)
        if len(chunk) > self.window:  # keep every scanned window bounded
            outs, hits = [], []
            for i in range(0, len(chunk), self.window):
                o, h = self._identity_feed(chunk[i : i + self.window], False)
                outs.append(o)
                hits += h
            return b"".join(outs), hits
        return self._identity_feed(chunk, False)

    def finish(self) -> tuple[bytes, list[Hit]]:
        if self.finished:
            return b"", []
        self.finished = True
        if self.codings and self._inflaters:
            return self._compressed_feed(b"", True)
        return self._identity_feed(b"", True)


def _chain(inf: Inflater, sink: BoundedSink) -> Callable[[bytes], None]:
    def push(piece: bytes) -> None:
        sink.inp += len(piece)
        inf.feed(piece, sink)

    return push
