"""A throwaway test certificate authority for the lab.

``make_ca(dir)`` creates (or reuses) ``ca.pem`` / ``ca-key.pem`` in ``dir``;
``CA.issue(names, dir, basename)`` writes ``<basename>.pem`` / ``<basename>-key.pem``
leaf certificates signed by it. Existing files are reused when they still parse,
match each other, are not close to expiry and (for leaves) carry the requested
names and were signed by this CA.

Keys are EC P-256: generating them is instant, which keeps lab start-up fast.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CA", "make_ca", "CA_CERT_NAME", "CA_KEY_NAME"]

CA_CERT_NAME = "ca.pem"
CA_KEY_NAME = "ca-key.pem"

_CA_VALIDITY = _dt.timedelta(days=3650)
_LEAF_VALIDITY = _dt.timedelta(days=825)
# Files that expire sooner than this are regenerated rather than reused.
_MIN_REMAINING = _dt.timedelta(days=2)
# Back-date notBefore a little so small clock differences don't matter.
_BACKDATE = _dt.timedelta(hours=1)


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically with permissions ``mode``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load(cert_path: Path, key_path: Path):
    """(cert, key) if both files exist, parse and belong together, else None."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    pub = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    kpub = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if pub != kpub:
        return None
    now = _now()
    if cert.not_valid_before_utc > now or cert.not_valid_after_utc < now + _MIN_REMAINING:
        return None
    return cert, key


def _split_names(names: Iterable[str], ips: Iterable[str]):
    dns_names: list[str] = []
    ip_addrs: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for n in names:
        try:
            ip_addrs.append(ipaddress.ip_address(n))
        except ValueError:
            dns_names.append(n.rstrip(".").lower())
    for i in ips:
        ip_addrs.append(ipaddress.ip_address(i))
    # keep order, drop duplicates
    return list(dict.fromkeys(dns_names)), list(dict.fromkeys(ip_addrs))


@dataclass
class CA:
    """A loaded test CA. ``cert_path`` is what clients put in their trust store."""

    dir: Path
    cert_path: Path
    key_path: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def issue(
        self,
        names: Sequence[str],
        dir: str | os.PathLike[str],
        basename: str,
        *,
        ips: Iterable[str] = (),
    ) -> tuple[Path, Path]:
        """Issue (or reuse) a serverAuth leaf for ``names`` (+ IP SANs ``ips``).

        Entries of ``names`` that parse as IP addresses become IP SANs too.
        Returns ``(cert_path, key_path)``: ``<dir>/<basename>.pem`` and
        ``<dir>/<basename>-key.pem`` (mode 0600).
        """
        out = Path(dir)
        out.mkdir(parents=True, exist_ok=True)
        cert_path = out / f"{basename}.pem"
        key_path = out / f"{basename}-key.pem"
        dns_names, ip_addrs = _split_names(names, ips)
        if not dns_names and not ip_addrs:
            raise ValueError("a leaf certificate needs at least one name or address")

        loaded = _load(cert_path, key_path)
        if loaded is not None and self._leaf_ok(loaded[0], dns_names, ip_addrs):
            return cert_path, key_path

        key = _new_key()
        now = _now()
        cn = dns_names[0] if dns_names else str(ip_addrs[0])
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(i) for i in ip_addrs]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn[:64])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _LEAF_VALIDITY)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        _write(key_path, _key_pem(key), 0o600)
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cert_path, key_path

    def _leaf_ok(self, cert: x509.Certificate, dns_names, ip_addrs) -> bool:
        if cert.issuer != self.cert.subject:
            return False
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return False
        have_dns = san.get_values_for_type(x509.DNSName)
        have_ip = san.get_values_for_type(x509.IPAddress)
        return list(have_dns) == list(dns_names) and list(have_ip) == list(ip_addrs)


def make_ca(dir: str | os.PathLike[str], *, common_name: str = "egressgw lab CA") -> CA:
    """Create (or reuse) the lab root CA in ``dir``: ``ca.pem`` and ``ca-key.pem`` (0600)."""
    d = Path(dir)
    d.mkdir(parents=True, exist_ok=True)
    cert_path = d / CA_CERT_NAME
    key_path = d / CA_KEY_NAME
    loaded = _load(cert_path, key_path)
    if loaded is not None and _is_ca(loaded[0]):
        return CA(d, cert_path, key_path, loaded[0], loaded[1])  # type: ignore[arg-type]

    key = _new_key()
    now = _now()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "egressgw lab"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return CA(d, cert_path, key_path, cert, key)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return False
    if not (bc.ca and ku.key_cert_sign and cert.issuer == cert.subject):
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
