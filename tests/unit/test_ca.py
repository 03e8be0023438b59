"""gateway/ca.py: the gateway CA, optionally name-constrained; loaded and used by mitmproxy's real cert store.

Verification is by `openssl verify` (a real X.509 path validator): a leaf mitmproxy mints for a permitted
name verifies, one for any other name (or an IP outside the permitted CIDRs) fails with a name-constraint
violation."""

from __future__ import annotations

import ipaddress
import logging
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from mitmproxy.certs import CertStore

from gateway import ca
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
