"""SIGHUP's policy reload (SessionRegistry.reload_files, Gateway.reload) and the policy-file link through the
control API, with a real SQLite session store (the link survives a restart)."""

from __future__ import annotations

import logging

import pytest
from tornado.httpclient import HTTPClientError

from gateway.sessions.registry import SessionRegistry
from gateway.sessions.store import open_store

from .helpers import policy_text

A = "    - name: a\n      hosts: [{matchName: a.test}]\n"
B = "    - name: b\n      hosts: [{matchName: b.test}]\n"


def allowed(session, name: str) -> bool:
    return session.decider.dns(name).allowed


@pytest.fixture
def world(tmp_path):
    url = f"sqlite://{tmp_path / 'sessions.db'}"
    reg = SessionRegistry(open_store(url))
    f = tmp_path / "policy.yaml"
    f.write_text(policy_text(A, B))
    from gateway.policy import load_policy_file

    s = reg.create("box", load_policy_file(f), ["10.211.0.2"], policy_text=f.read_text(), policy_file=str(f))
    yield reg, s, f, url
    reg.store.close()


def test_a_changed_file_replaces_the_policy(world):
    reg, s, f, _ = world
    assert allowed(s, "a.test") and allowed(s, "b.test")
    assert reg.reload_files() == ([], [])  # unchanged: nothing to do
    f.write_text(policy_text(A))
    assert reg.reload_files() == ([s.id], [])
    assert allowed(s, "a.test") and not allowed(s, "b.test")
    assert s.policy_text == f.read_text()


@pytest.mark.parametrize("breakage", ["bad", "gone"])
def test_a_file_that_no_longer_loads_keeps_the_old_policy(world, caplog, breakage):
    reg, s, f, _ = world
    if breakage == "bad":
        f.write_text(policy_text(A) + "    - name: c\n      hosts: [{matchName: '*'}]\n")
    else:
        f.unlink()
    with caplog.at_level(logging.ERROR, "egressgw"):
        assert reg.reload_files() == ([], [s.id])
    assert allowed(s, "b.test")
    assert "the old one stays" in caplog.text and str(f) in caplog.text


def test_the_link_survives_a_restart(world):
    reg, s, f, url = world
    again = SessionRegistry(open_store(url))
    assert again.load() == 1
    restored = again.get(s.id)
    assert restored.policy_file == str(f)
    f.write_text(policy_text(B))
    assert again.reload_files() == ([s.id], [])
    assert not allowed(restored, "a.test") and allowed(restored, "b.test")
    again.store.close()


def test_a_policy_put_through_the_api_unlinks_the_file(world):
    reg, s, f, _ = world
    from gateway.policy import load_policy_text

    reg.replace_policy(s.id, load_policy_text(policy_text(B)), policy_text(B), policy_file="")
    f.write_text(policy_text(A))
    assert reg.reload_files() == ([], []) and not allowed(s, "a.test")
    reg.replace_policy(s.id, load_policy_text(policy_text(A)), policy_text(A))  # None: the link is kept as is
    assert s.policy_file == ""


def test_sessions_without_a_file_are_left_alone(tmp_path):
    from gateway.policy import load_policy_text

    reg = SessionRegistry()
    s = reg.create("api", load_policy_text(policy_text(A)), policy_text=policy_text(A))
    assert reg.reload_files() == ([], []) and allowed(s, "a.test")


def test_the_api_takes_and_validates_policy_file(tmp_path):
    """POST/PUT through the real control API (tornado) carry policyFile; a relative path is refused."""
    import asyncio
    import json

    import tornado.testing  # noqa: F401
    from tornado.httpclient import AsyncHTTPClient

    from gateway.sessions.api import ControlAPI

    reg = SessionRegistry()
    api = ControlAPI(reg, "tok")

    async def go():
        server = tornado.httpserver.HTTPServer(api.application())
        sock, port = tornado.testing.bind_unused_port()
        server.add_sockets([sock])
        client = AsyncHTTPClient()
        url = f"http://127.0.0.1:{port}/v1/sessions"
        headers = {"Authorization": "Bearer tok", "Content-Type": "application/json"}
        body = {"name": "x", "policy": policy_text(A), "policyFile": str(tmp_path / "p.yaml")}
        r = await client.fetch(url, method="POST", headers=headers, body=json.dumps(body))
        sid = json.loads(r.body)["id"]
        assert reg.get(sid).policy_file == str(tmp_path / "p.yaml")
        with pytest.raises(HTTPClientError) as e:
            await client.fetch(url, method="POST", headers=headers,
                               body=json.dumps({**body, "name": "y", "policyFile": "rel.yaml"}))
        assert e.value.code == 400 and b"absolute path" in e.value.response.body
        await client.fetch(f"{url}/{sid}/policy", method="PUT", headers=headers,
                           body=json.dumps({"policy": policy_text(B)}))
        assert reg.get(sid).policy_file == ""
        server.stop()

    import tornado.httpserver

    asyncio.run(go())
