"""gateway/addons/*.py: each hook called directly on mitmproxy's own test objects.

Flows and connections come from `mitmproxy.test.tflow` / `tutils`; ClientHellos are real
ones produced by Python's ssl module and parsed by mitmproxy. Sessions come from a real
SessionRegistry with policies loaded from YAML; the flow log is a real file. The only
seam is the upstream resolver: a small object with async `query`/`addresses`.
"""

from __future__ import annotations

import inspect
import json
import ssl
from base64 import b64encode

import dns.message
import dns.rcode
import dns.rrset
import pytest
from mitmproxy import dns as mdns
from mitmproxy import flow as flow_mod
from mitmproxy import hooks, http, options
from mitmproxy.proxy import context, server_hooks
from mitmproxy.proxy import layers  # noqa: F401  (registers every hook name)
from mitmproxy.proxy.layers.tls import parse_client_hello
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils
from mitmproxy.tls import ClientHelloData

from gateway import h1guard, h2guard, metrics
from gateway import limits as lim
from gateway.secrets.backends import SecretStore
from gateway.addons import (
    Detection,
    DialGate,
    DnsGate,
    HttpAudit,
    ProtocolErrors,
    HttpPolicy,
    Identity,
    TcpPolicy,
    TlsGate,
    default_addons,
)
from gateway.addons.limits import Limits, LimitsBody
from gateway.addons.timeouts import Timeouts
from gateway.addons.upstreamreuse import UpstreamReuse
from gateway.addons.refuse import META
from gateway.audit import Audit
from gateway.connstate import ConnTable
from gateway.dialguard import DialGuard
from gateway.log import reader
from gateway.log.writer import FlowLog
from gateway.policy import load_policy_text
from gateway.resolver import DnsFailure, Forwarded
from gateway.sessions.registry import SessionRegistry

from .helpers import ALLOWED, PINNED, PLAIN, SSH, policy, policy_text, run

SANDBOX = "10.211.0.2"
STRANGER = "10.211.0.99"
DIALLED = "198.18.9.9"  # the address the sandbox aimed at (whatever it is, the gateway dials its own)

ADDRESSES = {
    "allowed.test": ("198.18.1.10",),
    "pinned.test": ("198.18.1.20",),
    "plain.test": ("198.18.1.30",),
    "git.test": ("198.18.1.40",),
    "rebind.test": ("127.0.0.1",),
}


class Resolver:
    """The upstream resolver seam: async query(message), forward(wire) and addresses(name); records every call."""

    def __init__(self, addresses=ADDRESSES):
        self.table = dict(addresses)
        self.queries: list[str] = []
        self.lookups: list[str] = []
        self.fail = False

    async def query(self, request: dns.message.Message) -> dns.message.Message:
        self.queries.append(request.question[0].name.to_text())
        if self.fail:
            raise DnsFailure("upstream resolvers did not answer: Timeout")
        response = dns.message.make_response(request)
        response.id = 4242  # the gateway must put the sandbox's id back
        name = request.question[0].name.to_text().rstrip(".").lower()
        found = self.table.get(name)
        if found is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            response.answer.append(dns.rrset.from_text_list(request.question[0].name, 30, "IN", "A", found))
        return response

    async def forward(self, packed: bytes) -> Forwarded:
        """As UpstreamResolver.forward: the answer's wire form carries the query's ID."""
        request = dns.message.from_wire(packed)
        response = await self.query(request)
        return Forwarded(packed[:2] + response.to_wire()[2:], dns.rcode.to_text(response.rcode()),
                         tuple(r.address for rrset in response.answer for r in rrset))

    async def addresses(self, name: str) -> tuple[str, ...]:
        self.lookups.append(name)
        return self.table.get(name, ())


class Gateway:
    """The gateway's addons wired as in `default_addons`, with a real registry and flow log."""

    def __init__(self, log_path, rules=(ALLOWED, PINNED, PLAIN, SSH), mode="enforce"):
        self.registry = SessionRegistry()
        self.session = self.registry.create("sandbox", policy(*rules, mode=mode), [SANDBOX])
        self.conns = ConnTable()
        self.flowlog = FlowLog(log_path)
        self.audit = Audit(self.flowlog)
        self.resolver = Resolver()
        self.guard = DialGuard(self.resolver)
        self.identity = Identity(self.registry, self.conns, self.audit)
        self.dns = DnsGate(self.registry, self.resolver, self.audit)
        self.tls = TlsGate(self.conns, self.guard, self.audit)
        self.http = HttpPolicy(self.conns, self.guard, self.audit)
        self.tcp = TcpPolicy(self.conns, self.guard, self.audit)
        self.dial = DialGate(self.conns)
        self.http_audit = HttpAudit(self.audit)

    def log(self) -> list[dict]:
        return [r.event for r in reader.iter_records([self.flowlog.path])]

    def flow_log(self, kind: str) -> list[dict]:
        return [r for r in self.log() if r["event"] == kind]

    def break_log(self) -> None:
        self.flowlog.close()  # every write now fails: LogWriteError

    # -- connections ------------------------------------------------------

    def transparent_client(self, source=SANDBOX, *, tls=True, sni="allowed.test"):
        client = tflow.tclient_conn()
        client.proxy_mode = ProxyMode.parse("transparent")
        client.peername = (source, 40000)
        client.tls, client.sni = tls, sni if tls else None
        self.identity.client_connected(client)
        return client

    def proxy_client(self):
        client = tflow.tclient_conn()  # regular (explicit proxy) mode
        client.peername = ("127.0.0.1", 40001)
        client.tls, client.sni = False, None
        return client

    def credentials(self, token=None, session_id=None) -> str:
        user = session_id or self.session.id
        return "Basic " + b64encode(f"{user}:{token or self.session.token}".encode()).decode()


@pytest.fixture
def gw(tmp_path):
    g = Gateway(tmp_path / "flows.jsonl")
    yield g
    g.audit.close()


def request(host=DIALLED, port=443, *, method="GET", path="/ok/x", host_header="allowed.test",
            authority="", scheme="https", extra=()):
    headers = http.Headers([*((b"host", h.encode()) for h in ([host_header] if isinstance(host_header, str)
                                                               else host_header or [])), *extra])
    return tutils.treq(host=host, port=port, method=method.encode(), path=path.encode(), scheme=scheme.encode(),
                       authority=authority.encode(), headers=headers, content=b"")


def client_hello(sni: str | None):
    """A real ClientHello from Python's TLS stack, parsed by mitmproxy."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    tls = ctx.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return parse_client_hello(outgoing.read())


def hello_data(client, sni, dialled=(DIALLED, 443)) -> ClientHelloData:
    ctx = context.Context(client, options.Options())
    ctx.server.address = dialled
    data = ClientHelloData(ctx, client_hello(sni))
    assert data.client_hello.sni == sni
    return data


def body(flow) -> str:
    return flow.response.get_text()


# ---------------------------------------------------------------------------------------- wiring


def test_default_addons_load_into_a_mitmproxy_master(gw):
    addons = default_addons(registry=gw.registry, conns=gw.conns, resolver=gw.resolver, guard=gw.guard,
                            audit=gw.audit, store=SecretStore())
    with taddons.context(*addons) as tctx:
        try:
            assert [type(a).__name__ for a in tctx.master.addons.chain[1:]] == [
                "Identity", "Limits", "Timeouts", "DnsGate", "TlsGate", "HttpPolicy", "TcpPolicy", "Detection", "LimitsBody",
                "Credentials", "DialGate", "UpstreamReuse", "HttpAudit", "ProtocolErrors"]
        finally:
            # the test master hooks the root logger; its loop closes with the context
            tctx.master._legacy_log_events.uninstall()


@pytest.mark.parametrize("cls", [Identity, Limits, Timeouts, DnsGate, TlsGate, HttpPolicy, TcpPolicy, Detection, LimitsBody,
                                 DialGate, UpstreamReuse, HttpAudit, ProtocolErrors])
def test_every_public_method_is_a_mitmproxy_hook(cls):
    # A misspelt hook name is never called: the check it holds would silently not happen.
    methods = [n for n, _ in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")]
    assert methods
    assert set(methods) <= set(hooks.all_hooks), set(methods) - set(hooks.all_hooks)


# ---------------------------------------------------------------------------------------- identity


def test_transparent_client_with_a_session(gw):
    client = gw.transparent_client()
    state = gw.conns.get(client.id)
    assert state.session is gw.session and state.refused is None and client.error is None
    assert gw.log() == []  # nothing logged for an ordinary connect


def test_transparent_client_without_a_session_is_cut(gw):
    client = gw.transparent_client(STRANGER)
    state = gw.conns.get(client.id)
    assert client.error == "no session"
    assert (state.session, state.refused) == (None, "no-session")
    assert gw.flow_log("connect") == [{
        "time": gw.flow_log("connect")[0]["time"], "event": "connect", "client": f"{STRANGER}:40000",
        "decision": "deny", "reason": "no-session"}]


def test_proxy_mode_clients_are_not_mapped_by_address(gw):
    client = gw.proxy_client()
    client.peername = (SANDBOX, 40000)
    gw.identity.client_connected(client)
    assert gw.conns.get(client.id) is None


def test_client_disconnected_forgets_the_connection(gw):
    client = gw.transparent_client()
    gw.identity.client_disconnected(client)
    assert gw.conns.get(client.id) is None and len(gw.conns) == 0


def connect_flow(gw, target="allowed.test", port=443, auth=None):
    flow = tflow.tflow(client_conn=gw.proxy_client(), req=tutils.treq(
        method=b"CONNECT", host=target, port=port, authority=f"{target}:{port}".encode(), path=b"", scheme=b"",
        headers=http.Headers([(b"proxy-authorization", auth.encode())] if auth else []), content=b""))
    return flow


def test_connect_with_good_credentials_binds_the_session(gw):
    flow = connect_flow(gw, auth=gw.credentials())
    gw.identity.http_connect(flow)
    state = gw.conns.of(flow.client_conn)
    assert flow.response is None
    assert (state.session, state.tunnel, state.refused) == (gw.session, True, None)


@pytest.mark.parametrize("auth", [
    None,
    "Basic " + b64encode(b"s-nope:whatever").decode(),
    "WRONG-TOKEN",  # replaced below with the right id and a wrong token
    "Bearer abc",
    "Basic !!!notbase64",
    "Basic " + b64encode(b"no-colon").decode(),
    "Basic " + b64encode(b"\xff\xfe:x").decode(),
])
def test_connect_with_bad_or_missing_credentials_is_407(gw, auth):
    if auth == "WRONG-TOKEN":
        auth = gw.credentials(token="wrong")
    flow = connect_flow(gw, auth=auth)
    gw.identity.http_connect(flow)
    state = gw.conns.of(flow.client_conn)
    assert flow.response.status_code == 407
    assert flow.response.headers["Proxy-Authenticate"] == 'Basic realm="egressgw"'
    assert body(flow) == "egressgw refused this request: proxy credentials required (allowed.test)\n"
    assert (state.session, state.refused) == (None, "proxy-auth-required")
    assert gw.session.token not in body(flow)


def test_proxy_authorization_is_stripped_before_the_request_goes_anywhere(gw):
    flow = tflow.tflow(client_conn=gw.transparent_client(),
                       req=request(extra=[(b"proxy-authorization", gw.credentials().encode())]))
    gw.identity.requestheaders(flow)
    assert "Proxy-Authorization" not in flow.request.headers
    assert flow.metadata[META]["session"] is gw.session


def test_absolute_form_requests_carry_their_own_credentials(gw):
    client = gw.proxy_client()
    good = tflow.tflow(client_conn=client, req=request(
        host="plain.test", port=80, scheme="http", path="/", host_header="plain.test", authority="plain.test",
        extra=[(b"proxy-authorization", gw.credentials().encode())]))
    gw.identity.requestheaders(good)
    assert good.response is None and good.metadata[META]["session"] is gw.session
    assert "Proxy-Authorization" not in good.request.headers
    # the next request on the same connection without credentials is refused
    bare = tflow.tflow(client_conn=client, req=request(
        host="plain.test", port=80, scheme="http", path="/", host_header="plain.test", authority="plain.test"))
    gw.identity.requestheaders(bare)
    assert bare.response.status_code == 407
    assert bare.metadata[META] == {"session": None, "decision": "deny", "reason": "proxy-auth-required",
                                   "host": "plain.test"}


# ---------------------------------------------------------------------------------------- http policy


def http_flow(gw, client=None, **kw):
    flow = tflow.tflow(client_conn=client or gw.transparent_client(), req=request(**kw))
    gw.identity.requestheaders(flow)
    run(gw.http.requestheaders(flow))
    return flow


def test_allowed_request_dials_the_vetted_address_and_keeps_the_host_header(gw):
    flow = http_flow(gw)
    state = gw.conns.of(flow.client_conn)
    assert flow.response is None
    assert flow.request.host == "198.18.1.10"  # not DIALLED: the gateway resolved the name itself
    assert flow.request.headers.get_all("host") == ["allowed.test"]
    assert flow.request.port == 443
    assert ("198.18.1.10", 443) in state.vetted
    assert gw.resolver.lookups == ["allowed.test"]
    info = flow.metadata[META]
    assert {k: info[k] for k in ("host", "port", "decision", "reason", "rule", "dest_ip")} == {
        "host": "allowed.test", "port": 443, "decision": "allow", "reason": "allowed", "rule": "allowed-https",
        "dest_ip": "198.18.1.10"}


def test_host_header_case_and_trailing_dot_are_normalised(gw):
    flow = http_flow(gw, host_header="ALLOWED.test.:443")
    assert flow.response is None and flow.metadata[META]["host"] == "allowed.test"


@pytest.mark.parametrize("kw, reason_text, host", [
    (dict(host_header="pinned.test"), "Host does not match the TLS server name", "pinned.test"),
    (dict(host_header=["allowed.test", "pinned.test"]), "malformed request", None),
    (dict(host_header=["allowed.test", "allowed.test"]), "malformed request", None),
    (dict(host_header=None), "malformed request", None),
    (dict(host_header="bad host!"), "malformed request", "bad host!"),
    (dict(authority="pinned.test"), "Host does not match the TLS server name", "allowed.test"),
    (dict(authority="pinned.test:443", host_header="allowed.test"), "Host does not match the TLS server name",
     "allowed.test"),
    (dict(method="DELETE"), "method not allowed", "allowed.test"),
    (dict(path="/admin"), "path not allowed", "allowed.test"),
    (dict(path="/ok/../admin"), "path not allowed", "allowed.test"),
    (dict(port=8443), "port not allowed", "allowed.test"),
])
def test_refusals_are_403_with_a_one_line_reason(gw, kw, reason_text, host):
    flow = http_flow(gw, **kw)
    assert flow.response.status_code == 403
    target = f" ({host})" if host else ""
    assert body(flow) == f"egressgw refused this request: {reason_text}{target}\n"
    assert flow.response.headers["Connection"] == "close"
    assert flow.request.host == DIALLED  # nothing re-pointed
    assert gw.conns.of(flow.client_conn).vetted == set()
    assert gw.resolver.lookups == []  # refused before any lookup


def h2_flow(gw, authority, host_headers=()):
    req = tutils.treq(host=DIALLED, port=443, method=b"GET", path=b"/ok/x", scheme=b"https",
                      authority=authority.encode(), http_version=b"HTTP/2.0",
                      headers=http.Headers([(b"host", h.encode()) for h in host_headers]), content=b"")
    flow = tflow.tflow(client_conn=gw.transparent_client(), req=req)
    gw.identity.requestheaders(flow)
    run(gw.http.requestheaders(flow))
    return flow


@pytest.mark.parametrize("authority, host_headers, reason", [
    ("allowed.test", (), None),
    ("allowed.test", ("allowed.test",), None),
    ("allowed.test:443", ("ALLOWED.TEST",), None),
    ("pinned.test", (), "sni-host-mismatch"),
    # HTTP/2 fronting: :authority agrees with the SNI, a Host header names another site. mitmproxy
    # forwards that Host header (to an HTTP/1 origin it is *the* Host), so it must agree as well.
    # (Was let through before the fix in httppolicy.py.)
    ("allowed.test", ("evil.test",), "sni-host-mismatch"),
    ("allowed.test", ("allowed.test", "evil.test"), "bad-request"),
])
def test_http2_authority_and_host_header_must_agree(gw, authority, host_headers, reason):
    flow = h2_flow(gw, authority, host_headers)
    if reason is None:
        assert flow.response is None and flow.request.host == "198.18.1.10"
    else:
        assert flow.response.status_code == 403 and flow.metadata[META]["reason"] == reason
        assert flow.request.host == DIALLED


def test_host_not_allowed_on_a_plain_connection(gw):
    client = gw.transparent_client(tls=False)
    flow = http_flow(gw, client=client, port=80, scheme="http", host_header="denied.test", path="/")
    assert body(flow) == "egressgw refused this request: host not allowed (denied.test)\n"
    assert flow.metadata[META]["reason"] == "host-not-allowed"


def test_plain_http_is_allowed_only_on_a_listed_port(gw):
    client = gw.transparent_client(tls=False)
    ok = http_flow(gw, client=client, port=80, scheme="http", host_header="plain.test", path="/")
    assert ok.response is None and ok.request.host == "198.18.1.30"
    no = http_flow(gw, client=gw.transparent_client(tls=False), port=80, scheme="http",
                   host_header="allowed.test", path="/ok/x")
    assert body(no) == "egressgw refused this request: plain HTTP not allowed, use HTTPS (allowed.test)\n"


def test_request_without_a_session_is_403(gw):
    flow = http_flow(gw, client=gw.transparent_client(STRANGER))
    assert body(flow) == "egressgw refused this request: no session for this client\n"
    assert flow.metadata[META]["reason"] == "no-session"


def test_a_name_resolving_to_loopback_is_refused_at_dial_time(gw):
    # the policy allows rebind.test; the address it resolves to does not pass
    gw.registry.replace_policy(gw.session.id, policy(ALLOWED.replace("allowed.test", "rebind.test")))
    flow = http_flow(gw, client=gw.transparent_client(sni="rebind.test"), host_header="rebind.test")
    assert body(flow) == "egressgw refused this request: destination address not allowed (rebind.test)\n"
    assert gw.conns.of(flow.client_conn).vetted == set()


def test_report_mode_lets_a_denial_through_marked_report(tmp_path):
    gw = Gateway(tmp_path / "flows.jsonl", rules=(ALLOWED,), mode="report")
    flow = http_flow(gw, method="DELETE")
    assert flow.response is None and flow.request.host == "198.18.1.10"
    assert (flow.metadata[META]["decision"], flow.metadata[META]["reason"]) == ("report", "method-not-allowed")
    gw.audit.close()


def test_explicit_proxy_absolute_form_must_agree_with_host(gw):
    def absolute(target, host_header):
        f = tflow.tflow(client_conn=gw.proxy_client(), req=request(
            host=target, port=80, scheme="http", path="/", host_header=host_header, authority=target,
            extra=[(b"proxy-authorization", gw.credentials().encode())]))
        gw.identity.requestheaders(f)
        run(gw.http.requestheaders(f))
        return f

    ok = absolute("plain.test", "plain.test")
    assert ok.response is None and ok.request.host == "198.18.1.30"
    fronted = absolute("plain.test", "allowed.test")
    assert body(fronted) == "egressgw refused this request: Host does not match the TLS server name (allowed.test)\n"


def test_inside_a_connect_tunnel_host_must_match_the_connect_target(gw):
    client = gw.proxy_client()
    connect = connect_flow(gw, auth=gw.credentials())
    connect.client_conn = client
    gw.identity.http_connect(connect)
    gw.http.http_connect(connect)
    assert connect.response is None and gw.conns.of(client).host == "allowed.test"
    client.tls, client.sni = True, "allowed.test"
    inner = http_flow(gw, client=client, host="allowed.test", host_header="allowed.test")
    assert inner.response is None
    other = http_flow(gw, client=client, host="allowed.test", host_header="pinned.test")
    assert other.response.status_code == 403 and other.metadata[META]["reason"] == "sni-host-mismatch"
    assert gw.flow_log("connect")[-1] | {"time": 0} == {
        "time": 0, "event": "connect", "session": gw.session.id, "client": "127.0.0.1:40001",
        "dest_host": "allowed.test", "dest_port": 443, "decision": "allow", "rule": "allowed-https",
        "reason": "allowed"}


@pytest.mark.parametrize("target, port, reason", [
    ("denied.test", 443, "host-not-allowed"),
    ("allowed.test", 8443, "port-not-allowed"),
    ("198.18.1.10", 443, "ip-literal-not-allowed"),
])
def test_connect_to_a_refused_target_is_403_and_logged(gw, target, port, reason):
    flow = connect_flow(gw, target, port, auth=gw.credentials())
    gw.identity.http_connect(flow)
    gw.http.http_connect(flow)
    assert flow.response.status_code == 403
    assert gw.conns.of(flow.client_conn).refused == reason
    event = gw.flow_log("connect")[-1]
    assert (event["decision"], event["reason"], event["dest_host"], event["dest_port"]) == (
        "deny", reason, target, port)


def test_connect_refused_by_identity_is_logged_once_as_such(gw):
    flow = connect_flow(gw)
    gw.identity.http_connect(flow)
    gw.http.http_connect(flow)
    assert flow.response.status_code == 407
    events = gw.flow_log("connect")
    assert len(events) == 1 and events[0]["reason"] == "proxy-auth-required" and "session" not in events[0]


def test_connect_when_the_log_cannot_be_written_is_503(gw):
    flow = connect_flow(gw, auth=gw.credentials())
    gw.identity.http_connect(flow)
    gw.break_log()
    gw.http.http_connect(flow)
    assert flow.response.status_code == 503
    assert gw.conns.of(flow.client_conn).refused == "log-unavailable"


# ---------------------------------------------------------------------------------------- tls


def test_tls_denied_name_is_cut_at_clienthello(gw):
    client = gw.transparent_client(sni="denied.test")
    data = hello_data(client, "denied.test")
    run(gw.tls.tls_clienthello(data))
    state = gw.conns.of(client)
    assert data.ignore_connection is True
    assert state.refused == "host-not-allowed" and state.dial is None and state.vetted == set()
    assert gw.resolver.lookups == []
    event = gw.flow_log("tls")[-1]
    assert (event["sni"], event["dest_host"], event["decision"], event["reason"]) == (
        "denied.test", "denied.test", "deny", "host-not-allowed")


def test_tls_allowed_name_is_intercepted(gw):
    client = gw.transparent_client()
    data = hello_data(client, "allowed.test")
    run(gw.tls.tls_clienthello(data))
    state = gw.conns.of(client)
    assert data.ignore_connection is False
    assert (state.host, state.port, state.refused, state.dial) == ("allowed.test", 443, None, None)
    event = gw.flow_log("tls")[-1]
    assert (event["decision"], event["rule"], event["detail"]) == ("allow", "allowed-https", "intercept")


def test_tls_passthrough_dials_the_vetted_address(gw):
    client = gw.transparent_client(sni="pinned.test")
    data = hello_data(client, "pinned.test")
    run(gw.tls.tls_clienthello(data))
    state = gw.conns.of(client)
    assert data.ignore_connection is True and state.refused is None
    assert state.dial == ("198.18.1.20", 443) and state.vetted == {("198.18.1.20", 443)}
    event = gw.flow_log("tls")[-1]
    assert (event["detail"], event["dest_ip"], event["rule"]) == ("passthrough", "198.18.1.20", "pinned")


def test_tls_without_sni_is_judged_by_the_dialled_ip(gw):
    client = gw.transparent_client()
    data = hello_data(client, None)
    run(gw.tls.tls_clienthello(data))
    assert data.ignore_connection and gw.conns.of(client).refused == "ip-literal-not-allowed"


def test_tls_in_a_tunnel_for_another_name_is_refused(gw):
    client = gw.proxy_client()
    state = gw.conns.of(client)
    state.session, state.tunnel, state.host, state.port = gw.session, True, "allowed.test", 443
    data = hello_data(client, "pinned.test", dialled=("allowed.test", 443))
    run(gw.tls.tls_clienthello(data))
    assert data.ignore_connection and state.refused == "sni-host-mismatch"
    assert gw.flow_log("tls")[-1]["reason"] == "sni-host-mismatch"


def test_tls_of_no_session_and_of_a_refused_connection(gw):
    stranger = gw.transparent_client(STRANGER)
    data = hello_data(stranger, "allowed.test")
    run(gw.tls.tls_clienthello(data))
    assert data.ignore_connection and gw.conns.of(stranger).refused == "no-session"
    logged = len(gw.log())
    run(gw.tls.tls_clienthello(again := hello_data(stranger, "allowed.test")))
    assert again.ignore_connection and len(gw.log()) == logged  # already refused: no second record


def test_tls_decision_that_cannot_be_logged_is_refused(gw):
    client = gw.transparent_client()
    gw.break_log()
    data = hello_data(client, "allowed.test")
    run(gw.tls.tls_clienthello(data))
    assert data.ignore_connection and gw.conns.of(client).refused == "log-unavailable"


# ---------------------------------------------------------------------------------------- dial gate


def connect_data(client, address=("198.18.1.10", 443), sni="allowed.test"):
    server = tflow.tserver_conn()
    server.address, server.sni = address, sni
    return server_hooks.ServerConnectionHookData(server=server, client=client)


def test_dial_without_state_or_session_is_refused(gw):
    data = connect_data(gw.proxy_client())
    gw.dial.server_connect(data)
    assert data.server.error == "no-session"


def test_dial_of_a_refused_connection_carries_the_reason(gw):
    client = gw.transparent_client()
    gw.conns.of(client).refused = "host-not-allowed"
    gw.conns.of(client).vetted.add(("198.18.1.10", 443))  # a refusal wins over anything vetted
    data = connect_data(client)
    gw.dial.server_connect(data)
    assert data.server.error == "host-not-allowed"


def test_dial_of_an_unvetted_address_is_refused(gw):
    client = gw.transparent_client()
    gw.conns.of(client).vetted.add(("198.18.1.10", 443))
    for address in ((DIALLED, 443), ("198.18.1.10", 8443)):
        data = connect_data(client, address)
        gw.dial.server_connect(data)
        assert data.server.error == "address-not-allowed"


def test_dial_of_a_vetted_address_goes_ahead_with_the_allowed_name_as_sni(gw):
    flow = http_flow(gw)  # vets 198.18.1.10:443 for allowed.test
    gw.conns.of(flow.client_conn).host = "allowed.test"  # as TlsGate records it
    data = connect_data(flow.client_conn, ("198.18.1.10", 443), sni="198.18.1.10")
    gw.dial.server_connect(data)
    assert data.server.error is None
    assert data.server.sni == "allowed.test"


def test_plain_connection_keeps_no_sni(gw):
    client = gw.transparent_client(tls=False)
    flow = http_flow(gw, client=client, port=80, scheme="http", host_header="plain.test", path="/")
    data = connect_data(flow.client_conn, ("198.18.1.30", 80), sni=None)
    gw.dial.server_connect(data)
    assert data.server.error is None and data.server.sni is None


def test_dial_override_replaces_the_sandbox_address(gw):
    client = gw.transparent_client(sni="pinned.test")
    run(gw.tls.tls_clienthello(hello_data(client, "pinned.test")))
    data = connect_data(client, (DIALLED, 443), sni="pinned.test")
    gw.dial.server_connect(data)
    assert data.server.error is None
    assert data.server.address == ("198.18.1.20", 443)
    assert data.server.sni == "pinned.test"


# ---------------------------------------------------------------------------------------- dns


def dns_flow(source=SANDBOX, questions=(("allowed.test", mdns.types.A),), **kw):
    client = tflow.tclient_conn()
    client.proxy_mode = ProxyMode.parse("dns")
    client.transport_protocol = "udp"
    client.peername = (source, 5353)
    req = tutils.tdnsreq(id=7, questions=[mdns.Question(n, t, mdns.classes.IN) for n, t in questions], **kw)
    return tflow.tdnsflow(client_conn=client, req=req)


def test_dns_of_no_session_is_refused(gw):
    flow = dns_flow(STRANGER)
    run(gw.dns.dns_request(flow))
    assert flow.response.response_code == mdns.response_codes.REFUSED
    assert gw.resolver.queries == []
    event = gw.flow_log("dns")[-1]
    assert (event["dns_qname"], event["dns_qtype"], event["dns_rcode"], event["reason"]) == (
        "allowed.test", "A", "REFUSED", "no-session")


def test_dns_denied_name_is_nxdomain_without_asking_upstream(gw):
    flow = dns_flow(questions=(("denied.test", mdns.types.A),))
    run(gw.dns.dns_request(flow))
    assert flow.response.response_code == mdns.response_codes.NXDOMAIN
    assert flow.response.id == 7
    assert gw.resolver.queries == []
    event = gw.flow_log("dns")[-1]
    assert (event["session"], event["decision"], event["reason"], event["dns_rcode"]) == (
        gw.session.id, "deny", "host-not-allowed", "NXDOMAIN")


def test_dns_allowed_name_is_forwarded_and_remembered(gw):
    flow = dns_flow(questions=(("Allowed.Test", mdns.types.A),))
    run(gw.dns.dns_request(flow))
    assert gw.resolver.queries == ["Allowed.Test."]
    response = flow.response
    assert response.response_code == mdns.response_codes.NOERROR and response.id == 7
    assert [str(a.ipv4_address) for a in response.answers] == ["198.18.1.10"]
    assert gw.session.names_for("198.18.1.10") == {"allowed.test"}
    event = gw.flow_log("dns")[-1]
    assert (event["decision"], event["rule"], event["dns_answers"], event["dns_rcode"]) == (
        "allow", "allowed-https", ["198.18.1.10"], "NOERROR")


def test_dns_tcp_rule_names_are_answered_too(gw):
    flow = dns_flow(questions=(("git.test", mdns.types.A),))
    run(gw.dns.dns_request(flow))
    assert [str(a.ipv4_address) for a in flow.response.answers] == ["198.18.1.40"]
    assert gw.session.names_for("198.18.1.40") == {"git.test"}


@pytest.mark.parametrize("kw", [
    dict(questions=(("allowed.test", mdns.types.A), ("pinned.test", mdns.types.A))),
    dict(questions=()),
    dict(op_code=mdns.op_codes.STATUS),
])
def test_dns_malformed_query_is_formerr(gw, kw):
    flow = dns_flow(**kw)
    run(gw.dns.dns_request(flow))
    assert flow.response.response_code == mdns.response_codes.FORMERR
    assert gw.resolver.queries == []
    assert gw.flow_log("dns")[-1]["reason"] == "bad-request"


def test_dns_upstream_failure_is_servfail(gw):
    gw.resolver.fail = True
    flow = dns_flow()
    run(gw.dns.dns_request(flow))
    assert flow.response.response_code == mdns.response_codes.SERVFAIL
    assert gw.flow_log("dns")[-1]["reason"] == "dns-failure"
    assert gw.session.names_for("198.18.1.10") == frozenset()


def test_dns_answer_that_cannot_be_logged_is_servfail(gw):
    gw.break_log()
    flow = dns_flow()
    run(gw.dns.dns_request(flow))
    assert flow.response.response_code == mdns.response_codes.SERVFAIL
    assert flow.response.answers == []


def test_dns_refusal_that_cannot_be_logged_is_servfail(gw):
    gw.break_log()
    flow = dns_flow(questions=(("denied.test", mdns.types.A),))
    run(gw.dns.dns_request(flow))
    assert flow.response.response_code == mdns.response_codes.SERVFAIL


def test_dns_query_already_answered_is_not_asked_upstream_nor_logged_again(gw):
    # A limit refused it (and logged it) before the gate: the refusal stands, upstream never sees it.
    flow = dns_flow()
    flow.response = flow.request.fail(mdns.response_codes.REFUSED)
    run(gw.dns.dns_request(flow))
    assert flow.response.response_code == mdns.response_codes.REFUSED
    assert gw.resolver.queries == [] and gw.flow_log("dns") == []
    assert gw.session.names_for("198.18.1.10") == frozenset()


def test_dns_gate_failure_is_refused_and_logged(gw, monkeypatch):
    def broken(address):
        raise RuntimeError("boom")

    monkeypatch.setattr(gw.registry, "by_source", broken)
    flow = dns_flow()
    run(gw.dns.dns_request(flow))
    assert flow.response.response_code == mdns.response_codes.REFUSED
    assert gw.resolver.queries == []
    event = gw.flow_log("dns")[-1]
    assert (event["dns_qname"], event["dns_rcode"], event["decision"], event["reason"]) == (
        "[REDACTED:unchecked].allowed.test", "REFUSED", "deny", "bad-request")
    assert "boom" not in json.dumps(event)


def test_dns_limits_failure_is_refused_and_logged(gw, monkeypatch):
    limits = Limits(gw.registry, gw.conns, gw.audit)

    def broken(address):
        raise RuntimeError("boom")

    monkeypatch.setattr(gw.registry, "by_source", broken)
    flow = dns_flow()
    limits.dns_request(flow)
    run(gw.dns.dns_request(flow))  # already answered: the gate adds nothing
    assert flow.response.response_code == mdns.response_codes.REFUSED
    assert [(e["reason"], e["dns_rcode"]) for e in gw.flow_log("dns")] == [("bad-request", "REFUSED")]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refusals(name: str) -> float:
    return metrics.REGISTRY.get_sample_value("egressgw_limit_refusals_total", {"limit": name}) or 0.0


def test_stream_resets_past_the_session_rate_close_the_connection_logged_once(gw):
    clock = Clock()
    limits = Limits(gw.registry, gw.conns, gw.audit, limiter=lim.Limiter(clock=clock))
    client = gw.transparent_client()
    gw.conns.of(client).host, gw.conns.of(client).port = "allowed.test", 443
    before = refusals("stream-resets")
    # the default: 100 a second, burst 200
    assert all(limits._stream_reset(client) for _ in range(200))
    assert gw.flow_log("connect") == []
    assert limits._stream_reset(client) is False
    assert refusals("stream-resets") == before + 1
    [event] = gw.flow_log("connect")
    assert (event["session"], event["dest_host"], event["dest_port"], event["decision"], event["reason"]) == (
        gw.session.id, "allowed.test", 443, "deny", "limit-stream-resets")
    assert "ENHANCE_YOUR_CALM" in event["detail"]
    other = gw.transparent_client()  # the same session's other connection shares the bucket
    other.peername = (SANDBOX, 40002)
    assert limits._stream_reset(other) is False
    clock.now += 0.5  # fifty more after half a second
    assert [limits._stream_reset(client) for _ in range(51)] == [True] * 50 + [False]


def test_stream_resets_without_a_session_get_the_default_rate_per_connection(gw):
    limits = Limits(gw.registry, gw.conns, gw.audit, limiter=lim.Limiter(clock=Clock()))
    client = tflow.tclient_conn()
    assert [limits._stream_reset(client) for _ in range(201)] == [True] * 200 + [False]
    assert gw.log() == []  # no session to log it for; counted in the metric
    assert len(limits.limiter) == 1
    limits.client_disconnected(client)
    assert len(limits.limiter) == 0


def test_the_limits_addon_guards_http2_while_it_runs(gw):
    from mitmproxy.proxy.layers.http._http2 import Http2Server

    limits = Limits(gw.registry, gw.conns, gw.audit)
    limits.running()
    try:
        assert Http2Server.handle_h2_event is h2guard.handle_h2_event
        assert h2guard._decide == limits._stream_reset and h2guard._body_chunks == limits._body_chunks
        Limits(gw.registry, gw.conns, gw.audit).done()  # another instance's done leaves it
        assert Http2Server.handle_h2_event is h2guard.handle_h2_event
    finally:
        limits.done()
    assert Http2Server.handle_h2_event is h2guard._ORIGINAL[0]


def test_body_chunks_limit_is_the_sessions_and_the_largest_where_the_session_is_not_known_yet(gw):
    limits = Limits(gw.registry, gw.conns, gw.audit)
    assert limits._body_chunks(gw.transparent_client()) == gw.session.policy.limits.body_chunks == 4096
    assert limits._body_chunks(tflow.tclient_conn()) == 4096  # no session: the default
    text = policy_text(ALLOWED).replace("  egress:\n", "  limits: {bodyChunks: 20000}\n  egress:\n")
    gw.registry.create("big", load_policy_text(text), ["10.99.0.2"])
    assert limits._body_chunks(gw.transparent_client()) == 4096  # a transparent connection: its own session's
    # through the explicit proxy a request's session comes with its own credentials, after the guard
    # asks: the largest any session allows (review finding: a 20,000-chunk upload was cut at 4,097)
    assert limits._body_chunks(gw.proxy_client()) == 20000


def test_a_body_the_guard_stopped_is_logged_as_a_limit_refusal(gw):
    limits = Limits(gw.registry, gw.conns, gw.audit)
    before = refusals("body-chunks")
    flow = http_flow(gw)
    flow.error = flow_mod.Error(h1guard.MESSAGE)
    limits.error(flow)
    gw.http_audit.error(flow)
    [event] = gw.flow_log("http")
    assert (event["decision"], event["reason"], event["detail"]) == ("deny", "limit-body-chunks", h1guard.MESSAGE)
    assert refusals("body-chunks") == before + 1
    other = http_flow(gw)  # any other error stays the error of an allowed request
    other.error = flow_mod.Error("Client disconnected.")
    limits.error(other)
    gw.http_audit.error(other)
    assert gw.flow_log("http")[-1]["reason"] == "allowed" and refusals("body-chunks") == before + 1


@pytest.mark.parametrize("msg, body_ended, refused", [
    ("client disconnected", False, True),  # the close cancelled its upstream dial first (CI finding)
    ("client disconnected", True, False),  # an answered GET on the same HTTP/2 connection
    (h2guard.BODY_CHUNKS_OTHERS, False, False),  # another upload on it: ended by the close, not refused
])
def test_on_a_connection_a_guard_closed_the_unfinished_body_is_the_refusal(gw, msg, body_ended, refused):
    limits = Limits(gw.registry, gw.conns, gw.audit)
    flow = http_flow(gw)
    lim.mark_body_chunks_closed(flow.client_conn)
    if not body_ended:
        flow.request.timestamp_end = None
    flow.error = flow_mod.Error(msg)
    limits.error(flow)
    gw.http_audit.error(flow)
    [event] = gw.flow_log("http")
    expect = ("deny", "limit-body-chunks", lim.BODY_CHUNKS_CLOSED) if refused else ("allow", "allowed", msg)
    assert (event["decision"], event["reason"], event["detail"]) == expect


def test_the_limits_addon_guards_chunked_http1_bodies_while_it_runs(gw):
    from mitmproxy.proxy.layers.http._http1 import Http1Server

    limits = Limits(gw.registry, gw.conns, gw.audit)
    limits.running()
    try:
        assert Http1Server.read_body is h1guard.read_body and h1guard._limit == limits._body_chunks
        Limits(gw.registry, gw.conns, gw.audit).done()  # another instance's done leaves it
        assert Http1Server.read_body is h1guard.read_body
    finally:
        limits.done()
    assert Http1Server.read_body is h1guard._ORIGINAL


@pytest.mark.parametrize("kw, rcode", [
    (dict(questions=(("c2VjcmV0LXZhbHVl.exfil.allowed.test", mdns.types.A), ("b.test", mdns.types.A))),
     mdns.response_codes.FORMERR),
    (dict(questions=(("c2VjcmV0LXZhbHVl.exfil.allowed.test ", mdns.types.A),)), mdns.response_codes.NXDOMAIN),
])
def test_dns_names_refused_before_the_search_are_logged_by_base_domain_only(gw, kw, rcode):
    flow = dns_flow(**kw)
    run(gw.dns.dns_request(flow))
    assert flow.response.response_code == rcode
    event = gw.flow_log("dns")[-1]
    # (several questions: mitmproxy gives no one question, and no name is logged at all)
    assert event.get("dns_qname") in ("[REDACTED:unchecked].allowed.test", None)
    assert "c2VjcmV0" not in json.dumps(gw.log())


# ---------------------------------------------------------------------------------------- raw tcp


def tcp_flow(gw, address, client=None):
    flow = tflow.ttcpflow(client_conn=client or gw.transparent_client(tls=False), messages=[])
    flow.server_conn.address = address
    return flow


def test_raw_tcp_to_an_address_the_gateway_handed_out_for_an_allowed_name(gw):
    run(gw.dns.dns_request(dns_flow(questions=(("git.test", mdns.types.A),))))
    flow = tcp_flow(gw, ("198.18.1.40", 22))
    run(gw.tcp.tcp_start(flow))
    state = gw.conns.of(flow.client_conn)
    assert state.refused is None and state.dial == ("198.18.1.40", 22)
    event = gw.flow_log("tcp")[-1]
    assert (event["dest_host"], event["dest_ip"], event["decision"], event["rule"]) == (
        "git.test", "198.18.1.40", "allow", "git-ssh")


@pytest.mark.parametrize("address, reason", [
    (("198.18.1.40", 22), "ip-literal-not-allowed"),  # never answered by the gateway's DNS: no name
    (("198.18.1.10", 443), "ip-literal-not-allowed"),
])
def test_raw_tcp_elsewhere_is_refused(gw, address, reason):
    flow = tcp_flow(gw, address)
    run(gw.tcp.tcp_start(flow))
    assert gw.conns.of(flow.client_conn).refused == reason
    data = connect_data(flow.client_conn, address, sni=None)
    gw.dial.server_connect(data)
    assert data.server.error == reason


# ---------------------------------------------------------------------------------------- audit


def test_http_audit_logs_one_event_per_flow_without_query_values(gw):
    flow = http_flow(gw, path="/ok/x?token=s3cret&page=2")
    flow.response = tutils.tresp(content=b"hello")
    gw.http_audit.response(flow)
    gw.http_audit.response(flow)  # a second call does not log twice
    gw.http_audit.error(flow)
    events = gw.flow_log("http")
    assert len(events) == 1
    event = events[0]
    assert "s3cret" not in json.dumps(gw.log())
    assert b"s3cret" not in gw.flowlog.path.read_bytes()  # nor anywhere in the records as written (OCSF)
    assert event["url"] == "https://allowed.test/ok/x?token=&page="
    assert {k: event[k] for k in ("session", "client", "dest_host", "dest_ip", "dest_port", "sni", "method",
                                  "status", "bytes_out", "bytes_in", "decision", "rule", "reason")} == {
        "session": gw.session.id, "client": f"{SANDBOX}:40000", "dest_host": "allowed.test",
        "dest_ip": "198.18.1.10", "dest_port": 443, "sni": "allowed.test", "method": "GET", "status": 200,
        "bytes_out": 0, "bytes_in": 5, "decision": "allow", "rule": "allowed-https", "reason": "allowed"}


def test_http_audit_logs_refusals_as_the_403_they_got(gw):
    flow = http_flow(gw, path="/admin?key=v")
    gw.http_audit.response(flow)
    event = gw.flow_log("http")[-1]
    assert (event["status"], event["decision"], event["reason"], event["url"]) == (
        403, "deny", "path-not-allowed", "https://allowed.test/admin?key=")
    assert "dest_ip" not in event


def test_http_audit_kills_the_flow_when_the_log_fails(gw):
    flow = http_flow(gw)
    flow.response = tutils.tresp()
    gw.break_log()
    gw.http_audit.response(flow)
    assert flow.error is not None and flow.error.msg == flow.error.KILLED_MESSAGE
    assert not flow.live


def test_http_audit_logs_upstream_errors(gw):
    flow = http_flow(gw)
    flow.error = tflow.terr("connection refused")
    gw.http_audit.error(flow)
    event = gw.flow_log("http")[-1]
    assert (event["decision"], event["reason"], event["detail"]) == ("allow", "allowed", "connection refused")
    assert "status" not in event


def test_http_audit_ignores_flows_no_step_saw_and_connects(gw):
    gw.http_audit.response(tflow.tflow(resp=True))
    connect = connect_flow(gw, auth=gw.credentials())
    connect.metadata[META] = {"session": gw.session}
    connect.response = tutils.tresp()
    gw.http_audit.response(connect)
    assert gw.flow_log("http") == []
