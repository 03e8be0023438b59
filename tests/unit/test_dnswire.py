"""gateway.addons.dnswire on mitmproxy's real DNS layer (sans-IO): every query is a flow of its own.

mitmproxy keeps a connection's DNS flows by query id and never forgets one. Without `dnswire.install()`
a second query with an id already answered on the same socket gets the old flow, answer included:
the request hook sees it answered, decides nothing, logs nothing, and the client gets the old answer.
"""

from __future__ import annotations

import struct

import pytest
from mitmproxy import connection, dns, options
from mitmproxy import flow as mflow
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.net.dns import response_codes
from mitmproxy.proxy import commands, context, events
from mitmproxy.proxy.layers.dns import DnsErrorHook, DNSLayer, DnsRequestHook, DnsResponseHook

from gateway.addons import dnswire


def query(qid: int, name: str) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\x00" + struct.pack("!HH", 1, 1)


class Socket:
    """One UDP client socket and the DNS layer serving it. `decide(flow)` plays the gateway's request
    hook: it sets the answer (or an error) and is told every flow it is asked about."""

    def __init__(self, decide, transport: str = "udp"):
        dnswire.install()
        opts = options.Options()
        Proxyserver().load(opts)
        self.client = connection.Client(peername=("10.0.0.2", 40000), sockname=("10.0.0.1", 53),
                                        timestamp_start=0, transport_protocol=transport)
        self.layer = DNSLayer(context.Context(self.client, opts))
        self.decide = decide
        self.seen: list[tuple[dns.DNSFlow, str]] = []  # (flow, question name) at each request hook
        self.answers: list[dns.DNSMessage] = []
        self._run(self.layer.handle_event(events.Start()))

    def _run(self, cmds) -> None:
        pending = list(cmds)
        while pending:
            cmd = pending.pop(0)
            if isinstance(cmd, DnsRequestHook):
                self.seen.append((cmd.flow, cmd.flow.request.question.name))
                self.decide(cmd.flow)
                pending += list(self.layer.handle_event(events.HookCompleted(cmd)))
            elif isinstance(cmd, (DnsResponseHook, DnsErrorHook)):
                pending += list(self.layer.handle_event(events.HookCompleted(cmd)))
            elif isinstance(cmd, commands.SendData):
                data = cmd.data[2:] if self.client.transport_protocol == "tcp" else cmd.data
                self.answers.append(dns.DNSMessage.unpack(data))

    def ask(self, qid: int, name: str) -> dns.DNSMessage:
        wire = query(qid, name)
        if self.client.transport_protocol == "tcp":
            wire = struct.pack("!H", len(wire)) + wire
        self._run(self.layer.handle_event(events.DataReceived(self.client, wire)))
        return self.answers[-1]


def refuse(flow):
    flow.response = flow.request.fail(response_codes.REFUSED)


def nxdomain_for_blocked(flow):
    code = response_codes.NXDOMAIN if flow.request.question.name.startswith("blocked") else response_codes.REFUSED
    flow.response = flow.request.fail(code)


def fail(flow):
    flow.error = mflow.Error("upstream failed")


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("decide, first_rcode", [
    (refuse, response_codes.REFUSED),
    (nxdomain_for_blocked, response_codes.REFUSED),
    (fail, response_codes.SERVFAIL),
])
def test_a_repeated_query_id_is_decided_again_as_a_new_flow(transport, decide, first_rcode):
    sock = Socket(decide, transport)
    first = sock.ask(7, "allowed.test")
    second = sock.ask(7, "blocked.test")  # same id, same socket, another question
    third = sock.ask(7, "allowed.test")
    assert [name for _, name in sock.seen] == ["allowed.test", "blocked.test", "allowed.test"]
    flows = [f for f, _ in sock.seen]
    assert len({id(f) for f in flows}) == 3  # three flows: none of them carries another query's answer
    assert first.response_code == first_rcode and first.question.name == "allowed.test"
    assert second.question.name == "blocked.test" and second.id == 7
    if decide is nxdomain_for_blocked:
        assert second.response_code == response_codes.NXDOMAIN  # its own answer, not the first one's
    assert third.response_code == first.response_code and third.question.name == "allowed.test"


@pytest.mark.parametrize("decide", [refuse, fail])
def test_answered_queries_are_forgotten(decide):
    """mitmproxy kept every query's flow for the connection's life: a socket asking with fresh ids
    made the gateway hold all of them."""
    sock = Socket(decide)
    for qid in range(1000):
        assert sock.ask(qid, f"q{qid}.test").id == qid
    assert [name for _, name in sock.seen][-1] == "q999.test" and len(sock.seen) == 1000
    assert sock.layer.flows == {}


def test_a_query_left_unanswered_keeps_its_flow():
    """Only an answered flow is forgotten: one waiting for an upstream answer stays (the gateway
    answers every query itself; this is mitmproxy's own upstream path)."""
    sock = Socket(lambda flow: None)
    sock.layer.context.server.address = ("10.0.0.53", 53)
    sock._run(sock.layer.handle_event(events.DataReceived(sock.client, query(5, "up.test"))))
    assert list(sock.layer.flows) == [5] and sock.layer.flows[5].response is None


def test_install_is_idempotent():
    dnswire.install()
    patched = DNSLayer.handle_request
    dnswire.install()
    assert DNSLayer.handle_request is patched
