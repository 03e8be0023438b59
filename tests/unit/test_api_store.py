"""Control API: GET /v1/ca, and writes while the session store is unavailable (503, nothing changes)."""

from __future__ import annotations

import pytest

from gateway.errors import ControlAPIError
from gateway.sessions.client import ControlClient
from gateway.sessions.registry import SessionRegistry
from gateway.sessions.store import MemoryStore, SessionStoreUnavailable

from .helpers import ALLOWED, PLAIN, policy_text
from .test_api import TOKEN, ControlServer

GOOD = policy_text(ALLOWED, name="good")
OTHER = policy_text(PLAIN, name="other")
PEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"


class _Switch(MemoryStore):
    url = "redis://store.test:6379/0"
    up = True

    def healthy(self) -> bool:
        return self.up

    def put(self, record: dict) -> None:
        if not self.up:
            raise SessionStoreUnavailable(f"session store {self.url} unreachable, nothing changed")

    def delete(self, session_id: str) -> None:
        self.put({})


def test_ca_bundle_is_served_and_absent_is_404(tmp_path):
    registry = SessionRegistry()
    with ControlServer(registry, TOKEN, str(tmp_path / "c.sock")) as srv:
        client = ControlClient(f"unix://{srv.unix_path}", TOKEN)
        with pytest.raises(ControlAPIError, match="no CA bundle"):
            client.ca_bundle()
        bundle = tmp_path / "sandbox-ca-bundle.pem"
        bundle.write_text(PEM)
        srv.api.ca_bundle = str(bundle)
        assert client.ca_bundle() == PEM
        with pytest.raises(ControlAPIError, match="bearer token"):
            ControlClient(f"unix://{srv.unix_path}", "wrong").ca_bundle()


def test_writes_while_the_store_is_down_are_503_and_change_nothing(tmp_path):
    store = _Switch()
    registry = SessionRegistry(store)
    with ControlServer(registry, TOKEN, str(tmp_path / "c.sock")) as srv:
        client = ControlClient(f"unix://{srv.unix_path}", TOKEN)
        made = client.create_session("a", GOOD)
        store.up = False
        for call in (lambda: client.create_session("b", GOOD), lambda: client.replace_policy(made["id"], OTHER),
                     lambda: client.delete_session(made["id"])):
            with pytest.raises(ControlAPIError, match="unreachable, nothing changed"):
                call()
        assert [s.name for s in registry.list()] == ["a"] and registry.get(made["id"]).policy.name == "good"
        store.up = True
        client.replace_policy(made["id"], OTHER)
        assert registry.get(made["id"]).policy.name == "other"
