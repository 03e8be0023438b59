"""`egressgw session`: sessions through the control API (for sandboxes this host did not make)."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.commands.common import (
    add_config_argument,
    add_secret_arguments,
    config_from_args,
    control_client,
    secrets_from_args,
)
from gateway.policy import load_policy_file


def add_parser(sub) -> None:
    p = sub.add_parser("session", help="manage sessions through the control API")
    s = p.add_subparsers(dest="session_command", required=True, metavar="ACTION")

    c = s.add_parser("create", help="create a session (prints its id and proxy credentials as JSON)")
    c.add_argument("name")
    c.add_argument("--policy", required=True, metavar="FILE")
    c.add_argument("--source", action="append", default=[], metavar="IP", help="source address (transparent mode)")
    add_secret_arguments(c)
    c.set_defaults(func=_create)

    ls = s.add_parser("list", help="list sessions")
    ls.set_defaults(func=lambda a: _print(control_client(config_from_args(a)).list_sessions()))

    show = s.add_parser("show", help="show one session")
    show.add_argument("id")
    show.set_defaults(func=lambda a: _print(control_client(config_from_args(a)).get_session(a.id)))

    d = s.add_parser("delete", help="delete a session; its traffic is refused from then on")
    d.add_argument("id")
    d.set_defaults(func=lambda a: control_client(config_from_args(a)).delete_session(a.id))

    sp = s.add_parser("set-policy", help="replace a session's policy live")
    sp.add_argument("id")
    sp.add_argument("policy", metavar="FILE")
    sp.set_defaults(func=_set_policy)

    cn = s.add_parser("canary", help="register canary values for a session: exfiltration detection blocks them",
                      description="Values are read one per line from FILE (or stdin), never from the command line, "
                                  "and are never printed; the labels are.")
    cn.add_argument("id")
    cn.add_argument("file", nargs="?", default="-", metavar="FILE", help="one value per line (default: stdin)")
    cn.add_argument("--label", action="append", metavar="LABEL", help="a label per value, in order (default c1, c2 ...)")
    cn.set_defaults(func=_canary)
    for parser in (c, ls, show, d, sp, cn):
        add_config_argument(parser)


def _print(obj) -> int:
    print(json.dumps(obj, indent=2))
    return 0


def _create(args) -> int:
    load_policy_file(args.policy)  # every problem, with lines, before anything is sent
    client = control_client(config_from_args(args))
    secrets = secrets_from_args(args)
    return _print(client.create_session(args.name, Path(args.policy).read_text(), args.source, secrets=secrets,
                                        policy_dir=str(Path(args.policy).resolve().parent)))


def _canary(args) -> int:
    import sys

    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    values = [line for line in text.splitlines() if line.strip()]
    client = control_client(config_from_args(args))
    return _print(client.add_canaries(args.id, values, args.label))


def _set_policy(args) -> int:
    load_policy_file(args.policy)
    client = control_client(config_from_args(args))
    return _print(client.replace_policy(args.id, Path(args.policy).read_text(),
                                        policy_dir=str(Path(args.policy).resolve().parent)))
