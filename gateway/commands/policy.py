"""``egressgw policy check|explain``: validate policy files; explain one decision."""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from dataclasses import dataclass

from ..errors import PolicyError
from ..policy import Decider, Decision, Policy, load_policy_file, normalize_host, parse_ip_literal


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "policy", help="check policy files, explain a decision", description="Work with egress policy files."
    )
    commands = parser.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)

    check = commands.add_parser(
        "check",
        help="validate policy files",
        description="Load each policy file and print every problem (file:line: message (fix: ...)).",
    )
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(func=check_command)

    explain = commands.add_parser(
        "explain",
        help="show what a policy decides for one URL",
        description="Say whether FILE allows URL, and which rule or reason decided. "
        "Exit 0 for allow or report, 1 for deny or a broken policy, 2 for a bad URL.",
    )
    explain.add_argument("file", metavar="FILE")
    explain.add_argument(
        "url",
        metavar="URL",
        help="https://host/path, http://host:port/path, a bare host (https), or tcp://host:port",
    )
    explain.add_argument("--method", help="HTTP method (default GET)")
    explain.set_defaults(func=explain_command)


def check_command(args: argparse.Namespace) -> int:
    failed = False
    for path in args.files:
        try:
            policy = load_policy_file(path)
        except PolicyError as exc:
            failed = True
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            continue
        count = len(policy.rules)
        print(f"ok: {path} ({count} rule{'' if count == 1 else 's'}, mode {policy.mode})")
    return 1 if failed else 0


@dataclass(frozen=True)
class Target:
    scheme: str  # "https" | "http" | "tcp"
    host: str
    port: int
    method: str
    path: str


def parse_target(url: str, method: str | None) -> Target:
    """Parse the explain URL; ValueError with a message the user can act on."""
    try:
        parts = urllib.parse.urlsplit(url if "://" in url else "https://" + url)
    except ValueError as exc:
        raise ValueError(f"{url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http", "tcp"):
        raise ValueError(f"unsupported scheme {scheme!r}: use https://, http:// or tcp://")
    host = parts.hostname
    if not host:
        raise ValueError(f"{url!r} has no host")
    try:
        if parse_ip_literal(host) is None:
            normalize_host(host)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r}: {exc}") from None
    if scheme == "tcp":
        if port is None:
            raise ValueError("a tcp:// URL needs a port, e.g. tcp://github.com:22")
        if method is not None:
            raise ValueError("--method applies to http:// and https:// URLs only")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if port is None:
        port = 443 if scheme == "https" else 80
    return Target(scheme, host, port, (method or "GET").upper(), path)


def decide(decider: Decider, target: Target) -> Decision:
    """What the gateway would decide, step by step as it meets the connection."""
    if target.scheme == "tcp":
        address = parse_ip_literal(target.host)
        names = [] if address else [target.host]
        return decider.tcp(names, address, target.port)
    if target.scheme == "https":
        handshake = decider.tls(target.host, target.port)
        if handshake.action == "deny" or not handshake.inspect:
            return handshake
    return decider.http(target.host, target.port, target.method, target.path, tls=target.scheme == "https")


def explain_command(args: argparse.Namespace) -> int:
    try:
        target = parse_target(args.url, args.method)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        policy = load_policy_file(args.file)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    decision = decide(Decider(policy), target)
    print(decision.action)
    if decision.rule is not None:
        print(f"rule: {decision.rule} ({_where(policy, decision.rule)})")
        if not decision.inspect and target.scheme == "https":
            print("note: TLS passes through uninspected; method and path are not checked")
    else:
        print(f"reason: {decision.reason}")
    if policy.limits.declared:  # spec.limits (docs/limits.md); defaults filled in
        print("limits: " + ", ".join(f"{k} {v}" for k, v in policy.limits.to_dict().items()))
    return 1 if decision.action == "deny" else 0


def _where(policy: Policy, rule_name: str) -> str:
    line = next(r.line for r in policy.rules if r.name == rule_name)
    return f"{policy.source}:{line}"
