"""HTTP: host, port, method and path against the session's policy.

The destination name is the one the sandbox cannot make disagree: Host (or
:authority) must equal the TLS server name, the CONNECT target and any
absolute-form authority; a second Host header is refused. The decision is
taken on request headers, before any upstream connection exists.
"""

from __future__ import annotations

import functools

from mitmproxy import http
from mitmproxy.net.http import url
from mitmproxy.proxy.mode_specs import RegularMode

from gateway.addons.failclosed import fail_closed, refuse_http
from gateway.addons.refuse import META, refuse
from gateway.log import events
from gateway.log.writer import LogWriteError
from gateway.policy.hosts import normalize_host, parse_ip_literal


@functools.lru_cache(maxsize=4096)
def _host_of(authority: str) -> str | None:
    try:
        host, _ = url.parse_authority(authority, check=True)
    except ValueError:
        return None
    return host


@functools.lru_cache(maxsize=4096)
def mitmproxy_refusal(msg: str) -> str:
    """mitmproxy's reason for refusing a request, without its advice to switch the check off."""
    for advice in (" Disable the validate_inbound_headers option", " This usually indicates a misconfiguration"):
        msg = msg.split(advice, 1)[0]
    return msg


def _canonical(host: str | None) -> str | None:
    if not host:
        return None
    try:
        ip = parse_ip_literal(host)  # raises for names that only look numeric ("x.1")
        return str(ip) if ip is not None else normalize_host(host)
    except ValueError:
        return None


class HttpPolicy:
    def __init__(self, conns, guard, audit):
        self.conns = conns
        self.guard = guard
        self.audit = audit

    @fail_closed(refuse_http)
    def http_connect(self, flow: http.HTTPFlow) -> None:
        """Explicit proxy CONNECT host:port."""
        if flow.response:  # identity refused it
            return self._emit_connect(flow)
        state = self.conns.of(flow.client_conn)
        host, port = _canonical(flow.request.host), flow.request.port
        if host is None:
            state.refused = "bad-request"
            refuse(flow, "bad-request", flow.request.host)
            return self._emit_connect(flow)
        ip = parse_ip_literal(host)
        decider = state.session.decider
        decision = decider.ip(ip, port, protocol="tcp") if ip is not None else decider.connect(host, port)
        if ip is not None and not decision.allowed:
            decision = decider.ip(ip, port)
        info = flow.metadata.setdefault(META, {})
        info.update(session=state.session, host=host, port=port, rule=decision.rule)
        if not decision.allowed:
            state.refused = decision.reason
            refuse(flow, decision.reason, host)
        else:
            state.host, state.port = host, port
            info.update(decision=decision.action, reason=decision.reason)
        self._emit_connect(flow)

    def _emit_connect(self, flow: http.HTTPFlow) -> None:
        info = flow.metadata.get(META, {})
        session = info.get("session")
        try:
            self.audit.emit(events.make_event(
                events.CONNECT, session=session.id if session else None,
                client=events.address(flow.client_conn.peername),
                dest_host=info.get("host", flow.request.host), dest_port=flow.request.port,
                decision=info.get("decision", "deny"), rule=info.get("rule"), reason=info.get("reason")))
        except LogWriteError:
            self.conns.of(flow.client_conn).refused = "log-unavailable"
            refuse(flow, "log-unavailable", None, status=503)

    @fail_closed(refuse_http)
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response:
            return
        state = self.conns.of(flow.client_conn)
        session = state.session
        info = flow.metadata.setdefault(META, {})
        if session is None:
            return refuse(flow, "no-session", None)
        req = flow.request
        if flow.error is not None:
            # mitmproxy found the request invalid (smuggling framing: Content-Length with
            # Transfer-Encoding, a bad Transfer-Encoding; CONNECT in transparent mode) and refuses it
            # itself after this hook: record it as what it is, not as whatever the policy says of it.
            info.update(port=req.port or None, path=req.path, detail=mitmproxy_refusal(flow.error.msg))
            return refuse(flow, "bad-request", _canonical(_host_of(req.host_header)) if req.host_header else None)
        hosts = req.headers.get_all("host")
        if len(hosts) > 1:
            return refuse(flow, "bad-request", None)
        claimed = req.host_header or ""
        host = _canonical(_host_of(claimed) if claimed else None)
        port = req.port
        # The URL as the sandbox sent it, before any placeholder is replaced: the log never sees a value.
        info.update(port=port, path=req.path)
        if host is None:
            return refuse(flow, "bad-request", claimed or None)
        info["host"] = host
        # Every name the request carries must agree. HTTP/2 and 3 claim :authority; a Host header sent
        # beside it must agree too (mitmproxy forwards it, and an HTTP/1 origin routes by it).
        others = [_canonical(_host_of(h)) for h in hosts]
        if req.authority:
            others.append(_canonical(_host_of(req.authority)))
        if flow.client_conn.tls and flow.client_conn.sni:
            others.append(_canonical(flow.client_conn.sni))
        if state.host:
            others.append(state.host)
        if isinstance(flow.client_conn.proxy_mode, RegularMode) and not state.tunnel:
            others.append(_canonical(req.host))
        if any(o != host for o in others):
            return refuse(flow, "sni-host-mismatch", host)
        ip = parse_ip_literal(host)
        tls = flow.client_conn.tls
        decider = session.decider
        if ip is not None:
            decision = decider.ip(ip, port, method=req.method, path=req.path, tls=tls)
        else:
            decision = decider.http(host, port, req.method, req.path, tls=tls)
        info.update(rule=decision.rule)
        if not decision.allowed:
            return refuse(flow, decision.reason, host, rule=decision.rule)
        vetted = await self.guard.vet(host, port, decider)
        if vetted.address is None:
            return refuse(flow, vetted.reason, host)
        state.vetted.add((vetted.address, port))
        # Dial the address the gateway resolved, not the one the sandbox picked. (data.host: the
        # Host header and :authority stay exactly as the sandbox sent them.)
        req.data.host = vetted.address
        info.update(decision=decision.action, reason=decision.reason, dest_ip=vetted.address)
