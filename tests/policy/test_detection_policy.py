"""`spec.detection` and `uploads` in policies: good blocks load and round-trip; bad ones name line and fix."""

import json
import textwrap

import pytest
import yaml

from gateway.errors import PolicyError
from gateway.policy import load_policy_file, load_policy_text
from gateway.policy.model import Detection

HEAD = """\
apiVersion: egressgw.dev/v1alpha1
kind: EgressPolicy
metadata: {name: d}
spec:
  egress:
    - name: api
      hosts: [{matchName: api.example.com}]
    - name: uploads
      hosts: [{matchName: files.example.com}]
      uploads: true
"""  # detection blocks start at line 11


def doc(block: str) -> str:
    return HEAD + "  detection:\n" + textwrap.indent(textwrap.dedent(block), "    ")


GOOD = """\
enabled: true
action: redact
rules:
  generic-secret-assignment: {action: alert, allow: [{matchName: api.example.com}, {regex: "^test_"}]}
  known-value: {action: block}
  high-entropy-upload: {allow: [{matchPattern: "*.example.com"}]}
splitWindowSeconds: 120
uploadBudget: {bytes: 1048576, windowSeconds: 3600}
highEntropyBytes: 32768
streamBytes: 2097152
"""


def test_no_block_means_detection_on_with_defaults():
    policy = load_policy_text(HEAD)
    assert policy.detection == Detection()
    assert policy.detection.enabled and policy.detection.action is None
    assert "detection" not in policy.to_dict()["spec"]
    assert [r.uploads for r in policy.rules] == [False, True]


def test_a_full_block_loads():
    d = load_policy_text(doc(GOOD)).detection
    assert d.action == "redact" and d.split_window_seconds == 120 and d.high_entropy_bytes == 32768
    assert d.upload_budget.bytes == 1 << 20 and d.upload_budget.window_seconds == 3600
    assert d.stream_bytes == 2 << 20
    generic = d.rule("generic-secret-assignment")
    assert generic.action == "alert" and generic.allows_host("api.example.com")
    assert generic.allows_text(b"test_123") and not generic.allows_text(b"prod_123")
    assert d.rule("high-entropy-upload").allows_host("x.example.com") and d.rule("nope") is None


def test_to_dict_round_trips_the_new_keys():
    policy = load_policy_text(doc(GOOD))
    document = policy.to_dict()
    assert document["spec"]["egress"][1]["uploads"] is True
    assert document["spec"]["detection"]["rules"]["known-value"] == {"action": "block"}
    assert load_policy_text(yaml.safe_dump(document)).to_dict() == document
    assert load_policy_text(json.dumps(document)).to_dict() == document


GITLEAKS = """\
title = "team rules"

[[rules]]
id = "acme-token"
description = "ACME internal token"
regex = '''acme_[a-z0-9]{32}'''
keywords = ["acme_"]
"""


def test_rules_files_are_read_relative_to_the_policy(tmp_path):
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "team.toml").write_text(GITLEAKS)
    path = tmp_path / "p.yaml"
    path.write_text(doc("rulesFiles: [rules/team.toml]\nrules:\n  acme-token: {action: alert}\n"))
    policy = load_policy_file(path)
    assert policy.detection.rules_files == (str(tmp_path / "rules" / "team.toml"),)
    assert [p.ids for p in policy.detection.packs] == [("acme-token",)]
    assert policy.detection.rule("acme-token").action == "alert"
    again = load_policy_text(yaml.safe_dump(policy.to_dict()))  # absolute paths: loads anywhere
    assert again.detection.rules_files == policy.detection.rules_files


def test_rules_files_through_the_api_need_a_directory(tmp_path):
    (tmp_path / "team.toml").write_text(GITLEAKS)
    text = doc("rulesFiles: [team.toml]\n")
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "api")
    assert "not read from a file" in str(info.value)
    assert load_policy_text(text, "api", base_dir=str(tmp_path)).detection.packs[0].ids == ("acme-token",)


# block -> (line, message substring, fix substring); each has exactly one problem.
BAD = {
    "action: stop\n": (12, "spec.detection.action: 'stop' is not one of block, redact, alert", "valid values"),
    "actoin: block\n": (12, "unknown key 'actoin'", "did you mean `action`?"),
    "enabled: yes please\n": (12, "spec.detection.enabled must be true or false", "enabled: true"),
    "rules:\n  known-valu: {action: alert}\n": (13, "unknown rule 'known-valu'", "did you mean `known-value`?"),
    "rules:\n  known-value: {action: drop}\n": (13, "rules.known-value.action: 'drop' is not one of", "values"),
    "rules:\n  known-value: {allow: [{regex: '('}]}\n": (13, "allow[0].regex", "valid (Python) regular expression"),
    "rules:\n  known-value: {allow: [{matchPattern: '*example.com'}]}\n": (13, "must start with '*.'", "*.example.com"),
    "rules:\n  known-value: {allow: [api.example.com]}\n": (13, "allow[0] must be a mapping", "matchName"),
    "rules: [known-value]\n": (12, "spec.detection.rules must be a mapping", "generic-api-key"),
    "splitWindowSeconds: -1\n": (12, "splitWindowSeconds: -1 is out of range", "splitWindowSeconds: 300"),
    "highEntropyBytes: '64k'\n": (12, "highEntropyBytes must be an integer", "65536"),
    "uploadBudget: {bytes: 100}\n": (12, "missing required key 'windowSeconds'", "windowSeconds: 3600"),
    "uploadBudget: {bytes: 0, windowSeconds: 60}\n": (12, "uploadBudget.bytes: 0 is out of range", "bytes"),
    "rulesFiles: [missing.toml]\n": (12, "missing.toml: file not found", "relative to the policy file"),
}


@pytest.mark.parametrize("block", sorted(BAD))
def test_bad_detection_blocks_name_line_and_fix(tmp_path, block):
    line, message, fix = BAD[block]
    path = tmp_path / "bad.yaml"
    path.write_text(doc(block))
    with pytest.raises(PolicyError) as info:
        load_policy_file(path)
    assert len(info.value.problems) == 1, info.value.problems
    (problem,) = info.value.problems
    assert problem.file == str(path) and problem.line == line, problem
    assert message in problem.message and fix in problem.fix, problem


def test_a_broken_rules_file_names_its_own_line(tmp_path):
    (tmp_path / "bad.toml").write_text('[[rules]]\nid = "x"\nregex = "("\n')
    path = tmp_path / "p.yaml"
    path.write_text(doc("rulesFiles: [bad.toml]\n"))
    with pytest.raises(PolicyError) as info:
        load_policy_file(path)
    (problem,) = info.value.problems
    assert problem.line == 12 and "bad.toml" in problem.message and problem.fix


@pytest.mark.parametrize("rule, message", [
    ("    - name: raw\n      protocol: tcp\n      hosts: [{matchName: git.example.com}]\n      ports: [22]\n"
     "      uploads: true\n", "uploads is not allowed in a tcp rule"),
    ("    - name: pinned\n      hosts: [{matchName: p.example.com}]\n      inspect: false\n      uploads: true\n",
     "uploads needs inspection"),
    ("    - name: x\n      hosts: [{matchName: x.example.com}]\n      uploads: 'true'\n", "uploads must be true or false"),
])
def test_bad_uploads_flags(rule, message):
    with pytest.raises(PolicyError) as info:
        load_policy_text(HEAD + rule)
    assert message in str(info.value)
