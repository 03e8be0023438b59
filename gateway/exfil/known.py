"""A session's known values: what must never leave, and what may leave only where Credentials puts it.

* `secret:NAME`: the real value of each of the session's secrets. The sandbox
  never holds one, so one coming from the sandbox was read from somewhere it
  should not have been: always exfiltration.
* `placeholder:NAME`: the placeholder the sandbox holds. Legitimate only where
  the Credentials addon substitutes (or refuses) it; anywhere else (base64,
  hex, reversed, ...) it is a hit.
* `canary:LABEL`: values registered through the control API.

Values are read through the secret store (cached); the last value seen of each
secret is kept too, so a rotated secret's old value is still recognised.

`of()` runs on every request: while the session's secrets, canaries and the cached
values are what they were, it returns the very same tuple (no new objects; the
detection addon compares it by identity first).
"""

from __future__ import annotations

from gateway.detect import KnownValue
from gateway.errors import EgressgwError
from gateway.secrets.backends import parse_source

MIN_LEN = 8  # the engine's shortest known value; shorter values cannot be told from noise


class KnownValues:
    def __init__(self, store):
        self.store = store
        # session -> secret -> {value: value}, newest last (by session: forgetting one is O(1) in the sessions)
        self._last: dict[str, dict[str, dict[bytes, bytes]]] = {}
        # session id -> (its secrets dict, its canaries dict, the cached values, the tuple of() returned)
        self._memo: dict[str, tuple[object, object, list, tuple[KnownValue, ...]]] = {}

    async def of(self, session) -> tuple[KnownValue, ...]:
        """Every known value of the session. Raises SecretBackendError for a secret never read and unreadable now."""
        memo = self._memo.get(session.id)
        if memo is not None and memo[0] is session.secrets and memo[1] is session.canaries:
            peeked = [self.store.peek(parse_source(b.spec.source)) for b in session.secrets.values()]
            if None not in peeked and peeked == memo[2]:
                return memo[3]
        out: list[KnownValue] = []
        values: list = []
        for name, bound in session.secrets.items():
            seen = self._last.setdefault(session.id, {}).setdefault(name, {})
            source = parse_source(bound.spec.source)
            value = self.store.peek(source)
            if value is None:
                try:
                    value = await self.store.get(name, source)
                except EgressgwError:
                    if not seen:
                        raise
            values.append(value)
            if value is not None:
                raw = value.encode()
                if raw not in seen:
                    seen[raw] = raw
                    while len(seen) > 2:  # the current value and the one before it
                        del seen[next(iter(seen))]
            out.extend(KnownValue(f"secret:{name}", v) for v in seen if len(v) >= MIN_LEN)
            out.append(KnownValue(f"placeholder:{name}", bound.placeholder.encode()))
        out.extend(KnownValue(label, value) for label, value in session.canaries.items())
        result = tuple(out)
        self._memo[session.id] = (session.secrets, session.canaries, values, result)
        return result

    def forget(self, session_id: str) -> None:
        self._memo.pop(session_id, None)
        self._last.pop(session_id, None)
