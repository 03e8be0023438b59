"""Hyperscan databases: one literal database for the forms of the known values, one for the rules.

The rules database also carries *shape* expressions (JSON \\u escapes, QP soft breaks, rule keywords,
base64 and hex blocks; percent escapes too when gateway/detect/_unescape.c is not built, else one C
pass over the '%' bytes finds those) so a single pass says which decoded views a part needs.
Hyperscan reports the end offsets of each rule's prefilter expression; Python `re` then confirms
and extracts matches only in a window of `Rule.max_len` bytes around each of those offsets. A rule hyperscan refuses is retried
with HS_FLAG_PREFILTER (an over-approximation, confirmed by `re`); one it still refuses runs in
Python `re` on every part (`RuleMatcher.fallback`, reported by `Detector.stats`).
"""

from __future__ import annotations

from collections.abc import Sequence

import hyperscan as hs

from . import decode as _decode
from .forms import Form, forms
from .rules import Rule, RulePack

# shape -> (expression, unused). Measured (bench/README.md): long character-class runs (a base64
# run, a line of base64) slow the whole database 2-3x, so base64/hex blocks are triggered by literal
# forms instead (rule keywords, halves of known values' base64 forms).
SHAPES: dict[str, tuple[bytes, int]] = {
    "pct": (rb"%[0-9A-Fa-f]{2}", 0),
    "qp": (rb"[^\s=]=\r?\n", 0),
    "json": (rb"\\u[0-9A-Fa-f]{4}|\\/", 1),
    # "b64" is raised by rule keywords' base64 forms (below) and by halves of known values' base64
    # forms (forms.HALF): a MIME line break inside a value leaves one half whole
    "b64": (b"", 1),
    # hints for the escape views, from the same pass instead of a Python regex over the whole view:
    # escapes that can split a base64 run (+ / = CR LF), escapes that decode to a backslash, a '%'
    # that starts no escape, a backslash that starts no JSON escape ('$' also matches before a final
    # newline: an over-approximation, which only sends a view down the slower exact path)
    "pct-b64": (rb"%(?:2[bBfF]|3[dD]|0[aAdD])", 0),
    "pct-bs": (rb"%(?:25)*5[cC]", 0),
    "pct-odd": (rb"%(?:[^0-9A-Fa-f]|[0-9A-Fa-f](?:[^0-9A-Fa-f]|$)|$)", 0),
    "json-odd": (rb'\\(?:[^"\\/bfnrtu]|u[0-9A-Fa-f]{0,3}(?:[^0-9A-Fa-f]|$)|$)', 0),
}
# Base64/hex blocks are decoded for the rules only when a rule keyword's base64 (or hex) form occurs
# ("-----BEGIN" -> LS0tLS1CRUdJT, "AKIA" -> QUtJQ...): long runs alone (hashes, ids, paths) cost
# nothing. A rule pack with a rule without keywords decodes every block.


def keyword_forms(keywords: set[str]) -> tuple[list[bytes], list[bytes]]:
    """Stable base64 middles and hex forms of each keyword as written and in lower, upper and capitalised case."""
    import base64 as _b64

    from .forms import base64_forms

    b64: set[bytes] = set()
    hexes: set[bytes] = set()
    for kw in keywords:
        for v in {kw, kw.lower(), kw.upper(), kw.capitalize()}:
            raw = v.encode()
            for f in base64_forms(raw):
                if len(f) >= 4:
                    b64.add(f)
                    b64.add(f.translate(bytes.maketrans(b"+/", b"-_")))
            hexes.add(raw.hex().encode())
    del _b64
    return sorted(b64), sorted(hexes)


# bytes any escape view may need beyond the values' own: escape and block alphabets, line breaks
_ALWAYS_SIG = set(b"%\\=\r\n+/_-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def significant_bytes(values: Sequence[bytes], extra: bytes = b"") -> set[int]:
    """The bytes whose percent escapes matter in a URL view: those of some literal form of some value,
    the escape and block alphabets, and `extra` (the rule keywords' bytes) in any case."""
    sig = set(_ALWAYS_SIG) | set(extra) | set(extra.lower()) | set(extra.upper())
    for value in values:
        for f in forms(value):
            sig.update(f.pattern)
            if f.caseless:
                sig.update(f.pattern.lower())
                sig.update(f.pattern.upper())
    return sig


def significant_escapes(sig: set[int]) -> bytes:
    """A regex (Python and hyperscan) for the percent escapes of the bytes `sig` (significant_bytes()):
    only those can be inside a value match (or an escaped keyword) in a URL view."""
    alts = []
    for hi in range(16):
        los = [lo for lo in range(16) if (hi << 4 | lo) in sig]
        if not los:
            continue
        cls = "".join(sorted({c for lo in los for c in {f"{lo:X}", f"{lo:x}"}}))
        alts.append(f"[{hi:X}{hi:x}][{cls}]" if hi > 9 else f"{hi:X}[{cls}]")
    return ("%(?:" + "|".join(alts) + ")").encode()


# With the C module (decode._native), the percent shapes come from one C pass over the '%' of a view (memchr), not from
# expressions in the hyperscan database: a '%' is in most text, and there they cost the pass about 25%
# (measured: 1094 -> 1393 MB/s without them). The odd shapes are hints for the Python views only.
C_SHAPES = frozenset({"pct", "pct-b64", "pct-bs", "pct-odd", "json-odd"})
_SHAPE_BITS = ((1, "pct"), (2, "pct-b64"), (4, "pct-bs"), (8, "pct-sig"))
_NO_SIG = bytes(256)


def _pct_shapes(c, data: bytes, shapes: dict[str, list], sig: bytes) -> None:
    bits = c.pct_shapes(data, sig)
    if bits:
        for bit, name in _SHAPE_BITS:
            if bits & bit:
                shapes[name] = []


VALUE_BASE = 1 << 24  # ids of value patterns in a combined database
COMBINE_MIN = 64  # value sets at least this large share one database with the rules


def _lit(pattern: bytes) -> bytes:
    """A literal as a hyperscan regex (every non-alphanumeric byte as \\xHH: no NUL reaches C)."""
    return b"".join(bytes([c]) if (48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122) else b"\\x%02x" % c for c in pattern)


class ValueMatcher:
    """Finds every literal form of every known value in one hyperscan pass.

    With `rules` and at least COMBINE_MIN values, the rules and shapes are compiled into the same
    database, so a view costs one pass instead of two (measured 1.7-2x; compiled once per value set).
    """

    def __init__(self, values: Sequence[bytes], rules: RuleMatcher | None = None):
        self.entries: list[list[tuple[int, str, int]]] = []  # pattern id -> [(value index, encoding, length)]
        self.max_len = 0
        index: dict[tuple[bytes, bool], int] = {}
        exprs: list[bytes] = []
        flags: list[int] = []
        for vi, value in enumerate(values):
            for f in forms(value):
                key = (f.pattern.lower() if f.caseless else f.pattern, f.caseless)
                pid = index.get(key)
                if pid is None:
                    pid = index[key] = len(exprs)
                    exprs.append(f.pattern)
                    flags.append(hs.HS_FLAG_CASELESS if f.caseless else 0)
                    self.entries.append([])
                self.entries[pid].append((vi, f.encoding, len(f.pattern)))
                self.max_len = max(self.max_len, len(f.pattern))
        self.db: hs.Database | None = None
        self.rules: RuleMatcher | None = None
        # escapes that can matter in a URL view (shape "pct-sig", Detector's value-byte windows)
        sig_bytes = significant_bytes(values, rules.keyword_bytes if rules is not None else b"")
        self.sig_escapes = significant_escapes(sig_bytes)
        self.sig_table = bytes(1 if b in sig_bytes else 0 for b in range(256))
        self.sig_shape = False  # the pass reports shape "pct-sig" (escapes of the values' bytes)
        if rules is not None and len(values) >= COMBINE_MIN:
            self.rules = rules
            r_exprs, r_ids, r_flags = rules.expressions
            # shape "pct-sig": in the C shapes pass (rules.native), or one more expression here
            sig = [] if rules.native else [self.sig_escapes]
            self.db = hs.Database(mode=hs.HS_MODE_BLOCK)
            self.db.compile(
                expressions=[_lit(e) for e in exprs] + r_exprs + sig,
                ids=[VALUE_BASE + i for i in range(len(exprs))] + r_ids + [rules.sig_id] * len(sig),
                elements=len(exprs) + len(r_exprs) + len(sig),
                flags=flags + r_flags + [hs.HS_FLAG_SINGLEMATCH] * len(sig),
            )
            self.sig_shape = True
        elif exprs:
            self.db = hs.Database(mode=hs.HS_MODE_BLOCK)
            self.db.compile(expressions=exprs, ids=list(range(len(exprs))), elements=len(exprs), flags=flags, literal=True)

    def _values(self, found: list[tuple[int, int]]) -> list[tuple[int, str, int, int]]:
        out = []
        for pid, end in found:
            for vi, enc, length in self.entries[pid]:
                out.append((vi, enc, end - length, end))
        return out

    def scan(self, data: bytes) -> list[tuple[int, str, int, int]]:
        """[(value index, encoding, start, end)] for every occurrence."""
        if self.db is None or not data or self.rules is not None:
            return self.scan_all(data)[0] if self.rules is not None and data else []
        found: list[tuple[int, int]] = []
        self.db.scan(data, match_event_handler=_collect, context=found)
        return self._values(found)

    def scan_all(self, data: bytes) -> tuple[list[tuple[int, str, int, int]], dict[int, list[int] | None], dict[str, list[int]]]:
        """Values, rule end offsets and shapes in one pass (combined database only)."""
        assert self.rules is not None and self.db is not None
        found: list[tuple[int, int]] = []
        hit: dict[int, list[int]] = {}
        if data:
            self.db.scan(data, match_event_handler=_collect_all, context=(found, hit))
        rules, shapes = self.rules.classify(hit)
        if self.rules.native and data:
            _pct_shapes(self.rules.c, data, shapes, self.sig_table)
        return self._values(found), rules, shapes


def _collect(pid: int, _from: int, to: int, _flags: int, ctx: list) -> None:
    ctx.append((pid, to))


def _collect_all(pid: int, frm: int, to: int, _flags: int, ctx: tuple) -> None:
    if pid >= VALUE_BASE:
        ctx[0].append((pid - VALUE_BASE, to))
        return
    ends = ctx[1].get(pid)
    if ends is None:
        ctx[1][pid] = [(frm, to)]
    else:
        ends.append((frm, to))


def _pct_lit(pattern: bytes) -> bytes:
    """A literal as a hyperscan regex in which every byte may also be percent-encoded."""
    out = []
    for c in pattern:
        hx = b"%02x" % c
        esc = b"%" + b"".join(b"[%s%s]" % (h.lower(), h.upper()) if h.isalpha() else h for h in (hx[:1], hx[1:]))
        alts = [_lit(bytes([c])), esc]
        if c == 0x20:
            alts.append(b"\\+")
        out.append(b"(?:" + b"|".join(alts) + b")")
    return b"".join(out)


def _first(_pid: int, _from: int, _to: int, _flags: int, _ctx: object) -> bool:
    return True  # stop the scan


def _collect_rule(pid: int, frm: int, to: int, _flags: int, ctx: dict) -> None:
    ends = ctx.get(pid)
    if ends is None:
        ctx[pid] = [(frm, to)]
    else:
        ends.append((frm, to))


class RuleMatcher:
    """The rules, the shapes and the rule keywords' encoded forms in one hyperscan database."""

    def __init__(self, pack: RulePack):
        self.rules: tuple[Rule, ...] = pack.rules
        # the C module as it is now, for the life of this matcher: percent shapes from its pass, not
        # from this database (decode's views check the module again on each call)
        self.c = _decode._native
        self.native = self.c is not None
        self.shape_names = list(SHAPES) + ["hex", "kw"]
        self.shape_base = len(self.rules)
        # id of the value-dependent "pct-sig" shape, compiled into combined value databases only
        self.sig_id = self.shape_base + len(self.shape_names)
        self._names = self.shape_names + ["pct-sig"]
        exprs: list[bytes] = []
        ids: list[int] = []
        flags: list[int] = []
        self.fallback: list[int] = []
        self.prefiltered: list[int] = []
        self.som: set[int] = set()
        for i, r in enumerate(self.rules):
            expr = r.prefilter.encode()
            f = _try_flags(expr)
            if f is None:
                self.fallback.append(i)
                continue
            if f & hs.HS_FLAG_PREFILTER:
                self.prefiltered.append(i)
            elif _compiles(expr, hs.HS_FLAG_SOM_LEFTMOST):
                # start offsets too: `re` then confirms from where the match starts instead of
                # trying every position of a window before its end (see scanner._confirm)
                f |= hs.HS_FLAG_SOM_LEFTMOST
                self.som.add(i)
            exprs.append(expr)
            ids.append(i)
            flags.append(f & ~hs.HS_FLAG_SINGLEMATCH)
        b64_id = self.shape_base + self.shape_names.index("b64")
        hex_id = self.shape_base + self.shape_names.index("hex")
        for k, name in enumerate(SHAPES):
            expr = SHAPES[name][0]
            if expr and not (self.native and name in C_SHAPES):
                exprs.append(expr)
                ids.append(self.shape_base + k)
                flags.append(hs.HS_FLAG_SINGLEMATCH)
        self.blocks_always = any(not r.keywords for r in self.rules)
        keywords = {k for r in self.rules for k in r.keywords}
        # bytes of the keywords but the space, whose escapes make has_keyword() look beyond shape "kw"
        self.keyword_bytes = bytes(sorted({c for k in keywords for c in k.encode()} - {0x20}))
        b64: list[bytes] = []
        hexes: list[bytes] = []
        if self.blocks_always:
            extra = [(rb"[A-Za-z0-9+/_-]{40}", b64_id, 0), (rb"[0-9A-Fa-f]{80}", hex_id, 0)]
        else:
            b64, hexes = keyword_forms(keywords)
            extra = [(_lit(f), b64_id, 0) for f in b64] + [(_lit(f), hex_id, hs.HS_FLAG_CASELESS) for f in hexes]
            # shape "kw": a keyword as written (any case; a space also as '+' or %20), so that without
            # an escape of a keyword byte (shape "pct-sig") has_keyword() needs no pass of its own
            kw_id = self.shape_base + self.shape_names.index("kw")
            extra += [(_lit(v), kw_id, hs.HS_FLAG_CASELESS) for k in sorted(keywords) for v in _space_forms(k.encode())]
        for e, i, f in extra:
            exprs.append(e)
            ids.append(i)
            flags.append(hs.HS_FLAG_SINGLEMATCH | f)
        self.expressions = (exprs, ids, flags)
        # Keyword gate for escape views: every rule needs one of its keywords (plain, or base64/hex for
        # the block views) in a view to match there. A small database says whether a decoded view has
        # any; None when some rule has no keywords (then every view is scanned whole).
        self.kw_db: hs.Database | None = None
        self.kw_none = not self.rules  # no rules: no keyword to look for
        if not self.blocks_always and self.rules:
            # each byte also as its percent escape ('+' for a space in forms): the gate runs on the
            # undecoded view, so a URL view is decoded whole only when a keyword can be in it
            kw = sorted({k.encode() for r in self.rules for k in r.keywords})
            kws = [(k, True) for k in kw] + [(f, False) for f in b64] + [(f, True) for f in hexes]
            kexprs = [_pct_lit(k) for k, _c in kws]
            kflags = [hs.HS_FLAG_SINGLEMATCH | (hs.HS_FLAG_CASELESS if c else 0) for _k, c in kws]
            self.kw_db = hs.Database(mode=hs.HS_MODE_BLOCK)
            self.kw_db.compile(expressions=kexprs, ids=list(range(len(kexprs))), elements=len(kexprs), flags=kflags)
            # the rule keywords alone: a URL view that decodes no base64/hex blocks (its escapes cannot
            # split one) needs only these (hex forms of short keywords, "q~" -> 717e, are in every SHA)
            self.kw_plain_db = hs.Database(mode=hs.HS_MODE_BLOCK)
            self.kw_plain_db.compile(expressions=kexprs[: len(kw)], ids=list(range(len(kw))), elements=len(kw),
                                     flags=kflags[: len(kw)])
        self.db = hs.Database(mode=hs.HS_MODE_BLOCK)
        self.db.compile(expressions=exprs, ids=ids, elements=len(exprs), flags=flags)
        self.max_len = max((r.max_len for r in self.rules), default=0)
        # rules whose hyperscan expression is their own regex, compiled exactly: every match end is reported
        self.exact = frozenset(i for i in ids if i < self.shape_base and self.rules[i].hs is None) - set(self.prefiltered)
        # per rule: (exact, start offsets reported, shortest prefilter match) for scanner._confirm
        self.confirm = [(i in self.exact, i in self.som, _min_width(r.prefilter) if i in self.som else 0)
                        for i, r in enumerate(self.rules)]

    def classify(self, hit: dict[int, list]) -> tuple[dict[int, list[tuple[int, int]] | None], dict[str, list]]:
        shapes = {self._names[i - self.shape_base]: e for i, e in hit.items() if i >= self.shape_base}
        rules: dict[int, list[int] | None] = {i: e for i, e in hit.items() if i < self.shape_base}
        for i in self.fallback:
            rules[i] = None
        return rules, shapes

    def has_keyword(self, data: bytes, blocks: bool = True, shapes: dict[str, list] | None = None) -> bool:
        """Whether `data` holds a rule keyword (any case) or, with `blocks`, a keyword's base64/hex
        form, with any of its bytes percent-encoded.

        `shapes`: the shapes of `data` from a pass that reports "pct-sig" (a combined value
        database). Without such an escape, only the space of a keyword can be escaped, which shape
        "kw" covers, and the block forms are shapes "b64" (also raised by halves of values: a safe
        over-approximation) and "hex": no pass of its own."""
        if self.kw_db is None:
            return not self.kw_none
        if shapes is not None and "pct-sig" not in shapes:
            return "kw" in shapes or (blocks and ("b64" in shapes or "hex" in shapes))
        try:
            (self.kw_db if blocks else self.kw_plain_db).scan(data, match_event_handler=_first)
        except hs.ScanTerminated:  # the handler stops at the first keyword
            return True
        return False

    def scan(self, data: bytes) -> tuple[dict[int, list[int] | None], dict[str, list[int]]]:
        """({rule index: end offsets of prefilter matches, or None = whole data}, {shape: end offsets})."""
        hit: dict[int, list[int]] = {}
        if data:
            self.db.scan(data, match_event_handler=_collect_rule, context=hit)
        rules, shapes = self.classify(hit)
        if self.native and data:
            _pct_shapes(self.c, data, shapes, _NO_SIG)
        return rules, shapes


def _space_forms(keyword: bytes) -> list[bytes]:
    """A keyword with each space as written, as '+' and as %20."""
    out = [b""]
    for c in keyword:
        alts = [b" ", b"+", b"%20"] if c == 0x20 else [bytes([c])]
        out = [o + a for o in out for a in alts]
    return out


def _compiles(expr: bytes, flags: int) -> bool:
    try:
        hs.Database(mode=hs.HS_MODE_BLOCK).compile(expressions=[expr], ids=[0], elements=1, flags=[flags])
    except hs.error:  # e.g. "Pattern is too large" for start offsets of long bounded repeats
        return False
    return True


def _min_width(expr: str) -> int:
    """The shortest match of a prefilter expression (0 if Python cannot parse it: always safe)."""
    import re._parser as sre

    try:
        return max(0, int(sre.parse(expr).getwidth()[0]))
    except Exception:  # hyperscan syntax Python does not know
        return 0


def _try_flags(expr: bytes) -> int | None:
    for f in (hs.HS_FLAG_SINGLEMATCH, hs.HS_FLAG_SINGLEMATCH | hs.HS_FLAG_PREFILTER):
        try:
            db = hs.Database(mode=hs.HS_MODE_BLOCK)
            db.compile(expressions=[expr], ids=[0], elements=1, flags=[f])
            return f
        except hs.error:
            continue
    return None


__all__ = ["Form", "RuleMatcher", "SHAPES", "ValueMatcher"]
