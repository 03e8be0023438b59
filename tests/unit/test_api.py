"""gateway/sessions/api.py + client.py: the real tornado app on loopback TCP and on a unix socket."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import threading

import pytest
import tornado.httpserver
import tornado.netutil

from gateway.errors import ControlAPIError
from gateway.sessions.api import ControlAPI
from gateway.sessions.client import ControlClient
from gateway.sessions.registry import SessionRegistry

from .helpers import ALLOWED, PINNED, PLAIN, policy_text

TOKEN = "unit-control-token-0123456789abcdef"
GOOD = policy_text(ALLOWED, PINNED, name="good")
OTHER = policy_text(PLAIN, name="other")
BROKEN = (
    "apiVersion: egressgw.dev/v1alpha1\n"
    "kind: EgressPolicy\n"
    "metadata: {name: broken}\n"
    "spec:\n"
    "  egress:\n"
    "    - hosts: [{matchPattern: '*broken.test'}]\n"
    "      ports: [99999]\n"
    "      methods: [FETCH GET]\n"
)


class ControlServer:
    """The control API served by tornado in a thread with its own asyncio loop."""

    def __init__(self, registry, token, unix_path, ready=lambda: True):
        self.api = ControlAPI(registry, token, ready, proxy_address="127.0.0.1:3128")
        self.unix_path = unix_path
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[tornado.httpserver.HTTPServer] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True, name="control-api")

    def _main(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)

        async def setup():
            app = self.api.application()
            tcp = tornado.httpserver.HTTPServer(app)
            sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
            tcp.add_sockets(sockets)
            self.port = sockets[0].getsockname()[1]
            unix = tornado.httpserver.HTTPServer(app)
            unix.add_socket(tornado.netutil.bind_unix_socket(self.unix_path, mode=0o600))
            self._servers += [tcp, unix]

        self._loop.run_until_complete(setup())
        self._ready.set()
        self._loop.run_forever()
        for server in self._servers:
            server.stop()
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()

    def __enter__(self):
        self._thread.start()
        assert self._ready.wait(5), "control API did not start"
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if os.path.exists(self.unix_path):
            os.unlink(self.unix_path)


@pytest.fixture
def registry():
    return SessionRegistry()


@pytest.fixture
def server(registry, tmp_path):
    with ControlServer(registry, TOKEN, str(tmp_path / "control.sock")) as srv:
        yield srv


@pytest.fixture(params=["tcp", "unix"])
def client(request, server):
    url = f"http://127.0.0.1:{server.port}" if request.param == "tcp" else f"unix://{server.unix_path}"
    return ControlClient(url, TOKEN, timeout=5)


def test_health(client):
    assert client.health() == {"status": "ok", "sessions": 0}


def test_health_while_starting_is_503_with_a_readable_error(registry, tmp_path):
    with ControlServer(registry, TOKEN, str(tmp_path / "c.sock"), ready=lambda: False) as srv:
        with pytest.raises(ControlAPIError) as err:
            ControlClient(f"unix://{srv.unix_path}", TOKEN).health()
    assert str(err.value) == 'control API: HTTP 503 Service Unavailable: {"status": "starting", "sessions": 0}'


@pytest.mark.parametrize("token", ["", "wrong-token", TOKEN + "x", TOKEN[:-1], TOKEN.upper()])
def test_wrong_or_missing_token_is_401_and_never_echoed(server, token):
    for url in (f"http://127.0.0.1:{server.port}", f"unix://{server.unix_path}"):
        with pytest.raises(ControlAPIError) as err:
            ControlClient(url, token).list_sessions()
        message = str(err.value)
        assert message == ("control API: missing or wrong bearer token "
                           "(fix: send Authorization: Bearer <control token>)")
        assert TOKEN not in message and (not token or token not in message)


def test_trailing_whitespace_around_the_token_is_tolerated(server):
    assert ControlClient(f"http://127.0.0.1:{server.port}", TOKEN + " ").health()["status"] == "ok"


def test_401_carries_www_authenticate_and_creates_nothing(server, registry):
    sock = socket.create_connection(("127.0.0.1", server.port))
    body = json.dumps({"name": "x", "policy": GOOD}).encode()
    sock.sendall(b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Basic Zm9vOmJhcg==\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                 % (len(body), body))
    response = b""
    while chunk := sock.recv(65536):
        response += chunk
    sock.close()
    head = response.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("HTTP/1.1 401")
    assert 'www-authenticate: bearer realm="egressgw"' in head.lower()
    assert len(registry) == 0


def test_create_returns_the_token_once(client, registry):
    created = client.create_session("alpha", GOOD, ["10.211.0.2"])
    session = registry.get(created["id"])
    assert created["token"] == session.token
    assert created["proxy"] == "127.0.0.1:3128"
    assert {k: created[k] for k in ("name", "sources", "policy", "mode")} == {
        "name": "alpha", "sources": ["10.211.0.2"], "policy": "good", "mode": "enforce"}
    assert session.policy_text == GOOD
    listed = client.list_sessions()
    shown = client.get_session(created["id"])
    assert listed == [shown]
    assert "token" not in shown and session.token not in json.dumps(listed) + json.dumps(shown)
    assert client.health()["sessions"] == 1


def test_create_with_a_chosen_id(client):
    assert client.create_session("alpha", GOOD, session_id="s-chosen")["id"] == "s-chosen"
    assert client.get_session("s-chosen")["name"] == "alpha"


def test_duplicate_source_is_409(client, registry):
    first = client.create_session("alpha", GOOD, ["10.211.0.2"])
    with pytest.raises(ControlAPIError, match=rf"control API: source address 10.211.0.2 already belongs to session "
                                              rf"{first['id']} \(alpha\)"):
        client.create_session("beta", GOOD, ["10.211.0.2"])
    assert len(registry) == 1


def test_duplicate_id_is_409(client):
    client.create_session("alpha", GOOD, session_id="s-x")
    with pytest.raises(ControlAPIError, match="session s-x already exists"):
        client.create_session("beta", GOOD, session_id="s-x")


def test_broken_policy_is_400_with_every_problem_line(client, registry):
    with pytest.raises(ControlAPIError) as err:
        client.create_session("alpha", BROKEN, ["10.211.0.2"])
    lines = str(err.value).splitlines()
    assert lines[0] == "control API: policy rejected"
    problems = lines[1:]
    assert len(problems) >= 3, problems
    assert all(p.startswith("policy of session alpha:") for p in problems)
    assert any(":6:" in p and "matchPattern" in p for p in problems)
    assert any(":7:" in p and "99999" in p for p in problems)
    assert any(":8:" in p and "FETCH GET" in p for p in problems)
    assert len(registry) == 0


@pytest.mark.parametrize("body, message", [
    ({"policy": GOOD}, "'name' is required"),
    ({"name": "", "policy": GOOD}, "'name' is required"),
    ({"name": "a", "policy": GOOD, "sources": ["not-an-ip"]}, "'sources' must be a list of IP addresses"),
    ({"name": "a", "policy": GOOD, "sources": 5}, "'sources' must be a list of IP addresses"),
    ({"name": "a"}, "'policy' must be the policy file's YAML text"),
    ({"name": "a", "policy": "  "}, "'policy' must be the policy file's YAML text"),
    ({"name": "a", "policy": GOOD, "id": "x" * 65}, "'id' must be a short ASCII string"),
    ({"name": "a", "policy": GOOD, "id": "s-\u00e9"}, "'id' must be a short ASCII string"),
    ([1, 2], "body must be a JSON object"),
])
def test_create_validates_its_body(client, registry, body, message):
    with pytest.raises(ControlAPIError, match=f"^control API: {message}"):
        client.request("POST", "/v1/sessions", body)
    assert len(registry) == 0


def test_create_with_a_body_that_is_not_json(client):
    with pytest.raises(ControlAPIError, match="^control API: body is not JSON$"):
        client.request("POST", "/v1/sessions", "{not json")


@pytest.mark.parametrize("method, path", [
    ("GET", "/v1/sessions/s-nope"),
    ("DELETE", "/v1/sessions/s-nope"),
    ("GET", "/v1/sessions/s-nope/policy"),
    ("PUT", "/v1/sessions/s-nope/policy"),
])
def test_unknown_session_is_404(client, method, path):
    with pytest.raises(ControlAPIError, match="^control API: no session 's-nope'$"):
        client.request(method, path, GOOD if method == "PUT" else None, "application/yaml")


def test_replace_policy_with_yaml(client, registry):
    s = client.create_session("alpha", GOOD)
    summary = client.replace_policy(s["id"], OTHER)
    assert summary["policy"] == "other"
    session = registry.get(s["id"])
    assert session.policy.name == "other" and session.policy_text == OTHER
    assert session.decider.http("plain.test", 80, "GET", "/", tls=False).allowed
    assert client.request("GET", f"/v1/sessions/{s['id']}/policy") == OTHER


def test_replace_policy_with_json(client, registry):
    s = client.create_session("alpha", GOOD)
    summary = client.request("PUT", f"/v1/sessions/{s['id']}/policy", {"policy": OTHER})
    assert summary["policy"] == "other"
    assert registry.get(s["id"]).policy_text == OTHER


def test_broken_replacement_keeps_the_old_policy(client, registry):
    s = client.create_session("alpha", GOOD)
    before = registry.get(s["id"]).decider
    with pytest.raises(ControlAPIError) as err:
        client.replace_policy(s["id"], BROKEN)
    assert str(err.value).startswith("control API: policy rejected\npolicy of session alpha:")
    session = registry.get(s["id"])
    assert session.decider is before and session.policy_text == GOOD
    with pytest.raises(ControlAPIError, match="'policy' must be the policy file's YAML text"):
        client.request("PUT", f"/v1/sessions/{s['id']}/policy", {"policy": 7})
    assert registry.get(s["id"]).policy_text == GOOD


def test_get_policy_returns_the_yaml_text(client):
    s = client.create_session("alpha", GOOD)
    text = client.request("GET", f"/v1/sessions/{s['id']}/policy")
    assert text == GOOD


def test_delete_is_204_and_the_session_is_gone(client, registry):
    s = client.create_session("alpha", GOOD, ["10.211.0.2"])
    assert client.delete_session(s["id"]) is None
    assert len(registry) == 0 and registry.by_source("10.211.0.2") is None
    assert client.list_sessions() == []
    with pytest.raises(ControlAPIError, match="no session"):
        client.get_session(s["id"])


def test_unix_socket_is_mode_0600(server):
    st = os.stat(server.unix_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_client_pointed_at_a_dead_socket_names_the_url_and_a_fix(tmp_path):
    url = f"unix://{tmp_path}/gone.sock"
    with pytest.raises(ControlAPIError) as err:
        ControlClient(url, TOKEN).health()
    assert str(err.value) == (f"cannot reach the gateway control API at {url}: No such file or directory "
                              "(fix: is `egressgw run` up, with the same config?)")


def test_client_pointed_at_a_closed_port_names_the_url_and_a_fix():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(ControlAPIError, match=rf"cannot reach the gateway control API at {url}: Connection refused "
                                              r"\(fix: is `egressgw run` up"):
        ControlClient(url, TOKEN).list_sessions()


# ------------------------------------------------------------------------------------------- canaries

CANARY = "canary-value-9f8e7d6c5b4a"


def test_canaries_are_registered_by_label_and_never_echoed(client, registry, server):
    sid = client.create_session("c", GOOD)["id"]
    labels = client.add_canaries(sid, [CANARY, CANARY + "-2"], ["db-dump", "env"])
    assert labels == ["canary:db-dump", "canary:env"]
    assert client.add_canaries(sid, [CANARY + "-3"]) == ["canary:c3"]
    assert client.canaries(sid) == ["canary:c3", "canary:db-dump", "canary:env"]
    assert registry.get(sid).canaries["canary:env"] == (CANARY + "-2").encode()
    shown = json.dumps([client.get_session(sid), client.list_sessions(), client.canaries(sid)])
    assert CANARY not in shown and "canary:db-dump" in shown


@pytest.mark.parametrize("body, message", [
    ({"values": "x"}, "'values' must be a list of strings"),
    ({"values": []}, "at least one value"),
    ({"values": ["short"]}, "values[0]: a canary must be 8 to 4096 bytes"),
    ({"values": [CANARY], "labels": ["a", "b"]}, "one label per value"),
    ({"values": [CANARY], "labels": ["bad label!"]}, "labels[0]"),
])
def test_bad_canaries_are_400_without_the_value(client, body, message):
    sid = client.create_session("c", GOOD)["id"]
    with pytest.raises(ControlAPIError) as info:
        client.request("POST", f"/v1/sessions/{sid}/canaries", body)
    assert message in str(info.value) and CANARY not in str(info.value)


def test_duplicate_canary_label_and_unknown_session(client):
    sid = client.create_session("c", GOOD)["id"]
    client.add_canaries(sid, [CANARY], ["one"])
    with pytest.raises(ControlAPIError, match="already exists"):
        client.add_canaries(sid, [CANARY + "x"], ["one"])
    with pytest.raises(ControlAPIError, match="no session"):
        client.add_canaries("s-nope", [CANARY])


def test_canaries_need_the_token(server, registry):
    from gateway.policy import load_policy_text

    sid = registry.create("c", load_policy_text(GOOD)).id
    wrong = ControlClient(f"http://127.0.0.1:{server.port}", "wrong-token")
    with pytest.raises(ControlAPIError, match="bearer token"):
        wrong.add_canaries(sid, [CANARY])
    assert not registry.get(sid).canaries
