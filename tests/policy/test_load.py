"""Loading policies (gateway/policy/load.py): every broken file names its line and a fix."""

import json

import pytest
import yaml

from gateway.errors import PolicyError, Problem
from gateway.policy import Decider, check_files, load_policy_file, load_policy_text
from gateway.policy.model import HostSelector

from .conftest import POLICIES, TESTDATA

BAD = TESTDATA / "bad"

# file in testdata/bad -> (line, substring of the message). Each file has exactly one problem.
BAD_FILES = {
    "alias.yaml": (10, "YAML alias *h is not supported"),
    "bad-indent.yaml": (8, "invalid YAML"),
    "bad-mode.yaml": (6, "spec.mode: 'enforcing' is not one of enforce, report"),
    "cidr-host-bits.yaml": (8, "198.18.5.1/24 has host bits set"),
    "cidr-invalid.yaml": (10, "spec.egress[0].cidrs[1]: '300.1.1.0/24' does not appear to be"),
    "duplicate-key.yaml": (9, "duplicate key 'name' (first at line 7)"),
    "duplicate-rule-name.yaml": (9, "rule name 'a' is already used by the rule at line 7"),
    "egress-not-list.yaml": (7, "spec.egress must be a list, not a mapping"),
    "egress-null.yaml": (6, "spec.egress must be a list, not empty"),
    "empty.yaml": (0, "the file is empty"),
    "host-bare-string.yaml": (9, "hosts[0] is a bare string"),
    "host-both-selectors.yaml": (9, "needs exactly one of matchName or matchPattern"),
    "inspect-false-methods.yaml": (10, "methods needs inspection, but the rule has `inspect: false`"),
    "inspect-not-bool.yaml": (9, "inspect must be true or false, not the string 'false'"),
    "method-connect.yaml": (11, "methods[1]: CONNECT cannot be listed"),
    "method-invalid.yaml": (9, "'GE T' is not a valid HTTP method"),
    "missing-egress.yaml": (6, "spec: missing required key 'egress'"),
    "missing-name.yaml": (3, "metadata: missing required key 'name'"),
    "name-bad-chars.yaml": (9, "contains characters not allowed in a DNS name: /"),
    "name-is-ip.yaml": (9, "matchName '127.0.0.1' is an IP address"),
    "name-label-too-long.yaml": (9, "is 64 characters long; the limit is 63"),
    "name-with-star.yaml": (9, "matchName '*.example.com' contains '*'"),
    "not-a-mapping.yaml": (1, "the policy must be a mapping, not a list"),
    "path-encoded-slash.yaml": (9, "'/a%2Fb' can never match"),
    "path-no-slash.yaml": (9, "'simple/*' does not start with '/'"),
    "path-traversal.yaml": (10, "requests are normalised to '/admin/*'"),
    "pattern-bare-star.yaml": (9, "matchPattern '*' would match every host"),
    "pattern-double-star.yaml": (9, "'*' is allowed only once"),
    "pattern-middle.yaml": (9, "matchPattern 'api.*.com': '*' is allowed only once"),
    "pattern-no-dot.yaml": (9, "would also match names like 'badexample.com'"),
    "pattern-tld.yaml": (9, "every name under the top-level domain 'com'"),
    "port-out-of-range.yaml": (9, "ports[1]: port 70000 is out of range"),
    "port-quoted.yaml": (9, "ports[0] must be an integer, not the string '443'"),
    "port-range.yaml": (9, "must be an integer, not the string '8000-8100'"),
    "ports-empty.yaml": (9, "spec.egress[0].ports is empty"),
    "ports-not-list.yaml": (9, "spec.egress[0].ports must be a list, not 443"),
    "protocol-unknown.yaml": (8, "protocol: 'udp' is not one of http, tcp"),
    "rule-name-not-string.yaml": (7, "spec.egress[0].name must be a string, not a list"),
    "rule-without-hosts.yaml": (7, "a rule needs `hosts` or `cidrs`"),
    "tcp-with-paths.yaml": (11, "spec.egress[0].paths is not allowed in a tcp rule"),
    "tcp-without-ports.yaml": (7, "a tcp rule needs `ports`"),
    "two-documents.yaml": (7, "expected a single document"),
    "unknown-host-key.yaml": (9, "unknown key 'matchname'"),
    "unknown-rule-key.yaml": (10, "unknown key 'port'"),
    "unknown-top-key.yaml": (5, "unknown key 'specs'"),
    "wrong-api-version.yaml": (1, "apiVersion is 'egressgw.dev/v1'; expected 'egressgw.dev/v1alpha1'"),
    "wrong-kind.yaml": (2, "kind is 'NetworkPolicy'; expected 'EgressPolicy'"),
    "yaml-syntax.yaml": (9, "invalid YAML"),
}

# What the fix says for a few, so the advice itself is checked.
FIXES = {
    "unknown-top-key.yaml": "did you mean `spec`?",
    "unknown-rule-key.yaml": "did you mean `ports`?",
    "unknown-host-key.yaml": "did you mean `matchName`?",
    "bad-mode.yaml": "did you mean `enforce`?",
    "wrong-api-version.yaml": "write `apiVersion: egressgw.dev/v1alpha1`",
    "port-quoted.yaml": "write 443 without quotes",
    "port-range.yaml": "ranges are not supported",
    "cidr-host-bits.yaml": "write 198.18.5.0/24",
    "pattern-no-dot.yaml": 'write `matchPattern: "*.example.com"`',
    "host-bare-string.yaml": "write `- matchName: a.example.com`",
    "name-with-star.yaml": "matchPattern",
    "name-is-ip.yaml": "cidrs",
    "path-traversal.yaml": "write '/admin/*'",
    "missing-egress.yaml": "`egress: []`",
    "two-documents.yaml": "one policy per file",
}


def test_every_bad_file_is_in_the_table():
    assert sorted(p.name for p in BAD.iterdir()) == sorted(BAD_FILES)


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_reports_exactly_its_problem(name):
    line, message = BAD_FILES[name]
    path = BAD / name
    with pytest.raises(PolicyError) as info:
        load_policy_file(path)
    assert len(info.value.problems) == 1, info.value.problems
    problem = info.value.problems[0]
    assert problem.file == str(path)
    assert problem.line == line
    assert message in problem.message
    assert problem.fix, "every problem says what to change"
    assert FIXES.get(name, "") in problem.fix
    assert str(problem).startswith(f"{path}:{line}: " if line else f"{path}: ")


def test_all_problems_are_collected_in_line_order():
    text = """\
apiVersion: v1
kind: EgressPolicy
metadata: {name: many}
spec:
  mode: audit
  egress:
    - hosts: [{matchPattern: "*.com"}]
      ports: [0]
    - hosts: [{matchName: ok.example.com}]
      methods: [CONNECT]
      inspect: false
"""
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "many.yaml")
    found = [(p.line, p.message.split(":")[0]) for p in info.value.problems]
    assert found == [
        (1, "apiVersion is 'v1'; expected 'egressgw.dev/v1alpha1'"),
        (5, "spec.mode"),
        (7, "spec.egress[0].hosts[0]"),
        (8, "spec.egress[0].ports[0]"),
        (10, "spec.egress[1].methods[0]"),
        (10, "spec.egress[1].methods needs inspection, but the rule has `inspect"),
    ]
    assert "many.yaml:1: apiVersion is 'v1'" in str(info.value)


def test_typo_is_not_also_reported_as_missing():
    text = "apiVersion: egressgw.dev/v1alpha1\nkind: EgressPolicy\nmetdata: {name: x}\nspec: {egress: []}\n"
    with pytest.raises(PolicyError) as info:
        load_policy_text(text)
    assert [p.message for p in info.value.problems] == ["the policy: unknown key 'metdata'"]


def test_tcp_rule_typo_is_reported_once():
    text = (
        "apiVersion: egressgw.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: x}\nspec:\n  egress:\n"
        "    - protocol: tcp\n      host: [{matchName: a.example.com}]\n      port: [22]\n"
    )
    with pytest.raises(PolicyError) as info:
        load_policy_text(text)
    assert [(p.line, p.fix) for p in info.value.problems] == [
        (7, "did you mean `hosts`?"),
        (8, "did you mean `ports`?"),
    ]


@pytest.mark.parametrize("preset", sorted(p.name for p in POLICIES.glob("*.yaml")))
def test_presets_load(preset):
    policy = load_policy_file(POLICIES / preset)
    assert policy.name == preset.removesuffix(".yaml")
    assert policy.mode == "enforce"
    assert (len(policy.rules) == 0) is (preset == "deny-all.yaml")
    assert (POLICIES / preset).read_text().startswith("# "), "each preset starts with a comment block"


def test_check_files():
    presets = sorted(POLICIES.glob("*.yaml"))
    assert len(presets) == 6
    assert check_files(presets) == []
    problems = check_files([POLICIES / "github.yaml", BAD / "port-quoted.yaml", BAD / "wrong-kind.yaml"])
    assert [(p.file, p.line) for p in problems] == [
        (str(BAD / "port-quoted.yaml"), 9),
        (str(BAD / "wrong-kind.yaml"), 2),
    ]


@pytest.mark.parametrize(
    "preset, call, allowed",
    [
        ("deny-all", lambda d: d.dns("pypi.org"), False),
        ("python-packages", lambda d: d.http("pypi.org", 443, "GET", "/simple/requests/", tls=True), True),
        (
            "python-packages",
            lambda d: d.http("files.pythonhosted.org", 443, "HEAD", "/packages/x", tls=True),
            True,
        ),
        ("python-packages", lambda d: d.http("upload.pypi.org", 443, "POST", "/legacy/", tls=True), False),
        ("python-packages", lambda d: d.http("pypi.org", 443, "POST", "/legacy/", tls=True), False),
        ("python-packages", lambda d: d.http("pypi.org", 80, "GET", "/simple/", tls=False), False),
        ("github", lambda d: d.http("github.com", 443, "POST", "/o/r.git/git-receive-pack", tls=True), True),
        ("github", lambda d: d.http("api.github.com", 443, "PATCH", "/repos/o/r", tls=True), True),
        ("github", lambda d: d.http("codeload.github.com", 443, "GET", "/o/r/tar.gz/main", tls=True), True),
        ("github", lambda d: d.http("raw.githubusercontent.com", 443, "POST", "/", tls=True), False),
        ("github", lambda d: d.http("objects.githubusercontent.com", 443, "GET", "/x", tls=True), True),
        ("github", lambda d: d.http("gist.githubusercontent.com", 443, "GET", "/x", tls=True), False),
        ("github", lambda d: d.tcp(["github.com"], None, 22), True),
        ("github", lambda d: d.tcp(["github.com"], None, 443), False),
        ("github", lambda d: d.tcp(["api.github.com"], None, 22), False),
        ("openai", lambda d: d.http("api.openai.com", 443, "POST", "/v1/responses", tls=True), True),
        ("openai", lambda d: d.http("api.openai.com", 443, "DELETE", "/v1/files/x", tls=True), False),
        ("openai", lambda d: d.dns("chatgpt.com"), False),
        ("anthropic", lambda d: d.http("api.anthropic.com", 443, "POST", "/v1/messages", tls=True), True),
        ("anthropic", lambda d: d.dns("claude.ai"), False),
        ("example", lambda d: d.tls("pinned.example.com", 443).inspect, False),
        ("example", lambda d: d.http("legacy.example.com", 80, "GET", "/", tls=False), True),
        ("example", lambda d: d.http("api.example.com", 443, "GET", "/v1/../admin", tls=True), False),
    ],
)
def test_presets_open_what_they_say(preset, call, allowed):
    decision = call(Decider(load_policy_file(POLICIES / f"{preset}.yaml")))
    assert getattr(decision, "allowed", decision) is allowed


def test_defaults_and_normalisation():
    policy = load_policy_text(
        """\
apiVersion: egressgw.dev/v1alpha1
kind: EgressPolicy
metadata:
  name: defaults
spec:
  egress:
    - hosts:
        - matchName: API.Example.com.
        - matchPattern: "*.Bücher.example"
      methods: [get, Post, GET]
    - name: ssh
      protocol: tcp
      cidrs: ["2001:db8::/32"]
      ports: [22, 22, 2222]
""",
        "defaults.yaml",
    )
    first, second = policy.rules
    assert (policy.name, policy.mode, policy.source) == ("defaults", "enforce", "defaults.yaml")
    assert first.name == "egress[0]"
    assert first.hosts == (
        HostSelector("name", "api.example.com"),
        HostSelector("pattern", "*.xn--bcher-kva.example"),
    )
    assert (first.protocol, first.ports, first.ports_explicit, first.inspect) == ("http", (443,), False, True)
    assert first.methods == frozenset({"GET", "POST"})
    assert (first.paths, first.cidrs, first.line) == (None, (), 7)
    assert (second.name, second.ports, second.ports_explicit, second.inspect, second.line) == (
        "ssh",
        (22, 2222),
        True,
        False,
        11,
    )


def test_to_dict_round_trips_through_yaml_and_json():
    policy = load_policy_file(POLICIES / "example.yaml")
    document = policy.to_dict()
    assert document["apiVersion"] == "egressgw.dev/v1alpha1"
    assert load_policy_text(yaml.safe_dump(document)).to_dict() == document
    again = load_policy_text(json.dumps(document), "api")
    assert again.to_dict() == document
    assert [r.name for r in again.rules] == [r.name for r in policy.rules]


def test_missing_file(tmp_path):
    with pytest.raises(PolicyError) as info:
        load_policy_file(tmp_path / "nope.yaml")
    assert info.value.problems == [
        Problem(str(tmp_path / "nope.yaml"), 0, "file not found", "check the path")
    ]


def test_directory(tmp_path):
    with pytest.raises(PolicyError, match="is a directory"):
        load_policy_file(tmp_path)


def test_too_large(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * (1 << 20) + "\n")
    with pytest.raises(PolicyError, match="larger than 1 MiB"):
        load_policy_file(path)
    with pytest.raises(PolicyError, match="larger than 1 MiB"):
        load_policy_text(path.read_text())


def test_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes((POLICIES / "deny-all.yaml").read_bytes().replace(b"name: deny-all", b"name: caf\xe9"))
    with pytest.raises(PolicyError) as info:
        load_policy_file(path)
    (problem,) = info.value.problems
    assert (problem.line, problem.message, problem.fix) == (
        9,
        "not UTF-8 (byte 0xe9)",
        "save the file as UTF-8",
    )


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + (POLICIES / "deny-all.yaml").read_bytes())
    assert load_policy_file(path).name == "deny-all"


def test_control_character_names_the_line():
    with pytest.raises(PolicyError) as info:
        load_policy_text("apiVersion: egressgw.dev/v1alpha1\nkind: Egress\x01Policy\n")
    (problem,) = info.value.problems
    assert problem.line == 2
    assert "is not allowed in YAML" in problem.message
