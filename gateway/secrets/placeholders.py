"""Placeholders: what the sandbox holds instead of a real credential.

Each session gets fresh random placeholders. Where the real value has a known
shape (`sk-`, `sk-ant-api03-`, `ghp_`, `AKIA`, `xoxb-` ...) the placeholder
keeps its prefix, length and alphabet, so client libraries that check the
format accept it.

Every placeholder carries a marker (`egw` or `EGW`) followed by a 12-character
random core. The gateway finds placeholders in any text with one regex over
that marker and an O(1) dictionary lookup of the core, however many sessions
exist; a truncated placeholder still shows its core, so partial use is caught
too.
"""

from __future__ import annotations

import re
import secrets
import string

MARKER_LOWER = "egw"
MARKER_UPPER = "EGW"
CORE_LEN = 12
CORE_RE = re.compile(r"(?:egw|EGW)([A-Za-z0-9]{12})")

# Known credential prefixes, longest first.
KNOWN_PREFIXES = (
    "sk-ant-api03-", "sk-ant-admin01-", "sk-ant-", "sk-proj-", "sk-svcacct-", "sk_live_", "sk_test_",
    "rk_live_", "rk_test_", "sk-", "github_pat_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "glpat-",
    "xoxb-", "xoxp-", "xoxa-", "xoxe-", "hf_", "npm_", "pypi-", "AKIA", "ASIA", "AIza",
)

_ALPHABETS = {
    "upper": string.ascii_uppercase + string.digits,
    "lower": string.ascii_lowercase + string.digits,
    "alnum": string.ascii_letters + string.digits,
}
MIN_LENGTH = 32  # for values whose shape is unknown


def _alphabet(tail: str) -> str:
    if tail and all(c in _ALPHABETS["upper"] for c in tail):
        return "upper"
    if tail and all(c in _ALPHABETS["lower"] for c in tail):
        return "lower"
    return "alnum"


def _random(alphabet: str, n: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def shape_of(value: str | None) -> tuple[str, int, str]:
    """(prefix, length, alphabet name) of a real value; unknown values get a generic shape."""
    if value:
        for prefix in KNOWN_PREFIXES:
            if value.startswith(prefix) and len(value) > len(prefix):
                return prefix, len(value), _alphabet(value[len(prefix):])
    return "egw_", max(MIN_LENGTH, len(value or "")), "alnum"


def make_placeholder(real: str | None) -> str:
    prefix, length, alphabet = shape_of(real)
    chars = _ALPHABETS[alphabet]
    marker = MARKER_UPPER if alphabet == "upper" else MARKER_LOWER
    core = _random(_ALPHABETS["upper"] if alphabet == "upper" else _ALPHABETS["lower"], CORE_LEN)
    body = marker + core
    filler = max(0, length - len(prefix) - len(body))
    return prefix + body + _random(chars, filler)


def core_of(placeholder: str) -> str:
    m = CORE_RE.search(placeholder)
    if m is None:
        raise ValueError("not a placeholder")
    return m.group(1)
