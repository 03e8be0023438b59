"""gateway/config.py: defaults, every key, relative paths, errors, upstream.dns forms, the control token."""

from __future__ import annotations

import os
import stat
import textwrap
from pathlib import Path

import pytest

from gateway.config import Config, ControlListen, Listen, config_from_dict, load_config, parse_listen
from gateway.errors import ConfigError


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_empty_file_gives_documented_defaults(tmp_path):
    config = load_config(write(tmp_path, ""))
    assert config.transparent == Listen("0.0.0.0", 15001)
    assert config.dns == Listen("0.0.0.0", 15353)
    assert config.proxy == Listen("127.0.0.1", 3128)
    assert config.control == ControlListen(unix="/run/egressgw/control.sock")
    assert config.metrics == Listen("127.0.0.1", 9469)
    assert config.upstream_dns == ()
    assert config.upstream_ca_bundle is None
    assert config.upstream_timeout == 5.0
    assert config.ca_dir == "/var/lib/egressgw/ca"
    assert config.ca_leaf_key == "ecdsa"
    assert config.log_path == "/var/log/egressgw/flows.jsonl"
    assert config.token_file == "/var/lib/egressgw/control.token"
    assert config.state_dir == "/run/egressgw"
    assert config.sandbox_pool == "10.211.0.0/16"
    assert config.allow_dest_ranges == ()
    assert config.source == str(tmp_path / "config.yaml")


def test_every_key_is_parsed(tmp_path):
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    config = load_config(write(tmp_path, f"""
        listen:
          transparent: 127.0.0.1:16001
          dns: "[::1]:16353"
          proxy: 127.0.0.2:13128
          control: 127.0.0.1:19000
          metrics: 9999
        upstream:
          dns: [192.0.2.53, "192.0.2.54:5353"]
          caBundle: {tmp_path / "ca.pem"}
          timeoutSeconds: 1.5
          reuseIdleSeconds: 0.5
        ca: {{dir: /srv/ca, leafKey: ca}}
        log: {{path: /srv/flows.jsonl}}
        control: {{tokenFile: /srv/token}}
        sandbox: {{pool: 10.50.0.0/20, stateDir: /srv/state}}
        dialGuard: {{allowRanges: [10.1.2.0/24, "fd00::1/64"]}}
    """))
    assert config.transparent == Listen("127.0.0.1", 16001)
    assert config.dns == Listen("::1", 16353)
    assert str(config.dns) == "[::1]:16353"
    assert config.proxy == Listen("127.0.0.2", 13128)
    assert config.control == ControlListen(tcp=Listen("127.0.0.1", 19000))
    assert config.control.url() == "http://127.0.0.1:19000"
    assert config.metrics == Listen("127.0.0.1", 9999)  # a bare port for metrics/proxy means loopback
    assert config.upstream_dns == (Listen("192.0.2.53", 53), Listen("192.0.2.54", 5353))
    assert config.upstream_ca_bundle == str(tmp_path / "ca.pem")
    assert config.upstream_timeout == 1.5
    assert config.upstream_reuse_idle == 0.5
    assert (config.ca_dir, config.log_path, config.token_file, config.state_dir) == (
        "/srv/ca", "/srv/flows.jsonl", "/srv/token", "/srv/state")
    assert config.ca_leaf_key == "ca"
    assert config.sandbox_pool == "10.50.0.0/20"
    # host bits are forgiven in allowRanges (strict=False) and the network is normalised
    assert config.allow_dest_ranges == ("10.1.2.0/24", "fd00::/64")


@pytest.mark.parametrize("value", ["off", False, None])
@pytest.mark.parametrize("key", ["proxy", "metrics"])
def test_optional_listeners_can_be_switched_off(key, value):
    config = config_from_dict({"listen": {key: value}})
    assert getattr(config, key) is None


def test_relative_paths_resolve_against_the_config_directory(tmp_path, monkeypatch):
    sub = tmp_path / "etc"
    sub.mkdir()
    (sub / "extra-ca.pem").write_text("pem")
    path = write(sub, """
        listen: {control: "unix://run/control.sock"}
        upstream: {caBundle: extra-ca.pem}
        ca: {dir: ca}
        log: {path: logs/flows.jsonl}
        control: {tokenFile: secret/token}
        sandbox: {stateDir: state}
    """)
    # loaded through a relative path from another working directory
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("etc/config.yaml"))
    assert config.ca_dir == str(sub / "ca")
    assert config.log_path == str(sub / "logs/flows.jsonl")
    assert config.token_file == str(sub / "secret/token")
    assert config.state_dir == str(sub / "state")
    assert config.upstream_ca_bundle == str(sub / "extra-ca.pem")
    assert config.control.unix == str(sub / "run/control.sock")
    assert config.control.url() == f"unix://{sub}/run/control.sock"
    assert path.exists()


def test_absolute_paths_stay_as_written(tmp_path):
    config = load_config(write(tmp_path, "log: {path: /var/log/x.jsonl}\nlisten: {control: /run/c.sock}\n"))
    assert config.log_path == "/var/log/x.jsonl"
    assert config.control.unix == "/run/c.sock"


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"lisen": {}}, "unknown section 'lisen'"),
        ({"listen": {"transparnt": "0.0.0.0:1"}}, "unknown key listen.transparnt"),
        ({"upstream": {"ca_bundle": "x"}}, "unknown key upstream.ca_bundle"),
        ({"listen": ["0.0.0.0:1"]}, "section 'listen' must be a mapping"),
        ({"listen": {"transparent": "localhost:15001"}}, "'localhost' is not an IP address"),
        ({"listen": {"transparent": "0.0.0.0"}}, "expected 'host:port'"),
        ({"listen": {"transparent": "0.0.0.0:http"}}, "port 'http' is not a number"),
        ({"listen": {"transparent": "0.0.0.0:70000"}}, "port 70000 is out of range"),
        ({"listen": {"transparent": 0}}, "port 0 is out of range"),
        ({"listen": {"transparent": ""}}, "expected 'host:port'"),
        ({"listen": {"dns": "[::1]"}}, "port '' is not a number"),
        # YAML `on` / `yes` parse as True: a boolean is not a port number
        ({"listen": {"proxy": True}}, "expected 'host:port', got True"),
        ({"listen": {"control": "0.0.0.0:9000"}}, "must listen on a unix socket or loopback"),
        ({"listen": {"control": "192.0.2.1:9000"}}, "must listen on a unix socket or loopback"),
        ({"listen": {"control": "[2001:db8::1]:9000"}}, "must listen on a unix socket or loopback"),
        ({"upstream": {"dns": []}}, "upstream.dns must be a list"),
        ({"upstream": {"dns": {"a": 1}}}, "upstream.dns must be a list"),
        ({"upstream": {"dns": ["resolver.example:53"]}}, "'resolver.example' is not an IP address"),
        ({"upstream": {"timeoutSeconds": 0}}, "timeoutSeconds must be a positive number"),
        ({"upstream": {"timeoutSeconds": "5"}}, "timeoutSeconds must be a positive number"),
        ({"upstream": {"timeoutSeconds": True}}, "timeoutSeconds must be a positive number"),
        ({"upstream": {"reuseIdleSeconds": -1}}, "upstream.reuseIdleSeconds must be a number of seconds from 0 to 300"),
        ({"upstream": {"reuseIdleSeconds": 301}}, "not 301 (fix: 1.5, the default; 0 turns upstream connection reuse off)"),
        ({"upstream": {"reuseIdleSeconds": "2"}}, "upstream.reuseIdleSeconds must be a number"),
        ({"upstream": {"reuseIdleSeconds": True}}, "upstream.reuseIdleSeconds must be a number"),
        ({"ca": {"dir": ""}}, "ca.dir must be a path"),
        ({"ca": {"leafKey": "rsa"}}, "ca.leafKey must be ecdsa or ca, not 'rsa' (fix: ecdsa, the default;"),
        ({"ca": {"leafKey": "ECDSA"}}, "ca.leafKey must be ecdsa or ca, not 'ECDSA'"),
        ({"ca": {"leafKey": ["ecdsa"]}}, "ca.leafKey must be ecdsa or ca, not ['ecdsa']"),
        ({"ca": {"leafKey": True}}, "ca.leafKey must be ecdsa or ca, not True"),
        ({"ca": {"leafkey": "ca"}}, "unknown key ca.leafkey (known: dir, leafKey, nameConstraints)"),
        ({"log": {"path": 5}}, "log.path must be a path"),
        ({"sandbox": {"pool": "10.211.0.1/16"}}, "is not a network"),
        ({"sandbox": {"pool": "banana"}}, "is not a network"),
        ({"sandbox": {"pool": "fd00::/64"}}, "IPv4 network of /29 or larger"),
        ({"sandbox": {"pool": "10.211.0.0/30"}}, "IPv4 network of /29 or larger"),
        ({"dialGuard": {"allowRanges": ["10.0.0.0/33"]}}, "allowRanges must be a list of networks"),
        ({"dialGuard": {"allowRanges": 10}}, "allowRanges must be a list of networks"),
    ],
)
def test_errors(raw, expected):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw, "cfg.yaml")
    assert expected in str(err.value)
    assert str(err.value).startswith("cfg.yaml")


def test_unknown_key_error_lists_the_known_keys():
    with pytest.raises(ConfigError, match=r"known: caBundle, dns, reuseIdleSeconds, timeoutSeconds"):
        config_from_dict({"upstream": {"resolvers": []}})


@pytest.mark.parametrize("control, url", [
    ("127.0.0.1:9000", "http://127.0.0.1:9000"),
    ("[::1]:9000", "http://[::1]:9000"),
    (9000, "http://127.0.0.1:9000"),  # a bare port stays on loopback
    ("127.0.0.53:9000", "http://127.0.0.53:9000"),
    ("unix:///tmp/x.sock", "unix:///tmp/x.sock"),
    ("/tmp/y.sock", "unix:///tmp/y.sock"),
])
def test_control_listen_forms(control, url):
    assert config_from_dict({"listen": {"control": control}}).control.url() == url


def test_ca_bundle_must_exist(tmp_path):
    expected = r"upstream.caBundle .*missing.pem does not exist .*fix: point it at a PEM file"
    with pytest.raises(ConfigError, match=expected):
        load_config(write(tmp_path, "upstream: {caBundle: missing.pem}\n"))


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, "listen:\n  transparent: 0.0.0.0:1\n  dns: [unclosed\nlog: {path: x}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}:")
    line = int(message.split(":")[1])
    assert 3 <= line <= 4, message  # the unclosed flow sequence, or where the parser noticed it
    assert "not valid YAML" in message


@pytest.mark.parametrize("text, expected", [
    ("- a\n- b\n", "must be a mapping of sections"),
    ("just a string\n", "must be a mapping of sections"),
])
def test_top_level_must_be_a_mapping(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(write(tmp_path, text))


def test_unreadable_config_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.yaml: cannot read config: No such file"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("value, expected", [
    ("192.0.2.53", Listen("192.0.2.53", 53)),
    ("192.0.2.53:5353", Listen("192.0.2.53", 5353)),
    ("[2001:db8::53]:5353", Listen("2001:db8::53", 5353)),
    ("[2001:db8::53]:53", Listen("2001:db8::53", 53)),
    ("2001:db8::53", Listen("2001:db8::53", 53)),  # bare IPv6: port 53
    ("::1", Listen("::1", 53)),
    ("127.0.0.1", Listen("127.0.0.1", 53)),
])
def test_upstream_dns_forms(value, expected):
    assert config_from_dict({"upstream": {"dns": [value]}}).upstream_dns == (expected,)


def test_upstream_dns_single_string_is_one_resolver():
    assert config_from_dict({"upstream": {"dns": "192.0.2.53:53"}}).upstream_dns == (Listen("192.0.2.53", 53),)


@pytest.mark.parametrize("value, what", [("[::1]:53", "[::1]:53"), ("127.0.0.1:53", "127.0.0.1:53")])
def test_listen_str_round_trips(value, what):
    assert str(parse_listen(value, "x")) == what


def test_control_token_created_0600_and_reused(tmp_path):
    token_file = tmp_path / "deep" / "control.token"
    config = Config(token_file=str(token_file))
    token = config.control_token()
    assert len(token) >= 32
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text() == token + "\n"
    assert config.control_token() == token
    assert Config(token_file=str(token_file)).control_token() == token


def test_control_token_created_0600_even_with_a_lax_umask(tmp_path):
    old = os.umask(0)
    try:
        Config(token_file=str(tmp_path / "t")).control_token()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "t").stat().st_mode) == 0o600


def test_control_token_from_an_existing_file_is_stripped(tmp_path):
    (tmp_path / "t").write_text("  s3cret-token \n")
    assert Config(token_file=str(tmp_path / "t")).control_token() == "s3cret-token"


def test_empty_control_token_file_is_a_config_error(tmp_path):
    # Was: FileExistsError from O_EXCL (a raw traceback, not a ConfigError with a fix).
    (tmp_path / "t").write_text("\n")
    with pytest.raises(ConfigError, match=r"control.tokenFile .* is empty \(fix: delete it"):
        Config(token_file=str(tmp_path / "t")).control_token()


def test_unreadable_control_token_is_a_config_error(tmp_path):
    (tmp_path / "t").mkdir()
    with pytest.raises(ConfigError, match=r"cannot read control.tokenFile"):
        Config(token_file=str(tmp_path / "t")).control_token()


# ---- detection.dns (DNS tunnel thresholds) ------------------------------------------------------

def test_dns_detection_defaults_and_every_key():
    from gateway.detect.dnstunnel import Settings

    assert config_from_dict({}).dns_detection is None  # the detector's defaults, Settings()
    raw = {"enabled": False, "windowSeconds": 30, "maxEncodedNames": 5, "maxDistinctSubdomains": 50,
           "maxUncommonQueries": 8, "maxQueries": 100, "encodedMinLength": 16, "minEntropyRatio": 0.8,
           "maxLabelLength": 40, "maxNameLength": 100, "blockSeconds": 0, "maxTrackedDomains": 99,
           "maxNamesPerDomain": 60}
    assert config_from_dict({"detection": {"dns": raw}}).dns_detection == Settings(
        enabled=False, window=30.0, max_encoded=5, max_distinct=50, max_uncommon=8, max_rate=100,
        encoded_min_length=16, min_entropy_ratio=0.8, max_label_length=40, max_name_length=100, block=0.0,
        max_tracked=99, max_names=60)


@pytest.mark.parametrize("dns, expected", [
    ([], "detection.dns must be a mapping of thresholds"),
    ({"maxEncoded": 5}, "unknown key detection.dns.maxEncoded (known: blockSeconds, enabled,"),
    ({"enabled": "yes"}, "detection.dns.enabled must be true or false, not 'yes'"),
    ({"maxEncodedNames": 0}, "detection.dns.maxEncodedNames is 0; it must be at least 1 (default 10)"),
    ({"maxEncodedNames": 2.5}, "detection.dns.maxEncodedNames must be a whole number, not 2.5 (fix: e.g. 10)"),
    ({"windowSeconds": "60s"}, "detection.dns.windowSeconds must be a number, not '60s'"),
    ({"blockSeconds": -1}, "detection.dns.blockSeconds is -1; it must be at least 0"),
    ({"minEntropyRatio": 3}, "minEntropyRatio 3.0 would never match"),
    ({"maxNamesPerDomain": 50}, "detection.dns.maxNamesPerDomain (50) is below the limits it must count up to (120)"),
])
def test_dns_detection_errors(dns, expected):
    with pytest.raises(ConfigError) as e:
        config_from_dict({"detection": {"dns": dns}}, "gw.yaml")
    assert str(e.value).startswith("gw.yaml: ") and expected in str(e.value)
