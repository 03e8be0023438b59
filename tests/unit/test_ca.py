"""gateway/ca.py: the gateway CA, optionally name-constrained; loaded and used by mitmproxy's real cert store.

Verification is by `openssl verify` (a real X.509 path validator): a leaf mitmproxy mints for a permitted
name verifies, one for any other name (or an IP outside the permitted CIDRs) fails with a name-constraint
violation.

Leaf keys (ca.leafKey): an ECDSA leaf is mitmproxy's leaf (`certs.dummy_cert`, compared extension by
extension) with a P-256 key, signed by the CA, cached and expired as mitmproxy's store does; the TlsConfig
serves it to Python's ssl (TLS 1.2 and 1.3, HTTP/2, explicit proxy); its key is never written anywhere."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from mitmproxy import certs, connection, tls
from mitmproxy.certs import CertStore
from mitmproxy.proxy import context
from mitmproxy.proxy.layers import modes
from mitmproxy.test import taddons
from OpenSSL import SSL

from gateway import ca
from gateway.lab import tlsmem
from gateway.config import load_config
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def leaf(store: CertStore, name: str, tmp: Path) -> Path:
    try:
        san = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        san = x509.DNSName(name)
    entry = store.get_cert(name if isinstance(san, x509.DNSName) else None, [san])
    path = tmp / f"leaf-{name}.pem"
    path.write_bytes(entry.cert.to_pem())
    return path


def verify(ca_dir: Path, leaf_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", "verify", "-purpose", "sslserver", "-CAfile",
                           str(ca_dir / "mitmproxy-ca-cert.pem"), str(leaf_path)], capture_output=True, text=True)


@pytest.fixture
def constrained(tmp_path):
    ca_dir = tmp_path / "ca"
    assert ca.ensure(ca_dir, ("api.example.com", "cdn.example.net", "198.18.5.0/24"))
    return ca_dir, CertStore.from_store(ca_dir, "mitmproxy", 2048)


def test_the_key_is_0600_and_the_extension_is_critical(constrained):
    ca_dir, _ = constrained
    assert stat.S_IMODE((ca_dir / "mitmproxy-ca.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((ca_dir / "mitmproxy-ca-cert.pem").stat().st_mode) == 0o644
    assert b"PRIVATE KEY" not in (ca_dir / "mitmproxy-ca-cert.pem").read_bytes()
    cert = x509.load_pem_x509_certificate((ca_dir / "mitmproxy-ca-cert.pem").read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert ext.critical
    assert set(ext.value.permitted_subtrees) == {
        x509.DNSName("api.example.com"), x509.DNSName("cdn.example.net"),
        x509.IPAddress(ipaddress.ip_network("198.18.5.0/24"))}
    text = subprocess.run(["openssl", "x509", "-noout", "-text", "-in", str(ca_dir / "mitmproxy-ca-cert.pem")],
                          capture_output=True, text=True, check=True).stdout
    assert "X509v3 Name Constraints: critical" in text and "DNS:api.example.com" in text


@pytest.mark.parametrize("name, ok", [
    ("api.example.com", True),
    ("x.cdn.example.net", True),  # a DNS subtree permits every name under it
    ("198.18.5.7", True),
    ("evil.test", False),
    ("example.com", False),
    ("api.example.com.evil.test", False),
    ("xapi.example.com", False),
    ("198.18.6.1", False),
    ("127.0.0.1", False),
])
def test_openssl_verifies_only_permitted_leaves(constrained, tmp_path, name, ok):
    ca_dir, store = constrained
    result = verify(ca_dir, leaf(store, name, tmp_path))
    if ok:
        assert result.returncode == 0, result.stdout + result.stderr
    else:
        assert result.returncode != 0
        assert "subtree violation" in (result.stdout + result.stderr), result.stdout + result.stderr


def test_without_cidrs_no_ip_leaf_is_permitted(tmp_path):
    ca_dir = tmp_path / "ca"
    ca.ensure(ca_dir, ("api.example.com",))
    store = CertStore.from_store(ca_dir, "mitmproxy", 2048)
    assert verify(ca_dir, leaf(store, "api.example.com", tmp_path)).returncode == 0
    assert verify(ca_dir, leaf(store, "198.18.5.7", tmp_path)).returncode != 0
    assert verify(ca_dir, leaf(store, "::1", tmp_path)).returncode != 0


def test_policy_entries_take_the_names_the_policies_allow(tmp_path):
    ca_dir = tmp_path / "ca"
    ca.ensure(ca_dir, (f"policy:{ROOT / 'policies' / 'github.yaml'}", f"policy:{ROOT / 'policies' / 'anthropic.yaml'}"))
    store = CertStore.from_store(ca_dir, "mitmproxy", 2048)
    assert verify(ca_dir, leaf(store, "api.anthropic.com", tmp_path)).returncode == 0
    assert verify(ca_dir, leaf(store, "api.github.com", tmp_path)).returncode == 0
    assert verify(ca_dir, leaf(store, "claude.ai", tmp_path)).returncode != 0


def test_kept_when_unchanged_regenerated_when_changed(tmp_path, caplog):
    ca_dir = tmp_path / "ca"
    assert ca.ensure(ca_dir, ("a.example",))
    first = (ca_dir / "mitmproxy-ca.pem").read_bytes()
    assert not ca.ensure(ca_dir, ("a.example",)) and (ca_dir / "mitmproxy-ca.pem").read_bytes() == first
    with caplog.at_level(logging.WARNING, "egressgw"):
        assert ca.ensure(ca_dir, ("a.example", "b.example"))
    assert (ca_dir / "mitmproxy-ca.pem").read_bytes() != first
    assert "changed" in caplog.text
    assert not ca.ensure(ca_dir, None)  # not configured: mitmproxy's business


def test_mitmproxy_own_ca_key_is_0600(tmp_path):
    """Unconstrained (the default): mitmproxy writes the CA with a 0o77 umask."""
    CertStore.from_store(tmp_path, "mitmproxy", 2048)
    assert stat.S_IMODE((tmp_path / "mitmproxy-ca.pem").stat().st_mode) == 0o600
    serialization.load_pem_private_key((tmp_path / "mitmproxy-ca.pem").read_bytes(), None)


@pytest.mark.parametrize("value, error", [
    ("api.example.com", "must be a non-empty list"),
    ([], "must be a non-empty list"),
    (["bad name!"], "not allowed in a DNS name"),
    (["policy:missing.yaml"], "file not found"),
])
def test_bad_config_is_a_clear_error(tmp_path, value, error):
    import yaml

    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"ca": {"dir": str(tmp_path / "ca"), "nameConstraints": value}}))
    with pytest.raises(ConfigError, match=error):
        config = load_config(str(cfg))
        ca.ensure(config.ca_dir, config.ca_name_constraints, config.source)


def test_config_resolves_policy_paths_relative_to_the_file(tmp_path):
    import yaml

    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "x.yaml").write_text((ROOT / "policies" / "anthropic.yaml").read_text())
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"ca": {"nameConstraints": ["policy:p", "10.0.0.0/8"]}}))
    config = load_config(str(cfg))
    assert config.ca_name_constraints == (f"policy:{tmp_path / 'p'}", "10.0.0.0/8")
    subtrees, names = ca.permitted(config.ca_name_constraints)
    assert names == ["api.anthropic.com"] and x509.IPAddress(ipaddress.ip_network("10.0.0.0/8")) in subtrees


# -- leaf keys (ca.leafKey): an ECDSA P-256 key per process, or the CA's own --------------------------------

DNS = x509.DNSName


def IP(address: str) -> x509.IPAddress:
    return x509.IPAddress(ipaddress.ip_address(address))


LONG = "a" * 60 + ".example.com"  # 72 characters: no CN, a critical SAN


@pytest.fixture(params=["constrained", "mitmproxy"])
def ca_dir(request, tmp_path):
    """The two CAs a gateway runs with: its own name-constrained one, or the one mitmproxy creates."""
    directory = tmp_path / "ca"
    if request.param == "constrained":
        ca.ensure(directory, ("example.com", "198.18.0.0/15"))
    else:
        CertStore.create_store(directory, "mitmproxy", 2048)
    return directory


def ec_store(ca_dir: Path) -> ca.LeafKeyCertStore:
    return ca.LeafKeyCertStore.adopt(CertStore.from_store(ca_dir, "mitmproxy", 2048),
                                     ec.generate_private_key(ec.SECP256R1()))


def verify_signed_by(leaf_cert: x509.Certificate, ca_cert: x509.Certificate) -> None:
    leaf_cert.verify_directly_issued_by(ca_cert)  # issuer name, signature algorithm and signature
    ca_cert.public_key().verify(leaf_cert.signature, leaf_cert.tbs_certificate_bytes, padding.PKCS1v15(),
                                leaf_cert.signature_hash_algorithm)


@pytest.mark.parametrize("cn, sans, organization, crl_url", [
    ("api.example.com", [DNS("api.example.com")], None, None),
    ("api.example.com", [DNS("api.example.com"), IP("198.18.5.7")], None, None),
    (None, [IP("198.18.5.7")], None, None),  # no CN: the SAN is critical
    (LONG, [DNS(LONG)], None, None),  # a CN of 64+ characters is left out: critical SAN
    ("x.example.com", [DNS("x.example.com")], "Example Org", "http://x.example.com/mitmproxy-1.crl"),
])
def test_an_ecdsa_leaf_is_mitmproxys_leaf_with_a_p256_key(ca_dir, cn, sans, organization, crl_url):
    store = ec_store(ca_dir)
    ca_cert = store.default_ca.to_cryptography()
    entry = store.get_cert(cn, sans, organization, crl_url)
    ours = entry.cert.to_cryptography()
    theirs = certs.dummy_cert(store.default_privatekey, ca_cert, cn, sans, organization, crl_url).to_cryptography()

    key = ours.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert entry.privatekey is store.leaf_key and key == store.leaf_key.public_key()
    verify_signed_by(ours, ca_cert)
    assert ours.signature_hash_algorithm.name == theirs.signature_hash_algorithm.name == "sha256"
    assert (ours.version, ours.issuer, ours.subject) == (theirs.version, theirs.issuer, theirs.subject)
    assert [(e.oid, e.critical, e.value) for e in ours.extensions] == \
           [(e.oid, e.critical, e.value) for e in theirs.extensions]  # EKU, SAN, AKI (the CA's SKI), CRL; no SKI
    for attr in ("not_valid_before_utc", "not_valid_after_utc"):
        assert abs(getattr(ours, attr) - getattr(theirs, attr)) < datetime.timedelta(seconds=60)
    assert entry.chain_file == store.default_chain_file and entry.chain_certs == store.default_chain_certs


def test_an_ecdsa_leaf_of_a_ca_without_ski_takes_the_aki_from_the_ca_key(tmp_path):
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "no-ski")])
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
               .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .sign(ca_key, hashes.SHA256()))
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    ours = ca.mint_leaf(ca_key, ca_cert, leaf_key, "a.test", x509.GeneralNames([DNS("a.test")])).to_cryptography()
    theirs = certs.dummy_cert(ca_key, ca_cert, "a.test", [DNS("a.test")]).to_cryptography()
    aki = x509.AuthorityKeyIdentifier
    assert ours.extensions.get_extension_for_class(aki) == theirs.extensions.get_extension_for_class(aki)
    verify_signed_by(ours, ca_cert)


# Each step: (CN, SANs) asked for; the store answers with an entry seen before (its index; 0 is the entry
# added under "*.wild.example") or a new one. Minted entries are cached under (CN, SANs) only.
CACHE_STEPS = [
    ("c.wild.example", [DNS("c.wild.example")]),  # an asterisk form of the CN: entry 0
    ("a.example.com", [DNS("a.example.com")]),  # new: 1
    ("a.example.com", [DNS("a.example.com")]),  # cached: 1
    ("a.example.com", [DNS("a.example.com"), IP("198.18.5.7")]),  # other SANs, new: 2
    (None, [IP("198.18.5.7")]),  # new: 3; the cap (3) pushes out entry 0 with all its names
    (None, [IP("198.18.5.7")]),  # cached: 3
    ("c.wild.example", [DNS("c.wild.example")]),  # *.wild.example is gone: new, 4 (pushes out 1)
    ("a.example.com", [DNS("a.example.com")]),  # expired: new, 5
]


def cache_pattern(store: CertStore) -> list[int]:
    store.STORE_CAP = 3
    wild = store.get_cert("wild", [DNS("wild")])
    store.add_cert(wild, "*.wild.example")
    seen: list[certs.CertStoreEntry] = [wild]
    pattern = []
    for cn, sans in CACHE_STEPS:
        entry = store.get_cert(cn, sans)
        match = next((i for i, e in enumerate(seen) if e is entry), None)
        pattern.append(len(seen) if match is None else match)
        if match is None:
            seen.append(entry)
    return pattern


def test_the_ecdsa_store_caches_and_expires_as_mitmproxys_does(ca_dir):
    expected = cache_pattern(CertStore.from_store(ca_dir, "mitmproxy", 2048))
    assert expected == [0, 1, 1, 2, 3, 3, 4, 5]  # the steps do what their comments say
    assert cache_pattern(ec_store(ca_dir)) == expected


def client_context(opts, sni: str | None, server=("198.18.5.7", 443), explicit_proxy=False) -> context.Context:
    client = connection.Client(peername=("10.211.0.2", 40000), sockname=("10.211.0.1", 15001), sni=sni,
                               timestamp_start=0)
    ctx = context.Context(client, opts)
    ctx.server.address = server
    if explicit_proxy:  # CONNECT through listen.proxy: mitmproxy then speaks HTTP/1.1 to the client
        ctx.layers = [modes.HttpProxy(ctx), modes.HttpProxy(ctx)]
    return ctx


@pytest.fixture
def tls_addon(ca_dir, request):
    """(TlsConfig(**param), its options) with confdir = ca_dir: mitmproxy loads that CA, nothing else."""
    addon = ca.TlsConfig(**getattr(request, "param", {}))
    with taddons.context(addon) as tctx:
        tctx.configure(addon, confdir=str(ca_dir))
        yield addon, tctx.options


@pytest.mark.parametrize("tls_addon, sni, sans", [
    ({}, "api.example.com", [DNS("api.example.com"), IP("198.18.5.7")]),  # mitmproxy's leaf, as before
    ({"sni_only": True}, "api.example.com", [DNS("api.example.com")]),  # name-constrained: the name only
    ({"sni_only": True}, "198.18.5.8", [IP("198.18.5.8"), IP("198.18.5.7")]),  # an IP as SNI: mitmproxy's
    ({"sni_only": True}, None, [IP("10.211.0.1"), IP("198.18.5.7")]),  # no SNI: mitmproxy's
    ({"leaf_key": "ca", "sni_only": True}, "api.example.com", [DNS("api.example.com")]),
    ({"leaf_key": "ca"}, "api.example.com", [DNS("api.example.com"), IP("198.18.5.7")]),
], indirect=["tls_addon"])
def test_tlsconfig_leaves(tls_addon, sni, sans):
    addon, opts = tls_addon
    entry = addon.get_cert(client_context(opts, sni))
    leaf_cert = entry.cert.to_cryptography()
    assert list(leaf_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value) == sans
    ca_cert = addon.certstore.default_ca.to_cryptography()
    verify_signed_by(leaf_cert, ca_cert)
    if addon.leaf_key is None:  # leafKey: ca: mitmproxy's own store, the CA's key in every leaf
        assert type(addon.certstore) is CertStore
        assert entry.privatekey is addon.certstore.default_privatekey
        assert leaf_cert.public_key() == ca_cert.public_key()
    else:
        assert isinstance(entry.privatekey, ec.EllipticCurvePrivateKey)
        assert entry.privatekey is addon.leaf_key and leaf_cert.public_key() == addon.leaf_key.public_key()


def test_a_new_ca_keeps_the_leaf_key(tls_addon, tmp_path):
    addon, opts = tls_addon
    first = addon.certstore
    other = tmp_path / "other-ca"
    ca.ensure(other, ("other.test",))
    opts.update(confdir=str(other))
    assert isinstance(addon.certstore, ca.LeafKeyCertStore) and addon.certstore is not first
    assert addon.certstore.leaf_key is first.leaf_key
    assert addon.certstore.default_ca.cn == "egressgw" and addon.certstore.default_ca != first.default_ca


def test_an_unknown_leaf_key_is_refused():
    with pytest.raises(ValueError, match="ecdsa, ca"):
        ca.TlsConfig(leaf_key="rsa")


def serve(addon, opts, sni, *, explicit_proxy=False) -> SSL.Connection:
    data = tls.TlsData(conn=None, context=client_context(opts, sni, explicit_proxy=explicit_proxy))
    data.conn = data.context.client
    addon.tls_start_client(data)
    return data.ssl_conn


def memory_handshake(server: SSL.Connection, ca_file: Path, sni: str, alpn: list[str],
                     max_version: ssl.TLSVersion) -> ssl.SSLObject:
    """Python's ssl (strict X.509 checks) against mitmproxy's pyOpenSSL server object."""
    cctx = ssl.create_default_context(cafile=str(ca_file))
    cctx.verify_flags |= ssl.VERIFY_X509_STRICT
    cctx.maximum_version = max_version
    cctx.set_alpn_protocols(alpn)
    return tlsmem.handshake(server, cctx, sni)[0]


TLS12, TLS13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3


@pytest.mark.parametrize("tls_addon, explicit_proxy, max_version, alpn, expected_alpn", [
    ({}, False, TLS13, ["h2", "http/1.1"], "h2"),  # transparent mode: HTTP/2
    ({}, False, TLS12, ["h2", "http/1.1"], "h2"),  # TLS 1.2: an ECDHE-ECDSA suite
    ({}, True, TLS13, ["h2", "http/1.1"], "http/1.1"),  # explicit proxy (CONNECT): mitmproxy speaks HTTP/1.1
    ({"sni_only": True}, False, TLS13, ["h2", "http/1.1"], "h2"),
    ({"leaf_key": "ca"}, False, TLS12, ["http/1.1"], "http/1.1"),
    ({"leaf_key": "ca"}, False, TLS13, ["h2", "http/1.1"], "h2"),
], indirect=["tls_addon"])
def test_python_ssl_completes_a_handshake(tls_addon, ca_dir, explicit_proxy, max_version, alpn, expected_alpn):
    addon, opts = tls_addon
    server = serve(addon, opts, "api.example.com", explicit_proxy=explicit_proxy)
    client = memory_handshake(server, ca_dir / "mitmproxy-ca-cert.pem", "api.example.com", alpn, max_version)
    assert client.selected_alpn_protocol() == expected_alpn
    assert client.version() == {TLS12: "TLSv1.2", TLS13: "TLSv1.3"}[max_version]
    key = x509.load_der_x509_certificate(client.getpeercert(binary_form=True)).public_key()
    if addon.leaf_key is None:
        assert isinstance(key, rsa.RSAPublicKey) and key == addon.certstore.default_ca.public_key()
    else:
        assert isinstance(key, ec.EllipticCurvePublicKey) and key == addon.leaf_key.public_key()
        if max_version is TLS12:
            assert client.cipher()[0].startswith("ECDHE-ECDSA-")


def test_the_leaf_key_is_never_written(tls_addon, ca_dir, tmp_path):
    addon, opts = tls_addon
    before = {p: p.read_bytes() for p in ca_dir.rglob("*") if p.is_file()}
    for name in ("api.example.com", "x.example.com"):
        memory_handshake(serve(addon, opts, name), ca_dir / "mitmproxy-ca-cert.pem", name, ["h2"], TLS13)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert {p: b for p, b in after.items() if p.is_relative_to(ca_dir)} == before  # the CA dir is untouched
    secret = addon.leaf_key.private_numbers().private_value.to_bytes(32, "big")
    pems = {fmt: addon.leaf_key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
            for fmt in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL)}
    for path, data in after.items():
        assert secret not in data and not any(pem in data for pem in pems.values()), path
        assert b"EC PRIVATE KEY" not in data, path
