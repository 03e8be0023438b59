"""Secrets: where values live (backends) and how sessions use them."""

from gateway.secrets.backends import SecretBackendError, SecretStore, Source, parse_source, read_source

__all__ = ["SecretBackendError", "SecretStore", "Source", "parse_source", "read_source"]
