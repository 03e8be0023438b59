"""The control API: create, list, show and delete sessions; replace a policy live.

HTTP/JSON on a unix socket (mode 0600) or loopback, every request with
`Authorization: Bearer <token>`. Policies travel as YAML text; a broken one is
answered 400 with every problem (line and fix), and the old policy stays.

    GET    /v1/health                      readiness (listeners up), session count
    GET    /v1/sessions                    list (no tokens)
    POST   /v1/sessions                    {"name", "policy": YAML, "sources": [ip...], "id"?, "secrets"?: [...]}
                                           -> 201 + token + env (secret name -> placeholder)
    GET    /v1/sessions/{id}               show
    DELETE /v1/sessions/{id}               delete: its traffic is refused from the next packet
    GET    /v1/sessions/{id}/policy        the policy as YAML text
    PUT    /v1/sessions/{id}/policy        body: YAML text (or {"policy": YAML, "policyFile"?}); takes effect on the
                                           next request; unlinks the session's policy file unless policyFile is given
    GET    /v1/workers                     the worker processes (workers > 1): ports, sessions, up; "pick": where
                                           the next session goes (least sessions among the workers up)
    GET    /v1/ca                          the CA bundle a sandbox must trust (PEM; certificates only, never a key)
    GET    /v1/sessions/{id}/canaries      the labels of the session's canaries (never a value)
    POST   /v1/sessions/{id}/canaries      {"values": [str...], "labels"?: [str...]} -> 201 + labels; values are
                                           found by exfiltration detection in anything the sandbox sends

A policy may carry `policyDir` (an absolute directory) beside it: relative paths in
the policy (detection rulesFiles) are resolved there.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os

import tornado.web

from gateway.errors import PolicyError, SessionError
from gateway.policy import load_policy_text
from gateway.secrets.backends import SecretBackendError, SecretStore, parse_source
from gateway.secrets.model import parse_secrets
from gateway.secrets.placeholders import make_placeholder
from gateway.sessions.store import SessionStoreUnavailable

MAX_BODY = 1 << 20


class _Base(tornado.web.RequestHandler):
    def initialize(self, ctl: "ControlAPI") -> None:
        self.ctl = ctl

    def prepare(self) -> None:
        auth = self.request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.ctl.token.encode()):
            self.set_header("WWW-Authenticate", 'Bearer realm="egressgw"')
            self.fail(401, "missing or wrong bearer token (fix: send Authorization: Bearer <control token>)")
            return
        if len(self.request.body or b"") > MAX_BODY:
            self.fail(413, f"request body over {MAX_BODY} bytes")

    def fail(self, status: int, message: str, **extra) -> None:
        self.set_status(status)
        self.finish({"error": message, **extra})

    def json_body(self) -> dict | None:
        try:
            body = json.loads(self.request.body or b"{}")
        except (ValueError, UnicodeDecodeError):
            self.fail(400, "body is not JSON")
            return None
        if not isinstance(body, dict):
            self.fail(400, "body must be a JSON object")
            return None
        return body

    def policy_from(self, text: object, source: str, base_dir: object = None):
        if not isinstance(text, str) or not text.strip():
            self.fail(400, "'policy' must be the policy file's YAML text")
            return None
        if base_dir is not None and (not isinstance(base_dir, str) or not os.path.isabs(base_dir)):
            self.fail(400, "'policyDir' must be an absolute directory")
            return None
        try:
            return load_policy_text(text, source=source, base_dir=base_dir)
        except PolicyError as e:
            self.fail(400, "policy rejected", problems=[str(p) for p in e.problems])
            return None

    def write_error(self, status_code: int, **kwargs) -> None:
        self.finish({"error": self._reason})


class Health(_Base):
    def get(self) -> None:
        ready = self.ctl.ready()
        self.set_status(200 if ready else 503)
        extra = {"workers": self.ctl.workers.describe(self.ctl.registry)} if self.ctl.workers else {}
        self.finish({"status": "ok" if ready else "starting", "sessions": len(self.ctl.registry), **extra})


class Workers(_Base):
    def get(self) -> None:
        if not self.ctl.workers:
            return self.fail(404, "this gateway runs one process (fix: workers: N in the config)")
        self.finish({"workers": self.ctl.workers.describe(self.ctl.registry),
                     "pick": self.ctl.workers.pick(self.ctl.registry)})


class CABundle(_Base):
    def get(self) -> None:
        if not self.ctl.ca_bundle:
            return self.fail(404, "this gateway has no CA bundle yet")
        with open(self.ctl.ca_bundle) as f:
            pem = f.read()
        self.set_header("Content-Type", "application/x-pem-file")
        self.finish(pem)


class Sessions(_Base):
    def get(self) -> None:
        self.finish({"sessions": [s.summary() for s in self.ctl.registry.list()]})

    async def post(self) -> None:
        body = self.json_body()
        if body is None:
            return
        name = body.get("name")
        if not isinstance(name, str) or not name:
            return self.fail(400, "'name' is required")
        sources = body.get("sources", [])
        try:
            sources = [str(ipaddress.ip_address(s)) for s in sources]
        except (TypeError, ValueError):
            return self.fail(400, "'sources' must be a list of IP addresses")
        policy = self.policy_from(body.get("policy"), f"policy of session {name}", body.get("policyDir"))
        if policy is None:
            return
        policy_file = body.get("policyFile", "")
        if not isinstance(policy_file, str) or (policy_file and not os.path.isabs(policy_file)):
            return self.fail(400, "'policyFile' must be an absolute path (the file SIGHUP re-reads)")
        session_id = body.get("id")
        if session_id is not None and (not isinstance(session_id, str) or not session_id.isascii()
                                       or not 0 < len(session_id) <= 64):
            return self.fail(400, "'id' must be a short ASCII string")
        worker = None
        if self.ctl.workers:
            worker = body.get("worker", None)
            if worker is None:
                worker = self.ctl.workers.pick(self.ctl.registry)
            elif isinstance(worker, bool) or not isinstance(worker, int) or not 0 <= worker < len(self.ctl.workers):
                return self.fail(400, f"'worker' must be a worker index 0-{len(self.ctl.workers) - 1}")
        try:
            specs = parse_secrets(body.get("secrets"))
        except ValueError as e:
            return self.fail(400, str(e))
        secrets = []
        for spec in (s for primary in specs for s in (primary, *primary.derived())):
            # The real value's shape (prefix, length, alphabet) shapes the placeholder; a backend that
            # cannot deliver now fails the creation, naming the secret and backend, never a value.
            try:
                value = await self.ctl.store.get(spec.name, parse_source(spec.source))
            except SecretBackendError as e:
                return self.fail(502, str(e))
            secrets.append((spec, make_placeholder(value)))
        try:
            session = self.ctl.registry.create(name, policy, sources, session_id, policy_text=body["policy"],
                                               secrets=secrets, policy_dir=body.get("policyDir"),
                                               policy_file=policy_file, worker=worker)
        except SessionStoreUnavailable as e:
            return self.fail(503, str(e))
        except SessionError as e:
            return self.fail(409, str(e))
        self.set_status(201)
        proxy = self.ctl.workers.proxy_for(worker) if self.ctl.workers else self.ctl.proxy_address
        self.finish({**session.summary(), "token": session.token, "proxy": proxy})


class OneSession(_Base):
    def get(self, session_id: str) -> None:
        try:
            self.finish(self.ctl.registry.get(session_id).summary())
        except SessionError as e:
            self.fail(404, str(e))

    def delete(self, session_id: str) -> None:
        try:
            self.ctl.registry.delete(session_id)
        except SessionStoreUnavailable as e:
            return self.fail(503, str(e))
        except SessionError as e:
            return self.fail(404, str(e))
        self.set_status(204)
        self.finish()


class SessionPolicy(_Base):
    def get(self, session_id: str) -> None:
        try:
            session = self.ctl.registry.get(session_id)
        except SessionError as e:
            return self.fail(404, str(e))
        self.set_header("Content-Type", "application/yaml")
        self.finish(session.policy_text)

    def put(self, session_id: str) -> None:
        try:
            session = self.ctl.registry.get(session_id)
        except SessionError as e:
            return self.fail(404, str(e))
        raw = self.request.body.decode("utf-8", "replace")
        base_dir, policy_file = None, ""  # a policy put here unlinks the session's file: SIGHUP leaves it be
        if self.request.headers.get("Content-Type", "").startswith("application/json"):
            body = self.json_body()
            if body is None:
                return
            raw, base_dir, policy_file = body.get("policy"), body.get("policyDir"), body.get("policyFile", "")
            if not isinstance(policy_file, str) or (policy_file and not os.path.isabs(policy_file)):
                return self.fail(400, "'policyFile' must be an absolute path (the file SIGHUP re-reads)")
        policy = self.policy_from(raw, f"policy of session {session.name}", base_dir)
        if policy is None:
            return
        try:
            self.ctl.registry.replace_policy(session_id, policy, policy_text=raw, policy_dir=base_dir,
                                             policy_file=policy_file)
        except SessionStoreUnavailable as e:
            return self.fail(503, str(e))
        self.finish(session.summary())


class SessionCanaries(_Base):
    def get(self, session_id: str) -> None:
        try:
            session = self.ctl.registry.get(session_id)
        except SessionError as e:
            return self.fail(404, str(e))
        self.finish({"canaries": sorted(session.canaries)})

    def post(self, session_id: str) -> None:
        body = self.json_body()
        if body is None:
            return
        values, labels = body.get("values"), body.get("labels")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            return self.fail(400, "'values' must be a list of strings")
        if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)):
            return self.fail(400, "'labels' must be a list of strings, one per value")
        try:
            added = self.ctl.registry.add_canaries(session_id, [v.encode() for v in values], labels)
        except SessionStoreUnavailable as e:
            return self.fail(503, str(e))
        except SessionError as e:
            return self.fail(404, str(e))
        except ValueError as e:  # the message names an index or label, never a value
            return self.fail(400, str(e))
        self.set_status(201)
        self.finish({"canaries": added})


def _quiet(handler) -> None:
    """No access log: requests are not errors, and mitmproxy's startup check treats logged errors as fatal."""


class ControlAPI:
    def __init__(self, registry, token: str, ready=lambda: True, proxy_address: str | None = None, store=None,
                 ca_bundle: str | None = None, workers=None):
        """`workers`: a gateway.workers.Pool when the gateway runs worker processes (sessions are pinned)."""
        self.registry = registry
        self.workers = workers
        self.ca_bundle = ca_bundle
        self.store = store if store is not None else SecretStore()
        self.token = token
        self.ready = ready
        self.proxy_address = proxy_address

    def application(self) -> tornado.web.Application:
        kw = {"ctl": self}
        return tornado.web.Application([
            (r"/v1/health", Health, kw),
            (r"/v1/ca", CABundle, kw),
            (r"/v1/workers", Workers, kw),
            (r"/v1/sessions", Sessions, kw),
            (r"/v1/sessions/([^/]+)", OneSession, kw),
            (r"/v1/sessions/([^/]+)/policy", SessionPolicy, kw),
            (r"/v1/sessions/([^/]+)/canaries", SessionCanaries, kw),
        ], log_function=_quiet)
