"""The decider (gateway/policy/decide.py): one table per kind of decision."""

import dataclasses
import ipaddress
import subprocess
import sys
import time

import pytest

from gateway.policy import REASONS, Decider, Decision, load_policy_text, normalize_path

from .conftest import ROOT

POLICY = """
apiVersion: egressgw.dev/v1alpha1
kind: EgressPolicy
metadata: {name: decide}
spec:
  mode: %s
  egress:
    - name: pypi
      hosts: [{matchName: pypi.org}, {matchName: files.pythonhosted.org}]
      methods: [GET, HEAD]
      paths: ["/simple/*", "/packages/*"]
    - name: api
      hosts: [{matchName: api.example.com}]
      ports: [443, 8443]
      methods: [GET, POST]
      paths: ["/v1/*", "/status"]
    - name: multi-port
      hosts: [{matchName: multi.example.com}]
      ports: [8443]
    - name: multi-path
      hosts: [{matchName: multi.example.com}]
      methods: [GET]
      paths: ["/x"]
    - name: cdn
      hosts: [{matchPattern: "*.cdn.example.com"}]
    - name: cdn-img
      hosts: [{matchName: img.cdn.example.com}]
      methods: [GET]
    - name: glob
      hosts: [{matchName: glob.example.com}]
      paths: ["/v?/*.tar.gz", "/exact"]
    - name: legacy
      hosts: [{matchName: legacy.example.com}]
      ports: [80]
    - name: pinned
      hosts: [{matchName: pinned.example.com}]
      inspect: false
    - name: net
      cidrs: ["198.18.5.0/24", "2001:db8::/32"]
      ports: [443, 80]
    - name: ssh
      protocol: tcp
      hosts: [{matchName: git.example.com}]
      cidrs: ["198.18.9.0/24"]
      ports: [22]
"""

IP = ipaddress.ip_address


@pytest.fixture(scope="module")
def decider():
    return Decider(load_policy_text(POLICY % "enforce"))


def check(decision: Decision, expected: str) -> None:
    """``expected`` is "allow:<rule>" or "deny:<reason>"."""
    action, _, detail = expected.partition(":")
    assert decision.action == action
    assert decision.allowed is (action == "allow")
    assert decision.reason in REASONS
    if action == "allow":
        assert (decision.rule, decision.reason) == (detail, "allowed")
    else:
        assert (decision.rule, decision.reason) == (None, detail)


@pytest.mark.parametrize(
    "host, port, method, path, tls, expected",
    [
        # hosts
        ("pypi.org", 443, "GET", "/simple/requests/", True, "allow:pypi"),
        ("PyPI.ORG.", 443, "GET", "/simple/requests/", True, "allow:pypi"),
        ("files.pythonhosted.org", 443, "GET", "/packages/a/b/c.whl", True, "allow:pypi"),
        ("evil.example.com", 443, "GET", "/", True, "deny:host-not-allowed"),
        ("pypi.org.evil.net", 443, "GET", "/simple/", True, "deny:host-not-allowed"),
        ("exa mple.com", 443, "GET", "/", True, "deny:host-not-allowed"),
        ("", 443, "GET", "/", True, "deny:host-not-allowed"),
        ("1.2.3.999", 443, "GET", "/", True, "deny:host-not-allowed"),
        ("git.example.com", 443, "GET", "/", True, "deny:host-not-allowed"),  # tcp rule only
        ("a.cdn.example.com", 443, "DELETE", "/anything", True, "allow:cdn"),
        ("a.b.cdn.example.com", 443, "GET", "/", True, "deny:host-not-allowed"),
        ("cdn.example.com", 443, "GET", "/", True, "deny:host-not-allowed"),
        ("img.cdn.example.com", 443, "POST", "/", True, "allow:cdn"),  # first rule in file order
        # ports
        ("pypi.org", 8443, "GET", "/simple/", True, "deny:port-not-allowed"),
        ("api.example.com", 8443, "GET", "/v1/x", True, "allow:api"),
        ("api.example.com", 444, "GET", "/v1/x", True, "deny:port-not-allowed"),
        # methods
        ("pypi.org", 443, "POST", "/simple/", True, "deny:method-not-allowed"),
        ("pypi.org", 443, "get", "/simple/", True, "allow:pypi"),
        ("pypi.org", 443, "HEAD", "/simple/", True, "allow:pypi"),
        ("api.example.com", 443, "POST", "/v1/chat", True, "allow:api"),
        ("api.example.com", 443, "DELETE", "/v1/chat", True, "deny:method-not-allowed"),
        # paths
        ("api.example.com", 443, "GET", "/status", True, "allow:api"),
        ("api.example.com", 443, "GET", "/status/x", True, "deny:path-not-allowed"),
        ("api.example.com", 443, "GET", "/statusx", True, "deny:path-not-allowed"),
        ("api.example.com", 443, "GET", "/status?verbose=1", True, "allow:api"),
        ("api.example.com", 443, "GET", "/status#top", True, "allow:api"),
        ("api.example.com", 443, "GET", "/v1", True, "deny:path-not-allowed"),
        ("api.example.com", 443, "GET", "/V1/x", True, "deny:path-not-allowed"),
        ("pypi.org", 443, "GET", "/simple", True, "deny:path-not-allowed"),
        ("pypi.org", 443, "GET", "/simple/?q=/../../admin", True, "allow:pypi"),
        ("pypi.org", 443, "GET", "/%73imple/x", True, "allow:pypi"),  # %73 is "s"
        ("pypi.org", 443, "GET", "/simple/a/../b", True, "allow:pypi"),
        ("pypi.org", 443, "GET", "/simple/./b", True, "allow:pypi"),
        # path traversal and encodings
        ("pypi.org", 443, "GET", "/simple/../admin", True, "deny:path-not-allowed"),
        ("pypi.org", 443, "GET", "/simple/%2e%2e/admin", True, "deny:path-not-allowed"),
        ("pypi.org", 443, "GET", "/simple/.%2E/admin", True, "deny:path-not-allowed"),
        ("pypi.org", 443, "GET", "/simple/x/../../admin", True, "deny:path-not-allowed"),
        ("pypi.org", 443, "GET", "/simple/..;/admin", True, "deny:path-not-allowed"),
        ("pypi.org", 443, "GET", "/simple//../admin", True, "deny:path-not-allowed"),
        ("pypi.org", 443, "GET", "/simple/x%2Fy", True, "deny:path-not-allowed"),
        ("pypi.org", 443, "GET", "/simple/x%2fy", True, "deny:path-not-allowed"),
        ("pypi.org", 443, "GET", "/simple/x%5cy", True, "deny:path-not-allowed"),
        ("pypi.org", 443, "GET", "/simple/x\\y", True, "deny:path-not-allowed"),
        ("pypi.org", 443, "GET", "/simple/%zz", True, "deny:path-not-allowed"),
        # glob syntax: `*` crosses "/", `?` is one character
        ("glob.example.com", 443, "GET", "/v1/a/b.tar.gz", True, "allow:glob"),
        ("glob.example.com", 443, "GET", "/v1/.tar.gz", True, "allow:glob"),
        ("glob.example.com", 443, "GET", "/v10/a.tar.gz", True, "deny:path-not-allowed"),
        ("glob.example.com", 443, "GET", "/v1/a.tar.gzip", True, "deny:path-not-allowed"),
        ("glob.example.com", 443, "GET", "/v1/a.tarXgz", True, "deny:path-not-allowed"),
        ("glob.example.com", 443, "GET", "/exact", True, "allow:glob"),
        ("glob.example.com", 443, "GET", "/exactly", True, "deny:path-not-allowed"),
        # the most specific failure across rules naming the host
        ("multi.example.com", 9999, "GET", "/x", True, "deny:port-not-allowed"),
        ("multi.example.com", 443, "POST", "/x", True, "deny:method-not-allowed"),
        ("multi.example.com", 443, "GET", "/y", True, "deny:path-not-allowed"),
        ("multi.example.com", 8443, "POST", "/y", True, "allow:multi-port"),
        ("multi.example.com", 443, "GET", "/x", True, "allow:multi-path"),
        # plain HTTP needs the port listed explicitly
        ("legacy.example.com", 80, "GET", "/", False, "allow:legacy"),
        ("legacy.example.com", 443, "GET", "/", True, "deny:port-not-allowed"),
        ("legacy.example.com", 8080, "GET", "/", False, "deny:port-not-allowed"),
        ("pypi.org", 80, "GET", "/simple/", False, "deny:plain-http-not-allowed"),
        ("pypi.org", 443, "GET", "/simple/", False, "deny:plain-http-not-allowed"),
        ("api.example.com", 443, "GET", "/status", False, "allow:api"),  # 443 is listed
        # inspect: false rules allow any request once intercepted
        ("pinned.example.com", 443, "PATCH", "/anything", True, "allow:pinned"),
        # IP literals: cidrs rules only
        ("198.18.5.7", 443, "GET", "/", True, "allow:net"),
        ("0xc6120507", 443, "GET", "/", True, "allow:net"),
        ("198.18.5.7", 80, "GET", "/", False, "allow:net"),
        ("198.18.5.7", 8443, "GET", "/", True, "deny:port-not-allowed"),
        ("[2001:db8::1]", 443, "GET", "/", True, "allow:net"),
        ("::ffff:198.18.5.7", 443, "GET", "/", True, "allow:net"),
        ("198.18.6.1", 443, "GET", "/", True, "deny:ip-literal-not-allowed"),
        ("127.0.0.1", 443, "GET", "/", True, "deny:ip-literal-not-allowed"),
        ("198.18.9.1", 443, "GET", "/", True, "deny:ip-literal-not-allowed"),  # tcp rule only
    ],
)
def test_http(decider, host, port, method, path, tls, expected):
    check(decider.http(host, port, method, path, tls=tls), expected)


@pytest.mark.parametrize(
    "sni, port, expected, inspect",
    [
        ("pypi.org", 443, "allow:pypi", True),
        ("pypi.org", 8443, "deny:port-not-allowed", True),
        ("api.example.com", 8443, "allow:api", True),
        ("pinned.example.com", 443, "allow:pinned", False),
        ("evil.example.com", 443, "deny:host-not-allowed", True),
        ("git.example.com", 22, "deny:host-not-allowed", True),
        ("198.18.5.7", 443, "allow:net", True),
        ("10.0.0.1", 443, "deny:ip-literal-not-allowed", True),
        (None, 443, "deny:host-not-allowed", True),  # no SNI
    ],
)
def test_tls(decider, sni, port, expected, inspect):
    decision = decider.tls(sni, port)
    check(decision, expected)
    assert decision.inspect is inspect


@pytest.mark.parametrize(
    "name, expected",
    [
        ("pypi.org", "allow:pypi"),
        ("PYPI.org.", "allow:pypi"),
        ("git.example.com", "allow:ssh"),  # tcp rules count for DNS
        ("a.cdn.example.com", "allow:cdn"),
        ("cdn.example.com", "deny:host-not-allowed"),
        ("example.com", "deny:host-not-allowed"),
        ("not a name", "deny:host-not-allowed"),
        ("198.18.5.7", "allow:net"),
        ("10.0.0.1", "deny:ip-literal-not-allowed"),
    ],
)
def test_dns(decider, name, expected):
    check(decider.dns(name), expected)


@pytest.mark.parametrize(
    "host, port, expected, inspect",
    [
        ("git.example.com", 22, "allow:ssh", False),
        ("git.example.com", 443, "deny:port-not-allowed", True),
        ("api.example.com", 8443, "allow:api", True),
        ("pinned.example.com", 443, "allow:pinned", False),
        ("198.18.9.5", 22, "allow:ssh", False),
        ("198.18.5.5", 22, "deny:port-not-allowed", True),
        ("evil.example.com", 443, "deny:host-not-allowed", True),
    ],
)
def test_connect(decider, host, port, expected, inspect):
    decision = decider.connect(host, port)
    check(decision, expected)
    assert decision.inspect is inspect


@pytest.mark.parametrize(
    "names, ip, port, expected",
    [
        (["git.example.com"], None, 22, "allow:ssh"),
        (["GIT.example.com."], IP("203.0.113.1"), 22, "allow:ssh"),
        (["evil.example.com", "git.example.com"], None, 22, "allow:ssh"),
        (["git.example.com"], None, 2222, "deny:port-not-allowed"),
        (["pypi.org"], None, 443, "deny:tcp-not-allowed"),  # an http rule names it
        (["evil.example.com"], None, 22, "deny:host-not-allowed"),
        (["not a name"], None, 22, "deny:host-not-allowed"),
        ([], IP("198.18.9.1"), 22, "allow:ssh"),
        ([], IP("::ffff:198.18.9.1"), 22, "allow:ssh"),
        ([], IP("198.18.5.1"), 443, "deny:tcp-not-allowed"),
        ([], IP("10.0.0.1"), 22, "deny:ip-literal-not-allowed"),
        (iter(["git.example.com"]), None, 22, "allow:ssh"),
    ],
)
def test_tcp(decider, names, ip, port, expected):
    check(decider.tcp(names, ip, port), expected)


@pytest.mark.parametrize(
    "ip, port, kwargs, expected",
    [
        (IP("198.18.5.7"), 443, {}, "allow:net"),
        (IP("198.18.5.7"), 443, {"method": "delete", "path": "/x"}, "allow:net"),
        (IP("198.18.5.7"), 80, {"tls": False}, "allow:net"),
        (IP("198.18.5.7"), 22, {"protocol": "tcp"}, "deny:tcp-not-allowed"),
        (IP("198.18.9.1"), 22, {"protocol": "tcp"}, "allow:ssh"),
        (IP("198.18.9.1"), 2222, {"protocol": "tcp"}, "deny:port-not-allowed"),
        (IP("198.18.9.1"), 443, {}, "deny:ip-literal-not-allowed"),
        (IP("2001:db8::5"), 443, {}, "allow:net"),
        (IP("::ffff:198.18.5.7"), 443, {}, "allow:net"),
        (IP("10.0.0.1"), 443, {}, "deny:ip-literal-not-allowed"),
    ],
)
def test_ip(decider, ip, port, kwargs, expected):
    check(decider.ip(ip, port, **kwargs), expected)


@pytest.fixture(scope="module")
def reporter():
    return Decider(load_policy_text(POLICY % "report"))


@pytest.mark.parametrize(
    "call, expected_reason",
    [
        (lambda d: d.http("evil.example.com", 443, "GET", "/", tls=True), "host-not-allowed"),
        (lambda d: d.http("pypi.org", 443, "POST", "/simple/", tls=True), "method-not-allowed"),
        (lambda d: d.http("pypi.org", 443, "GET", "/simple/../admin", tls=True), "path-not-allowed"),
        (lambda d: d.http("pypi.org", 80, "GET", "/simple/", tls=False), "plain-http-not-allowed"),
        (lambda d: d.tls("pypi.org", 8443), "port-not-allowed"),
        (lambda d: d.dns("evil.example.com"), "host-not-allowed"),
        (lambda d: d.tcp(["pypi.org"], None, 443), "tcp-not-allowed"),
        (lambda d: d.ip(IP("10.0.0.1"), 443), "ip-literal-not-allowed"),
        (lambda d: d.connect("evil.example.com", 443), "host-not-allowed"),
    ],
)
def test_report_mode_lets_denials_pass_and_says_why(decider, reporter, call, expected_reason):
    assert call(decider).action == "deny"
    assert call(reporter) == Decision(True, "report", None, expected_reason)


def test_report_mode_keeps_allows(reporter):
    assert reporter.http("pypi.org", 443, "GET", "/simple/", tls=True) == Decision(
        True, "allow", "pypi", "allowed"
    )
    assert reporter.tls("pinned.example.com", 443).inspect is False


def test_empty_policy_denies_everything():
    decider = Decider(
        load_policy_text(
            "apiVersion: egressgw.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: n}\nspec: {egress: []}"
        )
    )
    check(decider.dns("pypi.org"), "deny:host-not-allowed")
    check(decider.http("pypi.org", 443, "GET", "/", tls=True), "deny:host-not-allowed")
    check(decider.tcp(["pypi.org"], IP("198.18.5.1"), 22), "deny:host-not-allowed")
    check(decider.ip(IP("198.18.5.1"), 443), "deny:ip-literal-not-allowed")


def test_decision_is_frozen(decider):
    decision = decider.dns("pypi.org")
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.allowed = False  # type: ignore[misc]
    assert decider.policy.name == "decide"


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/", "/"),
        ("/a/b", "/a/b"),
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/..", "/"),
        ("/../../etc/passwd", "/etc/passwd"),
        ("/%2e%2E/x", "/x"),
        ("/%7Euser/%41", "/~user/A"),
        ("/a%20b/%c3%bc", "/a%20b/%C3%BC"),
        ("/a.b/c..d/.e", "/a.b/c..d/.e"),
        ("/a//b", "/a//b"),
        ("/a%2Fb", None),
        ("/a%2fb", None),
        ("/a%5Cb", None),
        ("/a\\b", None),
        ("/a%", None),
        ("/a%g1", None),
        ("/a/..;/b", None),
        ("/a/.;x/b", None),
        ("/a//../b", None),
    ],
)
def test_normalize_path(path, expected):
    assert normalize_path(path) == expected


def test_path_globs_match_in_linear_time():
    policy = load_policy_text(
        """
apiVersion: egressgw.dev/v1alpha1
kind: EgressPolicy
metadata: {name: slow}
spec:
  egress:
    - hosts: [{matchName: a.example.com}]
      paths: ["/*a*a*a*a*a*a*b"]
"""
    )
    decider = Decider(policy)
    start = time.perf_counter()
    decision = decider.http("a.example.com", 443, "GET", "/" + "a" * 200_000, tls=True)
    assert time.perf_counter() - start < 1.0  # a backtracking regex would take hours
    assert decision.reason == "path-not-allowed"


def test_many_rules_are_indexed():
    rules = "\n".join(
        f"    - hosts: [{{matchName: h{i}.example.com}}, {{matchPattern: '*.p{i}.example.com'}}]"
        for i in range(2000)
    )
    header = (
        "apiVersion: egressgw.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: big}\nspec:\n  egress:\n"
    )
    decider = Decider(load_policy_text(header + rules))
    check(decider.http("h1999.example.com", 443, "GET", "/", tls=True), "allow:egress[1999]")
    check(decider.http("x.p1998.example.com", 443, "GET", "/", tls=True), "allow:egress[1998]")
    start = time.perf_counter()
    for _ in range(10_000):
        decider.http("h1999.example.com", 443, "GET", "/", tls=True)
    assert time.perf_counter() - start < 1.0  # no linear scan over 2000 rules


def test_policy_engine_imports_no_mitmproxy():
    code = (
        "import sys, gateway.policy, gateway.commands.policy; "
        "bad = [m for m in sys.modules if m.split('.')[0] == 'mitmproxy']; "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
