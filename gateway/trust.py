"""What a sandbox trusts: one PEM bundle of the gateway's CA, the origins' extra CA and the system
roots, written by the gateway at start and pointed to by `sandbox up` / `sandbox exec`.

Kept apart from gateway/app.py so that the sandbox commands do not import mitmproxy (~1 s).
"""

from __future__ import annotations

import os
from pathlib import Path

from gateway.config import Config

CA_CERT = "mitmproxy-ca-cert.pem"
SANDBOX_BUNDLE = "sandbox-ca-bundle.pem"
SYSTEM_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")


def sandbox_bundle_path(config: Config) -> str:
    return str(Path(config.ca_dir) / SANDBOX_BUNDLE)


def write_sandbox_bundle(config: Config) -> str:
    """What a sandbox trusts: the gateway CA, the origins' extra CA, the system roots (for pass-through hosts)."""
    parts = [Path(config.ca_dir, CA_CERT).read_text()]
    if config.upstream_ca_bundle:
        parts.append(Path(config.upstream_ca_bundle).read_text())
    system = next((p for p in SYSTEM_BUNDLES if os.path.exists(p)), None)
    if system:
        parts.append(Path(system).read_text())
    path = sandbox_bundle_path(config)
    tmp = path + ".tmp"
    Path(tmp).write_text("\n".join(p.strip() + "\n" for p in parts))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path
