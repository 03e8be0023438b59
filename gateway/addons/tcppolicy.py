"""Raw TCP (neither TLS nor HTTP): refused unless a `protocol: tcp` rule allows it.

In transparent mode the sandbox dialled an address; the names that address
stands for are the ones the gateway's DNS handed this session for it. Through
the explicit proxy the CONNECT target names it.
"""

from __future__ import annotations

from mitmproxy import tcp

from gateway.addons.failclosed import fail_closed, refuse_tcp
from gateway.log import events
from gateway.log.writer import LogWriteError
from gateway.policy.hosts import parse_ip_literal


class TcpPolicy:
    def __init__(self, conns, guard, audit):
        self.conns = conns
        self.guard = guard
        self.audit = audit

    @fail_closed(refuse_tcp)
    async def tcp_start(self, flow: tcp.TCPFlow) -> None:
        state = self.conns.of(flow.client_conn)
        host, port = flow.server_conn.address
        fields = {"client": events.address(flow.client_conn.peername), "dest_port": port}
        session = state.session
        if state.refused:
            return
        if session is None:
            return self._refuse(flow, state, fields, "no-session")
        fields["session"] = session.id
        ip = parse_ip_literal(host)
        if ip is not None and not state.tunnel:
            names = sorted(session.names_for(str(ip)))
            fields.update(dest_ip=str(ip), dest_host=",".join(names) or None)
            decision = session.decider.tcp(names, ip, port)
        else:
            names = [state.host or host]
            fields["dest_host"] = names[0]
            decision = session.decider.tcp(names, ip, port)
        if not decision.allowed:
            return self._refuse(flow, state, fields, decision.reason)
        dial_host = str(ip) if ip is not None else names[0]
        vetted = await self.guard.vet(dial_host, port, session.decider)
        if vetted.address is None:
            return self._refuse(flow, state, fields, vetted.reason)
        state.dial = (vetted.address, port)
        state.vetted.add(state.dial)
        fields.update(dest_ip=vetted.address, decision=decision.action, rule=decision.rule, reason=decision.reason)
        flow.metadata["egressgw"] = fields
        self._emit(state, fields)

    def tcp_end(self, flow: tcp.TCPFlow) -> None:
        fields = flow.metadata.get("egressgw")
        if fields:
            out = sum(len(m.content) for m in flow.messages if m.from_client)
            self._emit(self.conns.of(flow.client_conn), {
                **fields, "bytes_out": out, "bytes_in": sum(len(m.content) for m in flow.messages) - out,
                "detail": "closed"})

    tcp_error = tcp_end

    def _refuse(self, flow, state, fields: dict, reason: str) -> None:
        state.refused = reason  # the dial guard refuses the upstream connection; mitmproxy closes the client
        self._emit(state, {**fields, "decision": "deny", "reason": reason})

    def _emit(self, state, fields: dict) -> None:
        try:
            self.audit.emit(events.make_event(events.TCP, **fields))
        except LogWriteError:
            state.refused = "log-unavailable"
