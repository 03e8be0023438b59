"""Sessions: who a sandbox is, and which policy governs it.

A session binds an id, a policy and the ways traffic is mapped to it: source
addresses (transparent mode) and a token (explicit-proxy credentials). The
registry is the one place the gateway asks "whose traffic is this?".

Replacing a session's policy swaps one reference: a decision already taken
stands, the next request meets the new policy. Lookups are O(1) dicts.
"""

from __future__ import annotations

import hmac
import re
from secrets import token_hex, token_urlsafe
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterable

from gateway.errors import SessionError
from gateway.policy import Decider, Policy
from gateway.secrets.model import BoundSecret, SecretSpec
from gateway.secrets.placeholders import core_of
from gateway.secrets.substitute import PlaceholderIndex

# How many address→name memories a session keeps (DNS answers the gateway gave it).
DNS_MEMORY_LIMIT = 4096
# Canaries: values registered to be found if they ever leave (never shown, never logged).
MAX_CANARIES = 1000
CANARY_MIN, CANARY_MAX = 8, 4096  # bytes
_CANARY_LABEL = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(eq=False)
class Session:
    id: str
    name: str
    token: str = field(repr=False)
    policy: Policy
    decider: Decider = field(repr=False)
    sources: frozenset[str] = frozenset()
    policy_text: str = field(default="", repr=False)
    secrets: dict[str, BoundSecret] = field(default_factory=dict, repr=False)
    canaries: dict[str, bytes] = field(default_factory=dict, repr=False)  # "canary:LABEL" -> value
    created: float = field(default_factory=time.time)
    _names_by_addr: OrderedDict[str, set[str]] = field(default_factory=OrderedDict, repr=False)

    def remember(self, address: str, name: str) -> None:
        """Note that the gateway's DNS answered `name` with `address` for this session."""
        names = self._names_by_addr.get(address)
        if names is None:
            names = self._names_by_addr[address] = set()
            if len(self._names_by_addr) > DNS_MEMORY_LIMIT:
                self._names_by_addr.popitem(last=False)
        else:
            self._names_by_addr.move_to_end(address)
        names.add(name)

    def names_for(self, address: str) -> frozenset[str]:
        return frozenset(self._names_by_addr.get(address, ()))

    def env(self) -> dict[str, str]:
        """The environment the sandbox gets: each secret's name bound to its placeholder."""
        return {name: s.placeholder for name, s in self.secrets.items()}

    def summary(self) -> dict:
        """What the control API shows: never the token, never a value (placeholders are not secret)."""
        return {
            "id": self.id,
            "name": self.name,
            "sources": sorted(self.sources),
            "policy": self.policy.name,
            "mode": self.policy.mode,
            "created": self.created,
            "secrets": [s.spec.describe() for s in self.secrets.values()],
            "canaries": sorted(self.canaries),
            "env": self.env(),
        }

    def add_canaries(self, values: list[bytes], labels: list[str] | None = None) -> list[str]:
        """Register canary values; returns their labels. ValueError (never naming a value) when one is unfit."""
        if labels is not None and len(labels) != len(values):
            raise ValueError("'labels' must have one label per value")
        if not values:
            raise ValueError("'values' must list at least one value")
        if len(self.canaries) + len(values) > MAX_CANARIES:
            raise ValueError(f"a session holds at most {MAX_CANARIES} canaries")
        added: dict[str, bytes] = {}
        for i, value in enumerate(values):
            if not CANARY_MIN <= len(value) <= CANARY_MAX:
                raise ValueError(f"values[{i}]: a canary must be {CANARY_MIN} to {CANARY_MAX} bytes long")
            label = labels[i] if labels is not None else f"c{len(self.canaries) + len(added) + 1}"
            if not isinstance(label, str) or not _CANARY_LABEL.match(label):
                raise ValueError(f"labels[{i}]: a label is 1-64 characters of A-Z a-z 0-9 _ . -")
            key = f"canary:{label}"
            if key in self.canaries or key in added:
                raise ValueError(f"labels[{i}]: canary {label!r} already exists")
            added[key] = value
        self.canaries.update(added)
        return list(added)


class SessionRegistry:
    """In-process registry. Listeners are told of every change (for the flow log and metrics)."""

    def __init__(self) -> None:
        self._by_id: dict[str, Session] = {}
        self._by_source: dict[str, Session] = {}
        self._listeners: list[Callable[[str, Session], None]] = []
        self.placeholders = PlaceholderIndex()  # every live placeholder of every session

    def subscribe(self, listener: Callable[[str, Session], None]) -> None:
        self._listeners.append(listener)

    def _notify(self, what: str, session: Session) -> None:
        for listener in self._listeners:
            listener(what, session)

    def __len__(self) -> int:
        return len(self._by_id)

    def create(
        self,
        name: str,
        policy: Policy,
        sources: Iterable[str] = (),
        session_id: str | None = None,
        policy_text: str = "",
        secrets: Iterable[tuple[SecretSpec, str]] = (),
    ) -> Session:
        """Register a session. `secrets` pairs each spec with the placeholder made for it."""
        sources = frozenset(sources)
        if session_id is not None and session_id in self._by_id:
            raise SessionError(f"session {session_id} already exists (fix: delete it first or pick another id)")
        for src in sources:
            other = self._by_source.get(src)
            if other is not None:
                raise SessionError(
                    f"source address {src} already belongs to session {other.id} ({other.name}) "
                    "(fix: delete that session first)"
                )
        session = Session(
            id=session_id or "s-" + token_hex(8),
            name=name,
            token=token_urlsafe(24),
            policy=policy,
            decider=Decider(policy),
            sources=sources,
            policy_text=policy_text,
        )
        for spec, placeholder in secrets:
            session.secrets[spec.name] = BoundSecret(session.id, spec, placeholder, core_of(placeholder))
        self._by_id[session.id] = session
        for src in sources:
            self._by_source[src] = session
        for bound in session.secrets.values():
            self.placeholders.add(bound)
        self._notify("created", session)
        return session

    def get(self, session_id: str) -> Session:
        try:
            return self._by_id[session_id]
        except KeyError:
            raise SessionError(f"no session {session_id!r}") from None

    def list(self) -> list[Session]:
        return list(self._by_id.values())

    def by_source(self, address: str) -> Session | None:
        return self._by_source.get(address)

    def authenticate(self, session_id: str, token: str) -> Session | None:
        session = self._by_id.get(session_id)
        if session is None:
            # Compare anyway so a wrong id and a wrong token take the same time.
            hmac.compare_digest(token.encode(), token.encode())
            return None
        if hmac.compare_digest(session.token.encode(), token.encode()):
            return session
        return None

    def replace_policy(self, session_id: str, policy: Policy, policy_text: str = "") -> Session:
        session = self.get(session_id)
        decider = Decider(policy)  # compile first: a bad policy never half-replaces
        session.policy, session.decider, session.policy_text = policy, decider, policy_text
        self._notify("policy-replaced", session)
        return session

    def add_canaries(self, session_id: str, values: list[bytes], labels: list[str] | None = None) -> list[str]:
        session = self.get(session_id)
        added = session.add_canaries(values, labels)
        self._notify("canaries-added", session)
        return added

    def delete(self, session_id: str) -> Session:
        session = self._by_id.pop(session_id, None)
        if session is None:
            raise SessionError(f"no session {session_id!r}")
        for src in session.sources:
            if self._by_source.get(src) is session:
                del self._by_source[src]
        for bound in session.secrets.values():
            self.placeholders.remove(bound)  # its placeholders are worthless from now on
        self._notify("deleted", session)
        return session
