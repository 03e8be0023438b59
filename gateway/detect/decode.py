"""Bounded decoders: content codings (gzip, deflate, br, zstd), escape views with offset maps,
base64/hex blocks, multipart parts and form fields.

Every decoder is bounded: decompression stops at `Limits.max_output` bytes or when the output
outgrows the input by `Limits.max_ratio`, and nesting stops at `Limits.max_depth`. Crossing a
bound is reported as `DecodeLimit` (see `scanner.Detector.scan`), never unbounded memory.
"""

from __future__ import annotations

import binascii
import codecs
import re
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass

import brotli
import zstandard

try:  # zlib-ng inflates 2.5x faster than zlib (measured on the bench's tar.gz and gzip JSON; same output)
    from zlib_ng import zlib_ng as zlib
except ImportError:  # pragma: no cover - the dependency is in pyproject.toml
    import zlib  # type: ignore[no-redef]

from gateway.errors import EgressgwError

try:  # JSON and percent unescaping in C (gateway/detect/_unescape.c; optional, see setup.py)
    from . import _unescape as _native
except ImportError:  # pragma: no cover - built without a C compiler: the pure-Python paths below
    _native = None
NATIVE = _native is not None  # the same views either way (tests/detect/test_unescape.py), C is ~5x faster

PIECE = 1 << 20  # decompressor output granularity


@dataclass(frozen=True)
class Limits:
    max_output: int = 64 << 20  # bytes of decompressed output per part (one-shot scan)
    max_ratio: int = 1100  # output/input ratio above which a body is a bomb (deflate's own maximum is ~1032)
    ratio_floor: int = 8 << 20  # the ratio is only enforced once output exceeds this
    stream_max_output: int = 4 << 30  # decompressed bytes per streamed body
    max_depth: int = 4  # nested containers and decoded views
    max_parts: int = 1000  # multipart parts
    max_blocks: int = 256  # base64/hex blocks decoded per view


class DecodeLimit(EgressgwError):
    """A decoder bound was hit: the body was only partly inspected.

    `part` names where, `reason` what (no content), `hits` holds what was found before the bound.
    The caller should treat the body as uninspected (block, fail closed).
    """

    def __init__(self, part: str, reason: str, hits: list | None = None):
        self.part = part
        self.reason = reason
        self.hits = list(hits or [])
        super().__init__(f"{part}: {reason} (fix: raise the detection limits or refuse such bodies)")


class _Bound(Exception):
    def __init__(self, reason: str):
        self.reason = reason


# --- content codings ----------------------------------------------------------------------------

CODING_NAMES = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate", "br": "br", "zstd": "zstd"}


def parse_codings(header: str | None) -> list[str] | None:
    """Content-Encoding list in decode order; None if a coding is unknown; [] for identity."""
    if not header:
        return []
    out = []
    for tok in header.lower().split(","):
        tok = tok.strip()
        if tok in ("", "identity"):
            continue
        if tok not in CODING_NAMES:
            return None
        out.append(CODING_NAMES[tok])
    return out[::-1]


def sniff(data: bytes) -> str | None:
    """A compression format recognised by its magic bytes."""
    if data[:3] == b"\x1f\x8b\x08":
        return "gzip"
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if len(data) > 2 and data[0] == 0x78 and ((data[0] << 8) | data[1]) % 31 == 0 and data[1] in (0x01, 0x5E, 0x9C, 0xDA):
        return "deflate"
    return None


class Inflater:
    """Push-based incremental decompressor: feed(data, sink) calls sink(piece) with <= PIECE bytes."""

    def __init__(self, coding: str):
        self.coding = coding
        self._z: object | None = None
        self._first = True
        if coding == "br":
            self._z = brotli.Decompressor()
        elif coding == "zstd":
            self._z = zstandard.ZstdDecompressor().decompressobj()
        elif coding == "gzip":
            self._z = zlib.decompressobj(31)

    def feed(self, data: bytes, sink: Callable[[bytes], None]) -> None:
        if not data:
            return
        c = self.coding
        if c == "deflate" and self._first:
            zl = len(data) > 1 and (data[0] & 0x0F) == 8 and ((data[0] << 8) | data[1]) % 31 == 0
            self._z = zlib.decompressobj(15 if zl else -15)
        self._first = False
        if c in ("gzip", "deflate"):
            d = self._z
            buf = data
            while buf:
                out = d.decompress(buf, PIECE)  # type: ignore[union-attr]
                if out:
                    sink(out)
                if d.eof:  # type: ignore[union-attr]
                    rest = d.unused_data  # type: ignore[union-attr]
                    if c == "gzip" and rest[:2] == b"\x1f\x8b":
                        self._z = d = zlib.decompressobj(31)
                        buf = rest
                        continue
                    return
                buf = d.unconsumed_tail  # type: ignore[union-attr]
        elif c == "br":
            d = self._z
            out = d.process(data, output_buffer_limit=PIECE)  # type: ignore[union-attr]
            if out:
                sink(out)
            while not d.can_accept_more_data() and not d.is_finished():  # type: ignore[union-attr]
                out = d.process(b"", output_buffer_limit=PIECE)  # type: ignore[union-attr]
                if not out:
                    break
                sink(out)
        elif c == "zstd":
            # zstandard's decompressobj has no output cap: feed it small slices so one call
            # cannot expand by more than a slice's worth (zstd frames are bounded by ratio checks).
            d = self._z
            for i in range(0, len(data), 16384):
                out = d.decompress(data[i : i + 16384])  # type: ignore[union-attr]
                for j in range(0, len(out), PIECE):
                    sink(out[j : j + PIECE])
        else:
            sink(data)


class BoundedSink:
    """Collects or forwards decompressed output and enforces the size and ratio limits."""

    def __init__(self, limits: Limits, total_cap: int | None, forward: Callable[[bytes], None] | None = None):
        self.limits = limits
        self.cap = total_cap
        self.forward = forward
        self.pieces: list[bytes] = []
        self.out = 0
        self.inp = 0

    def __call__(self, piece: bytes) -> None:
        self.out += len(piece)
        if self.cap is not None and self.out > self.cap:
            keep = len(piece) - (self.out - self.cap)
            if keep > 0:
                self._emit(piece[:keep])
            raise _Bound(f"decompressed size exceeds {self.cap} bytes")
        if self.out > self.limits.ratio_floor and self.out > self.limits.max_ratio * max(self.inp, 1):
            raise _Bound(f"decompression ratio exceeds {self.limits.max_ratio}:1")
        self._emit(piece)

    def _emit(self, piece: bytes) -> None:
        if self.forward is not None:
            self.forward(piece)
        else:
            self.pieces.append(piece)


def inflate(data: bytes, codings: list[str], limits: Limits) -> tuple[bytes, str | None]:
    """Decode `data` through `codings` (decode order). Returns (output, bound reason or None).

    Raises ValueError if the data is not valid for the coding.
    """
    cur = data
    for coding in codings:
        sink = BoundedSink(limits, limits.max_output)
        sink.inp = len(cur)
        inf = Inflater(coding)
        try:
            inf.feed(cur, sink)
        except _Bound as b:
            return b"".join(sink.pieces), b.reason
        except (zlib.error, brotli.error, zstandard.ZstdError) as e:
            raise ValueError(f"invalid {coding} data ({e.__class__.__name__})") from None
        cur = b"".join(sink.pieces)
    return cur, None


# --- escape views with offset maps --------------------------------------------------------------


class OffsetMap:
    """Maps offsets in a decoded view back to the bytes it was decoded from."""

    __slots__ = ("ds", "de", "ss", "se")

    def __init__(self) -> None:
        self.ds: list[int] = []
        self.de: list[int] = []
        self.ss: list[int] = []
        self.se: list[int] = []

    def _point(self, d: int) -> tuple[int, bool, int]:
        i = bisect_right(self.ds, d) - 1
        if i < 0:
            return d, False, i
        if d < self.de[i]:
            return self.ss[i], True, i
        return self.se[i] + (d - self.de[i]), False, i

    def span(self, start: int, end: int) -> tuple[int, int]:
        s = self._point(start)[0]
        if end <= start:
            return s, s
        last, inside, i = self._point(end - 1)
        return s, (self.se[i] if inside else last + 1)


def unescape(data: bytes, rx: re.Pattern[bytes], fn: Callable[[re.Match[bytes]], bytes | None]) -> tuple[bytes, OffsetMap]:
    out: list[bytes] = []
    m_ = OffsetMap()
    last = 0
    dpos = 0
    for m in rx.finditer(data):
        rep = fn(m)
        if rep is None:
            continue
        s, e = m.span()
        out.append(data[last:s])
        dpos += s - last
        m_.ds.append(dpos)
        m_.ss.append(s)
        out.append(rep)
        dpos += len(rep)
        m_.de.append(dpos)
        m_.se.append(e)
        last = e
    out.append(data[last:])
    return b"".join(out), m_


_PCT = re.compile(rb"%([0-9A-Fa-f]{2})")
_PCT_FORM = re.compile(rb"%([0-9A-Fa-f]{2})|\+")
# a run of JSON string escapes (written with a literal '\\' first so `re` can skip to it)
_JSON = re.compile(rb"\\(?:u[0-9a-fA-F]{4}|[\"\\/bfnrt])(?:\\(?:u[0-9a-fA-F]{4}|[\"\\/bfnrt]))*")
_QP = re.compile(rb"=\r?\n|=([0-9A-Fa-f]{2})")


def _pct(m: re.Match[bytes]) -> bytes:
    g = m.group(1)
    return b" " if g is None else bytes.fromhex(g.decode())


_JSON_ONE = {b'\\"': b'"', b"\\\\": b"\\", b"\\/": b"/", b"\\b": b"\b", b"\\f": b"\f", b"\\n": b"\n",
             b"\\r": b"\r", b"\\t": b"\t"}


def _json(m: re.Match[bytes]) -> bytes:
    """Decode a run of JSON escapes (surrogate pairs joined, lone ones kept)."""
    run = m.group(0)
    one = _JSON_ONE.get(run)
    if one is not None:
        return one
    # a run holds only JSON escapes, all valid Python escapes once '\\/' is '/': unicode_escape cannot
    # warn, so no warnings.catch_warnings() (which cost more than the decoding, per run)
    text = codecs.decode(run.replace(b"\\/", b"/"), "unicode_escape")
    return text.encode("utf-8") if text.isascii() else _utf8(text)


def _qp(m: re.Match[bytes]) -> bytes:
    g = m.group(1)
    return b"" if g is None else bytes.fromhex(g.decode())


def windowed(data: bytes, rx: re.Pattern[bytes], fn: Callable[[re.Match[bytes]], bytes | None],
             window: int) -> tuple[bytes, OffsetMap]:
    """Decode only the stretches within `window` bytes of an escape; the rest of the data is replaced
    by one newline per gap (so a view costs what its escapes cost, not the whole part)."""
    out: list[bytes] = []
    m_ = OffsetMap()
    dpos = 0
    last = 0  # source position consumed
    win_end = -1
    n = len(data)
    for m in rx.finditer(data):
        s, e = m.span()
        if s - window > win_end:  # a new window: skip the gap before it
            ws = max(0, s - window)
            if win_end >= 0:
                out.append(data[last:win_end])
                dpos += win_end - last
                last = win_end
            if ws > last:
                m_.ds.append(dpos)
                m_.ss.append(last)
                out.append(b"\n")
                dpos += 1
                m_.de.append(dpos)
                m_.se.append(ws)
                last = ws
        rep = fn(m)
        if rep is None:
            continue
        out.append(data[last:s])
        dpos += s - last
        m_.ds.append(dpos)
        m_.ss.append(s)
        out.append(rep)
        dpos += len(rep)
        m_.de.append(dpos)
        m_.se.append(e)
        last = e
        win_end = min(n, e + window)
    if win_end < 0:
        return data, m_
    out.append(data[last:win_end])
    return b"".join(out), m_


class LazyMap:
    """The OffsetMap of a view decoded at C speed, built (by the per-escape path) only when a match
    in the view needs mapping back. Both paths decode identically (see json_view)."""

    def __init__(self, data: bytes, rx: re.Pattern[bytes], fn: Callable[[re.Match[bytes]], bytes | None]):
        self._args: tuple | None = (data, rx, fn)
        self._map: OffsetMap | None = None

    def span(self, start: int, end: int) -> tuple[int, int]:
        if self._map is None:
            assert self._args is not None
            self._map = unescape(*self._args)[1]
            self._args = None
        return self._map.span(start, end)


def url_view(data: bytes, form: bool = False, window: int = 0, odd: bool | None = None) -> tuple[bytes, OffsetMap | LazyMap]:
    """Percent-decoded view; '+' is a space in forms (same length: offsets do not move).
    `odd`: whether some '%' starts no escape (None: look; the scanner knows from its hyperscan pass)."""
    n = data.count(b"%")
    if n == 0 and not form:  # nothing to decode (as windowed() says it)
        return data, OffsetMap()
    rx = _PCT_FORM if form else _PCT
    if _native is not None:  # C decodes faster than Python can tell real escapes from other '%'
        if window and n and n * 2 * window < len(data):
            return byte_windows(data, b"%+" if form else b"%", window, lambda piece: _native.url_unescape(piece, form),
                                rx, _pct)
        return _native.url_unescape(data, form), LazyMap(data, rx, _pct)
    if odd is None:
        odd = True
        if not window or n * 2 * window >= len(data):
            odd = _PCT_ODD.search(data) is not None
    if not window or n * 2 * window >= len(data):
        if odd and window:
            n = len(_PCT.findall(data))  # '%' that start no escape (minified JS, printf formats) do not count
    if window and n * 2 * window < len(data):  # sparse: decode around escapes only
        return windowed(data, rx, _pct, window)
    src = data.replace(b"+", b" ") if form else data
    if not odd:
        # every '%' starts an escape: %XX -> \xXX, decoded by the C escape codec (backslashes kept)
        dec = codecs.escape_decode(src.replace(b"\\", b"\\\\").replace(b"%", b"\\x"))[0]
    else:
        dec = unquote_fast(src)
    return dec, LazyMap(data, rx, _pct)


class WindowMap:
    """Offsets in a view made of decoded windows (joined by one newline) back to the source."""

    __slots__ = ("vstarts", "rstarts", "maps")

    def __init__(self) -> None:
        self.vstarts: list[int] = []
        self.rstarts: list[int] = []
        self.maps: list[LazyMap] = []

    def span(self, start: int, end: int) -> tuple[int, int]:
        i = max(0, bisect_right(self.vstarts, start) - 1)
        vs, rs = self.vstarts[i], self.rstarts[i]
        s, e = self.maps[i].span(start - vs, end - vs)
        return s + rs, e + rs


def sig_windows(data: bytes, sig: re.Pattern[bytes], window: int, form: bool) -> tuple[bytes, WindowMap]:
    """The URL view only within `window` bytes of the escapes `sig` matches (b"" if none): each window
    decoded whole, windows joined by a newline."""
    spans: list[list[int]] = []
    n = len(data)
    for m in sig.finditer(data):
        lo, hi = max(0, m.start() - window), min(n, m.end() + window)
        if spans and lo <= spans[-1][1]:
            spans[-1][1] = hi
        else:
            spans.append([lo, hi])
    if _native is not None:
        decode = lambda piece: _native.url_unescape(piece, form)  # noqa: E731
    else:
        decode = lambda piece: unquote_fast(piece.replace(b"+", b" ") if form else piece)  # noqa: E731
    return _join_windows(data, spans, decode, _PCT_FORM if form else _PCT, _pct)


def byte_windows(data: bytes, centers: bytes, window: int, decode: Callable[[bytes], bytes],
                 rx: re.Pattern[bytes], fn: Callable[[re.Match[bytes]], bytes | None]) -> tuple[bytes, WindowMap]:
    """The view only within `window` bytes of each of the `centers` bytes (an escape's first byte; in
    forms also '+'), each window decoded whole by `decode` (which must agree with
    `unescape(piece, rx, fn)`), joined by a newline. An escape never straddles a window's edge: its
    first byte is a center of the same window, which reaches `window` bytes past the end of the
    longest escape (12 bytes: a JSON surrogate pair) that starts at its last center."""
    spans: list[list[int]] = []
    n = len(data)
    if len(centers) == 1:
        def nxt(start: int, end: int | None = None) -> int:
            return data.find(centers, start, n if end is None else end)

        def last(start: int, end: int) -> int:
            return data.rfind(centers, start, end)
    else:
        def nxt(start: int, end: int | None = None) -> int:
            found = [i for c in centers if (i := data.find(bytes((c,)), start, n if end is None else end)) >= 0]
            return min(found) if found else -1

        def last(start: int, end: int) -> int:
            return max(data.rfind(bytes((c,)), start, end) for c in centers)
    i = nxt(0)
    while i >= 0:
        lo = max(0, i - window)
        while True:  # the last center inside the window so far extends it (one rfind per extension)
            hi = i + 12 + window
            j = last(i + 1, hi)
            if j < 0:
                break
            i = j
        hi = min(n, hi)
        if spans and lo <= spans[-1][1]:
            spans[-1][1] = hi
        else:
            spans.append([lo, hi])
        i = nxt(hi)
    return _join_windows(data, spans, decode, rx, fn)


def _join_windows(data: bytes, spans: list[list[int]], decode: Callable[[bytes], bytes], rx: re.Pattern[bytes],
                  fn: Callable[[re.Match[bytes]], bytes | None]) -> tuple[bytes, WindowMap]:
    wm = WindowMap()
    out: list[bytes] = []
    pos = 0
    for lo, hi in spans:
        piece = data[lo:hi]
        wm.vstarts.append(pos)
        wm.rstarts.append(lo)
        wm.maps.append(LazyMap(piece, rx, fn))
        dec = decode(piece)
        out.append(dec)
        pos += len(dec) + 1
    return b"\n".join(out), wm


_PCT_ODD = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_HEXPAIR = {(a + b).encode(): bytes.fromhex(a + b) for a in "0123456789abcdefABCDEF" for b in "0123456789abcdefABCDEF"}


def unquote_fast(data: bytes) -> bytes:
    """urllib.parse.unquote_to_bytes (a '%' without two hex digits stays), a little faster: one
    split and one join in C, one dict lookup per escape."""
    pieces = data.split(b"%")
    if len(pieces) == 1:
        return data
    out = [pieces[0]]
    get = _HEXPAIR.get
    for p in pieces[1:]:
        c = get(p[:2])
        if c is None:
            out.append(b"%")
            out.append(p)
        else:
            out.append(c)
            out.append(p[2:])
    return b"".join(out)




_JSON_ODD = re.compile(rb"\\(?![\"\\/bfnrt]|u[0-9a-fA-F]{4})")


def json_view(data: bytes, window: int = 1 << 30, odd: bool | None = None) -> tuple[bytes, OffsetMap | LazyMap]:
    """JSON-unescaped view: whole, or (sparse escapes) windows around them. With the C module, one
    json_unescape() pass per view or window. Without it, ASCII data whose every backslash starts a
    JSON escape is decoded by unicode_escape (which agrees with JSON there); anything else takes the
    per-escape path. `odd`: whether some backslash starts no JSON escape (None: look; Python only)."""
    n = data.count(b"\\")
    sparse = n * 2 * window < len(data)  # then decode around escapes only
    if n == 0:  # nothing to decode (as windowed() says it)
        return data, OffsetMap()
    if _native is not None:  # C passes; odd backslashes and non-ASCII bytes copied as the Python paths do
        if sparse:
            return byte_windows(data, b"\\", window, _native.json_unescape, _JSON, _json)
        return _native.json_unescape(data), LazyMap(data, _JSON, _json)
    if sparse:
        return windowed(data, _JSON, _json, window)
    if odd is None:
        odd = _JSON_ODD.search(data) is not None
    if not odd and data.isascii():
        pre = data.replace(b"\\/", b"/")
        if b"\\/" not in pre:
            # every backslash starts a JSON escape, all valid Python escapes: no warning to silence
            text = codecs.decode(pre, "unicode_escape")
            dec = text.encode("utf-8", "surrogatepass") if text.isascii() else _utf8(text)
            return dec, LazyMap(data, _JSON, _json)
    return windowed(data, _JSON, _json, window)


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # surrogates: join pairs, keep lone ones
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "surrogatepass")
        return text.encode("utf-8", "surrogatepass")


def qp_view(data: bytes, window: int = 1 << 30) -> tuple[bytes, OffsetMap]:
    return windowed(data, _QP, _qp, window)


# --- base64 / hex blocks ------------------------------------------------------------------------

_B64_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-"
_HEX_CHARS = b"0123456789abcdefABCDEF"
_B64_TAIL = re.compile(rb"(?:\r?\n|\\r\\n|\\n)([A-Za-z0-9+/_-]{2,}={0,2})(?![A-Za-z0-9+/_=-])")
_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _mask(chars: bytes) -> bytes:
    return bytes(0x41 if i in chars else 0x2E for i in range(256))


_B64_MASK = _mask(_B64_CHARS)
_HEX_MASK = _mask(_HEX_CHARS)


def _runs(data: bytes, table: bytes, minlen: int) -> list[tuple[int, int]]:
    """(start, end) of every run of at least `minlen` alphabet bytes (C-speed translate + find)."""
    m = data.translate(table)
    needle = b"A" * minlen
    out = []
    pos = 0
    while True:
        i = m.find(needle, pos)
        if i < 0:
            return out
        j = m.find(b".", i + minlen)
        if j < 0:
            j = len(m)
        out.append((i, j))
        pos = j


def base64_blocks(data: bytes, limit: int) -> list[tuple[int, int, bytes]]:
    runs = []
    for s, e in _runs(data, _B64_MASK, 40):
        for _pad in range(2):
            if data[e : e + 1] == b"=":
                e += 1
        runs.append((s, e))
    # MIME: join runs separated by one line break (real, or JSON-escaped inside a string: the run
    # after a backslash starts with its 'n'), and a short last line
    blocks: list[list[int]] = []
    for s, e in runs:
        gap = data[blocks[-1][1] : s] if blocks else b""
        if blocks and (gap in (b"\n", b"\r\n") or (gap in (b"\\", b"\\r\\") and data[s : s + 1] == b"n")):
            blocks[-1][1] = e
        else:
            blocks.append([s, e])
    out = []
    for s, e in blocks:
        m = _B64_TAIL.match(data, e)
        if m and data[e - 1 : e] != b"=":
            e = m.end()
        raw = data[s:e]
        if not raw.translate(None, raw[:2]):  # ----- or -_-_ lines
            continue
        if not raw.translate(None, _HEX_CHARS):  # hex digests: the hex path decodes those
            continue
        text = _WS.sub(b"", raw.replace(b"\\r", b"").replace(b"\\n", b"")).rstrip(b"=").translate(_URLSAFE)
        text = text[: len(text) - len(text) % 4] if len(text) % 4 == 1 else text
        text += b"=" * (-len(text) % 4)
        try:
            dec = binascii.a2b_base64(text)
        except binascii.Error:
            continue
        out.append((s, e, dec))
        if len(out) >= limit:
            break
    return out


def base64_body(data: bytes) -> bytes:
    """A whole base64 body (MIME Content-Transfer-Encoding), lenient about line breaks and junk."""
    text = _WS.sub(b"", data).rstrip(b"=").translate(_URLSAFE)
    text = text[: len(text) - len(text) % 4] if len(text) % 4 == 1 else text
    try:
        return binascii.a2b_base64(text + b"=" * (-len(text) % 4))
    except binascii.Error:
        return b""


def hex_blocks(data: bytes, limit: int) -> list[tuple[int, int, bytes]]:
    out = []
    for s, e in _runs(data, _HEX_MASK, 80):
        if (e - s) % 2:
            e -= 1
        out.append((s, e, binascii.unhexlify(data[s:e])))
        if len(out) >= limit:
            break
    return out


_WS = re.compile(rb"\s+")


# --- multipart and forms ------------------------------------------------------------------------

_PARAM = re.compile(r';\s*([A-Za-z0-9_*-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))')


def header_params(value: str) -> dict[str, str]:
    return {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)) for m in _PARAM.finditer(value)}


_NAME_BAD = re.compile(r"[^\x20-\x7e]|[\[\]>]")


def safe_name(name: str) -> str:
    """A field name fit for a part label: printable, bounded; '[', ']' and '>' become '?'."""
    return _NAME_BAD.sub("?", name[:64])


@dataclass(frozen=True)
class MimePart:
    name: str
    start: int  # body offset in the multipart bytes
    end: int
    content_type: str | None
    transfer_encoding: str | None
    content_encoding: str | None


def multipart(data: bytes, content_type: str, max_parts: int) -> list[MimePart] | None:
    """Parts of a multipart body; None if the content type has no boundary."""
    ct_main = content_type.split(";", 1)[0].strip().lower()
    if not ct_main.startswith("multipart/"):
        return None
    boundary = header_params(content_type).get("boundary")
    if not boundary:
        return None
    delim = b"--" + boundary.encode("latin-1", "replace")
    parts: list[MimePart] = []
    pos = data.find(delim)
    n = 0
    while pos >= 0 and n < max_parts:
        hstart = pos + len(delim)
        if data[hstart : hstart + 2] == b"--":
            break
        nxt = data.find(delim, hstart)
        end = nxt if nxt >= 0 else len(data)
        sep = data.find(b"\r\n\r\n", hstart, end)
        seplen = 4
        if sep < 0:
            sep = data.find(b"\n\n", hstart, end)
            seplen = 2
        if sep < 0:
            break
        headers = data[hstart:sep].decode("latin-1")
        bstart = sep + seplen
        bend = end
        if data[bend - 2 : bend] == b"\r\n":
            bend -= 2
        elif data[bend - 1 : bend] == b"\n":
            bend -= 1
        hd: dict[str, str] = {}
        for line in re.split(r"\r?\n", headers):
            if ":" in line:
                k, v = line.split(":", 1)
                hd[k.strip().lower()] = v.strip()
        disp = header_params(";" + hd.get("content-disposition", "").split(";", 1)[-1]) if "content-disposition" in hd else {}
        name = disp.get("name") or disp.get("filename") or str(n)
        parts.append(
            MimePart(
                safe_name(name),
                bstart,
                max(bend, bstart),
                hd.get("content-type"),
                (hd.get("content-transfer-encoding") or "").strip().lower() or None,
                hd.get("content-encoding"),
            )
        )
        n += 1
        pos = nxt
    return parts


def form_fields(data: bytes) -> tuple[list[int], list[str]]:
    """Start offsets and decoded names of the fields of an urlencoded form / query string."""
    starts: list[int] = []
    names: list[str] = []
    pos = 0
    from urllib.parse import unquote_plus

    for seg in data.split(b"&"):
        key = seg.split(b"=", 1)[0]
        starts.append(pos)
        names.append(safe_name(unquote_plus(key.decode("latin-1"))))
        pos += len(seg) + 1
    return starts, names


def field_at(fields: tuple[list[int], list[str]], offset: int) -> str:
    i = bisect_right(fields[0], offset) - 1
    return fields[1][max(i, 0)]
