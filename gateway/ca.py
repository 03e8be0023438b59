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

Leaf keys (`ca.leafKey`): mitmproxy gives every leaf the CA's own RSA-2048 key, so every full (not
resumed) sandbox handshake costs an RSA-2048 signature (~0.9 ms of CPU with pyOpenSSL). With `ecdsa`
(the default) the leaves carry a per-process ECDSA P-256 key instead (~0.03 ms per signature), made
in memory at start and never written anywhere; the CA still signs each leaf, once per name
(mitmproxy's cert cache). `ca` keeps mitmproxy's behaviour, for clients that cannot verify ECDSA.
Measured: bench/README.md, "Leaf key".
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from mitmproxy import certs
from mitmproxy.addons import tlsconfig

from gateway.config import LEAF_KEYS
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


def mint_leaf(ca_key, ca_cert: x509.Certificate, leaf_key: ec.EllipticCurvePrivateKey, commonname: str | None,
              sans: x509.GeneralNames, organization: str | None = None, crl_url: str | None = None) -> certs.Cert:
    """mitmproxy's `certs.dummy_cert`, with `leaf_key`'s public key in place of the CA's.

    The same subject (CN only if shorter than 64 characters), EKU serverAuth, SAN (critical when the
    subject is empty), AKI from the CA's SKI (else from its key), no SKI (SChannel, mitmproxy#6494),
    validity offsets, CRL distribution point; signed by the CA key with SHA-256. tests/unit/test_ca.py
    compares the two extension by extension."""
    now = datetime.datetime.now()
    subject = []
    valid_cn = commonname is not None and len(commonname) < 64
    if valid_cn:
        subject.append(x509.NameAttribute(NameOID.COMMON_NAME, commonname))
    if organization is not None:
        subject.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    try:
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())
    builder = (
        x509.CertificateBuilder()
        .issuer_name(ca_cert.subject)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .public_key(leaf_key.public_key())
        .not_valid_before(now + certs.CERT_VALIDITY_OFFSET)
        .not_valid_after(now + certs.CERT_VALIDITY_OFFSET + certs.CERT_EXPIRY)
        .subject_name(x509.Name(subject))
        .serial_number(x509.random_serial_number())
        .add_extension(x509.SubjectAlternativeName(sans), critical=not valid_cn)
        .add_extension(aki, critical=False)
    )
    if crl_url:
        point = x509.DistributionPoint([x509.UniformResourceIdentifier(crl_url)], relative_name=None,
                                       crl_issuer=None, reasons=None)
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    return certs.Cert(builder.sign(private_key=ca_key, algorithm=hashes.SHA256()))


class LeafKeyCertStore(certs.CertStore):
    """mitmproxy's CertStore whose minted leaves carry `leaf_key` (served with it), signed by the CA.

    The lookup is mitmproxy's `CertStore.get_cert` unchanged: the name, its asterisk forms, each SAN's,
    "*", then (CN, SANs); a new leaf is cached under (CN, SANs) and expires after STORE_CAP newer ones."""

    def __init__(self, *args, leaf_key: ec.EllipticCurvePrivateKey, **kwargs):
        super().__init__(*args, **kwargs)
        self.leaf_key = leaf_key

    @classmethod
    def adopt(cls, store: certs.CertStore, leaf_key: ec.EllipticCurvePrivateKey) -> LeafKeyCertStore:
        """The same CA, chain, CRL, DH parameters and cached entries as `store`, minting with `leaf_key`."""
        new = cls(store.default_privatekey, store.default_ca, store.default_chain_file, store.default_crl,
                  store.dhparams, leaf_key=leaf_key)
        new.certs, new.expire_queue = dict(store.certs), list(store.expire_queue)
        return new

    def get_cert(self, commonname, sans, organization=None, crl_url=None) -> certs.CertStoreEntry:
        sans = certs._fix_legacy_sans(sans)
        keys: list[certs.TCertId] = list(self.asterisk_forms(commonname)) if commonname else []
        for s in sans:
            keys.extend(self.asterisk_forms(s))
        keys += ["*", (commonname, sans)]
        name = next(filter(lambda key: key in self.certs, keys), None)
        if name:
            return self.certs[name]
        entry = certs.CertStoreEntry(
            cert=mint_leaf(self.default_privatekey, self.default_ca.to_cryptography(), self.leaf_key, commonname,
                           sans, organization, crl_url),
            privatekey=self.leaf_key, chain_file=self.default_chain_file, chain_certs=self.default_chain_certs)
        self.certs[(commonname, sans)] = entry
        self.expire(entry)
        return entry


class TlsConfig(tlsconfig.TlsConfig):
    """mitmproxy's TlsConfig, with the gateway's leaf key and, under name constraints, SNI-only leaves.

    `leaf_key`: "ecdsa" (a P-256 key made here, in memory, for this process's leaves) or "ca" (the CA's
    own key, as mitmproxy does). mitmproxy serves `entry.privatekey` with the leaf in `tls_start_client`
    (pyOpenSSL) and `quic_start_client` (aioquic); both take an EC key, and its default client ciphers
    include the ECDHE-ECDSA suites for TLS 1.2 (TLS 1.3 suites are key-agnostic).

    `sni_only` (set when `ca.nameConstraints` is): a leaf for a TLS client that sent a name (SNI)
    carries that name only. mitmproxy puts the destination address beside the name in every leaf;
    under a name-constrained CA that IP SAN must also fall inside a permitted IP subtree, or the leaf
    fails verification even for a permitted name. Clients that sent a name verify the name, so the
    address adds nothing. Without SNI mitmproxy's own choice (an IP leaf) stands."""

    def __init__(self, leaf_key: str = "ecdsa", sni_only: bool = False):
        if leaf_key not in LEAF_KEYS:
            raise ValueError(f"leaf_key must be one of {', '.join(LEAF_KEYS)}, not {leaf_key!r}")
        self.leaf_key = ec.generate_private_key(ec.SECP256R1()) if leaf_key == "ecdsa" else None
        self.sni_only = sni_only

    def configure(self, updated):
        super().configure(updated)  # a new CA (confdir, certs, ...) makes a new plain CertStore
        if self.leaf_key is not None and self.certstore is not None \
                and not isinstance(self.certstore, LeafKeyCertStore):
            self.certstore = LeafKeyCertStore.adopt(self.certstore, self.leaf_key)

    def get_cert(self, conn_context):
        sni = conn_context.client.sni
        if self.sni_only and sni:
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
