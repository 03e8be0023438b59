"""gateway/exfil/detectors.py: a session's detectors are compiled once, off the event loop, before its
first request or query, and shared by the HTTP detection addon and the DNS gate."""

from __future__ import annotations

import asyncio
import base64

from gateway.addons import default_addons
from gateway.addons.detection import Detection
from gateway.addons.dnsgate import DnsGate
from gateway.exfil import detectors as detectors_mod
from gateway.exfil.detectors import SessionDetectors
from gateway.secrets.backends import SecretStore
from gateway.sessions.registry import SessionRegistry

from .helpers import policy
from .test_addons import Gateway, dns_flow
from .test_detection_addon import CANARY, flow_for

RULES = "    - name: allowed\n      hosts: [{matchName: allowed.test}]\n"


def counting_builds(monkeypatch) -> list:
    builds = []
    real = SessionDetectors._build

    def build(self, pol, values):
        builds.append(len(values))
        return real(self, pol, values)

    monkeypatch.setattr(SessionDetectors, "_build", build)
    return builds


def test_a_session_created_under_the_loop_is_compiled_before_its_first_request(monkeypatch):
    builds = counting_builds(monkeypatch)
    registry = SessionRegistry()
    addon = Detection(registry, SecretStore(), audit=None)

    async def scenario():
        addon.running()
        session = registry.create("s", policy(RULES))
        registry.add_canaries(session.id, [CANARY.encode()], ["c1"])
        for _ in range(1000):  # the compiles run in their thread while the loop goes on
            if addon.detectors.cached(session.id) is not None and not addon.detectors._building \
                    and not addon.detectors._queue:
                break
            await asyncio.sleep(0.01)
        ready = addon.detectors.cached(session.id)
        f = flow_for(session, path=f"/x?d={CANARY}")
        await addon.requestheaders(f)
        return ready, f

    ready, f = asyncio.run(scenario())
    assert ready is not None and ready[0].values  # compiled with the canary, before any request came
    assert f.response.status_code == 403  # and used: the request found it, no second build
    assert builds[-1] == 1 and len(builds) <= 2  # created (no values yet), then canary added


def test_without_a_running_loop_nothing_is_scheduled_and_the_first_request_compiles():
    registry = SessionRegistry()
    addon = Detection(registry, SecretStore(), audit=None)
    session = registry.create("s", policy(RULES))
    assert addon.detectors.cached(session.id) is None and addon.detectors._drainer is None

    async def first():
        return await addon.detectors.of(session)

    full, values_only = asyncio.run(first())
    assert addon.detectors.cached(session.id) == (full, values_only)


def test_dns_gate_and_http_detection_share_one_compile(tmp_path, monkeypatch):
    builds = counting_builds(monkeypatch)
    gw = Gateway(tmp_path / "flows.jsonl")
    addons = default_addons(registry=gw.registry, conns=gw.conns, resolver=gw.resolver, guard=gw.guard,
                            audit=gw.audit, store=SecretStore())
    dns_gate = next(a for a in addons if isinstance(a, DnsGate))
    detection = next(a for a in addons if isinstance(a, Detection))
    assert dns_gate.detectors is detection.detectors
    gw.registry.add_canaries(gw.session.id, [CANARY.encode()], ["c1"])
    name = base64.b32encode(CANARY.encode()).decode().rstrip("=").lower() + ".allowed.test"

    async def scenario():
        flow = dns_flow(questions=((name, 1),))
        await dns_gate.dns_request(flow)
        await detection.detectors.of(gw.session)  # what the session's first HTTP request asks for
        return flow

    flow = asyncio.run(scenario())
    assert flow.response.response_code == 3  # NXDOMAIN: a known value in a name the policy denies
    assert gw.flow_log("dns")[-1]["dns_qname"].startswith("[REDACTED:known-value].")
    assert builds == [1]  # one compile for both addons


def test_a_compile_past_the_wait_is_servfail_detection_not_ready_for_dns(tmp_path, monkeypatch):
    gw = Gateway(tmp_path / "flows.jsonl")
    gw.dns = DnsGate(gw.registry, gw.resolver, gw.audit, store=SecretStore())
    gw.registry.add_canaries(gw.session.id, [CANARY.encode()], ["c1"])
    monkeypatch.setattr(detectors_mod, "COMPILE_WAIT", 0.0)
    release = __import__("threading").Event()
    real = SessionDetectors._build
    monkeypatch.setattr(SessionDetectors, "_build", lambda self, p, v: (release.wait(5), real(self, p, v))[1])

    async def scenario():
        flow = dns_flow()
        await gw.dns.dns_request(flow)
        release.set()
        return flow

    flow = asyncio.run(scenario())
    assert flow.response.response_code == 2  # SERVFAIL: fail closed, the client may ask again
    event = gw.flow_log("dns")[-1]
    assert (event["decision"], event["reason"]) == ("deny", "detection-not-ready")
    assert gw.resolver.queries == []


def test_a_session_deleted_while_its_values_are_read_leaves_nothing_behind(monkeypatch):
    registry = SessionRegistry()
    addon = Detection(registry, SecretStore(), audit=None)
    session = registry.create("s", policy(RULES))
    registry.add_canaries(session.id, [CANARY.encode()], ["c1"])
    real_of = addon.detectors.known.of

    async def slow_of(s):  # a vault read that takes a while; the session is deleted meanwhile
        values = await real_of(s)
        registry.delete(s.id)
        return values

    monkeypatch.setattr(addon.detectors.known, "of", slow_of)

    async def scenario():
        try:
            await addon.detectors.of(session)
        except detectors_mod.DetectionNotReady as e:
            return str(e)

    assert "deleted" in asyncio.run(scenario())
    assert session.id not in addon.detectors.known._memo and session.id not in addon.detectors.known._last
    assert addon.detectors.cached(session.id) is None and not addon.detectors._building


def test_restored_sessions_compile_one_at_a_time_behind_a_request(monkeypatch):
    order = []
    real = SessionDetectors._build

    def build(self, pol, values):
        order.append({v.label for v in values})
        return real(self, pol, values)

    monkeypatch.setattr(SessionDetectors, "_build", build)
    registry = SessionRegistry()
    addon = Detection(registry, SecretStore(), audit=None)
    sessions = []
    for i in range(6):
        s = registry.create(f"s{i}", policy(RULES))
        registry.add_canaries(s.id, [f"canary-value-{i}-abcdefgh".encode()], [f"c{i}"])
        sessions.append(s)

    async def scenario():
        addon.running()  # the gateway starts: the six restored sessions are queued
        await asyncio.sleep(0)
        await addon.detectors.of(sessions[-1])  # its first request comes at once
        return len(order)

    at_request = asyncio.run(scenario())
    # the request's own compile waited behind at most the one background compile under way
    assert {"canary:c5"} in order[:2] and at_request <= 3, order
