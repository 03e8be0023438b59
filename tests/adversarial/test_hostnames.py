"""Host-name tricks: case, trailing dot, IDN and punycode homographs, userinfo, brackets, label-boundary
confusion, percent-encoding, backslashes, duplicate and malformed Host headers.

The sandbox aims each trick at allowed.test's address (198.18.1.10) or forces it with --resolve, so only
the gateway's reading of the name stands between the request and denied.test / a name it does not allow.
"""

from __future__ import annotations

import pytest

from advcase import Case, curl, params, raw, refused, req, run_case

RULES = """
- name: allowed
  hosts: [{matchName: allowed.test}]
  ports: [80, 443]
"""

DENY = refused("host-not-allowed", "sni-host-mismatch", "bad-request", "ip-literal-not-allowed")


def resolve(url_host: str, port: int = 443) -> tuple[str, str]:
    return "--resolve", f"{url_host}:{port}:198.18.1.10"


def host_header(i: str, host: str) -> list[Case]:
    """The same Host trick over plain HTTP and over TLS whose SNI is the allowed name."""
    return [Case(f"{i}-http", raw(req(host)), {}, DENY),
            Case(f"{i}-tls", raw(req(host), port=443, sni="allowed.test"), {}, DENY)]


CASES = [
    # case
    Case("upper-case-denied-sni", curl("https://DENIED.TEST/MARK", *resolve("DENIED.TEST")), {"sni": "denied.test"}, DENY),
    *host_header("mixed-case-denied-host", "DeNiEd.TeSt"),
    # trailing dots (smokescreen's bypass)
    Case("trailing-dot-sni", curl("https://denied.test./MARK", *resolve("denied.test.")), {}, DENY),
    Case("trailing-dot-dns", curl("http://MARK.denied.test./"), {"dns": {"qname__contains": "denied"}},
         {"event": "dns", "decision": "deny"}),
    *host_header("trailing-dot-host", "denied.test."),
    *host_header("double-trailing-dot-host", "denied.test.."),
    # IDN and punycode homographs of allowed.test (Cyrillic a): a different name, not allowed
    Case("idn-homograph-url", curl("https://\u0430llowed.test/MARK", *resolve("xn--llowed-3we.test")), {}, DENY),
    Case("punycode-homograph-sni", curl("https://xn--llowed-3we.test/MARK", *resolve("xn--llowed-3we.test")),
         {"sni": "xn--llowed-3we.test"}, DENY),
    *host_header("utf8-homograph-host", "\\xd0\\xb0llowed.test"),
    *host_header("fullwidth-dot-host", "denied\\xef\\xbc\\x8etest"),  # IDNA maps U+FF0E to a dot
    # userinfo (curl connects to the host after the @)
    Case("userinfo-url", curl("http://allowed.test@denied.test/MARK", *resolve("denied.test", 80)),
         {"host": "denied.test"}, DENY),
    *host_header("userinfo-host", "allowed.test@denied.test"),
    *host_header("userinfo-backslash-host", "allowed.test\\\\@denied.test"),
    # brackets
    *host_header("bracketed-name-host", "[denied.test]"),
    *host_header("bracketed-allowed-then-denied", "[allowed.test]denied.test"),
    # label boundaries
    *host_header("allowed-as-prefix-label", "allowed.test.denied.test"),
    *host_header("allowed-as-suffix-without-dot", "evilallowed.test"),
    *host_header("allowed-with-hyphen-tail", "allowed.test-denied.test"),
    Case("allowed-as-prefix-sni", curl("https://allowed.test.denied.test/MARK", *resolve("allowed.test.denied.test")),
         {}, DENY),
    Case("suffix-without-dot-sni", curl("https://evilallowed.test/MARK", *resolve("evilallowed.test")), {}, DENY),
    # percent-encoding and odd bytes
    *host_header("percent-encoded-host", "%64enied.test"),
    *host_header("percent-dot-host", "denied%2etest"),
    *host_header("nul-byte-host", "allowed.test\\x00.denied.test"),
    *host_header("space-separated-host", "allowed.test denied.test"),
    *host_header("host-with-port-and-userinfo", "allowed.test:80@denied.test"),
    *host_header("backslash-label", "denied.test\\\\.allowed.test"),
    # two Host headers (the first allowed, the second not; and the reverse)
    Case("duplicate-host-http", raw(req("allowed.test", extra="Host: denied.test\\r\\n")), {}, DENY),
    Case("duplicate-host-reversed-tls", raw(req("denied.test", extra="Host: allowed.test\\r\\n"), port=443,
                                            sni="allowed.test"), {}, DENY),
]


@pytest.fixture(scope="module")
def box(sandboxes):
    return sandboxes.up(RULES)


@pytest.mark.parametrize("case", params(CASES))
def test_hostname_trick_is_refused(case, box, lab, leak_counter):
    run_case(case, box, lab, leak_counter)
