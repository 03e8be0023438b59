"""The `egressgw` command.

    egressgw run --config FILE                 the gateway
    egressgw policy check|explain ...          policy files
    egressgw sandbox up|attach|exec|list|down  sandbox namespaces on this host
    egressgw session list|show|delete|set-policy ...   sessions through the control API
    egressgw log verify|query|tail|har ...     flow logs
    egressgw review LOG... -o report.html      one HTML report of flow logs
"""

from __future__ import annotations

import argparse
import gc
import sys

from gateway.errors import EgressgwError


COMMANDS = ("run", "policy", "sandbox", "session", "log", "review")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Only the asked-for command's module is imported (all of them for `egressgw --help` or a
    mistyped command): `run` pulls in mitmproxy, ~1 s that `sandbox up` or `log query` should not pay."""
    import importlib

    names = (argv[0],) if argv and argv[0] in COMMANDS else COMMANDS
    parser = argparse.ArgumentParser(prog="egressgw", description="Egress gateway for AI-agent sandboxes.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in names:
        importlib.import_module(f"gateway.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    entry = argv is None  # the process's own command (not a call from Python, such as a test)
    if entry:
        # Start-up (the imports of build_parser) makes ~100k objects that all stay: no collection
        # walks them while they are made (one full collection there took 30-50 ms of every
        # `sandbox up`), nor afterwards (frozen below). See gateway/gctune.py.
        gc.disable()
    argv = list(sys.argv[1:] if entry else argv)
    # Everything after the first "--" is a command to run (sandbox exec), never our options.
    command = None
    if "--" in argv:
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1 :]
    args = build_parser(argv).parse_args(argv)
    if command is not None:
        if not hasattr(args, "cmd"):
            print("egressgw: '--' is only for `sandbox exec NAME -- CMD...`", file=sys.stderr)
            return 2
        args.cmd = command
    if entry:
        gc.freeze()
        gc.enable()
    try:
        return args.func(args) or 0
    except EgressgwError as e:
        print(f"egressgw: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
