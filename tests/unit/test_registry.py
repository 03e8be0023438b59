"""gateway/sessions/registry.py: sessions, lookups, live policy replacement, DNS memory."""

from __future__ import annotations

import pytest

from gateway.errors import SessionError
from gateway.policy import Decider
from gateway.sessions import registry as registry_mod
from gateway.sessions.registry import DNS_MEMORY_LIMIT, SessionRegistry

from .helpers import ALLOWED, PLAIN, policy, policy_text


@pytest.fixture
def reg():
    r = SessionRegistry()
    r.events = []
    r.subscribe(lambda what, s: r.events.append((what, s.id)))
    return r


def test_create_get_list_delete(reg):
    a = reg.create("alpha", policy(), ["10.211.0.2"], policy_text="text-a")
    b = reg.create("beta", policy(), ["10.211.0.6", "10.211.0.7"], session_id="s-beta")
    assert a.id.startswith("s-") and len(a.id) == 18
    assert b.id == "s-beta"
    assert reg.get(a.id) is a and reg.get("s-beta") is b
    assert reg.list() == [a, b]
    assert len(reg) == 2
    assert reg.by_source("10.211.0.2") is a
    assert reg.by_source("10.211.0.7") is b
    assert reg.by_source("10.211.0.3") is None
    assert a.policy_text == "text-a"
    assert isinstance(a.decider, Decider) and a.decider.policy is a.policy
    assert reg.delete(a.id) is a
    assert reg.list() == [b] and len(reg) == 1
    assert reg.by_source("10.211.0.2") is None
    with pytest.raises(SessionError, match=r"no session 's-[0-9a-f]{16}'"):
        reg.get(a.id)
    with pytest.raises(SessionError, match="no session"):
        reg.delete(a.id)
    assert reg.events == [("created", a.id), ("created", "s-beta"), ("deleted", a.id)]


def test_ids_and_tokens_are_unique_and_random(reg):
    sessions = [reg.create(f"n{i}", policy()) for i in range(50)]
    assert len({s.id for s in sessions}) == 50
    assert len({s.token for s in sessions}) == 50
    assert all(len(s.token) >= 32 for s in sessions)


def test_duplicate_source_refused_and_nothing_changes(reg):
    a = reg.create("alpha", policy(), ["10.211.0.2"])
    with pytest.raises(SessionError, match=rf"source address 10.211.0.2 already belongs to session {a.id} \(alpha\)"
                                           r" \(fix: delete that session first\)"):
        reg.create("beta", policy(), ["10.211.0.9", "10.211.0.2"])
    assert reg.list() == [a]
    assert reg.by_source("10.211.0.9") is None  # not half-registered
    assert reg.events == [("created", a.id)]


def test_a_deleted_sessions_source_can_be_reused(reg):
    a = reg.create("alpha", policy(), ["10.211.0.2"])
    reg.delete(a.id)
    b = reg.create("beta", policy(), ["10.211.0.2"])
    assert reg.by_source("10.211.0.2") is b


def test_duplicate_id_refused(reg):
    reg.create("alpha", policy(), session_id="s-fixed")
    with pytest.raises(SessionError, match=r"session s-fixed already exists \(fix:"):
        reg.create("other", policy(), session_id="s-fixed")
    assert reg.get("s-fixed").name == "alpha"


@pytest.mark.parametrize("which, token, ok", [
    ("right", "right", True),
    ("right", "wrong", False),
    ("right", "", False),
    ("unknown", "right", False),
    ("other", "right", False),  # another session's token does not open this one
])
def test_authenticate(reg, which, token, ok):
    a = reg.create("alpha", policy())
    b = reg.create("beta", policy())
    session_id = {"right": a.id, "unknown": "s-nope", "other": b.id}[which]
    secret = {"right": a.token, "wrong": a.token[:-1] + ("x" if a.token[-1] != "x" else "y"), "": ""}[token]
    assert reg.authenticate(session_id, secret) is (a if ok else None)


def test_replace_policy_swaps_policy_decider_and_text_together(reg):
    s = reg.create("alpha", policy(ALLOWED), policy_text="old")
    old_decider = s.decider
    assert s.decider.http("plain.test", 80, "GET", "/", tls=False).action == "deny"
    new = policy(PLAIN, name="newer")
    assert reg.replace_policy(s.id, new, policy_text="new") is s
    assert (s.policy, s.policy_text) == (new, "new")
    assert s.decider is not old_decider and s.decider.policy is new
    assert s.decider.http("plain.test", 80, "GET", "/", tls=False).action == "allow"
    assert s.decider.http("allowed.test", 443, "GET", "/ok/x", tls=True).action == "deny"
    # a decision already taken with the old decider stands: the old object still answers the old way
    assert old_decider.http("allowed.test", 443, "GET", "/ok/x", tls=True).action == "allow"
    assert reg.events[-1] == ("policy-replaced", s.id)


def test_a_policy_that_fails_to_compile_never_half_applies(reg):
    s = reg.create("alpha", policy(ALLOWED), policy_text="old")
    before = (s.policy, s.decider, s.policy_text)
    with pytest.raises(AttributeError):
        reg.replace_policy(s.id, object(), policy_text="broken")  # Decider() cannot compile it
    assert (s.policy, s.decider, s.policy_text) == before
    assert reg.events == [("created", s.id)]


def test_replace_policy_of_unknown_session(reg):
    with pytest.raises(SessionError, match="no session 's-nope'"):
        reg.replace_policy("s-nope", policy())


def test_every_listener_is_notified(reg):
    seen = []
    reg.subscribe(lambda what, s: seen.append((what, s.name)))
    s = reg.create("alpha", policy())
    reg.replace_policy(s.id, policy())
    reg.delete(s.id)
    assert seen == [("created", "alpha"), ("policy-replaced", "alpha"), ("deleted", "alpha")]
    assert [w for w, _ in reg.events] == ["created", "policy-replaced", "deleted"]


def test_remember_and_names_for(reg):
    s = reg.create("alpha", policy())
    assert s.names_for("198.18.1.10") == frozenset()
    s.remember("198.18.1.10", "a.test")
    s.remember("198.18.1.10", "b.test")
    s.remember("198.18.1.10", "a.test")
    s.remember("198.18.1.11", "a.test")
    assert s.names_for("198.18.1.10") == {"a.test", "b.test"}
    assert s.names_for("198.18.1.11") == {"a.test"}
    other = reg.create("beta", policy())
    assert other.names_for("198.18.1.10") == frozenset()  # memories are per session


def test_dns_memory_is_bounded_lru(reg):
    s = reg.create("alpha", policy())
    s.remember("addr-0", "first.test")
    for i in range(1, DNS_MEMORY_LIMIT):
        s.remember(f"addr-{i}", "n.test")
    s.remember("addr-0", "again.test")  # used again: now the most recent
    s.remember("overflow-1", "n.test")  # evicts the least recently used: addr-1
    assert s.names_for("addr-0") == {"first.test", "again.test"}
    assert s.names_for("addr-1") == frozenset()
    assert s.names_for("addr-2") == {"n.test"}
    assert s.names_for("overflow-1") == {"n.test"}
    s.remember("overflow-2", "n.test")
    assert s.names_for("addr-2") == frozenset()
    assert len(s._names_by_addr) == DNS_MEMORY_LIMIT


def test_dns_memory_limit_is_read_at_call_time(reg, monkeypatch):
    monkeypatch.setattr(registry_mod, "DNS_MEMORY_LIMIT", 2)
    s = reg.create("alpha", policy())
    for name in ("a", "b", "c"):
        s.remember(f"198.18.1.{ord(name)}", name)
    assert [s.names_for(f"198.18.1.{ord(n)}") for n in "abc"] == [frozenset(), {"b"}, {"c"}]


def test_summary_never_carries_the_token(reg):
    s = reg.create("alpha", policy(ALLOWED, name="pol", mode="report"), ["10.211.0.6", "10.211.0.2"],
                   policy_text=policy_text(ALLOWED))
    summary = s.summary()
    assert summary == {"id": s.id, "name": "alpha", "sources": ["10.211.0.2", "10.211.0.6"], "policy": "pol",
                       "mode": "report", "created": s.created, "secrets": [], "canaries": [], "env": {}}
    assert s.token not in repr(summary) and s.token not in repr(s)
