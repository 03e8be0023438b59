"""The gateway's CA, optionally X.509 name-constrained to the names the policies allow.

mitmproxy creates an unconstrained CA in its confdir on first start. With `ca.nameConstraints` in the
config, the gateway writes the CA itself first, in mitmproxy's file layout (mitmproxy then loads it
instead of creating one), with a critical NameConstraints extension: a leaf the gateway mints for a
name outside the permitted subtrees fails verification in every sandbox client, even if the CA key
were stolen. Entries: a DNS name (permits it and every name under it), a CIDR (permits IP-address
leaves in it), or `policy:<file or directory>` (the matchName/matchPattern names and cidrs of those
policies). Without a CIDR no IP-address leaf is permitted at all.

The key file is 0600 (mitmproxy's umask convention); the CA is regenerated when the configured
constraints change (sandboxes must then fetch the new bundle: `egressgw sandbox up` writes it).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from mitmproxy.addons import tlsconfig

from gateway.errors import ConfigError, PolicyError

logger = logging.getLogger("egressgw")

BASENAME = "mitmproxy"
KEY_SIZE = 2048
VALIDITY = datetime.timedelta(days=3650)


def permitted(entries: tuple[str, ...], source: str = "config") -> tuple[list[x509.GeneralName], list[str]]:
    """(permitted subtrees, DNS names) for the configured entries. Raises ConfigError."""
    from gateway.policy import load_policy_file
    from gateway.policy.hosts import HostError, normalize_host

    names: set[str] = set()
    nets: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
    for entry in entries:
        if entry.startswith("policy:"):
            path = Path(entry[len("policy:"):])
            files = sorted(path.rglob("*.yaml")) if path.is_dir() else [path]
            for f in files:
                try:
                    policy = load_policy_file(f)
                except PolicyError as e:
                    raise ConfigError(f"{source}: ca.nameConstraints {entry}: {e}") from None
                for rule in policy.rules:
                    for sel in rule.hosts:
                        names.add(sel.value[2:] if sel.kind == "pattern" else sel.value)
                    nets.update(ipaddress.ip_network(str(n), strict=False) for n in rule.cidrs)
            continue
        try:
            nets.add(ipaddress.ip_network(entry, strict=False))
            continue
        except ValueError:
            pass
        try:
            names.add(normalize_host(entry.lstrip(".")))
        except HostError as e:
            raise ConfigError(f"{source}: ca.nameConstraints entry {entry!r}: {e} (fix: {e.fix})") from None
    if not nets:  # no IP subtree would leave IP-address leaves unconstrained: permit none
        nets = {ipaddress.ip_network("0.0.0.0/32"), ipaddress.ip_network("::/128")}
    subtrees: list[x509.GeneralName] = [x509.DNSName(n) for n in sorted(names)]
    subtrees += [x509.IPAddress(n) for n in sorted(nets, key=lambda n: (n.version, n))]
    return subtrees, sorted(names)


def current_constraints(ca_file: Path) -> x509.NameConstraints | None:
    cert = x509.load_pem_x509_certificate(ca_file.read_bytes())
    try:
        return cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None


def ensure(ca_dir: str | os.PathLike, entries: tuple[str, ...] | None, source: str = "config") -> bool:
    """Make `ca_dir` hold a CA constrained to `entries` (None: leave it to mitmproxy). True if written."""
    if entries is None:
        return False
    subtrees, names = permitted(entries, source)
    want = x509.NameConstraints(permitted_subtrees=subtrees, excluded_subtrees=None)
    directory = Path(ca_dir)
    ca_file = directory / f"{BASENAME}-ca.pem"
    if ca_file.exists() and current_constraints(ca_file) == want:
        return False
    if ca_file.exists():
        logger.warning("ca.nameConstraints changed: writing a new gateway CA in %s (sandboxes need the new bundle)",
                       directory)
    write(directory, want)
    logger.warning("gateway CA name-constrained to %d names: %s", len(names), ", ".join(names[:20]))
    return True


def write(directory: Path, constraints: x509.NameConstraints) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "egressgw"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "egressgw")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .serial_number(x509.random_serial_number())
        .subject_name(name).issuer_name(name)
        .not_valid_before(now - datetime.timedelta(days=2)).not_valid_after(now + VALIDITY)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(constraints, critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    for old in directory.glob(f"{BASENAME}-ca*"):  # stale .p12/.cer of a previous CA must not linger
        old.unlink()
    _write(directory / f"{BASENAME}-ca.pem", key_pem + cert_pem, 0o600)
    _write(directory / f"{BASENAME}-ca-cert.pem", cert_pem, 0o644)
    _write(directory / f"{BASENAME}-ca-cert.cer", cert_pem, 0o644)


class TlsConfig(tlsconfig.TlsConfig):
    """mitmproxy's TlsConfig, minting a leaf for a TLS client that sent a name (SNI) with that name only.

    mitmproxy puts the destination address beside the name in every leaf; under a name-constrained CA
    that IP SAN must also fall inside a permitted IP subtree, or the leaf fails verification even for a
    permitted name. Clients that sent a name verify the name, so the address adds nothing. Used only
    when `ca.nameConstraints` is set; without SNI mitmproxy's own choice (an IP leaf) stands."""

    def get_cert(self, conn_context):
        sni = conn_context.client.sni
        if sni:
            try:
                ipaddress.ip_address(sni)
            except ValueError:
                return self.certstore.get_cert(sni, [x509.DNSName(sni.encode("idna").decode())])
        return super().get_cert(conn_context)


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
