"""Shared helpers for the unit tests: policies as text, a way to run coroutines.

pytest-asyncio is not a dependency; async hooks are driven with `run()`.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.policy import load_policy_text  # noqa: E402


def policy_text(*rules: str, name: str = "unit", mode: str = "enforce") -> str:
    body = "".join(rules) or "    []\n"
    return (
        "apiVersion: egressgw.dev/v1alpha1\n"
        "kind: EgressPolicy\n"
        f"metadata: {{name: {name}}}\n"
        "spec:\n"
        f"  mode: {mode}\n"
        "  egress:\n" + body
    )


# Rules used across the tests. Names under .test (RFC 2606), addresses in documentation/benchmark ranges.
ALLOWED = (
    "    - name: allowed-https\n"
    "      hosts: [{matchName: allowed.test}]\n"
    "      methods: [GET, POST]\n"
    "      paths: ['/ok/*']\n"
)
PINNED = (
    "    - name: pinned\n"
    "      hosts: [{matchName: pinned.test}]\n"
    "      inspect: false\n"
)
PLAIN = (
    "    - name: plain\n"
    "      hosts: [{matchName: plain.test}]\n"
    "      ports: [80]\n"
)
INSIDE = (
    "    - name: inside\n"
    "      cidrs: ['10.9.0.0/16']\n"
    "      ports: [443]\n"
)
SSH = (
    "    - name: git-ssh\n"
    "      protocol: tcp\n"
    "      hosts: [{matchName: git.test}]\n"
    "      ports: [22]\n"
)

DEFAULT_POLICY = policy_text(ALLOWED, PINNED, PLAIN)


def policy(*rules: str, **kw):
    return load_policy_text(policy_text(*rules, **kw) if rules else DEFAULT_POLICY)


def run(coro):
    return asyncio.run(coro)
