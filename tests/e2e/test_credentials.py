"""Credential placeholders end to end: the sandbox never holds a real secret.

Origins record exactly what they receive; the sandbox only ever sees
placeholders; every artifact the run leaves is grepped for the real values.
"""

from __future__ import annotations

import json
import secrets
import time

import pytest

from gateway.lab.harness import WS_CLIENT
import yaml

RULES = """
- name: allowed
  hosts: [{matchName: allowed.test}, {matchName: api.allowed.test}]
- name: other
  hosts: [{matchName: other.test}]
"""

REAL = {
    "OPENAI_API_KEY": "sk-proj-" + secrets.token_hex(20),
    "GITHUB_TOKEN": "ghp_" + secrets.token_hex(18),
    "PLAIN": "plain-" + secrets.token_hex(12),
}


@pytest.fixture(scope="module")
def gateway(lab):
    from gateway.lab.gateway import LabGateway

    gw = LabGateway(lab, extra_config={"secrets": {"cacheSeconds": 1}})
    gw.start(env={"EGW_TEST_OPENAI": REAL["OPENAI_API_KEY"]})
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def secret_files(gateway):
    paths = {}
    for name in ("GITHUB_TOKEN", "PLAIN"):
        path = gateway.dir / f"{name}.secret"
        path.write_text(REAL[name] + "\n")
        path.chmod(0o600)
        paths[name] = path
    return paths


@pytest.fixture(scope="module")
def secrets_file(gateway, secret_files, tmp_path_factory):
    spec = [
        {"name": "OPENAI_API_KEY", "source": "env://EGW_TEST_OPENAI", "hosts": [{"matchName": "allowed.test"}],
         "parts": ["headers", "query", "path", "body"]},
        {"name": "GITHUB_TOKEN", "source": f"file://{secret_files['GITHUB_TOKEN']}",
         "hosts": [{"matchName": "allowed.test"}], "format": "token {}"},
        {"name": "PLAIN", "source": f"file://{secret_files['PLAIN']}", "hosts": [{"matchPattern": "*.allowed.test"}]},
    ]
    path = tmp_path_factory.mktemp("secrets") / "secrets.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def box(sandboxes, secrets_file):
    return sandboxes.up(RULES, "enforce", "--secrets", str(secrets_file))


def echo(box, url: str, *curl_args: str) -> tuple[int, dict | str]:
    status, body = box.curl(url, *curl_args)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def received(lab, **match) -> dict:
    return lab.records(kind="http", **match)[-1]


def test_placeholders_keep_the_shape_and_never_the_value(box):
    ph = box.env["OPENAI_API_KEY"]
    assert ph.startswith("sk-proj-") and len(ph) == len(REAL["OPENAI_API_KEY"]) and ph != REAL["OPENAI_API_KEY"]
    assert box.env["GITHUB_TOKEN"].startswith("ghp_") and len(box.env["GITHUB_TOKEN"]) == len(REAL["GITHUB_TOKEN"])
    r = box.run("sh", "-c", "env")
    for value in REAL.values():
        assert value not in r.stdout
    assert f"OPENAI_API_KEY={ph}" in r.stdout


@pytest.mark.parametrize("where", ["bearer", "format", "basic", "query", "path", "json", "form"])
def test_approved_origin_receives_the_real_value(box, lab, where):
    ph, real = box.env["OPENAI_API_KEY"], REAL["OPENAI_API_KEY"]
    url, args = "https://allowed.test/echo", []
    if where == "bearer":
        args = ["-H", f"Authorization: Bearer {ph}"]
    elif where == "format":
        args = ["-H", f"X-Token: {box.env['GITHUB_TOKEN']}"]
        ph, real = box.env["GITHUB_TOKEN"], "token " + REAL["GITHUB_TOKEN"]
    elif where == "basic":
        args = ["-u", f"user:{ph}"]
    elif where == "query":
        url += f"?key={ph}&x=1"
    elif where == "path":
        url = f"https://allowed.test/echo/{ph}"
    elif where == "json":
        args = ["-H", "Content-Type: application/json", "--data", json.dumps({"token": ph, "n": 1})]
    elif where == "form":
        args = ["--data", f"token={ph}&n=1"]
    status, body = echo(box, url, *args)
    assert status == 200, body
    rec = received(lab, host="allowed.test")
    wire = json.dumps(rec)
    if where == "basic":
        import base64

        assert rec["headers"] and any(v == "Basic " + base64.b64encode(f"user:{real}".encode()).decode()
                                      for k, v in rec["headers"] if k.lower() == "authorization")
    else:
        assert real in wire
    assert ph not in wire
    if where in ("json", "form"):
        length = [v for k, v in rec["headers"] if k.lower() == "content-length"]
        assert length == [str(rec["body_len"])]
    # The echo reflects the request back: the sandbox sees its placeholder again, never the value.
    assert REAL["OPENAI_API_KEY"] not in json.dumps(body) and REAL["GITHUB_TOKEN"] not in json.dumps(body)
    event = box.events(event="http", dest_host="allowed.test")[-1]
    assert event["secrets"] and event["decision"] == "allow"


def test_unapproved_host_gets_nothing_and_an_alert(box, lab):
    ph = box.env["OPENAI_API_KEY"]
    for args in (["-H", f"Authorization: Bearer {ph}"], ["--data", f"k={ph}"]):
        status, body = box.curl("https://other.test/echo", *args)
        assert status == 403 and "OPENAI_API_KEY" in body and "not approved" in body
        assert ph not in body
    assert not lab.records(kind="http", host="other.test")
    alert = box.events(event="http", dest_host="other.test", reason="placeholder-not-approved")[-1]
    assert alert["alert"] is True and alert["secrets"]


def test_placeholder_outside_its_parts_is_refused(box, lab):
    # GITHUB_TOKEN is approved for allowed.test in headers only.
    before = len(lab.records(kind="http"))
    status, body = box.curl(f"https://allowed.test/echo?t={box.env['GITHUB_TOKEN']}")
    assert status == 403 and "GITHUB_TOKEN" in body
    status, _ = box.curl("https://allowed.test/echo", "--data", f"t={box.env['GITHUB_TOKEN'][:-6]}")
    assert status == 403  # partial
    token = box.env["GITHUB_TOKEN"]
    status, body = box.curl("https://allowed.test/echo", "-H", f"X-T: {token[:4]}%{ord(token[4]):02x}{token[5:]}")
    assert status == 403 and "encoded" in body
    assert len(lab.records(kind="http")) == before


def test_redirect_does_not_carry_the_secret(box, lab):
    ph = box.env["OPENAI_API_KEY"]
    # --location-trusted: a careless client that sends its credentials on to wherever it is redirected.
    status, _ = box.curl("https://allowed.test/redirect?to=https://other.test/echo", "--location-trusted",
                         "-H", f"Authorization: Bearer {ph}")
    assert status == 403
    assert not lab.records(kind="http", host="other.test")


def test_another_sessions_placeholder_is_refused(sandboxes, box, lab):
    other = sandboxes.up(RULES)
    status, body = other.curl("https://allowed.test/echo", "-H", f"Authorization: Bearer {box.env['OPENAI_API_KEY']}")
    assert status == 403 and "another session" in body
    assert other.events(event="http", reason="placeholder-foreign")[-1]["alert"] is True


def test_rotation_is_picked_up_without_restart(box, lab, secret_files):
    new = "plain-" + secrets.token_hex(12)
    secret_files["PLAIN"].write_text(new + "\n")
    time.sleep(1.5)  # past secrets.cacheSeconds
    status, _ = echo(box, "https://api.allowed.test/echo", "-H", f"X-Key: {box.env['PLAIN']}")
    assert status == 200
    assert new in json.dumps(received(lab, host="api.allowed.test"))
    REAL["PLAIN_ROTATED"] = new


def test_backend_failure_refuses_and_names_the_secret(box, lab, secret_files, gateway):
    saved = secret_files["PLAIN"].read_text()
    secret_files["PLAIN"].unlink()
    time.sleep(1.5)
    before = len(lab.records(kind="http"))
    try:
        status, body = box.curl("https://api.allowed.test/echo", "-H", f"X-Key: {box.env['PLAIN']}")
    finally:
        secret_files["PLAIN"].write_text(saved)
    assert status == 502 and "PLAIN" in body
    assert len(lab.records(kind="http")) == before
    event = box.events(event="http", dest_host="api.allowed.test")[-1]
    assert event["reason"] == "secret-unavailable" and "file" in event["detail"]


def test_deleted_session_placeholders_are_worthless(sandboxes, lab, secrets_file, gateway):
    victim = sandboxes.up(RULES, "enforce", "--secrets", str(secrets_file))
    ph = victim.env["OPENAI_API_KEY"]
    gateway.client().delete_session(victim.session)
    user = sandboxes.up(RULES)
    status, _ = user.curl("https://allowed.test/echo", "-H", f"Authorization: Bearer {ph}")
    assert status == 200
    wire = json.dumps(received(lab, host="allowed.test"))
    assert ph in wire and REAL["OPENAI_API_KEY"] not in wire


AWS_REAL = {"id": "AKIA" + secrets.token_hex(8).upper(), "secret": secrets.token_urlsafe(30)[:40]}

SIGN_AND_SEND = """
import os, sys, urllib.request
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
creds = Credentials(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
body = b"Action=GetCallerIdentity&Version=2011-06-15"
req = AWSRequest(method="POST", url=sys.argv[1], data=body,
                 headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
SigV4Auth(creds, "sts", "us-east-1").add_auth(req)
r = urllib.request.Request(req.url, data=body, headers=dict(req.headers.items()), method="POST")
try:
    print(urllib.request.urlopen(r).status)
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
"""


def verify_sigv4(rec: dict, key_id: str, secret_key: str) -> bool:
    """Check a received request's signature with the real key, as AWS would (botocore's signer)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from gateway.lab.records import decode_body, header

    auth = header(rec, "authorization")
    fields = dict(p.strip().split("=", 1) for p in auth.split(" ", 1)[1].split(","))
    akid, _date, region, service, _ = fields["Credential"].split("/")
    assert akid == key_id
    signed = fields["SignedHeaders"].split(";")
    req = AWSRequest(method=rec["method"], url=f"https://{header(rec, 'host')}{rec['path']}",
                     data=decode_body(rec), headers={h: header(rec, h) for h in signed})
    req.context["timestamp"] = header(rec, "x-amz-date")
    signer = SigV4Auth(Credentials(key_id, secret_key), service, region)
    signature = signer.signature(signer.string_to_sign(req, signer.canonical_request(req)), req)
    return signature == fields["Signature"]


def test_sigv4_requests_are_resigned_with_the_real_keys(gateway, sandboxes, lab, tmp_path):
    import sys

    for name, value in (("akid", AWS_REAL["id"]), ("sk", AWS_REAL["secret"])):
        (gateway.dir / f"aws-{name}").write_text(value)
    spec = [{"name": "AWS_ACCESS_KEY_ID", "source": f"file://{gateway.dir / 'aws-akid'}",
             "hosts": ["allowed.test"], "sigv4": {"secretAccessKey": f"file://{gateway.dir / 'aws-sk'}"}}]
    path = tmp_path / "aws.yaml"
    path.write_text(yaml.safe_dump(spec))
    box = sandboxes.up(RULES, "enforce", "--secrets", str(path))
    assert box.env["AWS_ACCESS_KEY_ID"].startswith("AKIA") and len(box.env["AWS_ACCESS_KEY_ID"]) == 20
    assert box.env["AWS_SECRET_ACCESS_KEY"] != AWS_REAL["secret"]
    r = box.run(sys.executable, "-c", SIGN_AND_SEND, "https://allowed.test/echo", user="root")
    assert r.stdout.strip() == "200", r.stdout + r.stderr
    rec = received(lab, host="allowed.test", path="/echo")
    assert verify_sigv4(rec, AWS_REAL["id"], AWS_REAL["secret"])
    assert box.env["AWS_ACCESS_KEY_ID"] not in json.dumps(rec)
    # The same signed request towards an unapproved host: refused, nothing arrives.
    r = box.run(sys.executable, "-c", SIGN_AND_SEND, "https://other.test/echo", user="root")
    assert r.stdout.startswith("403") and "AWS_ACCESS_KEY_ID" in r.stdout
    assert not lab.records(kind="http", host="other.test")
    # The secret key placeholder is for signing only: sent anywhere, it is refused.
    status, body = box.curl("https://allowed.test/echo", "-H", f"X-Leak: {box.env['AWS_SECRET_ACCESS_KEY']}")
    assert status == 403 and "AWS_SECRET_ACCESS_KEY" in body
    REAL.update(AWS_ID=AWS_REAL["id"], AWS_SECRET=AWS_REAL["secret"])




def test_websocket_messages_where_opted_in(gateway, sandboxes, lab, tmp_path):
    import sys

    path = tmp_path / "ws.yaml"
    path.write_text(yaml.safe_dump([
        {"name": "WS_TOKEN", "source": "env://EGW_TEST_OPENAI", "hosts": ["allowed.test"],
         "parts": ["headers", "websocket"]},
        {"name": "HDR_TOKEN", "source": "env://EGW_TEST_OPENAI", "hosts": ["allowed.test"]},
    ]))
    box = sandboxes.up(RULES, "enforce", "--secrets", str(path))
    ph = box.env["WS_TOKEN"]
    r = box.run(sys.executable, "-c", WS_CLIENT, "allowed.test", f'{{"auth": "{ph}"}}', user="root")
    assert r.returncode == 0, r.stderr
    # The origin got the real value; its echo came back to the sandbox masked.
    got = lab.records(kind="ws")[-1]
    assert REAL["OPENAI_API_KEY"] in got["data"] and ph not in got["data"]
    assert ph in r.stdout and REAL["OPENAI_API_KEY"] not in r.stdout
    # A secret that did not opt in: the message is dropped, and the sandbox told why.
    before = len(lab.records(kind="ws"))
    r = box.run(sys.executable, "-c", WS_CLIENT, "allowed.test", f"token {box.env['HDR_TOKEN']}", user="root")
    assert "egressgw refused this message" in r.stdout and "HDR_TOKEN" in r.stdout, r.stderr
    assert len(lab.records(kind="ws")) == before
    event = box.events(method="WEBSOCKET")[-1]
    assert event["reason"] == "placeholder-wrong-part" and event["alert"] is True


def test_no_secret_value_in_any_artifact(box, gateway, lab):
    """Last in this module: every value used above, searched for in everything the run left."""
    artifacts = {
        "flow log": gateway.log_path.read_text(),
        "gateway output": gateway.stderr(),
        "metrics": gateway.metrics(),
        "sessions": json.dumps(gateway.client().list_sessions()),
        "sandbox list": gateway.cli("sandbox", "list", "--json").stdout,
    }
    assert artifacts["flow log"]
    for where, text in artifacts.items():
        for name, value in REAL.items():
            assert value not in text, f"{name} in {where}"
