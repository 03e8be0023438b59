"""Which hits count, and what to do about them: the policy side of detection.

Pure functions over engine hits (`gateway.detect.Hit`), the session's policy and
the request's host. Nothing here sees a flow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from gateway.policy.model import Detection
from gateway.secrets.placeholders import CORE_RE
from gateway.secrets.substitute import decode_basic

HIGH_ENTROPY_RULE = "high-entropy-upload"
HIGH_ENTROPY_BITS = 7.5  # bits per byte: compressed or encrypted data, random keys
# The built-in default for hits whose rule names none: known values and specific credential formats block.
DEFAULT_ACTION = "block"
SEVERITY = {"alert": 0, "redact": 1, "block": 2}
# Encodings in which the Credentials addon finds a placeholder itself (raw, URL-decoded, JSON \u-unescaped):
# there it substitutes the placeholder (approved host and part) or refuses the request, naming the secret.
CREDENTIALS_SEES = frozenset({"raw", "url", "url2", "json-u"})
_AUTH_HEADERS = ("header:authorization", "header:proxy-authorization")


MAX_NAME = 48  # a name in a part label longer than this is not shown
_NAMES = re.compile(r"(?<=\[)[^\]]*(?=\])|(?<=^header:)[^>]*|(?<=^cookie:)[^>]*|(?<=^split:header:)[^>]*"
                    r"|(?<=^split:cookie:)[^>]*|(?<=^split:query:)[^>]*")


def safe_part(part: str, suspicious: Callable[[str], bool]) -> str:
    """A part label fit for the log: the sandbox chose its names (headers, cookies, form fields, files),
    so a name holding a known value, or too long to show, becomes `?`."""
    return _NAMES.sub(lambda m: "?" if len(m.group(0)) > MAX_NAME or suspicious(m.group(0)) else m.group(0), part)


@dataclass(frozen=True)
class Finding:
    """A hit that counts, with the action the policy gives it."""

    hit: object  # gateway.detect.Hit
    action: str

    def record(self, suspicious: Callable[[str], bool] = lambda name: False) -> dict:
        h = self.hit
        return {"rule": h.rule, "label": h.label, "part": safe_part(h.part, suspicious), "offset": h.offset,
                "encoding": h.encoding, "context": h.context, "action": self.action}


def action_for(rule_id: str, rule_default: str | None, detection: Detection, mode: str) -> str:
    """Per-rule policy action, else the policy's default, else the rule's own, else alert for the generic
    (entropy/assignment) rules and block for the rest; report mode alerts."""
    override = detection.rule(rule_id)
    action = (override.action if override and override.action else None) or detection.action or rule_default \
        or ("alert" if rule_id.startswith("generic-") else DEFAULT_ACTION)
    return "alert" if mode == "report" else action


def allowed_by_policy(hit, detection: Detection, host: str, data: bytes | None) -> bool:
    override = detection.rule(hit.rule)
    if override is None:
        return False
    if override.allows_host(host):
        return True
    span = getattr(hit, "raw_span", None)
    return bool(span and data is not None and override.allows_text(data[span[0]:span[1]]))


def is_placeholder_text(hit, data: bytes | None, placeholder_hits) -> bool:
    """A rule hit on a placeholder (placeholders keep the real key's shape): not a credential.

    Known because one of this session's placeholders was found at the same place, or because the
    matched bytes carry a placeholder's marker and core (any session's, live or deleted: those of
    other sessions are the Credentials step's business, deleted ones are worthless)."""
    for p in placeholder_hits:
        if p.part == hit.part and p.offset <= hit.offset + hit.length and hit.offset <= p.offset + p.length:
            return True
    span = getattr(hit, "raw_span", None)
    if not span or data is None:
        return False
    return has_core(data[span[0]:span[1]].decode("latin-1"))


def base_part(part: str) -> str:
    """`body>gzip>multipart[f]` -> `body`; `query>form[q]` -> `query`."""
    return part.split(">", 1)[0]


def credentials_handles(hit, data: bytes | None, session, *, body_streamed: bool = False) -> bool:
    """A placeholder hit that the Credentials addon will deal with itself (substitute, or refuse with an alert).

    Credentials sees placeholders raw and URL-decoded in headers (cookies too), path, query, body (also
    JSON-unescaped, after the content coding) and WebSocket messages, and inside Basic credentials. A
    placeholder anywhere else (base64, hex, reversed, joined from fragments, in a streamed body Credentials
    never holds) is a detection hit."""
    label = hit.label or ""
    if not label.startswith("placeholder:"):
        return False
    bound = session.secrets.get(label.split(":", 1)[1])
    part = base_part(hit.part)
    if bound is None or part.startswith("split:") or (part == "body" and body_streamed):
        return False
    if part in _AUTH_HEADERS and hit.encoding.startswith("base64"):
        basic = decode_basic(data.decode("latin-1")) if data is not None else None
        return basic is not None and bound.core in basic
    if hit.encoding == "json-u":
        return part == "body"
    return hit.encoding in CREDENTIALS_SEES


def placeholder_in_place(hit, session, host: str, part_kind: str) -> bool:
    """A raw placeholder in a streamed body, to a host and part its secret is approved for: it goes as it is."""
    label = hit.label or ""
    if not label.startswith("placeholder:") or hit.encoding != "raw":
        return False
    bound = session.secrets.get(label.split(":", 1)[1])
    return bool(bound and bound.spec.approved_for(host) and part_kind in bound.spec.parts)


def strongest(findings: list[Finding]) -> str | None:
    return max((f.action for f in findings), key=SEVERITY.__getitem__, default=None)


def has_core(text: str) -> bool:
    return CORE_RE.search(text) is not None
