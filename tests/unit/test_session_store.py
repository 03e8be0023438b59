"""gateway/sessions/store.py: the store interface, the SQLite backend (a restart keeps sessions), store URLs."""

from __future__ import annotations

import json
import os
import sqlite3
import stat

import pytest

from gateway.config import config_from_dict
from gateway.errors import ConfigError
from gateway.policy import load_policy_text
from gateway.secrets.model import parse_secrets
from gateway.secrets.placeholders import make_placeholder
from gateway.sessions.registry import SessionRegistry
from gateway.sessions.store import MemoryStore, SessionStoreUnavailable, SqliteStore, open_store

from .helpers import ALLOWED, PLAIN, policy_text

TEXT_A = policy_text(ALLOWED, name="a")
TEXT_B = policy_text(PLAIN, name="b")
SECRETS = parse_secrets([
    {"name": "OPENAI_API_KEY", "source": "env://OPENAI_KEY", "hosts": ["api.openai.test"], "format": "Bearer {}"},
    {"name": "AWS_ACCESS_KEY_ID", "source": "env://AKID", "hosts": ["*.amazonaws.test"],
     "sigv4": {"secretAccessKey": "env://AWS_SECRET"}},
])


def _bound(specs):
    out = []
    for i, spec in enumerate(s for p in specs for s in (p, *p.derived())):
        out.append((spec, make_placeholder(f"sk-{i}" + "a1b2c3d4" * 5)))
    return out


def _registry(path) -> SessionRegistry:
    return SessionRegistry(SqliteStore(str(path)))


def test_restart_keeps_sessions_policies_sources_tokens_and_secret_specs(tmp_path):
    db = tmp_path / "state" / "sessions.db"
    first = _registry(db)
    a = first.create("alpha", load_policy_text(TEXT_A), ["10.211.0.2"], policy_text=TEXT_A, secrets=_bound(SECRETS))
    b = first.create("beta", load_policy_text(TEXT_A), [], session_id="s-beta", policy_text=TEXT_A)
    first.replace_policy(b.id, load_policy_text(TEXT_B), policy_text=TEXT_B)
    gone = first.create("gone", load_policy_text(TEXT_A), ["10.211.0.6"], policy_text=TEXT_A)
    first.delete(gone.id)
    first.store.close()

    again = _registry(db)
    assert again.load() == 2
    a2, b2 = again.get(a.id), again.get("s-beta")
    assert (a2.name, a2.sources, a2.policy_text, a2.created) == ("alpha", a.sources, TEXT_A, a.created)
    assert again.by_source("10.211.0.2") is a2 and again.by_source("10.211.0.6") is None
    assert b2.policy_text == TEXT_B and b2.policy.name == "b"
    assert b2.decider.http("plain.test", 80, "GET", "/", tls=False).allowed
    assert not b2.decider.http("allowed.test", 443, "GET", "/ok/x", tls=True).allowed
    # The token still works (only its hash was kept); a wrong one does not.
    assert again.authenticate(a.id, a.token) is a2
    assert again.authenticate(a.id, a.token + "x") is None and a2.token == ""
    # Secret specs and placeholders come back, companion AWS secrets included; the index knows the placeholders.
    assert a2.env() == a.env() and set(a2.env()) == {"OPENAI_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert a2.secrets["OPENAI_API_KEY"].spec == a.secrets["OPENAI_API_KEY"].spec
    assert a2.secrets["AWS_SECRET_ACCESS_KEY"].spec.parts == frozenset()
    assert a2.secrets["AWS_ACCESS_KEY_ID"].spec.sigv4 == (("secretAccessKey", "env://AWS_SECRET"),)
    assert len(again.placeholders) == 3
    hits = again.placeholders.scan(f"Bearer {a.secrets['OPENAI_API_KEY'].placeholder}", "headers")
    assert [h.secret.spec.name for h in hits] == ["OPENAI_API_KEY"]


def test_the_file_holds_no_token_and_no_value_and_is_private(tmp_path, monkeypatch):
    db = tmp_path / "sessions.db"
    reg = _registry(db)
    s = reg.create("alpha", load_policy_text(TEXT_A), policy_text=TEXT_A, secrets=_bound(SECRETS))
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
    raw = "\n".join(r[0] for r in sqlite3.connect(db).execute("SELECT record FROM sessions"))
    assert s.token not in raw and s.token_sha256 in raw
    record = json.loads(raw)
    assert {"token", "value"}.isdisjoint(record) and all(set(x) == {"spec", "placeholder"} for x in record["secrets"])


def test_a_record_that_cannot_be_rebuilt_is_no_session(tmp_path, caplog):
    db = tmp_path / "sessions.db"
    reg = _registry(db)
    s = reg.create("alpha", load_policy_text(TEXT_A), ["10.211.0.2"], policy_text=TEXT_A)
    broken = {**s.record(), "id": "s-broken", "sources": ["10.211.0.9"], "policy_text": "spec: [not a policy"}
    reg.store.put(broken)
    reg.store._db.execute("INSERT INTO sessions (id, record) VALUES ('s-garbage', '{not json')")
    again = _registry(db)
    assert again.load() == 1
    assert again.by_source("10.211.0.9") is None
    assert "s-broken" in caplog.text and "not loaded" in caplog.text
    assert "s-garbage" in caplog.text and "not a JSON object" in caplog.text


def test_remote_change_replaces_in_place_and_a_bad_one_removes(tmp_path):
    reg = SessionRegistry()
    s = reg.create("alpha", load_policy_text(TEXT_A), ["10.211.0.2"], policy_text=TEXT_A)
    reg.apply(s.id, {**s.record(), "policy_text": TEXT_B, "rev": "r2"})
    assert reg.get(s.id) is s and s.policy.name == "b" and s.rev == "r2"
    reg.apply(s.id, {**s.record(), "policy_text": TEXT_B, "rev": "r2"})  # same rev: nothing to do
    reg.apply(s.id, {**s.record(), "policy_text": "kind: nonsense", "rev": "r3"})
    assert s.id not in reg.ids() and reg.by_source("10.211.0.2") is None
    reg.apply("s-never", None)  # deleting what is not there is fine


class _DownStore(MemoryStore):
    url = "redis://down.test:6379/0"
    up = True

    def healthy(self) -> bool:
        return self.up

    def put(self, record: dict) -> None:
        if not self.up:
            raise SessionStoreUnavailable("session store down")


def test_unhealthy_store_fails_every_lookup_closed_and_writes_change_nothing():
    store = _DownStore()
    reg = SessionRegistry(store)
    s = reg.create("alpha", load_policy_text(TEXT_A), ["10.211.0.2"], policy_text=TEXT_A)
    store.up = False
    for lookup in (lambda: reg.by_source("10.211.0.2"), lambda: reg.authenticate(s.id, s.token),
                   lambda: reg.current(s)):
        with pytest.raises(SessionStoreUnavailable):
            lookup()
    with pytest.raises(SessionStoreUnavailable):
        reg.replace_policy(s.id, load_policy_text(TEXT_B), policy_text=TEXT_B)
    assert s.policy.name == "a"
    with pytest.raises(SessionStoreUnavailable):
        reg.create("beta", load_policy_text(TEXT_A), policy_text=TEXT_A)
    assert len(reg) == 1
    store.up = True
    assert reg.by_source("10.211.0.2") is s and reg.current(s)


@pytest.mark.parametrize("url, kind", [
    ("memory", "MemoryStore"),
    ("sqlite://{tmp}/s.db", "SqliteStore"),
    ("redis://127.0.0.1:1/0", "RedisStore"),
])
def test_open_store(tmp_path, url, kind):
    store = open_store(url.format(tmp=tmp_path))
    assert type(store).__name__ == kind
    store.close()


def test_redis_url_shown_without_password():
    store = open_store("redis://:hunter2@127.0.0.1:1/0?prefix=x:")
    assert "hunter2" not in store.url and store.hash_key == "x:sessions"


@pytest.mark.parametrize("raw, expect", [
    ({}, "sqlite:///var/lib/egressgw/sessions.db"),
    ({"sessions": {"store": "memory"}}, "memory"),
    ({"sessions": {"store": "sqlite://state/s.db"}}, "sqlite:///etc/egressgw/state/s.db"),
    ({"sessions": {"store": "redis://10.0.0.5:6379/2"}}, "redis://10.0.0.5:6379/2"),
])
def test_config_sessions_store(raw, expect):
    from pathlib import Path

    assert config_from_dict(raw, "c.yaml", base_dir=Path("/etc/egressgw")).session_store == expect


@pytest.mark.parametrize("value", ["postgres://x", "sqlite://", 5, "/var/lib/s.db"])
def test_config_sessions_store_errors_name_the_fix(value):
    with pytest.raises(ConfigError, match=r"c.yaml: sessions.store: .*fix: memory, sqlite:///"):
        config_from_dict({"sessions": {"store": value}}, "c.yaml")


def test_open_store_errors():
    with pytest.raises(ConfigError, match="unknown store"):
        open_store("etcd://x")
    with pytest.raises(ConfigError, match="absolute path"):
        open_store("sqlite://rel.db")


CANARY = b"canary-3e8d1f0a7c5b9264"


def _blocked_by_detection(registry, session_id: str, value: bytes) -> bool:
    import asyncio

    return asyncio.run(blocked_by_detection(registry, session_id, value))


async def blocked_by_detection(registry, session_id: str, value: bytes) -> bool:
    """The real detection addon of `registry` on a request carrying `value` base64-encoded in a header."""
    import base64

    from tests.unit.test_detection_addon import Audit, flow_for

    from gateway.addons.detection import Detection
    from gateway.secrets.backends import SecretStore

    addon = Detection(registry, SecretStore(), Audit())
    f = flow_for(registry.get(session_id), host="allowed.test", path="/ok/x",
                 headers=[("X-Note", base64.b64encode(value).decode())], method="GET")
    await addon.requestheaders(f)
    return f.response is not None and f.response.status_code == 403 and "canary:" in str(f.metadata)


def test_canaries_survive_a_restart_and_are_detected(tmp_path):
    db = tmp_path / "sessions.db"
    first = _registry(db)
    s = first.create("alpha", load_policy_text(TEXT_A), policy_text=TEXT_A)
    assert first.add_canaries(s.id, [CANARY], ["db-dump"]) == ["canary:db-dump"]
    first.store.close()

    again = _registry(db)
    again.load()
    assert again.get(s.id).canaries == {"canary:db-dump": CANARY}
    assert again.get(s.id).summary()["canaries"] == ["canary:db-dump"]  # labels only, never a value
    assert _blocked_by_detection(again, s.id, CANARY)


def test_canaries_are_written_to_the_store_first():
    store = _DownStore()
    reg = SessionRegistry(store)
    s = reg.create("alpha", load_policy_text(TEXT_A), policy_text=TEXT_A)
    store.up = False
    with pytest.raises(SessionStoreUnavailable):
        reg.add_canaries(s.id, [CANARY])
    assert s.canaries == {}  # a refused write changes nothing locally either


@pytest.mark.parametrize("canaries", [["not", "a", "mapping"], {"canary:x": "!!not base64!!"}])
def test_a_record_with_malformed_canaries_is_no_session(canaries, caplog):
    reg = SessionRegistry()
    reg.apply("s-bad", {**SessionRegistry().create("x", load_policy_text(TEXT_A), policy_text=TEXT_A).record(),
                        "id": "s-bad", "canaries": canaries})
    assert "s-bad" not in reg.ids() and "not loaded" in caplog.text


TEAM_RULES = """\
[[rules]]
id = "acme-token"
description = "ACME token"
regex = '''acme_[a-z0-9]{32}'''
keywords = ["acme_"]
"""


def test_a_policy_with_relative_rules_files_survives_a_restart(tmp_path):
    """rulesFiles are relative to the policy's directory: the record keeps it, a reload reads them again."""
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "team.toml").write_text(TEAM_RULES)
    text = TEXT_A + "  detection:\n    rulesFiles: [team.toml]\n"
    pdir = str(tmp_path / "policies")
    db = tmp_path / "sessions.db"
    first = _registry(db)
    s = first.create("alpha", load_policy_text(text, base_dir=pdir), policy_text=text, policy_dir=pdir)
    first.replace_policy(s.id, load_policy_text(text, base_dir=pdir), policy_text=text, policy_dir=pdir)
    first.store.close()
    again = _registry(db)
    assert again.load() == 1  # before: the relative path could not be resolved and the session was lost
    s2 = again.get(s.id)
    assert s2.policy_dir == pdir and [p.ids for p in s2.policy.detection.packs] == [("acme-token",)]
