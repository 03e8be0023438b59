"""`egressgw run`: start the gateway."""

from __future__ import annotations

import argparse

from gateway.commands.common import add_config_argument, config_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run the gateway", description="Run the gateway in the foreground.")
    add_config_argument(p)
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # started by the supervisor
    p.set_defaults(func=_run)


def _run(args) -> int:
    from gateway import app

    app.run(config_from_args(args), worker=args.worker)
    return 0
