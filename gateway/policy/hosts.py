"""Host names, host selectors and IP literals.

Selectors have Cilium's meanings:

- ``matchName: api.github.com`` matches exactly that name (after normalisation).
- ``matchPattern: "*.github.com"`` matches exactly ONE label in place of ``*``:
  ``api.github.com`` yes, ``a.b.github.com`` no, ``github.com`` no.

Everything here is called per request, so the common case (an ASCII name
already in normal form) takes a fast path.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata

from .model import HostSelector

try:  # IDNA 2008 + UTS 46, when available (mitmproxy depends on it)
    import idna as _idna
except ImportError:  # pragma: no cover - depends on the environment
    _idna = None

MAX_NAME = 253
MAX_LABEL = 63

_NORMAL_NAME = re.compile(r"(?:[a-z0-9_-]{1,63}\.)*[a-z0-9_-]{1,63}")
_LABEL_CHARS = re.compile(r"[a-z0-9_-]+")
_DOTS = re.compile("[.\u3002\uff0e\uff61]")  # the dots IDNA treats as label separators
_NUMBER = re.compile(r"[0-9]+|0x[0-9a-f]*")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class HostError(ValueError):
    """A host name or selector is invalid; ``fix`` says what to write instead."""

    def __init__(self, message: str, fix: str = ""):
        super().__init__(message)
        self.fix = fix


def normalize_host(name: str) -> str:
    """Return ``name`` in the one form rules and requests are compared in.

    Strips whitespace and ONE trailing dot, lowercases, encodes international
    labels to punycode (``bücher.example`` -> ``xn--bcher-kva.example``).
    Raises HostError (a ValueError) for names that are not valid DNS names.
    """
    host = name.strip().lower()
    if host.endswith("."):
        host = host[:-1]
    if len(host) <= MAX_NAME and _NORMAL_NAME.fullmatch(host):
        return host
    if not host:
        raise HostError("empty host name", "write a DNS name such as api.example.com")
    labels = [_encode_label(label, name) for label in _DOTS.split(host)]
    result = ".".join(labels)
    if len(result) > MAX_NAME:
        raise HostError(
            f"host name {name!r} is {len(result)} characters long (encoded); the limit is {MAX_NAME}",
            "use a shorter name",
        )
    return result


def _encode_label(label: str, name: str) -> str:
    if not label:
        raise HostError(
            f"host name {name!r} has an empty label (two dots in a row, or a leading dot)",
            "remove the extra dot",
        )
    if not label.isascii():
        try:
            label = _idna.encode(label, uts46=True).decode() if _idna else label.encode("idna").decode()
        except (UnicodeError, ValueError) as exc:  # idna.IDNAError is a UnicodeError
            raise HostError(
                f"host name {name!r}: label {label!r} is not a valid international name ({exc})",
                "check the spelling, or write the punycode (xn--...) form",
            ) from None
        label = label.lower()
    if len(label) > MAX_LABEL:
        raise HostError(
            f"host name {name!r}: label {label[:20]!r}... is {len(label)} characters long; "
            f"the limit is {MAX_LABEL}",
            "use a shorter label",
        )
    if not _LABEL_CHARS.fullmatch(label):
        bad = sorted({c for c in label if not _LABEL_CHARS.fullmatch(c)})
        raise HostError(
            f"host name {name!r} contains characters not allowed in a DNS name: {' '.join(bad)}",
            "use only letters, digits, '-' and '_' between the dots",
        )
    return label


def parent(name: str) -> str | None:
    """The name with its first label removed (the key patterns are indexed by)."""
    _, dot, rest = name.partition(".")
    return rest if dot else None


def name_selector(value: str) -> HostSelector:
    """Validate a ``matchName`` value and return its selector."""
    if "*" in value:
        raise HostError(
            f"matchName {value!r} contains '*'; matchName is an exact name",
            f"use `matchPattern: {value!r}` for a wildcard",
        )
    _refuse_ip(value, "matchName")
    return HostSelector("name", normalize_host(value))


def pattern_selector(value: str) -> HostSelector:
    """Validate a ``matchPattern`` value (``*.`` + a name of 2+ labels) and return its selector."""
    text = value.strip()
    if text == "*":
        raise HostError(
            "matchPattern '*' would match every host",
            "list the hosts the sandbox needs; a policy cannot allow everything by pattern",
        )
    if "*" not in text:
        raise HostError(
            f"matchPattern {value!r} has no wildcard",
            f"use `matchName: {text}` for an exact name, or write `*.{text}`",
        )
    if text.count("*") > 1 or not text.startswith("*"):
        raise HostError(
            f"matchPattern {value!r}: '*' is allowed only once, as the whole first label",
            "write `*.example.com`; `*` matches exactly one label, so list each level you need",
        )
    if not text.startswith("*."):
        rest = text[1:].lstrip(".")
        raise HostError(
            f"matchPattern {value!r} must start with '*.'; without the dot it would also match "
            f"names like 'bad{rest}'",
            f'write `matchPattern: "*.{rest}"`; add `matchName: {rest}` for the name itself',
        )
    suffix = text[2:]
    _refuse_ip(suffix, "matchPattern")
    suffix = normalize_host(suffix)
    if "." not in suffix:
        raise HostError(
            f"matchPattern {value!r} would match every name under the top-level domain {suffix!r}",
            f"name the domain you trust, e.g. `*.example.{suffix}`",
        )
    return HostSelector("pattern", "*." + suffix)


def _refuse_ip(value: str, key: str) -> None:
    try:
        is_ip = parse_ip_literal(value) is not None
    except ValueError:
        is_ip = True
    if is_ip:
        raise HostError(
            f"{key} {value!r} is an IP address, not a name",
            "list IP destinations under `cidrs:`, e.g. `cidrs: [198.18.5.1/32]`",
        )


def parse_ip_literal(host: str) -> IPAddress | None:
    """Return the address ``host`` spells, or None when ``host`` is a name.

    Accepts every encoding clients accept: ``127.0.0.1``, ``[::1]``,
    ``fe80::1%eth0`` (zone dropped), ``2130706433``, ``0x7f000001``,
    ``0177.0.0.1``, ``127.1``, ``127.0.1``, ``0x7f.1``, a trailing dot.
    IPv4-mapped IPv6 comes back as the IPv6Address; look at ``.ipv4_mapped``.

    A host whose last label is a number is an IP literal by definition (as in
    the WHATWG URL standard); when it is not a valid one this raises
    ValueError rather than returning None, so it can never pass as a name.
    """
    text = host.strip().lower()
    if not text.isascii():
        text = _DOTS.sub(".", unicodedata.normalize("NFKC", text))
    if text.startswith("[") or text.endswith("]"):
        if not (text.startswith("[") and text.endswith("]")):
            raise ValueError(f"{host!r}: unbalanced brackets around an IPv6 address")
        return _parse_v6(text[1:-1], host)
    if ":" in text:
        return _parse_v6(text, host)
    if text.endswith("."):
        text = text[:-1]
    last = text.rpartition(".")[2]
    if not last[:1].isdigit() or not _NUMBER.fullmatch(last):
        return None
    return _parse_v4(text, host)


def _parse_v6(text: str, host: str) -> ipaddress.IPv6Address:
    try:
        return ipaddress.IPv6Address(text.partition("%")[0])
    except ValueError:
        raise ValueError(f"{host!r} looks like an IPv6 address but is not a valid one") from None


def _parse_v4(text: str, host: str) -> ipaddress.IPv4Address:
    parts = text.split(".")
    invalid = ValueError(f"{host!r} ends in a number, so it is an IPv4 address, but not a valid one")
    if len(parts) > 4:
        raise invalid
    numbers = []
    for part in parts:
        if not _NUMBER.fullmatch(part):
            raise invalid
        try:
            if part.startswith("0x"):
                numbers.append(int(part[2:] or "0", 16))
            elif len(part) > 1 and part.startswith("0"):
                numbers.append(int(part, 8))
            else:
                numbers.append(int(part))
        except ValueError:  # octal with an 8 or 9
            raise invalid from None
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        raise invalid
    value = last
    for i, n in enumerate(head):
        value += n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)
