"""gateway/log/chain.py key handling and the `log:` config keys."""

from __future__ import annotations

import os
import stat

import pytest

from gateway.config import config_from_dict
from gateway.errors import ConfigError
from gateway.log import chain


def test_key_is_created_0600_and_read_back(tmp_path):
    path = tmp_path / "keys" / "log.key"
    key = chain.load_key(path, tmp_path / "log")
    assert len(key) == chain.KEY_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert chain.load_key(path, tmp_path / "log") == key


@pytest.mark.parametrize("case,setup,message", [
    ("inside-log-dir", lambda t: t / "log" / "log.key", "inside the log directory"),
    ("inside-log-subdir", lambda t: t / "log" / "sub" / "log.key", "inside the log directory"),
])
def test_key_inside_the_log_directory_is_refused(tmp_path, case, setup, message):
    (tmp_path / "log").mkdir()
    with pytest.raises(ConfigError, match=message):
        chain.load_key(setup(tmp_path), tmp_path / "log")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_key_readable_by_others_is_refused(tmp_path, mode):
    path = tmp_path / "log.key"
    path.write_text(os.urandom(32).hex())
    path.chmod(mode)
    with pytest.raises(ConfigError, match=rf"mode {mode:04o}.*chmod 600"):
        chain.load_key(path, tmp_path / "log")


@pytest.mark.parametrize("content", ["", "not hex", "abcd", "00" * 8])
def test_bad_key_content_is_refused(tmp_path, content):
    path = tmp_path / "log.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, content.encode())
    os.close(fd)
    with pytest.raises(ConfigError, match="hex key"):
        chain.load_key(path)


def test_missing_key_without_create_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        chain.load_key(tmp_path / "nope.key", create=False)


def test_log_config_keys(tmp_path):
    c = config_from_dict({"log": {"path": "/var/log/egw/flows.jsonl", "format": "ecs", "rotateBytes": 1 << 20,
                                  "keep": 3, "checkpointEvery": 50, "hmacKeyFile": "/etc/egw/log.key",
                                  "webhook": {"url": "https://siem.example/hook", "timeoutSeconds": 2,
                                              "maxQueue": 10, "maxRetries": 3, "backoffSeconds": 0.1}}})
    assert (c.log_format, c.log_rotate_bytes, c.log_keep, c.log_checkpoint_every, c.log_hmac_key_file) == (
        "ecs", 1 << 20, 3, 50, "/etc/egw/log.key")
    assert c.log_webhook.url == "https://siem.example/hook" and c.log_webhook.max_queue == 10
    assert c.log_webhook.timeout == 2.0 and c.log_webhook.max_retries == 3
    d = config_from_dict({})
    assert (d.log_format, d.log_keep, d.log_checkpoint_every, d.log_webhook) == ("ocsf", 10, 1000, None)


def test_relative_key_file_is_relative_to_the_config(tmp_path):
    c = config_from_dict({"log": {"hmacKeyFile": "keys/log.key"}}, base_dir=tmp_path)
    assert c.log_hmac_key_file == str(tmp_path / "keys/log.key")


@pytest.mark.parametrize("log,message", [
    ({"format": "json"}, "log.format must be one of ocsf, ecs, native"),
    ({"rotateBytes": -1}, "log.rotateBytes must be a whole number"),
    ({"rotateBytes": 100}, "log.rotateBytes must be 0"),
    ({"keep": "ten"}, "log.keep must be a whole number"),
    ({"checkpointEvery": 0}, "log.checkpointEvery must be a whole number >= 1"),
    ({"checkpointEvery": True}, "log.checkpointEvery must be a whole number"),
    ({"path": "/srv/log/flows.jsonl", "hmacKeyFile": "/srv/log/k"}, "inside the log directory"),
    ({"hmacKeyFile": ""}, "log.hmacKeyFile must be a path"),
    ({"webhook": {"url": "ftp://x"}}, "log.webhook.url must be an http"),
    ({"webhook": {"url": "https://x", "maxQueue": 0}}, "log.webhook.maxQueue must be a positive"),
    ({"webhook": {"url": "https://x", "retries": 1}}, "unknown key log.webhook.retries"),
    ({"webhook": ["https://x"]}, "log.webhook must be a mapping"),
    ({"rotate": 1}, "unknown key log.rotate"),
])
def test_bad_log_config_is_a_clear_error(log, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"log": log}, source="gw.yaml")


def test_the_gateway_opens_its_log_as_configured(tmp_path):
    from gateway.audit import Audit
    from gateway.log import events, reader, verify

    c = config_from_dict({"log": {"path": str(tmp_path / "log" / "flows.jsonl"), "format": "ecs",
                                  "rotateBytes": 4096, "keep": 2, "checkpointEvery": 3,
                                  "hmacKeyFile": str(tmp_path / "keys" / "log.key")}})
    audit = Audit.from_config(c)
    for i in range(30):
        audit.emit(events.make_event(events.DNS, dns_qname=f"n{i}.test", dns_rcode="NOERROR", decision="allow"))
    audit.close()
    assert stat.S_IMODE((tmp_path / "keys" / "log.key").stat().st_mode) == 0o600
    files = reader.expand([tmp_path / "log"])
    assert len(files) == 3  # 2 rotated kept + live
    recs = list(reader.iter_records(files))
    assert all("ecs" in r.raw for r in recs) and recs[-1].event["dns_qname"] == "n29.test"
    key = chain.load_key(tmp_path / "keys" / "log.key", create=False)
    assert verify.verify([tmp_path / "log"], key).exit_code == verify.OK


def test_a_loose_key_file_stops_the_gateway_from_starting(tmp_path):
    from gateway.audit import Audit

    key = tmp_path / "log.key"
    key.write_text(os.urandom(32).hex())
    key.chmod(0o644)
    c = config_from_dict({"log": {"path": str(tmp_path / "log" / "flows.jsonl"), "hmacKeyFile": str(key)}})
    with pytest.raises(ConfigError, match="chmod 600"):
        Audit.from_config(c)
