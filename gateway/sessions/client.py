"""A small client for the control API, over a unix socket or loopback TCP.

Used by the CLI (`sandbox up`, `session ...`) and by tests. Standard library
only, so it can run anywhere a session needs to be created.
"""

from __future__ import annotations

import http.client
import json
import socket
from urllib.parse import quote

from gateway.errors import ControlAPIError


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except OSError:
            sock.close()  # a gateway not up yet is polled: don't leak a descriptor per attempt
            raise
        self.sock = sock


class ControlClient:
    def __init__(self, url: str, token: str, timeout: float = 10.0):
        self.url = url
        self.token = token
        self.timeout = timeout

    def _connection(self) -> http.client.HTTPConnection:
        if self.url.startswith("unix://"):
            return _UnixConnection(self.url.removeprefix("unix://"), self.timeout)
        hostport = self.url.removeprefix("http://").rstrip("/")
        return http.client.HTTPConnection(hostport, timeout=self.timeout)

    def request(self, method: str, path: str, body: object = None, content_type: str = "application/json"):
        headers = {"Authorization": f"Bearer {self.token}"}
        data = None
        if body is not None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        conn = self._connection()
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except OSError as e:
            raise ControlAPIError(
                f"cannot reach the gateway control API at {self.url}: {e.strerror or e} "
                "(fix: is `egressgw run` up, with the same config?)"
            ) from None
        finally:
            conn.close()
        if resp.status == 204:
            return None
        try:
            payload = json.loads(raw) if resp.headers.get("Content-Type", "").startswith("application/json") else raw.decode()
        except ValueError:
            payload = raw.decode("utf-8", "replace")
        if resp.status >= 400:
            message = payload.get("error") if isinstance(payload, dict) else str(payload)
            if not message:  # e.g. health's 503 {"status": "starting"}: say what came back, not "None"
                shown = json.dumps(payload) if isinstance(payload, dict) else payload
                message = f"HTTP {resp.status} {resp.reason}: {shown}"
            problems = payload.get("problems", []) if isinstance(payload, dict) else []
            raise ControlAPIError("\n".join([f"control API: {message}", *problems]))
        return payload

    def health(self) -> dict:
        return self.request("GET", "/v1/health")

    def create_session(self, name: str, policy_text: str, sources=(), session_id: str | None = None,
                       secrets: list[dict] | None = None, policy_dir: str | None = None,
                       policy_file: str | None = None, worker: int | None = None) -> dict:
        body = {"name": name, "policy": policy_text, "sources": list(sources)}
        if policy_dir:
            body["policyDir"] = policy_dir
        if policy_file:
            body["policyFile"] = policy_file  # the gateway re-reads it on SIGHUP
        if secrets:
            body["secrets"] = secrets
        if session_id:
            body["id"] = session_id
        if worker is not None:
            body["worker"] = worker  # pinned to that worker process (GET /v1/workers "pick")
        return self.request("POST", "/v1/sessions", body)

    def workers(self) -> dict:
        """The worker processes and the one the next session should go to (a gateway with workers > 1)."""
        return self.request("GET", "/v1/workers")

    def ca_bundle(self) -> str:
        """The PEM bundle sandboxes must trust (the gateway CA, plus the roots for pass-through hosts)."""
        return self.request("GET", "/v1/ca")

    def list_sessions(self) -> list[dict]:
        return self.request("GET", "/v1/sessions")["sessions"]

    def get_session(self, session_id: str) -> dict:
        return self.request("GET", f"/v1/sessions/{quote(session_id, safe='')}")

    def delete_session(self, session_id: str) -> None:
        self.request("DELETE", f"/v1/sessions/{quote(session_id, safe='')}")

    def replace_policy(self, session_id: str, policy_text: str, policy_dir: str | None = None) -> dict:
        path = f"/v1/sessions/{quote(session_id, safe='')}/policy"
        if policy_dir:
            return self.request("PUT", path, {"policy": policy_text, "policyDir": policy_dir})
        return self.request("PUT", path, policy_text, "application/yaml")

    def add_canaries(self, session_id: str, values: list[str], labels: list[str] | None = None) -> list[str]:
        """Register canary values for a session; returns their labels (`canary:LABEL`). Values are never echoed."""
        body: dict = {"values": list(values)}
        if labels is not None:
            body["labels"] = list(labels)
        return self.request("POST", f"/v1/sessions/{quote(session_id, safe='')}/canaries", body)["canaries"]

    def canaries(self, session_id: str) -> list[str]:
        return self.request("GET", f"/v1/sessions/{quote(session_id, safe='')}/canaries")["canaries"]
