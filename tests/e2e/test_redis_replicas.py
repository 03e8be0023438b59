"""Two real gateway processes sharing sessions through a real redis-server.

A session made through replica A's control API is served by replica B as an
explicit proxy; a policy change made through A is enforced by B within a
second; with Redis gone B refuses (session-store-unavailable) and recovers
when Redis is back. A canary registered through A is detected by B. A gateway
restart with the SQLite store keeps sessions and their canaries.
"""

from __future__ import annotations

import base64
import secrets
import shutil
import time

import pytest

from gateway.lab.gateway import LabGateway
from gateway.lab.redis import RedisServer

from gateway.lab.harness import policy_text

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server (scripts/bootstrap)")

ALLOWED = policy_text("allowed", "- name: allowed\n  hosts: [{matchName: allowed.test}]\n")
OTHER = policy_text("other", "- name: other\n  hosts: [{matchName: other.test}]\n")
REDIS_PORT = 16379


def _proxy(gw: LabGateway, session: dict, url: str) -> tuple[int, str]:
    """(status, body): the origin's status, or the proxy's answer to CONNECT when the tunnel was refused."""
    argv = ["curl", "-sS", "-m", "5", "-w", "\n%{http_code} %{http_connect}", "--cacert", str(gw.lab.work / "ca-shared" / "sandbox-ca-bundle.pem"),
            "-x", f"http://127.0.0.1:{gw.PROXY_PORT}", "--proxy-user", f"{session['id']}:{session['token']}", url]
    r = gw.lab.run_in(gw.lab.gw_ns, argv)
    body, _, codes = r.stdout.rpartition("\n")
    code, _, connect = codes.partition(" ")
    return int(code) or (int(connect) if connect not in ("", "200", "000") else 0), body.strip()


def _until(check, timeout: float, step: float = 0.05) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s")
        time.sleep(step)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def replicas(lab):
    redis = RedisServer(lab.work / "redis", REDIS_PORT, netns=lab.gw_ns).start()
    shared = {"sessions": {"store": redis.url}, "ca": {"dir": str(lab.work / "ca-shared")}}  # one CA, as in a Deployment
    a = LabGateway(lab, "replica-a", extra_config=shared, port_offset=0).start()
    b = LabGateway(lab, "replica-b", extra_config=shared, port_offset=10).start()
    yield a, b, redis
    for gw in (a, b):
        gw.stop()
    redis.stop()


def test_any_replica_serves_any_session_and_follows_policy_changes(replicas, lab):
    a, b, _ = replicas
    session = a.client().create_session("shared", ALLOWED)
    # B learns of the session by pub/sub (about 2 ms when idle); allow for a loaded machine.
    _until(lambda: _proxy(b, session, "https://allowed.test/")[0] == 200, 5.0, step=0.05)
    assert _proxy(b, session, "https://allowed.test/") == (200, "hello from allowed.test")
    assert _proxy(b, session, "https://other.test/")[0] in (0, 403)
    assert b.events(event="connect", session=session["id"], dest_host="other.test", decision="deny")
    assert any(s["id"] == session["id"] for s in b.client().list_sessions())

    a.client().replace_policy(session["id"], OTHER)
    changed = time.monotonic()
    _until(lambda: _proxy(b, session, "https://other.test/")[0] == 200, 1.0, step=0.02)
    assert time.monotonic() - changed < 1.0
    assert _proxy(b, session, "https://allowed.test/")[0] in (0, 403)

    a.client().delete_session(session["id"])
    _until(lambda: _proxy(b, session, "http://other.test/")[0] == 407, 1.0, step=0.02)


CANARY = "canary-" + secrets.token_hex(12)


def test_a_canary_registered_on_one_replica_is_detected_on_the_other(replicas, lab):
    a, b, _ = replicas
    session = a.client().create_session("canaried", ALLOWED)
    _until(lambda: _proxy(b, session, "https://allowed.test/")[0] == 200, 1.0)
    assert a.client().add_canaries(session["id"], [CANARY], ["decoy"]) == ["canary:decoy"]
    url = f"https://allowed.test/?d={base64.b64encode(CANARY.encode()).decode()}"
    took = _until(lambda: _proxy(b, session, url)[0] == 403, 1.0, step=0.02)
    status, body = _proxy(b, session, url)
    assert status == 403 and "known-value" in body and CANARY not in body
    event = b.events(event="http", session=session["id"], reason="exfiltration")[-1]
    assert event["detections"][0]["label"] == "canary:decoy"
    assert _proxy(b, session, "https://allowed.test/?d=clean")[0] == 200
    assert b.client().canaries(session["id"]) == ["canary:decoy"]  # labels only, on B too
    print(f"canary registered on A detected on B after {took * 1000:.0f} ms")


def test_replica_without_redis_fails_closed_then_recovers(replicas, lab):
    a, b, redis = replicas
    session = a.client().create_session("outage", ALLOWED)
    _until(lambda: _proxy(b, session, "https://allowed.test/")[0] == 200, 1.0)
    redis.stop()
    _until(lambda: _proxy(b, session, "https://allowed.test/")[0] == 503, 3.0)
    seen = len(lab.records(kind="http"))
    for _ in range(3):
        assert _proxy(b, session, "https://allowed.test/")[0] == 503
    assert len(lab.records(kind="http")) == seen  # nothing reached the origin while B could not verify
    assert b.events(event="connect", session=None, reason="session-store-unavailable", decision="deny")
    assert "egressgw_session_store_up 0.0" in b.metrics()

    # Redis back, empty (no persistence here): B verifies again; the session is gone, a new one works through B.
    redis.start()
    _until(lambda: "egressgw_session_store_up 1.0" in b.metrics(), 5.0, step=0.1)
    assert _proxy(b, session, "http://allowed.test/")[0] == 407
    again = a.client().create_session("after", ALLOWED)
    _until(lambda: _proxy(b, again, "https://allowed.test/")[0] == 200, 1.0)


def test_sqlite_store_keeps_sessions_across_a_restart(lab):
    gw = LabGateway(lab, "restart", port_offset=20).start()
    try:
        session = gw.client().create_session("durable", ALLOWED)
        gw.client().add_canaries(session["id"], [CANARY], ["kept"])
        gw.stop()
        gw.start()
        assert any(s["id"] == session["id"] for s in gw.client().list_sessions())
        argv = ["curl", "-sS", "-m", "5", "-w", "\n%{http_code}", "--cacert", str(gw.dir / "ca" / "sandbox-ca-bundle.pem"),
                "-x", f"http://127.0.0.1:{gw.PROXY_PORT}", "--proxy-user", f"{session['id']}:{session['token']}"]
        assert lab.run_in(lab.gw_ns, [*argv, "https://allowed.test/"]).stdout.endswith("200")
        # the canary registered before the restart is still looked for
        assert lab.run_in(lab.gw_ns, [*argv, f"https://allowed.test/?d={CANARY[::-1]}"]).stdout.endswith("403")
    finally:
        gw.stop()
