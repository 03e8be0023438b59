"""Sessions: who a sandbox is, and which policy governs it.

A session binds an id, a policy and the ways traffic is mapped to it: source
addresses (transparent mode) and a token (explicit-proxy credentials). The
registry is the one place the gateway asks "whose traffic is this?".

Replacing a session's policy swaps one reference: a decision already taken
stands, the next request meets the new policy. Lookups are O(1) dicts.

Every change is written through to a `SessionStore` (store.py: memory, SQLite,
Redis) before it takes effect here; `load()` rebuilds the sessions a store
holds, and `apply()` takes changes other replicas made (Redis). A store that
cannot vouch for its sessions (`healthy()` false) makes every lookup raise
`SessionStoreUnavailable`: traffic is refused until it is back.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import re
import time
from secrets import token_hex, token_urlsafe
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from gateway.errors import PolicyError, SessionError
from gateway.policy import Decider, Policy, load_policy_file, load_policy_text
from gateway.secrets.model import BoundSecret, SecretSpec
from gateway.secrets.placeholders import core_of
from gateway.secrets.substitute import PlaceholderIndex
from gateway.sessions.store import (
    RECORD_VERSION,
    MemoryStore,
    SessionStore,
    SessionStoreUnavailable,
    decode_secret,
    encode_secret,
    token_hash,
)

logger = logging.getLogger("egressgw")

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
    token_sha256: str = field(repr=False)
    policy: Policy
    decider: Decider = field(repr=False)
    token: str = field(default="", repr=False)  # only on the replica that created it, to answer the creator
    rev: str = ""  # changes with every write: replicas compare it to skip what they already have
    sources: frozenset[str] = frozenset()
    policy_text: str = field(default="", repr=False)
    policy_dir: str | None = None  # where the policy's relative paths (detection rulesFiles) are resolved
    policy_file: str = ""  # the file the policy came from (`sandbox up --policy`): SIGHUP re-reads it
    secrets: dict[str, BoundSecret] = field(default_factory=dict, repr=False)
    canaries: dict[str, bytes] = field(default_factory=dict, repr=False)  # "canary:LABEL" -> value
    created: float = field(default_factory=time.time)
    worker: int | None = None  # the worker process serving it (gateway.workers); None: a one-process gateway
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
            **({"worker": self.worker} if self.worker is not None else {}),
        }

    def record(self) -> dict:
        """What a store keeps: no token (its hash), no secret value (specs and placeholders)."""
        return {
            "v": RECORD_VERSION,
            "id": self.id,
            "name": self.name,
            "rev": self.rev,
            "token_sha256": self.token_sha256,
            "sources": sorted(self.sources),
            "policy_text": self.policy_text,
            "policy_dir": self.policy_dir,
            "policy_file": self.policy_file,
            "secrets": [encode_secret(s.spec, s.placeholder) for s in self.secrets.values()],
            # Canaries are detection bait, not credentials: kept (base64) so every replica and a restart
            # still detect them (docs/sessions.md#canaries).
            "canaries": {label: base64.b64encode(v).decode() for label, v in self.canaries.items()},
            "created": self.created,
            **({"worker": self.worker} if self.worker is not None else {}),
        }

    def check_canaries(self, values: list[bytes], labels: list[str] | None = None) -> dict[str, bytes]:
        """The canaries to add ({"canary:LABEL": value}), changing nothing. ValueError (never naming a value)."""
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
        return added

    def add_canaries(self, values: list[bytes], labels: list[str] | None = None) -> list[str]:
        """In memory only (a session of no registry); `SessionRegistry.add_canaries` also stores them."""
        added = self.check_canaries(values, labels)
        self.canaries = {**self.canaries, **added}
        return list(added)


def _canaries_of(record: dict) -> dict[str, bytes]:
    """A record's canaries; ValueError when malformed (the record is then not loaded: fail closed)."""
    raw = record.get("canaries") or {}
    if not isinstance(raw, dict):
        raise ValueError("'canaries' is not a mapping")
    try:
        return {str(k): base64.b64decode(v, validate=True) for k, v in raw.items()}
    except (binascii.Error, TypeError):
        raise ValueError("a canary is not valid base64") from None


class SessionRegistry:
    """Sessions in memory, written through to a store. Listeners are told of every change (flow log, metrics)."""

    def __init__(self, store: SessionStore | None = None, worker: int | None = None) -> None:
        """`worker`: this registry is worker `worker`'s (gateway.workers): it holds only the sessions pinned to it."""
        self.store = store if store is not None else MemoryStore()
        self.worker = worker
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

    # -- lookups: the only calls on the traffic path --------------------------------------------
    def _verified(self) -> None:
        if not self.store.healthy():
            raise SessionStoreUnavailable(f"session store {self.store.url} unavailable: sessions cannot be verified")

    def get(self, session_id: str) -> Session:
        try:
            return self._by_id[session_id]
        except KeyError:
            raise SessionError(f"no session {session_id!r}") from None

    def list(self) -> list[Session]:
        return list(self._by_id.values())

    def by_source(self, address: str) -> Session | None:
        """Raises SessionStoreUnavailable when the store cannot vouch for its sessions."""
        self._verified()
        return self._by_source.get(address)

    def authenticate(self, session_id: str, token: str) -> Session | None:
        """Raises SessionStoreUnavailable when the store cannot vouch for its sessions."""
        self._verified()
        digest = token_hash(token).encode()
        session = self._by_id.get(session_id)
        if session is None:
            # Compare anyway so a wrong id and a wrong token take the same time.
            hmac.compare_digest(digest, digest)
            return None
        if hmac.compare_digest(session.token_sha256.encode(), digest):
            return session
        return None

    def holds(self, session: Session) -> bool:
        """Whether this very session object is still registered (no store check: for caches)."""
        return self._by_id.get(session.id) is session

    def current(self, session: Session) -> bool:
        """Whether a session a connection holds still exists (raises SessionStoreUnavailable, as lookups do)."""
        self._verified()
        return self._by_id.get(session.id) is session

    # -- changes made here ------------------------------------------------------------------------
    def create(
        self,
        name: str,
        policy: Policy,
        sources: Iterable[str] = (),
        session_id: str | None = None,
        policy_text: str = "",
        secrets: Iterable[tuple[SecretSpec, str]] = (),
        policy_dir: str | None = None,
        policy_file: str = "",
        worker: int | None = None,
    ) -> Session:
        """Register a session. `secrets` pairs each spec with the placeholder made for it."""
        sources = frozenset(sources)
        if session_id is not None and session_id in self._by_id:
            raise SessionError(f"session {session_id} already exists (fix: delete it first or pick another id)")
        self._check_sources(sources)
        token = token_urlsafe(24)
        session = Session(
            id=session_id or "s-" + token_hex(8),
            name=name,
            token_sha256=token_hash(token),
            token=token,
            policy=policy,
            decider=Decider(policy),
            sources=sources,
            policy_text=policy_text,
            policy_dir=policy_dir,
            policy_file=policy_file,
            rev=token_hex(8),
            worker=worker,
        )
        for spec, placeholder in secrets:
            session.secrets[spec.name] = BoundSecret(session.id, spec, placeholder, core_of(placeholder))
        self.store.put(session.record())  # the store first: a session it refused never exists
        self._add(session)
        return session

    def replace_policy(self, session_id: str, policy: Policy, policy_text: str = "",
                       policy_dir: str | None = None, policy_file: str | None = None) -> Session:
        """`policy_file`: None keeps the session's link to its file; "" drops it (SIGHUP then leaves it alone)."""
        session = self.get(session_id)
        decider = Decider(policy)  # compile first: a bad policy never half-replaces
        rev = token_hex(8)
        linked = session.policy_file if policy_file is None else policy_file
        self.store.put({**session.record(), "policy_text": policy_text, "policy_dir": policy_dir,
                        "policy_file": linked, "rev": rev})
        session.policy_file = linked
        self._swap_policy(session, policy, decider, policy_text, rev)
        session.policy_dir = policy_dir
        return session

    def reload_files(self) -> tuple[list[str], list[str]]:
        """Re-read every session's policy file (SIGHUP). A changed file replaces the policy; a file that no
        longer loads (or is gone) leaves the old policy in place, logged. Returns (reloaded, failed) ids."""
        reloaded, failed = [], []
        for session in self.list():
            if not session.policy_file:
                continue
            try:
                policy = load_policy_file(session.policy_file)
                text = Path(session.policy_file).read_text(encoding="utf-8-sig")
            except (PolicyError, OSError) as e:
                logger.error("SIGHUP: policy of session %s (%s) not reloaded, the old one stays: %s",
                             session.id, session.name, e)
                failed.append(session.id)
                continue
            if text != session.policy_text:
                self.replace_policy(session.id, policy, policy_text=text,
                                    policy_dir=str(Path(session.policy_file).parent))
                logger.warning("SIGHUP: session %s (%s) now has the policy in %s", session.id, session.name,
                               session.policy_file)
                reloaded.append(session.id)
        return reloaded, failed

    def delete(self, session_id: str) -> Session:
        session = self.get(session_id)
        self.store.delete(session_id)
        return self._remove(session)

    # -- changes from the store ---------------------------------------------------------------
    def load(self) -> int:
        """Rebuild every session the store holds (at start). Returns how many."""
        for record in self.store.load():
            self.apply(record["id"], record)
        return len(self._by_id)

    def apply(self, session_id: str, record: dict | None) -> None:
        """Take a change made elsewhere (another replica, or an earlier run). None: deleted."""
        session = self._by_id.get(session_id)
        if record is not None and self.worker is not None and record.get("worker", 0) != self.worker:
            record = None  # pinned to another worker: not ours to serve
        if record is None:
            if session is not None:
                self._remove(session)
            return
        if session is not None and session.rev == record.get("rev"):
            return
        try:
            # rulesFiles are read again from the policy's directory: the same path on every replica
            policy = load_policy_text(record["policy_text"], source=f"policy of session {record['name']}",
                                      base_dir=record.get("policy_dir"))
            if session is not None:
                canaries = _canaries_of(record)
                self._swap_policy(session, policy, Decider(policy), record["policy_text"], record.get("rev", ""))
                session.policy_dir = record.get("policy_dir")
                if canaries != session.canaries:
                    session.canaries = canaries
                    self._notify("canaries-added", session)
                return
            fresh = self._from_record(record, policy)
            self._check_sources(fresh.sources)
        except (PolicyError, SessionError, KeyError, TypeError, ValueError) as e:
            # Fail closed: a record that cannot be rebuilt is no session (and an old policy must not linger).
            logger.error("session %s from store %s not loaded: %s", session_id, self.store.url, e)
            if session is not None:
                self._remove(session)
            return
        self._add(fresh)

    def ids(self) -> set[str]:
        return set(self._by_id)

    def _from_record(self, record: dict, policy: Policy) -> Session:
        session = Session(
            id=record["id"],
            name=record["name"],
            token_sha256=record["token_sha256"],
            policy=policy,
            decider=Decider(policy),
            sources=frozenset(record.get("sources", ())),
            policy_text=record["policy_text"],
            policy_dir=record.get("policy_dir"),
            policy_file=record.get("policy_file", ""),
            created=record.get("created", time.time()),
            rev=record.get("rev", ""),
            canaries=_canaries_of(record),
            worker=record.get("worker"),
        )
        for raw in record.get("secrets", ()):
            spec, placeholder = decode_secret(raw)
            session.secrets[spec.name] = BoundSecret(session.id, spec, placeholder, core_of(placeholder))
        return session

    # -- the in-memory indexes ------------------------------------------------------------------
    def _check_sources(self, sources: frozenset[str]) -> None:
        for src in sources:
            other = self._by_source.get(src)
            if other is not None:
                raise SessionError(
                    f"source address {src} already belongs to session {other.id} ({other.name}) "
                    "(fix: delete that session first)"
                )

    def _add(self, session: Session) -> None:
        self._by_id[session.id] = session
        for src in session.sources:
            self._by_source[src] = session
        for bound in session.secrets.values():
            self.placeholders.add(bound)
        self._notify("created", session)

    def _swap_policy(self, session: Session, policy: Policy, decider: Decider, text: str, rev: str) -> None:
        # In place: connections holding this session meet the new policy on their next request.
        session.policy, session.decider, session.policy_text, session.rev = policy, decider, text, rev
        self._notify("policy-replaced", session)

    def add_canaries(self, session_id: str, values: list[bytes], labels: list[str] | None = None) -> list[str]:
        """Register canaries: written to the store first (every replica detects them), then in force here."""
        session = self.get(session_id)
        added = session.check_canaries(values, labels)
        rev = token_hex(8)
        record = session.record()
        record["canaries"].update((k, base64.b64encode(v).decode()) for k, v in added.items())
        self.store.put({**record, "rev": rev})
        session.canaries = {**session.canaries, **added}
        session.rev = rev
        self._notify("canaries-added", session)
        return list(added)

    def _remove(self, session: Session) -> Session:
        self._by_id.pop(session.id, None)
        for src in session.sources:
            if self._by_source.get(src) is session:
                del self._by_source[src]
        for bound in session.secrets.values():
            self.placeholders.remove(bound)  # its placeholders are worthless from now on
        self._notify("deleted", session)
        return session
