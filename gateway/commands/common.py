"""What several commands share: finding the config, reaching the control API."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from gateway.config import Config, load_config
from gateway.errors import ConfigError
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


def add_secret_arguments(parser) -> None:
    parser.add_argument(
        "--secret", action="append", default=[], metavar="NAME=URI@HOST[,HOST...]",
        help="a credential the sandbox gets as a placeholder in $NAME, substituted in headers for HOSTs "
             "(e.g. OPENAI_API_KEY=env://OPENAI_API_KEY@api.openai.com)",
    )
    parser.add_argument("--secrets", metavar="FILE",
                        help="YAML list of secrets: name, source, hosts, parts, format (see docs/credentials.md)")


def secrets_from_args(args) -> list[dict]:
    """Secrets from --secrets FILE and --secret shorthands, checked here so errors come before anything is made."""
    raw: list = []
    if args.secrets:
        try:
            loaded = yaml.safe_load(Path(args.secrets).read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{args.secrets}: cannot read secrets: {e}") from None
        if not isinstance(loaded, list):
            raise ConfigError(f"{args.secrets}: must be a YAML list of secrets")
        raw.extend(loaded)
    for text in args.secret:
        name, eq, rest = text.partition("=")
        uri, at, hosts = rest.rpartition("@")
        if not eq or not at or not uri or not hosts:
            raise ConfigError(f"--secret {name or text!r}: expected NAME=URI@HOST[,HOST...] "
                              "(fix: e.g. --secret OPENAI_API_KEY=env://OPENAI_API_KEY@api.openai.com)")
        raw.append({"name": name, "source": uri, "hosts": [h for h in hosts.split(",") if h]})
    from gateway.secrets.model import parse_secrets  # here: it pulls in botocore (~0.1 s of every command)
    try:
        parse_secrets(raw)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return raw


def control_client(config: Config) -> ControlClient:
    return ControlClient(config.control.url(), config.control_token())
