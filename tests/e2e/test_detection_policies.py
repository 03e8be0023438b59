"""Detection settings of a policy end to end, through real sandboxes and a real gateway:
`mode: report` lets an exfiltration through and logs it, `uploadBudget` refuses what exceeds it
(`upload-budget`), and a gitleaks rule from a TOML file next to the policy (`rulesFiles`) catches a
custom token format the built-in pack does not know.

Shares test_detection.py's gateway (its module fixture) and helpers."""

from __future__ import annotations

import secrets
import urllib.parse

import pytest

from test_detection import CANARY, _up, b64, gateway, leaked, send  # noqa: F401 - gateway: the module fixture

TEAM_RULES = """\
title = "team rules"

[[rules]]
id = "acme-token"
description = "ACME internal deploy token"
regex = '''acme_[a-z0-9]{32}'''
keywords = ["acme_"]
"""
ACME = "acme_" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(32))


@pytest.fixture(scope="module")
def report_box(sandboxes, gateway):  # noqa: F811
    return _up(sandboxes, gateway, "report", None, mode="report")


@pytest.fixture(scope="module")
def budget_box(sandboxes, gateway):  # noqa: F811
    return _up(sandboxes, gateway, "budget", {"uploadBudget": {"bytes": 8192, "windowSeconds": 3600}})


@pytest.fixture(scope="module")
def team_box(sandboxes, gateway):  # noqa: F811
    # Relative to the policy file: _up writes the policy to sandboxes.tmp/<name>.yaml.
    (sandboxes.tmp / "team-rules.toml").write_text(TEAM_RULES)
    (sandboxes.tmp / "team-rules.toml").chmod(0o644)
    return _up(sandboxes, gateway, "team", {"rulesFiles": ["team-rules.toml"]})


def test_report_mode_lets_the_exfiltration_through_and_logs_it(report_box, lab):
    status, body, _ = send(report_box, f"https://allowed.test/echo?d={urllib.parse.quote(b64(CANARY))}", [])
    assert status == 200, body
    rec = lab.records(kind="http", host="allowed.test")[-1]
    assert leaked([rec], CANARY)  # report mode: it did go out
    event = report_box.events(event="http", dest_host="allowed.test")[-1]
    assert event["decision"] == "report" and event["reason"] == "exfiltration" and event["alert"] is True
    assert event["status"] == 200
    d = event["detections"][0]
    assert (d["rule"], d["label"], d["action"]) == ("known-value", "canary:c1", "alert")
    assert CANARY not in str(event)


def test_upload_budget_refuses_what_exceeds_it(budget_box, lab):
    chunk = "x" * 3000
    statuses = [send(budget_box, f"https://allowed.test/budget-{i}", ["--data-binary", chunk])[0] for i in range(3)]
    status, body, _ = send(budget_box, "https://allowed.test/budget-3", ["--data-binary", chunk])
    assert statuses == [200, 200, 403] and status == 403, (statuses, status)
    assert "upload budget" in body
    arrived = {r["path"] for r in lab.records(kind="http", host="allowed.test")}
    assert {"/budget-0", "/budget-1"} <= arrived and not {"/budget-2", "/budget-3"} & arrived
    event = budget_box.events(event="http", dest_host="allowed.test")[-1]
    assert event["decision"] == "deny" and event["reason"] == "upload-budget" and event["alert"] is True
    # A GET carries no body: still within what is left of the budget.
    assert send(budget_box, "https://allowed.test/budget-get", [])[0] == 200


def test_gitleaks_rule_from_a_toml_next_to_the_policy(team_box, lab):
    before = len(lab.records(kind="http", host="allowed.test"))
    status, body, _ = send(team_box, "https://allowed.test/echo", ["-H", f"X-Deploy: {ACME}"])
    assert status == 403 and "acme-token" in body and ACME not in body
    assert len(lab.records(kind="http", host="allowed.test")) == before
    event = team_box.events(event="http", reason="exfiltration")[-1]
    d = event["detections"][0]
    assert (d["rule"], d["part"], d["action"]) == ("acme-token", "header:x-deploy", "block")
    assert ACME not in str(event) and "[REDACTED:acme-token]" in d["context"]
    # The same shape, too short for the rule: not a hit.
    assert send(team_box, "https://allowed.test/echo", ["-H", "X-Deploy: acme_short"])[0] == 200
