"""The smallest faithful HashiCorp Vault KV v2 read endpoint, for testing hvac against.

Vault itself is not installable here (no PyPI or Debian package), so this
serves exactly what `hvac`'s `secrets.kv.v2.read_secret_version()` calls:

    GET /v1/<mount>/data/<path>[?version=N]     header X-Vault-Token

with Vault's answers (as of Vault 1.x, KV secrets engine version 2):

* 200: {"request_id", "lease_id": "", "renewable": false, "lease_duration": 0,
        "data": {"data": {...}, "metadata": {"created_time", "custom_metadata": null,
                 "deletion_time": "", "destroyed": false, "version": N}},
        "wrap_info": null, "warnings": null, "auth": null, "mount_type": "kv"}
* 403 {"errors": ["permission denied"]}: missing or wrong token
* 404 {"errors": []}: no secret (or no such version) at the path
* 404 with the full body, data.data null and deletion_time set (or destroyed true):
  the requested version is deleted / destroyed
* 404 {"errors": ["no handler for route \"<mount>/data/<path>\". route entry not found."]}: no such mount

Every answer is Content-Type application/json, as Vault's are (hvac reads the
"errors" list only then).
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FakeVault:
    """A KV v2 store behind a loopback HTTP server. Use as a context manager."""

    def __init__(self, token: str = "test-root-token", mounts: tuple[str, ...] = ("secret",)):
        self.token = token
        self.mounts = set(mounts)
        self._versions: dict[tuple[str, str], list[dict]] = {}
        self._lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []  # (method, path with query) as received
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-vault", daemon=True)

    @property
    def addr(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeVault:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # --- the state, as `vault kv put` / `vault kv delete` / `vault kv destroy` would change it

    def put(self, mount: str, path: str, data: dict) -> int:
        """A new version of the secret at mount/path; returns its number."""
        with self._lock:
            versions = self._versions.setdefault((mount, path.strip("/")), [])
            versions.append({"data": dict(data), "created_time": _now(), "deletion_time": "", "destroyed": False})
            return len(versions)

    def delete_latest(self, mount: str, path: str) -> None:
        with self._lock:
            self._versions[(mount, path.strip("/"))][-1]["deletion_time"] = _now()

    def destroy_latest(self, mount: str, path: str) -> None:
        with self._lock:
            v = self._versions[(mount, path.strip("/"))][-1]
            v["destroyed"], v["data"] = True, None

    # --- the HTTP side

    def _answer(self, method: str, target: str, token: str | None) -> tuple[int, dict]:
        self.requests.append((method, target))
        url = urlsplit(target)
        if method != "GET" or not url.path.startswith("/v1/"):
            return 405, {"errors": []}
        route = url.path[len("/v1/"):]
        mount, _, rest = route.partition("/")
        if mount not in self.mounts:
            return 404, {"errors": [f'no handler for route "{route}". route entry not found.']}
        if token != self.token:  # Vault checks the token before it looks at the path
            return 403, {"errors": ["permission denied"]}
        kind, _, path = rest.partition("/")
        if kind != "data" or not path:
            return 405, {"errors": []}
        query = parse_qs(url.query)
        with self._lock:
            versions = self._versions.get((mount, path.strip("/")), [])
            try:
                n = int(query["version"][0]) if "version" in query else 0
            except ValueError:
                return 400, {"errors": ["error parsing version parameter"]}
            n = n or len(versions)  # no version, or 0: the latest
            if not 1 <= n <= len(versions):
                return 404, {"errors": []}
            v = versions[n - 1]
            gone = v["destroyed"] or v["deletion_time"] != ""
            body = {
                "request_id": str(uuid.uuid4()),
                "lease_id": "",
                "renewable": False,
                "lease_duration": 0,
                "data": {
                    "data": None if gone else dict(v["data"]),
                    "metadata": {
                        "created_time": v["created_time"],
                        "custom_metadata": None,
                        "deletion_time": v["deletion_time"],
                        "destroyed": v["destroyed"],
                        "version": n,
                    },
                },
                "wrap_info": None,
                "warnings": None,
                "auth": None,
                "mount_type": "kv",
            }
        return (404 if gone else 200), body

    def _handler_class(self):
        vault = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "FakeVault"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                status, body = vault._answer(self.command, self.path, self.headers.get("X-Vault-Token"))
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, *args) -> None:  # quiet
                pass

        return Handler
