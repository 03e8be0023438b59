"""What several commands share: finding the config, reaching the control API."""

from __future__ import annotations

import os

from gateway.config import Config, load_config
from gateway.sessions.client import ControlClient

DEFAULT_CONFIG = "/etc/egressgw/config.yaml"


def add_config_argument(parser) -> None:
    parser.add_argument(
        "--config", "-c", metavar="FILE",
        help=f"gateway config file (default: $EGRESSGW_CONFIG, else {DEFAULT_CONFIG} if it exists, else built-in defaults)",
    )


def config_from_args(args) -> Config:
    path = args.config or os.environ.get("EGRESSGW_CONFIG")
    if path:
        return load_config(path)
    if os.path.exists(DEFAULT_CONFIG):
        return load_config(DEFAULT_CONFIG)
    return Config()


def control_client(config: Config) -> ControlClient:
    return ControlClient(config.control.url(), config.control_token())
