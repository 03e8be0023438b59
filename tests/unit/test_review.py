"""Security review findings, each one shown by a test (all fixed; kept as regression tests).

Hooks are driven the way mitmproxy's AddonManager drives them: every addon's hook runs inside
`mitmproxy.addonmanager.safecall()`, so an exception in one addon is logged and the flow CONTINUES
with the next addon (see AddonManager.trigger_event). A deciding hook that raises therefore fails open.
"""

from __future__ import annotations

import inspect
import json
import logging

import pytest
from mitmproxy import connection, http
from mitmproxy.addonmanager import safecall
from mitmproxy.proxy import server_hooks
from mitmproxy.test import tflow

from gateway.addons.credentials import Credentials
from gateway.addons.refuse import META
from gateway.secrets.backends import SecretStore
from gateway.secrets.model import parse_secret
from gateway.secrets.placeholders import make_placeholder
from gateway.sessions.registry import SessionRegistry

from .helpers import ALLOWED, policy, run
from .test_addons import Gateway, hello_data, request

RESOLVED = "198.18.1.10"  # what the gateway's DNS (and resolver) says allowed.test is


@pytest.fixture
def gw(tmp_path):
    g = Gateway(tmp_path / "flows.jsonl")
    yield g
    g.audit.close()


@pytest.fixture(autouse=True)
def _quiet_addon_errors():
    # safecall logs "Addon error" with a traceback at ERROR level; that is the behaviour under test.
    logging.getLogger("mitmproxy.addonmanager").disabled = True
    yield
    logging.getLogger("mitmproxy.addonmanager").disabled = False


def hook(fn, *args) -> None:
    """Call one addon hook as mitmproxy does: an exception is logged and swallowed, the flow goes on."""
    with safecall():
        result = fn(*args)
        if inspect.isawaitable(result):
            run(result)


def dial(gw, client, address) -> str | None:
    """What DialGate says about opening an upstream connection to `address` for `client` (None: dial)."""
    server = connection.Server(address=address)
    server.sni = None
    data = server_hooks.ServerConnectionHookData(server=server, client=client)
    gw.dial.server_connect(data)
    return data.server.error


def through_policy(gw, client, **kw) -> http.HTTPFlow:
    flow = tflow.tflow(client_conn=client, req=request(**kw))
    hook(gw.identity.requestheaders, flow)
    hook(gw.http.requestheaders, flow)
    return flow


# ------------------------------------------------------------------------------------------------
# F1 (high): a Host that "ends in a number" makes HttpPolicy.requestheaders raise -> fail open.
#
# httppolicy._canonical() calls parse_ip_literal() outside its try; parse_ip_literal raises
# ValueError for any name whose last label is numeric but is not a valid IPv4 address
# ("allowed.test.1", "x.1", "a.0x"). mitmproxy swallows the exception, so the request is never
# refused; the dial guard lets it through because the address was vetted by an earlier, allowed
# request on the same client connection. Method, path and host checks are all skipped.


def test_f1_numeric_last_label_host_bypasses_method_and_path_policy(gw):
    client = gw.transparent_client(sni="allowed.test")
    # The sandbox dials the address the gateway's own DNS gave it for allowed.test.
    hook(gw.tls.tls_clienthello, hello_data(client, "allowed.test", dialled=(RESOLVED, 443)))
    first = through_policy(gw, client, host=RESOLVED, path="/ok/x")
    assert first.response is None and dial(gw, client, (RESOLVED, 443)) is None  # allowed, as it should be

    # Same keep-alive connection: a method and path the policy refuses, with a Host that raises.
    evil = through_policy(gw, client, host=RESOLVED, method="DELETE", path="/admin", host_header="allowed.test.1")
    forwarded = evil.response is None and dial(gw, client, (evil.request.host, evil.request.port)) is None
    assert not forwarded, (
        f"DELETE /admin forwarded to {evil.request.host}:{evil.request.port} with Host "
        f"{evil.request.headers['host']!r}; flow metadata {evil.metadata.get(META)}")


def test_f1_plain_http_same_bypass(gw):
    client = gw.transparent_client(tls=False)
    ok = through_policy(gw, client, host="198.18.1.30", port=80, scheme="http", host_header="plain.test", path="/")
    assert ok.response is None
    evil = through_policy(gw, client, host="198.18.1.30", port=80, scheme="http", method="PUT",
                          host_header="internal.admin.0x", path="/anything")
    forwarded = evil.response is None and dial(gw, client, ("198.18.1.30", 80)) is None
    assert not forwarded


# ------------------------------------------------------------------------------------------------
# F2 (medium): response masking only knows values still in the SecretStore cache.
#
# Credentials.response/_mask_pairs use store.peek(), which drops an entry once its TTL
# (secrets.cacheSeconds) has passed. A request substituted from the cache just before expiry,
# whose response comes back just after, is not masked: the sandbox reads the real value.
# An echoing endpoint with some latency (or a long-lived WebSocket) is enough; the sandbox
# just keeps sending until one request straddles the expiry.

REAL = "sk-proj-" + "a1b2c3d4" * 6


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class _Audit:
    def __init__(self):
        self.events = []

    def emit(self, event):
        self.events.append(event)


def _creds_setup(monkeypatch, store, real=REAL, hosts=("allowed.test",)):
    monkeypatch.setenv("EGW_REVIEW_SECRET", real)
    registry = SessionRegistry()
    spec = parse_secret({"name": "KEY", "source": "env://EGW_REVIEW_SECRET", "hosts": list(hosts)})
    session = registry.create("mine", policy(ALLOWED), secrets=[(spec, make_placeholder(real))])
    return Credentials(registry, store, _Audit()), session


def _cflow(session, host="allowed.test", headers=()):
    f = tflow.tflow()
    f.request.host = host
    f.request.path = "/ok/x"
    f.request.headers.clear()
    for k, v in headers:
        f.request.headers.add(k, v)
    f.request.content = b""
    f.response = None
    f.metadata[META] = {"session": session, "host": host, "decision": "allow", "port": 443}
    return f


def test_f2_reflected_value_unmasked_after_cache_expiry(monkeypatch):
    clock = _Clock()
    addon, session = _creds_setup(monkeypatch, SecretStore(ttl=300, clock=clock))
    ph = session.secrets["KEY"].placeholder
    f = _cflow(session, headers=[("Authorization", f"Bearer {ph}")])
    run(addon.request(f))
    assert f.request.headers["Authorization"] == f"Bearer {REAL}"  # substituted for the approved host
    clock.now += 300.5  # the origin answers a moment after the cache entry's expiry
    f.response = http.Response.make(200, json.dumps({"headers": {"Authorization": f"Bearer {REAL}"}}).encode(),
                                    {"Content-Type": "application/json", "X-Echo": REAL})
    addon.response(f)
    assert REAL not in f.response.get_text() and REAL not in f.response.headers["X-Echo"]


# ------------------------------------------------------------------------------------------------
# F3 (low): a placeholder's core behind the marker in the other case makes the credentials
# scan raise ValueError (PlaceholderIndex.scan: secret.placeholder.index(m.group(0))).
# Credentials.request then aborts: no misuse check, no 403, no alert, for every placeholder
# in the request. (No real value leaks: nothing is substituted either.) The same applies to
# websocket_message: a message with a misused placeholder is forwarded instead of dropped.


def test_f3_case_swapped_marker_suppresses_misuse_detection(monkeypatch):
    addon, session = _creds_setup(monkeypatch, SecretStore())
    ph = session.secrets["KEY"].placeholder
    assert "egw" in ph
    poison = ph.replace("egw", "EGW", 1)
    f = _cflow(session, host="evil.test", headers=[("X-Key", ph), ("X-Poison", poison)])
    hook(addon.request, f)
    # Without X-Poison this is a 403 placeholder-not-approved with alert=True.
    assert f.response is not None and f.response.status_code == 403
    assert f.metadata[META].get("alert") is True


# ------------------------------------------------------------------------------------------------
# F4 (low): non-ASCII Proxy-Authorization makes Identity raise (base64.b64decode(str) raises a
# plain ValueError for non-ASCII text, which proxy_credentials does not catch). On an
# explicit-proxy connection that carried one authenticated absolute-form request, the next request
# then runs under the previous session without credentials (the "every request carries its own
# credentials" rule), and its Proxy-Authorization header is not stripped (forwarded upstream).


def test_f4_non_ascii_proxy_authorization_keeps_previous_session(gw):
    client = gw.proxy_client()
    good = tflow.tflow(client_conn=client, req=request(
        host="plain.test", port=80, scheme="http", path="/", host_header="plain.test", authority="plain.test",
        extra=[(b"proxy-authorization", gw.credentials().encode())]))
    hook(gw.identity.requestheaders, good)
    hook(gw.http.requestheaders, good)
    assert good.response is None
    bad = tflow.tflow(client_conn=client, req=request(
        host="plain.test", port=80, scheme="http", path="/", host_header="plain.test", authority="plain.test",
        extra=[(b"proxy-authorization", b"Basic \xc3\xa9")]))
    hook(gw.identity.requestheaders, bad)
    hook(gw.http.requestheaders, bad)
    assert bad.response is not None and bad.response.status_code == 407, (
        f"forwarded with Proxy-Authorization={bad.request.headers.get('proxy-authorization')!r}")
