"""DNS tunnel detection: per session, per base domain, over a sliding window.

A DNS tunnel (iodine, dnscat2, a hand-rolled encoder) has to put its payload
into query names, so it shows as many *distinct*, long, random-looking names
under one domain it controls, often with uncommon query types (NULL, TXT,
CNAME, ...) that carry bigger answers back. Ordinary software asks a few
short, repeating names with A/AAAA. The policy cannot tell them apart: a
tunnel on ``*.t.example.com`` uses names the policy allows. This module can.

For every allowed query :meth:`DnsTunnelDetector.check` updates the state of
the pair (session, base domain) and returns a :class:`Verdict`. Signals, each
counted over the last ``window`` seconds for one pair:

``encoded``   distinct names that look encoded: the subdomain part (labels
              under the base, dots removed) is at least ``encoded_min_length``
              characters with a Shannon entropy of at least ``min_entropy_ratio``
              times that of a random base32 string of the same length (entropy
              "adjusted for length": short strings cannot reach log2(32) bits) and
              the make-up of an encoding rather than of words (>= 15% digits, or
              < 25% vowels among its letters); or one label of ``max_label_length``+
              characters; or a whole name of ``max_name_length``+ characters.
``distinct``  distinct subdomains (any shape).
``qtype``     queries of uncommon types (anything but A, AAAA, HTTPS, SVCB, PTR,
              SOA, NS, DS, DNSKEY: e.g. TXT, CNAME, MX, SRV), each counting 1, and
              of types no ordinary client asks (NULL, ANY, zone transfers, private
              and unassigned types: iodine's favourites), each counting RARE_WEIGHT.
``rate``      queries (repeats included).

A signal reaching its limit is a detection: the pair is blocked for ``block``
seconds (0: for the rest of the session) and every query for the base domain
gets a refusal in that time. The first verdict of a block has ``new=True``
(the caller raises the alert); later ones ``new=False``.

Base domain: the suffix of the longest policy ``matchPattern`` (``*.X`` -> X)
the name falls under, else the name's last two labels.

Memory is bounded: at most ``max_tracked`` (session, base) pairs (least
recently used dropped first; blocked pairs are kept apart and only dropped
when their block ends or their session goes), at most ``max_names`` distinct
names remembered per pair and window (names beyond it count as new: the
count can only err towards detection).

Pure: no mitmproxy; the clock is injectable for tests.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterable

__all__ = [
    "Settings",
    "Verdict",
    "DnsTunnelDetector",
    "PASS",
    "base_domain",
    "entropy",
    "random_entropy",
    "looks_encoded",
    "SIGNALS",
    "COMMON_QTYPES",
    "RARE_QTYPES",
    "qtype_weight",
]

SIGNALS = ("encoded", "distinct", "qtype", "rate")

# Types ordinary clients ask for; every other type counts towards the `qtype` signal.
COMMON_QTYPES = frozenset({"A", "AAAA", "HTTPS", "SVCB", "PTR", "SOA", "NS", "DS", "DNSKEY"})

# Types that have no business in a sandbox's lookups: they count RARE_WEIGHT each.
RARE_QTYPES = frozenset({"NULL", "ANY", "AXFR", "IXFR", "MAILA", "MAILB"})
RARE_WEIGHT = 4

_B32 = "abcdefghijklmnopqrstuvwxyz234567"
# Words vs encodings: random base32/base64/hex has >= ~16% digits or few vowels among its letters
# (5 of 26 letters), words have ~35-45% vowels and rarely digits.
MIN_DIGIT_RATIO = 0.15
MAX_VOWEL_RATIO = 0.25


def qtype_weight(qtype: str) -> int:
    """What one query of ``qtype`` adds to the ``qtype`` signal: 0, 1 or RARE_WEIGHT."""
    qtype = qtype.upper()
    if qtype in COMMON_QTYPES:
        return 0
    if qtype in RARE_QTYPES or qtype.startswith("TYPE"):  # dnspython's name for types it does not know
        return RARE_WEIGHT
    return 1


@dataclass(frozen=True)
class Settings:
    """Thresholds; the gateway config's ``detection.dns`` section (see gateway/config.py)."""

    enabled: bool = True
    window: float = 60.0  # seconds
    max_encoded: int = 10  # distinct encoded-looking names per base per window
    max_distinct: int = 120  # distinct subdomains per base per window
    max_uncommon: int = 20  # TXT/CNAME/... queries per base per window (NULL/ANY/private count 4)
    max_rate: int = 3000  # queries per base per window (repeats included; 50/s for a minute)
    encoded_min_length: int = 20  # characters of subdomain (dots removed) before entropy is judged
    min_entropy_ratio: float = 0.75  # of a random base32 string's entropy at the same length
    max_label_length: int = 50  # a label this long counts as encoded whatever its entropy
    max_name_length: int = 120  # a whole name this long counts as encoded
    block: float = 600.0  # seconds a detected pair stays refused; 0 = rest of the session
    max_tracked: int = 1024  # (session, base) pairs tracked at once
    max_names: int = 256  # distinct names remembered per pair and window


@dataclass(frozen=True)
class Verdict:
    blocked: bool
    new: bool = False  # first verdict of this block: raise the alert
    signal: str = ""  # which signal fired (one of SIGNALS)
    base: str = ""
    detail: str = ""  # numbers only, never a suspicious label


PASS = Verdict(False)


def entropy(text: str) -> float:
    """Shannon entropy of ``text`` in bits per character (0 for empty text)."""
    n = len(text)
    if n == 0:
        return 0.0
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


@lru_cache(maxsize=512)
def random_entropy(length: int) -> float:
    """Mean entropy (bits/char) of random base32 strings of ``length``: the yardstick for
    "high entropy" at that length (a 20-character random string reaches ~3.8, not 5).
    Estimated once per length from 128 strings of a fixed-seed generator: deterministic."""
    if length <= 1:
        return 0.0
    rng = random.Random(length)
    return sum(entropy("".join(rng.choice(_B32) for _ in range(length))) for _ in range(128)) / 128


def looks_encoded(sub: str, qname_len: int, settings: Settings) -> bool:
    """Whether one subdomain part (labels under the base, dot-joined) looks like carried data."""
    labels = sub.split(".")
    if max(len(label) for label in labels) >= settings.max_label_length or qname_len >= settings.max_name_length:
        return True
    flat = "".join(labels).replace("-", "").replace("_", "").lower()
    if len(flat) < settings.encoded_min_length:
        return False
    if entropy(flat) < settings.min_entropy_ratio * random_entropy(len(flat)):
        return False
    # High entropy alone also fits long names made of words ("static-content-delivery"):
    # encodings mix in digits (hex, base32, base64) or lack the vowels words have.
    digits = sum(c.isdigit() for c in flat)
    letters = sum(c.isalpha() for c in flat)
    vowels = sum(c in "aeiou" for c in flat)
    return digits >= MIN_DIGIT_RATIO * len(flat) or (letters > 0 and vowels < MAX_VOWEL_RATIO * letters)


def base_domain(qname: str, suffixes: Iterable[str] = ()) -> str:
    """The base domain a (normalised, dot-free at the end) name is tracked under.

    The longest of ``suffixes`` (a policy's pattern suffixes, ``*.X`` -> ``X``) the
    name lies strictly under; otherwise its last two labels."""
    best = ""
    for suffix in suffixes:
        if len(suffix) > len(best) and qname.endswith("." + suffix):
            best = suffix
    if best:
        return best
    labels = qname.split(".")
    return ".".join(labels[-2:])


def unchecked_name(name: str | None) -> str | None:
    """How a query name that was never searched for known values is logged: its base domain only (the
    labels below it could carry a secret or a canary)."""
    if not name:
        return name
    return f"[REDACTED:unchecked].{base_domain(name.strip().lower().rstrip('.'), ())}"


BUCKETS = 60  # the window's query and type counts are kept in this many slices


@dataclass
class _Pair:
    """Sliding-window state of one (session, base domain), bounded whatever the query rate.

    Names are remembered with the time they were last asked (oldest first): a name counts as
    distinct while it was asked within the window. Query and uncommon-type counts are kept per
    slice of ``window / BUCKETS`` seconds, so repeats cost no memory."""

    names: OrderedDict = field(default_factory=OrderedDict)  # sub -> (last asked, encoded-looking)
    slices: deque = field(default_factory=deque)  # [start, queries, uncommon weight, new names beyond max_names]
    queries: int = 0  # in window
    uncommon: int = 0  # weighted uncommon-type queries in window
    overflow: int = 0  # queries with a new name beyond max_names, in window (each counted distinct)
    encoded: int = 0  # remembered names that look encoded


class DnsTunnelDetector:
    """See the module docstring. Not thread-safe (the gateway calls it from its event loop)."""

    def __init__(self, settings: Settings = Settings(), clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.clock = clock
        self._pairs: OrderedDict[tuple[str, str], _Pair] = OrderedDict()
        self._blocks: dict[tuple[str, str], tuple[float, str, str]] = {}  # pair -> (until, signal, detail)
        self.detections = 0

    # ---- the one entry point ------------------------------------------------------------------

    def check(self, session: str, qname: str, qtype: str, suffixes: Iterable[str] = ()) -> Verdict:
        """Observe one allowed query and decide. ``qname`` normalised (lower case, no final dot)."""
        s = self.settings
        if not s.enabled:
            return PASS
        now = self.clock()
        base = base_domain(qname, suffixes)
        key = (session, base)
        block = self._blocks.get(key)
        if block is not None:
            until, signal, detail = block
            if now < until:
                return Verdict(True, False, signal, base, detail)
            del self._blocks[key]
        pair = self._pairs.get(key)
        if pair is None:
            pair = self._pairs[key] = _Pair()
            if len(self._pairs) > s.max_tracked:
                self._pairs.popitem(last=False)
        else:
            self._pairs.move_to_end(key)
        self._expire(pair, now - s.window, s.window / BUCKETS)

        sub = qname[: -len(base) - 1] if len(qname) > len(base) else ""
        uncommon = qtype_weight(qtype)
        overflow = encoded_overflow = 0
        if sub:
            seen = pair.names.get(sub)
            if seen is not None:
                pair.names[sub] = (now, seen[1])
                pair.names.move_to_end(sub)
            else:
                encoded = looks_encoded(sub, len(qname), s)
                if len(pair.names) < s.max_names:
                    pair.names[sub] = (now, encoded)
                    pair.encoded += encoded
                else:
                    overflow = 1  # not remembered: counted as a new name for the window
                    encoded_overflow = int(encoded)
                    pair.encoded += encoded
        if not pair.slices or now >= pair.slices[-1][0] + s.window / BUCKETS:
            pair.slices.append([now, 0, 0, 0, 0])
        last = pair.slices[-1]
        last[1] += 1
        last[2] += uncommon
        last[3] += overflow
        last[4] += encoded_overflow
        pair.queries += 1
        pair.uncommon += uncommon
        pair.overflow += overflow

        distinct = len(pair.names) + pair.overflow
        span = now - pair.slices[0][0]
        fired = None
        if pair.encoded >= s.max_encoded:
            fired = ("encoded", f"{pair.encoded} encoded-looking names (limit {s.max_encoded})")
        elif distinct >= s.max_distinct:
            fired = ("distinct", f"{distinct} distinct subdomains (limit {s.max_distinct})")
        elif pair.uncommon >= s.max_uncommon:
            fired = ("qtype", f"uncommon-type query weight {pair.uncommon} (limit {s.max_uncommon}; this one "
                              f"{qtype.upper()})")
        elif pair.queries >= s.max_rate:
            fired = ("rate", f"{pair.queries} queries (limit {s.max_rate})")
        if fired is None:
            return PASS
        signal, what = fired
        longest = max((len(label) for label in sub.split(".")), default=0) if sub else 0
        flat = sub.replace(".", "")
        detail = (f"dns tunnel under {base}: {what} in {span:.1f}s (window {s.window:g}s); this name: "
                  f"{len(qname)} chars, longest label {longest}, entropy {entropy(flat.lower()):.2f} bits/char")
        until = math.inf if s.block == 0 else now + s.block
        self._blocks[key] = (until, signal, detail)
        if len(self._blocks) > s.max_tracked:
            self._evict_blocks(now)
        self._pairs.pop(key, None)  # a fresh window after the block
        self.detections += 1
        return Verdict(True, True, signal, base, detail)

    def block(self, session: str, base: str, signal: str, detail: str) -> Verdict:
        """Block a pair on another detector's word (a known value in a name): as if a signal fired."""
        now = self.clock()
        until = math.inf if self.settings.block == 0 else now + self.settings.block
        self._blocks[(session, base)] = (until, signal, detail)
        if len(self._blocks) > self.settings.max_tracked:
            self._evict_blocks(now)
        self._pairs.pop((session, base), None)
        self.detections += 1
        return Verdict(True, True, signal, base, detail)

    def forget(self, session: str) -> None:
        """Drop everything about a session (it was deleted)."""
        for store in (self._pairs, self._blocks):
            for key in [k for k in store if k[0] == session]:
                del store[key]

    def blocked(self, session: str, base: str) -> bool:
        block = self._blocks.get((session, base))
        return block is not None and self.clock() < block[0]

    def tracked(self) -> int:
        return len(self._pairs)

    # ---- internals -----------------------------------------------------------------------------

    @staticmethod
    def _expire(pair: _Pair, horizon: float, width: float) -> None:
        """Drop names last asked before ``horizon`` and slices that ended before it (a slice's
        queries count until its last instant leaves the window: errs towards detection)."""
        names = pair.names
        while names:
            sub, (last, encoded) = next(iter(names.items()))
            if last > horizon:
                break
            del names[sub]
            pair.encoded -= encoded
        slices = pair.slices
        while slices and slices[0][0] + width <= horizon:
            _, queries, uncommon, overflow, encoded_overflow = slices.popleft()
            pair.queries -= queries
            pair.uncommon -= uncommon
            pair.overflow -= overflow
            pair.encoded -= encoded_overflow

    def _evict_blocks(self, now: float) -> None:
        for key in [k for k, v in self._blocks.items() if v[0] <= now]:
            del self._blocks[key]
        while len(self._blocks) > self.settings.max_tracked:  # the oldest-set blocks first
            del self._blocks[next(iter(self._blocks))]
