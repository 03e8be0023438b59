"""``egressgw log verify|query|tail|har``: work with flow logs.

This module owns the `log` command group and `verify`; other modules add their
commands through a `register(subparsers)` function listed in `_MODULES`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..config import Config, load_config
from ..errors import ConfigError
from ..log import chain, verify

# Modules adding commands to the `log` group, each with `register(subparsers)`.
_MODULES = ("gateway.commands.logquery",)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("log", help="verify, query, follow and export flow logs",
                                   description="Work with egressgw flow logs.")
    commands = parser.add_subparsers(dest="log_command", metavar="COMMAND", required=True)
    register(commands)
    for name in _MODULES:
        importlib.import_module(name).register(commands)


def register(commands) -> None:
    v = commands.add_parser(
        "verify",
        help="check a flow log's hash chain and keyed checkpoints",
        description="Check every record's hash chain and every checkpoint's HMAC; report the first altered, "
        "removed, reordered or truncated record, a missing rotated file or a checkpoint mismatch, or "
        "`OK: N records, M checkpoints, K files`. Exit 0 intact, 1 tampered or corrupt, 2 cannot verify "
        "(missing file, no key), 3 intact but the last record is torn (the gateway stopped mid-write).",
    )
    v.add_argument("paths", nargs="+", metavar="PATH", help="log file, live log (with its rotated files) or directory")
    v.add_argument("--key-file", metavar="FILE", help="the checkpoint key (default: log.hmacKeyFile of --config)")
    v.add_argument("--config", metavar="FILE", help="gateway config whose log.hmacKeyFile to use")
    v.add_argument("--no-key", action="store_true",
                   help="check the hash chain only (a forger who rewrites the whole chain is then not caught)")
    v.add_argument("-v", "--verbose", action="store_true", help="also print notes (crash-torn records, log start)")
    v.set_defaults(func=verify_command)


def verify_command(args: argparse.Namespace) -> int:
    key = None
    if not args.no_key:
        try:
            if args.key_file:
                key = chain.load_key(args.key_file, create=False, source="--key-file")
            else:
                config = load_config(args.config) if args.config else Config()
                key = chain.load_key(config.log_hmac_key_file, create=False, source=config.source)
        except ConfigError as e:
            print(f"egressgw: {e}", file=sys.stderr)
            return verify.UNVERIFIABLE
    try:
        result = verify.verify(args.paths, key)
    except FileNotFoundError as e:
        print(f"egressgw: no such log file: {e}", file=sys.stderr)
        return verify.UNVERIFIABLE
    except OSError as e:
        print(f"egressgw: cannot read {e.filename}: {e.strerror}", file=sys.stderr)
        return verify.UNVERIFIABLE
    notes = result.notes if args.verbose else [n for n in result.notes if "torn by a crash" in n.message]
    for note in notes:
        print(f"note: {note}")
    if key is None:
        print("note: checkpoints not verified (--no-key)")
    print(result.summary())
    return result.exit_code
