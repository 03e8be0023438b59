"""Sessions end to end: report mode, live policy replacement, isolation, the explicit proxy."""

from __future__ import annotations

import base64

import pytest

ALLOWED = """
- name: allowed
  hosts: [{matchName: allowed.test}]
"""
OTHER = """
- name: other
  hosts: [{matchName: other.test}]
"""


def test_report_mode_lets_through_and_logs_would_deny(sandboxes, lab):
    box = sandboxes.up(ALLOWED, mode="report")
    status, body = box.curl("https://other.test/")
    assert (status, body) == (200, "hello from other.test")
    assert lab.records(kind="http", sni="other.test")
    event = box.events(event="http", dest_host="other.test")[-1]
    assert event["decision"] == "report" and event["reason"] == "host-not-allowed"
    assert box.events(event="dns", dns_qname="other.test", decision="report")
    # Report mode never opens the inside: the dial guard still refuses internal addresses.
    status, _ = box.curl("http://rebind.allowed.test:8000/", "--resolve", "rebind.allowed.test:8000:198.18.1.10")
    assert status == 403


def test_policy_replaced_live_without_disturbing_another_session(sandboxes, gateway):
    a = sandboxes.up(ALLOWED)
    b = sandboxes.up(ALLOWED)
    assert a.curl("https://allowed.test/")[0] == 200
    assert a.curl("https://other.test/")[0] == 0  # NXDOMAIN: curl cannot resolve
    gateway.client().replace_policy(a.session, sandboxes.policy_file("swapped", OTHER).read_text())
    # Next request, no restart: a now reaches other.test and no longer allowed.test.
    assert a.curl("https://other.test/") == (200, "hello from other.test")
    assert a.curl("https://allowed.test/")[0] in (0, 403)
    # b is untouched.
    assert b.curl("https://allowed.test/")[0] == 200
    assert b.curl("https://other.test/")[0] == 0
    assert gateway.events(event="session", session=a.session, detail=f"policy-replaced: {a.name}")


def test_broken_policy_through_api_keeps_the_old_one(sandboxes, gateway):
    box = sandboxes.up(ALLOWED)
    bad = "apiVersion: egressgw.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: x}\nspec:\n  egress:\n    - hosts: [{matchPattern: '*example.com'}]\n"
    from gateway.errors import ControlAPIError

    with pytest.raises(ControlAPIError) as e:
        gateway.client().replace_policy(box.session, bad)
    assert ":6:" in str(e.value) and "badexample.com" in str(e.value)
    assert box.curl("https://allowed.test/")[0] == 200


def test_sessions_cannot_use_each_others_allowances(sandboxes, lab):
    a = sandboxes.up(ALLOWED)
    b = sandboxes.up(OTHER)
    # b resolves allowed.test by address and forces the name: still a's allowance, not b's.
    status, _ = b.curl("https://allowed.test/", "--resolve", "allowed.test:443:198.18.1.10")
    assert status == 0
    assert b.events(event="tls", sni="allowed.test", decision="deny")
    # b spoofing a's source address gets nowhere: the sandbox's rules drop forged sources.
    r = b.run("ip", "addr", "add", f"{a.address}/32", "dev", "lo", user="root")
    assert r.returncode == 0, r.stderr
    status, _ = b.curl("https://allowed.test/", "--interface", a.address,
                       "--resolve", "allowed.test:443:198.18.1.10", user="root")
    assert status == 0
    assert a.curl("https://allowed.test/")[0] == 200


def test_deleted_session_is_refused_at_once(sandboxes, gateway, lab):
    box = sandboxes.up(ALLOWED)
    assert box.curl("https://allowed.test/")[0] == 200
    gateway.client().delete_session(box.session)
    before = len(lab.records(kind="http"))
    assert box.curl("https://allowed.test/", "--resolve", "allowed.test:443:198.18.1.10")[0] == 0
    assert len(lab.records(kind="http")) == before
    assert gateway.events(event="connect", reason="no-session")


def _proxy(gateway, session: dict, url: str, *extra: str) -> tuple[int, str]:
    creds = f"{session['id']}:{session['token']}" if session else None
    argv = ["curl", "-sS", "-m", "5", "-w", "\n%{http_code}", "--cacert", str(gateway.dir / "ca" / "sandbox-ca-bundle.pem"),
            "-x", f"http://127.0.0.1:{gateway.PROXY_PORT}"]
    if creds:
        argv += ["--proxy-user", creds]
    r = gateway.lab.run_in(gateway.lab.gw_ns, [*argv, *extra, url])
    body, _, code = r.stdout.rpartition("\n")
    return int(code or 0), body.strip()


def test_explicit_proxy_enforces_the_same_policy(gateway, sandboxes, lab):
    text = sandboxes.policy_file("proxy", ALLOWED + """
- name: plain
  hosts: [{matchName: other.test}]
  ports: [80]
""").read_text()
    session = gateway.client().create_session("proxy-client", text)
    assert _proxy(gateway, session, "https://allowed.test/") == (200, "hello from allowed.test")
    assert _proxy(gateway, session, "http://other.test/") == (200, "hello from other.test")
    status, _ = _proxy(gateway, session, "https://denied.test/")
    assert status in (0, 403)
    assert gateway.events(event="connect", session=session["id"], dest_host="denied.test", decision="deny")
    status, body = _proxy(gateway, session, "http://denied.test/")
    assert status == 403
    # No credentials, or wrong ones: 407, nothing dialled.
    assert _proxy(gateway, None, "http://other.test/")[0] == 407
    assert _proxy(gateway, {**session, "token": "wrong"}, "http://other.test/")[0] == 407
    # A CONNECT tunnel opened for allowed.test cannot carry another name.
    status, _ = _proxy(gateway, session, "https://allowed.test/", "-H", "Host: other.test")
    assert status == 403
    assert not lab.records(host="denied.test")
    # The proxy credentials never reach the origin.
    rec = lab.records(kind="http", host="other.test")[-1]
    assert not any(k.lower() == "proxy-authorization" for k, _ in rec["headers"])
    assert base64.b64encode(session["token"].encode()).decode() not in str(rec)
