"""spec.limits: defaults, every key, round trip through to_dict, and line-and-fix problems."""

from __future__ import annotations

import json

import pytest

from gateway.errors import PolicyError
from gateway.policy import load_policy_text
from gateway.policy.model import LIMIT_KEYS, Limits

HEAD = "apiVersion: egressgw.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: p}\nspec:\n  egress: []\n"


def load(limits: str):
    return load_policy_text(HEAD + limits, "p.yaml")


def test_defaults_when_absent():
    policy = load("")
    assert policy.limits == Limits()
    assert "limits" not in policy.to_dict()["spec"]
    assert policy.limits.connections > 0 and policy.limits.requests_per_second > 0


@pytest.mark.parametrize("key, value", [
    ("connections", 4), ("requestsPerSecond", 5), ("headerCount", 20), ("headerBytes", 4096),
    ("urlBytes", 256), ("bodyBytes", 0), ("websocketMessageBytes", 1024), ("dnsQueriesPerSecond", 3),
    ("tlsHandshakesPerSecond", 2), ("bodyChunks", 64), ("streamResetsPerSecond", 10),
])
def test_each_key(key, value):
    policy = load(f"  limits:\n    {key}: {value}\n")
    assert getattr(policy.limits, LIMIT_KEYS[key]) == value
    for other, attr in LIMIT_KEYS.items():
        if other != key:
            assert getattr(policy.limits, attr) == getattr(Limits(), attr)


def test_round_trip():
    policy = load("  limits:\n    requestsPerSecond: 7\n    urlBytes: 300\n")
    again = load_policy_text(json.dumps(policy.to_dict()), "api")
    assert again.limits == policy.limits and again.to_dict() == policy.to_dict()
    assert policy.to_dict()["spec"]["limits"]["requestsPerSecond"] == 7


@pytest.mark.parametrize("text, line, message, fix", [
    ("  limits:\n    requestsPerSecnd: 5\n", 7, "unknown key 'requestsPerSecnd'", "requestsPerSecond"),
    ("  limits:\n    urlBytes: -1\n", 7, "urlBytes: -1 is out of range", "urlBytes: 16384"),
    ("  limits:\n    urlBytes: 8\n", 7, "urlBytes: 8 is out of range", "from 16 to"),
    ("  limits:\n    connections: many\n", 7, "must be an integer", "connections: 256"),
    ("  limits:\n    connections: 1.5\n", 7, "connections", "whole number"),
    ("  limits: 5\n", 6, "spec.limits must be a mapping", "requestsPerSecond"),
    ("  limits:\n    headerCount: 0\n", 7, "headerCount: 0 is out of range", "headerCount: 100"),
    ("  limits:\n    streamResetsPerSecond: 0\n", 7, "streamResetsPerSecond: 0 is out of range",
     "streamResetsPerSecond: 100"),
    ("  limits:\n    streamResetPerSecond: 5\n", 7, "unknown key 'streamResetPerSecond'", "streamResetsPerSecond"),
])
def test_problems(text, line, message, fix):
    with pytest.raises(PolicyError) as info:
        load(text)
    problem = str(info.value.problems[0])
    assert problem.startswith(f"p.yaml:{line}:"), problem
    assert message in problem and fix in problem, problem


def test_explain_shows_the_limits(tmp_path, capsys):
    from gateway.cli import main

    path = tmp_path / "p.yaml"
    path.write_text(HEAD.replace("egress: []", "egress: [{hosts: [{matchName: a.test}]}]")
                    + "  limits:\n    requestsPerSecond: 7\n")
    assert main(["policy", "explain", str(path), "https://a.test/"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "allow"
    assert out[-1].startswith("limits: connections 256, requestsPerSecond 7, headerCount 100,")
