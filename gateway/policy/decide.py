"""Decide whether one DNS query, TLS handshake, request or connection may leave.

``Decider(policy)`` precompiles the policy once; every method is then a few
dict lookups over the rules that name the host, so cost does not grow with
the number of rules. Default deny: only a rule can allow.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from dataclasses import dataclass
from operator import attrgetter

from .hosts import IPAddress, normalize_host, parent, parse_ip_literal
from .model import PROTOCOLS, Policy, Rule

REASONS = (
    "allowed",
    "host-not-allowed",
    "port-not-allowed",
    "method-not-allowed",
    "path-not-allowed",
    "ip-literal-not-allowed",
    "tcp-not-allowed",
    "plain-http-not-allowed",
)

# When several rules name the host, the denial reports the failure that got furthest.
_SPECIFICITY = {
    "port-not-allowed": 1,
    "plain-http-not-allowed": 2,
    "method-not-allowed": 3,
    "path-not-allowed": 4,
}


@dataclass(frozen=True)
class Decision:
    allowed: bool
    action: str  # "allow" | "deny" | "report"
    rule: str | None  # name of the rule that allowed, else None
    reason: str  # one of REASONS
    inspect: bool = True  # False: pass TLS through by SNI, do not intercept


_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _decode_unreserved(m: re.Match[str]) -> str:
    char = chr(int(m.group(1), 16))
    return char if char in _UNRESERVED else "%" + m.group(1).upper()


def _is_dot_segment(segment: str) -> bool:
    return segment.partition(";")[0] in (".", "..")


def normalize_path(path: str) -> str | None:
    """The form of a request path that ``paths`` globs are matched against.

    ``path`` is the path alone, without query or fragment.

    1. Percent-escapes of unreserved characters (``A-Z a-z 0-9 - . _ ~``) are
       decoded; other escapes get upper-case hex (RFC 3986 section 6.2.2).
    2. ``.`` and ``..`` segments are resolved (RFC 3986 section 5.2.4),
       encoded ones (``%2e%2e``) included, so ``/simple/../admin`` is ``/admin``.

    Returns None, meaning "matches no path-restricted rule", when origin
    servers disagree about what the path names: an encoded slash or backslash
    (``%2F``, ``%5C``), a raw backslash, a malformed escape, a dot segment
    carrying parameters (``/..;/``), or dot segments together with empty
    segments (``//``).
    """
    if "\\" in path:
        return None
    if "%" in path:
        if _BAD_ESCAPE.search(path):
            return None
        path = _ESCAPE.sub(_decode_unreserved, path)
        if "%2F" in path or "%5C" in path:
            return None
    if "." not in path or not path.startswith("/"):
        return path
    segments = path.split("/")
    if not any(_is_dot_segment(s) for s in segments):
        return path
    if any(_is_dot_segment(s) and s not in (".", "..") for s in segments) or "" in segments[1:-1]:
        return None
    out: list[str] = []
    for segment in segments[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    result = "/" + "/".join(out)
    if segments[-1] in (".", "..") and not result.endswith("/"):
        result += "/"
    return result


class _Glob:
    """One ``paths`` entry: ``*`` matches any run of characters including "/", ``?`` one character.

    Matched in linear time (split at ``*``, leftmost search for each piece),
    so no request path can make matching slow, whatever the pattern.
    """

    __slots__ = ("_pieces", "_head", "_tail")

    def __init__(self, glob: str):
        pieces = glob.split("*")
        self._head, self._tail = len(pieces[0]), len(pieces[-1])
        self._pieces = [
            re.compile("".join("." if c == "?" else re.escape(c) for c in piece), re.DOTALL)
            for i, piece in enumerate(pieces)
            if piece or i in (0, len(pieces) - 1)
        ]

    def matches(self, text: str) -> bool:
        if len(self._pieces) == 1:
            return self._pieces[0].fullmatch(text) is not None
        first, *middle, last = self._pieces
        start, end = self._head, len(text) - self._tail
        if end < start or not first.match(text):
            return False
        for piece in middle:
            found = piece.search(text, start, end)
            if found is None:
                return False
            start = found.end()
        return last.fullmatch(text, end) is not None


class _Compiled:
    __slots__ = ("index", "rule", "globs", "allow")

    def __init__(self, index: int, rule: Rule):
        self.index = index
        self.rule = rule
        self.globs = None if rule.paths is None else tuple(_Glob(p) for p in rule.paths)
        self.allow = Decision(True, "allow", rule.name, "allowed", rule.protocol == "http" and rule.inspect)


def _path_only(path: str) -> str:
    for sep in "?#":
        path = path.partition(sep)[0]
    return path


def _canonical(ip: IPAddress) -> IPAddress:
    """IPv4-mapped IPv6 (::ffff:a.b.c.d) is the IPv4 address for matching cidrs."""
    return getattr(ip, "ipv4_mapped", None) or ip


_UNSET = object()


class Decider:
    """Precompiled policy. Every method returns a Decision; none raises for bad input."""

    def __init__(self, policy: Policy):
        self.policy = policy
        action = "report" if policy.mode == "report" else "deny"
        self._denials = {r: Decision(action == "report", action, None, r) for r in REASONS[1:]}
        self._names: dict[str, list[_Compiled]] = {}
        self._parents: dict[str, list[_Compiled]] = {}
        self._cidr_rules: list[_Compiled] = []
        for index, rule in enumerate(policy.rules):
            compiled = _Compiled(index, rule)
            for selector in rule.hosts:
                if selector.kind == "name":
                    bucket = self._names.setdefault(selector.value, [])
                else:
                    bucket = self._parents.setdefault(selector.value[2:], [])
                if not bucket or bucket[-1] is not compiled:
                    bucket.append(compiled)
            if rule.cidrs:
                self._cidr_rules.append(compiled)

    # -- public -----------------------------------------------------------

    def dns(self, name: str) -> Decision:
        """A DNS query: allowed if any rule (http or tcp) names ``name``."""
        candidates, none = self._candidates(name, PROTOCOLS)
        return candidates[0].allow if candidates else self._denials[none]

    def tls(self, sni: str | None, port: int) -> Decision:
        """A TLS ClientHello, before method and path are known: http rules matching host and port."""
        return self._judge(*self._candidates(sni, ("http",)), port)

    def http(self, host: str, port: int, method: str, path: str, *, tls: bool) -> Decision:
        """One HTTP request. ``path`` may carry a query; only the path part is matched."""
        candidates, none = self._candidates(host, ("http",))
        return self._judge(candidates, none, port, tls=tls, method=method.upper(), path=path)

    def connect(self, host: str, port: int) -> Decision:
        """An explicit-proxy CONNECT host:port: any rule (http or tcp) matching host and port."""
        return self._judge(*self._candidates(host, PROTOCOLS), port)

    def tcp(self, names: Iterable[str], ip: IPAddress | None, port: int) -> Decision:
        """Raw TCP to ``ip``: tcp rules naming one of ``names`` (the names the gateway
        resolved to ``ip``) or whose cidrs contain ``ip``; ``port`` must be listed."""
        matched: dict[int, _Compiled] = {}
        named = False
        for name in names:
            named = True
            try:
                normal = normalize_host(name)
            except ValueError:
                continue
            matched.update((c.index, c) for c in self._by_name(normal))
        if ip is not None:
            matched.update((c.index, c) for c in self._by_ip(ip))
        candidates = [matched[i] for i in sorted(matched)]
        tcp_rules = [c for c in candidates if c.rule.protocol == "tcp"]
        if candidates and not tcp_rules:
            none = "tcp-not-allowed"
        else:
            none = "host-not-allowed" if named else "ip-literal-not-allowed"
        return self._judge(tcp_rules, none, port)

    def ip(
        self,
        ip: IPAddress,
        port: int,
        *,
        protocol: str = "http",
        method: str | None = None,
        path: str | None = None,
        tls: bool = True,
    ) -> Decision:
        """An IP-literal destination: only rules with cidrs. Without ``method`` (a TLS
        handshake or a connection) method and path are not checked."""
        candidates = self._by_ip(ip)
        same = [c for c in candidates if c.rule.protocol == protocol]
        none = (
            "tcp-not-allowed" if candidates and not same and protocol == "tcp" else "ip-literal-not-allowed"
        )
        return self._judge(same, none, port, tls=tls, method=method.upper() if method else None, path=path)

    # -- lookups ----------------------------------------------------------

    def _candidates(self, host: str | None, protocols: tuple[str, ...]) -> tuple[list[_Compiled], str]:
        """Rules of ``protocols`` that select ``host`` (a name or an IP literal), and the
        reason to give when there are none (a missing SNI arrives as None)."""
        if not host:
            return [], "host-not-allowed"
        try:
            address = parse_ip_literal(host)
            if address is None:
                found = self._by_name(normalize_host(host))
                none = "host-not-allowed"
            else:
                found = self._by_ip(address)
                none = "ip-literal-not-allowed"
        except ValueError:
            return [], "host-not-allowed"
        return [c for c in found if c.rule.protocol in protocols], none

    def _by_name(self, name: str) -> list[_Compiled]:
        exact = self._names.get(name, [])
        above = parent(name)
        wild = self._parents.get(above, []) if above else []
        if not (exact and wild):
            return exact or wild
        return sorted({*exact, *wild}, key=attrgetter("index"))

    def _by_ip(self, ip: IPAddress) -> list[_Compiled]:
        ip = _canonical(ip)
        return [c for c in self._cidr_rules if any(ip in net for net in c.rule.cidrs)]

    # -- verdicts ---------------------------------------------------------

    def _judge(
        self,
        candidates: list[_Compiled],
        none: str,
        port: int,
        *,
        tls: bool = True,
        method: str | None = None,
        path: str | None = None,
    ) -> Decision:
        """First candidate (in file order) that allows wins; else the most specific failure.

        Plain HTTP (``tls=False``) needs a rule that lists its ports explicitly: a rule
        without ``ports`` means HTTPS on 443 only and fails with plain-http-not-allowed;
        a rule with ``ports`` that do not include ``port`` fails with port-not-allowed.
        """
        reason = none
        normal: object = _UNSET
        for c in candidates:
            rule = c.rule
            if not tls and not rule.ports_explicit:
                failure = "plain-http-not-allowed"
            elif port not in rule.ports:
                failure = "port-not-allowed"
            elif method is not None and rule.methods is not None and method not in rule.methods:
                failure = "method-not-allowed"
            elif method is not None and path is not None and c.globs is not None:
                if normal is _UNSET:
                    normal = normalize_path(_path_only(path))
                if normal is not None and any(g.matches(normal) for g in c.globs):
                    return c.allow
                failure = "path-not-allowed"
            else:
                return c.allow
            if _SPECIFICITY[failure] > _SPECIFICITY.get(reason, 0):
                reason = failure
        return self._denials[reason]
