"""Rule pack: built-in ids, gitleaks TOML import (good and broken files), allowlists, entropy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.detect import Allowlist, Detector, Rule, RulePack, builtin_rules, load_gitleaks
from gateway.detect.rules import go_regex_to_python
from gateway.errors import ConfigError

from .corpus import rule_samples

DATA = Path(__file__).parent / "testdata"

REQUIRED = {
    "aws-access-key-id", "aws-secret-access-key", "gcp-service-account-key", "azure-storage-account-key",
    "azure-ad-client-secret", "github-pat", "github-oauth", "github-user-token", "github-app-token",
    "github-refresh-token", "github-fine-grained-pat", "gitlab-pat", "slack-token", "slack-webhook-url",
    "stripe-live-key", "openai-api-key", "openai-project-key", "anthropic-api-key", "huggingface-token",
    "npm-token", "pypi-token", "jwt", "private-key", "generic-secret-assignment",
}


def test_builtin_pack_covers_the_issue_and_every_rule_is_documented():
    pack = builtin_rules()
    assert REQUIRED <= set(pack.ids)
    assert len(set(pack.ids)) == len(pack.ids)
    docs = (Path(__file__).parents[2] / "docs" / "detection.md").read_text()
    for r in pack.rules:
        assert r.description and r.description != r.id
        assert f"`{r.id}`" in docs, f"{r.id} missing from docs/detection.md"


def test_every_builtin_rule_compiles_in_hyperscan_without_fallback():
    stats = Detector(builtin_rules()).stats
    assert stats["python_fallback"] == [] and stats["prefiltered"] == []


@pytest.mark.parametrize("rule_id", sorted(rule_samples()))
def test_each_rule_finds_its_sample(rule_id):
    det = Detector(builtin_rules())
    sample = rule_samples()[rule_id]
    hits = det.scan(b"config:\n" + sample + b"\n# end\n", "body")
    assert rule_id in {h.rule for h in hits}
    h = next(h for h in hits if h.rule == rule_id)
    assert h.label is None and h.raw_span is not None and h.description


@pytest.mark.parametrize(
    "text",
    [
        b"password = ${DB_PASSWORD}",
        b"token: <your-token-here>",
        b"api_key = os.environ['API_KEY']",
        b"secret = self.secret_value",
        b"password=changeme123456",
        b"token_type = 'obs-local-part'",
        b"AKIAIOSFODNN7EXAMPLE",
        b"password = 'aaaaaaaaaaaaaaaa'",  # no entropy
    ],
)
def test_generic_and_aws_allowlists_drop_placeholders(text):
    assert Detector(builtin_rules()).scan(text, "body") == []


def test_go_regex_translation():
    assert go_regex_to_python(r"(?i)abc") == r"(?i)abc"
    assert go_regex_to_python(r"ab(?i)cd") == r"ab(?i:cd)"
    assert go_regex_to_python(r"(x(?i)y|z)w") == r"(x(?i:y)|z)w"
    assert go_regex_to_python(r"a\z") == r"a\Z"
    assert go_regex_to_python(r"[(?i)]x") == r"[(?i)]x"
    for rx in (r"ab(?i)cd", r"(x(?i)y|z)w"):
        re.compile(go_regex_to_python(rx))


def test_load_gitleaks_good_file():
    pack = load_gitleaks(DATA / "gitleaks-good.toml")
    assert pack.ids == ("acme-api-key", "widget-token", "lookaround-rule")
    acme = pack.get("acme-api-key")
    assert acme.secret_group == 1 and acme.entropy == 3.0 and acme.keywords == ("acme",)
    assert pack.get("widget-token").action == "block"
    det = Detector(builtin_rules().merge(pack))
    assert det.stats["prefiltered"] == ["lookaround-rule"]  # hyperscan prefilter mode, confirmed by re
    hits = det.scan(b"ACME_KEY = 'acme_a1b2c3d4e5f6g7h8i9j0k1l2'", "body")
    assert [(h.rule, h.context) for h in hits] == [("acme-api-key", "ACME_KEY = '[REDACTED:acme-api-key]'")]
    assert [h.action for h in det.scan(b"x wdg_ABCDEF0123456789abcdef0123456789 y", "body")] == ["block"]
    assert [h.rule for h in det.scan(b"zz123456zz", "body")] == ["lookaround-rule"]


@pytest.mark.parametrize(
    "text",
    [
        b"acme_key=acme_000000000000000000000000",  # rule allowlist regex
        b"acme_key: acme_sandbox1234567890abcdefgh",  # rule stopword
        b"acme_key: acme_fixture1234567890abcdefgh",  # global stopword
    ],
)
def test_gitleaks_allowlists(text):
    det = Detector(load_gitleaks(DATA / "gitleaks-good.toml"))
    assert det.scan(text, "body") == []


@pytest.mark.parametrize(
    ("name", "expect"),
    [
        ("gitleaks-bad-regex.toml", r"gitleaks-bad-regex\.toml:6: rule 'broken-rule': regex does not compile .*\(fix: correct the regex\)"),
        ("gitleaks-bad-toml.toml", r"gitleaks-bad-toml\.toml: not valid TOML: .*line 4.*\(fix: correct the TOML syntax"),
        ("gitleaks-no-id.toml", r"gitleaks-no-id\.toml:1: \[\[rules\]\] #1: needs an id .*\(fix: add id"),
        ("gitleaks-bad-group.toml", r"gitleaks-bad-group\.toml:2: rule 'group-rule': secretGroup 3 is not a group .*\(fix: use 0\.\.1\)"),
        ("does-not-exist.toml", r"does-not-exist\.toml: cannot read gitleaks rules .*\(fix: check the path\)"),
    ],
)
def test_load_gitleaks_bad_files_name_file_line_and_fix(name, expect):
    with pytest.raises(ConfigError, match=expect):
        load_gitleaks(DATA / name)


def test_merge_replaces_rules_by_id_and_duplicates_are_refused():
    base = builtin_rules()
    mine = RulePack((Rule("github-pat", "my own github rule", r"ghp_[A-Za-z0-9]{36}"),))
    merged = base.merge(mine)
    assert merged.get("github-pat").description == "my own github rule"
    assert len(merged.rules) == len(base.rules)
    with pytest.raises(ConfigError, match="duplicate rule id"):
        RulePack((Rule("a", "a", "a+"), Rule("a", "b", "b+")))


def test_allowlist_match_target():
    al = Allowlist(regexes=(r"^key=",), target="match")
    assert al.allows(b"secretvalue", b"key=secretvalue")
    assert not Allowlist(regexes=(r"^key=",)).allows(b"secretvalue", b"key=secretvalue")
