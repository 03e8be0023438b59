"""TLS: the server name is decided at ClientHello, before any certificate exists.

Refused names are cut without minting a certificate or dialling anything
(the connection is marked refused; the dial guard then refuses its upstream
connection and mitmproxy closes the client). `inspect: false` names pass
through untouched, dialled at the address the gateway resolved. The rest are
intercepted with the gateway CA.
"""

from __future__ import annotations

from mitmproxy import tls

from gateway.addons.failclosed import fail_closed, refuse_tls
from gateway.log import events
from gateway.log.writer import LogWriteError
from gateway.policy.hosts import normalize_host, parse_ip_literal


class TlsGate:
    def __init__(self, conns, guard, audit):
        self.conns = conns
        self.guard = guard
        self.audit = audit

    @fail_closed(refuse_tls)
    async def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        client = data.context.client
        state = self.conns.of(client)
        if state.refused:
            data.ignore_connection = True
            return
        address = data.context.server.address
        port = address[1] if address else 443
        sni = data.client_hello.sni
        fields = {"client": events.address(client.peername), "sni": sni, "dest_port": port}
        session = state.session
        if session is None:
            return self._refuse(data, state, fields, "no-session")
        fields["session"] = session.id
        host = sni or state.host or (address[0] if address else None)
        if host is None:
            return self._refuse(data, state, fields, "bad-request")
        try:
            ip = parse_ip_literal(host)
            if ip is None:
                host = normalize_host(host)
        except ValueError:
            return self._refuse(data, state, fields, "bad-request")
        fields["dest_host"] = host
        if state.host and host != state.host:
            # Explicit proxy: the tunnel was opened for another name.
            return self._refuse(data, state, fields, "sni-host-mismatch")
        decision = session.decider.ip(ip, port) if ip is not None else session.decider.tls(host, port)
        if not decision.allowed:
            return self._refuse(data, state, fields, decision.reason)
        state.host, state.port = host, port
        fields.update(decision=decision.action, rule=decision.rule, reason=decision.reason)
        if not decision.inspect:
            vetted = await self.guard.vet(host, port, session.decider)
            if vetted.address is None:
                return self._refuse(data, state, fields, vetted.reason)
            state.dial = (vetted.address, port)
            state.vetted.add(state.dial)
            data.ignore_connection = True
            fields.update(dest_ip=vetted.address, detail="passthrough")
        else:
            fields["detail"] = "intercept"
        self._emit(data, state, fields)

    def _refuse(self, data, state, fields: dict, reason: str) -> None:
        state.refused = reason
        data.ignore_connection = True  # no certificate is minted; the dial guard refuses the upstream side
        self._emit(data, state, {**fields, "decision": "deny", "reason": reason})

    def _emit(self, data, state, fields: dict) -> None:
        try:
            self.audit.emit(events.make_event(events.TLS, **fields))
        except LogWriteError:
            state.refused = "log-unavailable"
            data.ignore_connection = True
