"""`egressgw policy check|explain` (gateway/commands/policy.py), run through argparse."""

import argparse

import pytest

from gateway.commands import policy as policy_command

from .conftest import POLICIES, TESTDATA


def run(capsys, *argv):
    parser = argparse.ArgumentParser(prog="egressgw")
    policy_command.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["policy", *map(str, argv)])
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def test_check_presets(capsys):
    presets = sorted(POLICIES.glob("*.yaml"))
    code, out, err = run(capsys, "check", *presets)
    assert (code, err) == (0, [])
    assert f"ok: {POLICIES / 'github.yaml'} (4 rules, mode enforce)" in out
    assert f"ok: {POLICIES / 'openai.yaml'} (1 rule, mode enforce)" in out
    assert len(out) == len(presets)


def test_check_reports_every_problem_and_fails(capsys):
    good, bad = POLICIES / "deny-all.yaml", TESTDATA / "bad" / "port-range.yaml"
    code, out, err = run(capsys, "check", good, bad, TESTDATA / "bad" / "missing.yaml")
    assert code == 1
    assert out == [f"ok: {good} (0 rules, mode enforce)"]
    assert err == [
        f"{bad}:9: spec.egress[0].ports[0] must be an integer, not the string '8000-8100' "
        "(fix: ranges are not supported: list each port as a number)",
        f"{TESTDATA / 'bad' / 'missing.yaml'}: file not found (fix: check the path)",
    ]


def test_check_needs_a_file(capsys):
    with pytest.raises(SystemExit) as info:
        run(capsys, "check")
    assert info.value.code == 2


GITHUB = POLICIES / "github.yaml"
EXAMPLE = POLICIES / "example.yaml"


@pytest.mark.parametrize(
    "policy, url, method, code, out",
    [
        (GITHUB, "https://api.github.com/repos?x=1", None, 0, ["allow", f"rule: github-api ({GITHUB}:29)"]),
        (GITHUB, "api.github.com", "delete", 0, ["allow", f"rule: github-api ({GITHUB}:29)"]),
        (
            GITHUB,
            "https://raw.githubusercontent.com/o/r/main/x",
            "POST",
            1,
            ["deny", "reason: method-not-allowed"],
        ),
        (GITHUB, "http://github.com/", None, 1, ["deny", "reason: plain-http-not-allowed"]),
        (GITHUB, "https://github.com:8443/", None, 1, ["deny", "reason: port-not-allowed"]),
        (GITHUB, "https://gitlab.com/", None, 1, ["deny", "reason: host-not-allowed"]),
        (GITHUB, "tcp://github.com:22", None, 0, ["allow", f"rule: github-ssh ({GITHUB}:39)"]),
        (GITHUB, "tcp://api.github.com:22", None, 1, ["deny", "reason: tcp-not-allowed"]),
        (GITHUB, "tcp://gitlab.com:22", None, 1, ["deny", "reason: host-not-allowed"]),
        (GITHUB, "tcp://codeload.github.com:443", None, 1, ["deny", "reason: tcp-not-allowed"]),
        (GITHUB, "https://140.82.112.3/", None, 1, ["deny", "reason: ip-literal-not-allowed"]),
        (EXAMPLE, "https://api.example.com/v1/chat", "POST", 0, ["allow", f"rule: api ({EXAMPLE}:21)"]),
        (EXAMPLE, "https://api.example.com/v1/../admin", None, 1, ["deny", "reason: path-not-allowed"]),
        (EXAMPLE, "https://api.example.com/v1/a%2Fb", None, 1, ["deny", "reason: path-not-allowed"]),
        (EXAMPLE, "http://legacy.example.com/", None, 0, ["allow", f"rule: legacy ({EXAMPLE}:39)"]),
        (EXAMPLE, "https://198.18.5.7/", None, 0, ["allow", f"rule: test-net ({EXAMPLE}:45)"]),
        (EXAMPLE, "tcp://198.18.5.7:22", None, 1, ["deny", "reason: tcp-not-allowed"]),
        (
            EXAMPLE,
            "https://pinned.example.com/anything",
            "DELETE",
            0,
            [
                "allow",
                f"rule: pinned ({EXAMPLE}:34)",
                "note: TLS passes through uninspected; method and path are not checked",
            ],
        ),
    ],
)
def test_explain(capsys, policy, url, method, code, out):
    argv = ["explain", policy, url] + (["--method", method] if method else [])
    assert run(capsys, *argv) == (code, out, [])


def test_explain_report_mode(capsys, tmp_path):
    path = tmp_path / "report.yaml"
    path.write_text((POLICIES / "openai.yaml").read_text().replace("mode: enforce", "mode: report"))
    assert run(capsys, "explain", path, "https://api.openai.com/v1/files/x", "--method", "DELETE") == (
        0,
        ["report", "reason: method-not-allowed"],
        [],
    )
    assert run(capsys, "explain", path, "https://evil.example.com/") == (
        0,
        ["report", "reason: host-not-allowed"],
        [],
    )


@pytest.mark.parametrize(
    "url, method, message",
    [
        ("ftp://example.com/", None, "unsupported scheme 'ftp'"),
        ("https:///path", None, "has no host"),
        ("https://github.com:99999/", None, "Port out of range"),
        ("https://github.com:http/", None, "'https://github.com:http/'"),
        ("https://[::1/", None, "Invalid IPv6 URL"),
        ("https://exa mple.com/", None, "not allowed in a DNS name"),
        ("https://1.2.3.999/", None, "not a valid one"),
        ("tcp://github.com", None, "needs a port"),
        ("tcp://github.com:22", "GET", "--method applies to http:// and https:// URLs only"),
    ],
)
def test_explain_bad_url(capsys, url, method, message):
    argv = ["explain", GITHUB, url] + (["--method", method] if method else [])
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, [])
    assert len(err) == 1 and err[0].startswith("error: ")
    assert message in err[0]


def test_explain_broken_policy(capsys):
    bad = TESTDATA / "bad" / "wrong-kind.yaml"
    code, out, err = run(capsys, "explain", bad, "https://api.github.com/")
    assert (code, out) == (1, [])
    assert err == [
        f"{bad}:2: kind is 'NetworkPolicy'; expected 'EgressPolicy' (fix: write `kind: EgressPolicy`)"
    ]


@pytest.mark.parametrize(
    "url, method, expected",
    [
        ("https://API.github.com/repos?x=1#f", None, ("https", "api.github.com", 443, "GET", "/repos?x=1")),
        ("api.github.com", "post", ("https", "api.github.com", 443, "POST", "/")),
        ("api.github.com:8443/x", None, ("https", "api.github.com", 8443, "GET", "/x")),
        ("http://host.example:8080/p", None, ("http", "host.example", 8080, "GET", "/p")),
        ("http://host.example", None, ("http", "host.example", 80, "GET", "/")),
        ("https://[2001:db8::1]/", None, ("https", "2001:db8::1", 443, "GET", "/")),
        ("tcp://github.com:22", None, ("tcp", "github.com", 22, "GET", "/")),
        ("https://github.com:0/", None, ("https", "github.com", 0, "GET", "/")),
    ],
)
def test_parse_target(url, method, expected):
    target = policy_command.parse_target(url, method)
    assert (target.scheme, target.host, target.port, target.method, target.path) == expected
