"""Secret backends by URI (env, file, exec, vault, aws-sm) and the TTL cache in front of them.

Vault is tested through hvac against tests/secrets/vault_server.py (a faithful
KV v2 read endpoint: Vault itself is not installable here); AWS Secrets Manager
through boto3 against moto in server mode. Both listen on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import socket
import sys
import time

import pytest

from gateway.errors import EgressgwError
from gateway.secrets.backends import (
    MAX_VALUE_BYTES,
    SecretBackendError,
    SecretStore,
    Source,
    parse_source,
    read_source,
)

sys.path.insert(0, os.path.dirname(__file__))
from vault_server import FakeVault  # noqa: E402

VALUE = "sekr1t-VALUE-7f3a9c0d"  # distinctive: must never show up in an error, a repr or a log line


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(coro):
    return asyncio.run(coro)


def get(store: SecretStore, uri: str, name: str = "TOKEN") -> str:
    return run(store.get(name, parse_source(uri)))


def fail(uri: str, name: str = "TOKEN", store: SecretStore | None = None) -> SecretBackendError:
    """The SecretBackendError a get of uri raises, checked for leaks."""
    store = store or SecretStore()
    with pytest.raises(SecretBackendError) as info:
        get(store, uri, name)
    err = info.value
    assert_clean(err)
    assert err.secret == name and str(err).startswith(f"secret {name}: {err.scheme} backend failed: ")
    assert err.__cause__ is None and err.__context__ is None  # nothing chained that could carry a value
    return err


def assert_clean(*objects) -> None:
    for obj in objects:
        assert VALUE not in str(obj), obj
        assert VALUE not in repr(obj), obj


def sh(script: str) -> str:
    """An exec:// URI running a shell script (the backend itself never uses a shell)."""
    return "exec://" + shlex.join(["sh", "-c", script])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- parse_source

GOOD = [
    ("env://OPENAI_API_KEY", dict(scheme="env", target="OPENAI_API_KEY")),
    ("env://_x1", dict(scheme="env", target="_x1")),
    ("file:///run/secrets/openai", dict(scheme="file", target="/run/secrets/openai")),
    ("file:///etc/a b#c", dict(scheme="file", target="/etc/a b#c")),
    ("exec://op read op://vault/item/field", dict(scheme="exec", argv=("op", "read", "op://vault/item/field"))),
    ("exec://sh -c 'echo \"a b\"'", dict(scheme="exec", argv=("sh", "-c", 'echo "a b"'))),
    ("vault://secret/team/openai#api_key", dict(scheme="vault", mount="secret", target="team/openai", key="api_key")),
    ("vault://kv/a#k#2", dict(scheme="vault", mount="kv", target="a#k", key="2")),
    ("aws-sm://prod/openai", dict(scheme="aws-sm", target="prod/openai", key=None)),
    ("aws-sm://prod/openai#api_key", dict(scheme="aws-sm", target="prod/openai", key="api_key")),
    ("aws-sm://arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/x-AbCdEf#k",
     dict(scheme="aws-sm", target="arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/x-AbCdEf", key="k")),
]


@pytest.mark.parametrize("uri,fields", GOOD, ids=[u for u, _ in GOOD])
def test_parse_good(uri, fields):
    src = parse_source(uri)
    assert isinstance(src, Source) and src.uri == uri
    for k, v in fields.items():
        assert getattr(src, k) == v, k
    assert parse_source(uri) == src and hash(src) == hash(parse_source(uri))


BAD = [
    ("OPENAI_API_KEY", ["is not a URI", "env://", "file://", "exec://", "vault://", "aws-sm://"]),
    ("", ["is not a URI"]),
    ("://x", ["is not a URI"]),
    ("http://example.com/x", ["unknown scheme 'http'", "env://, file://, exec://, vault://, aws-sm://"]),
    ("ENV://X", ["unknown scheme 'ENV'"]),
    ("env://", ["not an environment variable name", "env://NAME"]),
    ("env://1ABC", ["not an environment variable name"]),
    ("env://A-B", ["not an environment variable name"]),
    ("file://relative/path", ["must be absolute", "file:///absolute/path"]),
    ("file://", ["must be absolute"]),
    ("file:///etc/", ["names a directory"]),
    ("exec://", ["no command"]),
    ("exec://   ", ["no command"]),
    ("exec://op read 'unbalanced", ["cannot be split", "balance the quotes"]),
    ("vault://secret#key", ["needs a mount and a secret path", "vault://MOUNT/PATH#KEY"]),
    ("vault://secret/#key", ["needs a mount and a secret path"]),
    ("vault://#key", ["needs a mount and a secret path"]),
    ("vault://secret/openai", ["names no key", "add #KEY"]),
    ("vault://secret/openai#", ["empty key after '#'"]),
    ("aws-sm://", ["no secret id"]),
    ("aws-sm://#key", ["no secret id"]),
    ("aws-sm://prod/x#", ["empty key after '#'"]),
    ("env://A\nB", ["NUL or line break"]),
]


@pytest.mark.parametrize("uri,fragments", BAD, ids=[repr(u) for u, _ in BAD])
def test_parse_bad(uri, fragments):
    with pytest.raises(ValueError) as info:
        parse_source(uri)
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, (frag, msg)
    assert "fix:" in msg


def test_parse_not_a_string():
    with pytest.raises(ValueError, match="must be a URI string"):
        parse_source(None)  # type: ignore[arg-type]


# ---------------------------------------------------------------- env, file, exec: values

def test_env(monkeypatch):
    monkeypatch.setenv("EGW_T_ENV", VALUE)
    assert get(SecretStore(), "env://EGW_T_ENV") == VALUE
    assert read_source("X", parse_source("env://EGW_T_ENV")) == VALUE


@pytest.mark.parametrize("content,expected", [
    (VALUE + "\n", VALUE),
    (VALUE + "\n\n", VALUE + "\n"),  # exactly one newline stripped
    (VALUE + "\r\n", VALUE),
    (VALUE, VALUE),
    ("  spaced  \n", "  spaced  "),
    ("multi\nline\n", "multi\nline"),
    ("ünïcødé\n", "ünïcødé"),
])
def test_file_values(tmp_path, content, expected):
    p = tmp_path / "s"
    p.write_bytes(content.encode())
    assert get(SecretStore(), f"file://{p}") == expected


@pytest.mark.parametrize("script,expected", [
    (f"printf '%s\\n' {VALUE}", VALUE),
    (f"printf '%s\\n\\n' {VALUE}", VALUE + "\n"),
    (f"printf '%s' {VALUE}", VALUE),
    (f"printf '%s\\n' {VALUE}; echo noise >&2", VALUE),  # stderr ignored on success
])
def test_exec_values(script, expected):
    assert get(SecretStore(), sh(script)) == expected


def test_exec_no_shell(tmp_path):
    # the command line is split, not interpreted: '$HOME' and ';' reach the program verbatim
    assert get(SecretStore(), "exec://printf %s '$HOME;x'") == "$HOME;x"


# ---------------------------------------------------------------- env, file, exec: errors

def test_env_missing(monkeypatch):
    monkeypatch.delenv("EGW_T_MISSING", raising=False)
    err = fail("env://EGW_T_MISSING", name="GH")
    assert err.scheme == "env"
    assert str(err) == ("secret GH: env backend failed: environment variable EGW_T_MISSING is not set "
                        "(fix: set EGW_T_MISSING in the gateway's environment)")


def test_env_empty(monkeypatch):
    monkeypatch.setenv("EGW_T_EMPTY", "")
    assert "EGW_T_EMPTY is empty" in str(fail("env://EGW_T_EMPTY"))


def test_file_errors(tmp_path):
    missing = tmp_path / "nope"
    err = fail(f"file://{missing}")
    assert f"cannot read {missing}: No such file or directory" in str(err)

    assert f"{tmp_path}/. is not a regular file" in str(fail(f"file://{tmp_path}/."))

    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert "is empty" in str(fail(f"file://{empty}"))

    big = tmp_path / "big"
    big.write_text(VALUE * (MAX_VALUE_BYTES // len(VALUE) + 1))
    assert "larger than 64 KiB" in str(fail(f"file://{big}"))

    exact = tmp_path / "exact"
    exact.write_bytes(b"x" * MAX_VALUE_BYTES)
    assert len(get(SecretStore(), f"file://{exact}")) == MAX_VALUE_BYTES

    assert "cannot read /etc/passwd/x: Not a directory" in str(fail("file:///etc/passwd/x"))

    binary = tmp_path / "bin"
    binary.write_bytes(VALUE.encode() + b"\xff\xfe")
    assert "is not UTF-8" in str(fail(f"file://{binary}"))

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    assert "is not a regular file" in str(fail(f"file://{fifo}"))  # and it did not hang waiting for a writer
    assert time.monotonic() - t0 < 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_file_unreadable(tmp_path):
    p = tmp_path / "locked"
    p.write_text(VALUE)
    p.chmod(0)
    assert "Permission denied" in str(fail(f"file://{p}"))


def test_exec_nonzero_exit_shows_code_and_stderr_never_stdout():
    err = fail(sh(f"echo {VALUE}; echo 'first line of trouble' >&2; echo second >&2; exit 3"))
    msg = str(err)
    assert err.scheme == "exec"
    assert "command 'sh' failed with exit code 3: first line of trouble" in msg
    assert "second" not in msg


def test_exec_stderr_capped():
    err = fail(sh("printf '%0300d' 0 >&2; exit 1"))
    line = str(err).split("exit code 1: ", 1)[1].split(" (fix:")[0]
    assert len(line) == 200 and line.endswith("...")


def test_exec_no_stderr():
    assert "exit code 7 (no stderr)" in str(fail(sh("exit 7")))


def test_exec_empty_output():
    assert "printed nothing" in str(fail(sh("true")))
    assert "printed nothing" in str(fail(sh("echo")))  # one newline stripped leaves nothing


def test_exec_not_found():
    err = fail("exec://egressgw-no-such-command-xyz read it")
    assert "command 'egressgw-no-such-command-xyz' not found" in str(err)


def test_exec_not_executable(tmp_path):
    p = tmp_path / "tool"
    p.write_text("#!/bin/sh\necho hi\n")
    p.chmod(0o644)
    assert "is not executable" in str(fail(f"exec://{p}"))


def test_exec_timeout_kills_the_command(tmp_path):
    marker = tmp_path / "survived"
    store = SecretStore(timeout=0.3)
    t0 = time.monotonic()
    err = fail(sh(f"sleep 1.2 && touch {marker}; echo {VALUE}"), store=store)
    assert time.monotonic() - t0 < 1.0
    assert "did not finish within 0.3 s (killed)" in str(err)
    time.sleep(1.3)
    assert not marker.exists()  # the whole process group was killed, not just sh


def test_exec_output_too_large():
    assert "more than 64 KiB" in str(fail(sh(f"head -c {MAX_VALUE_BYTES + 10} /dev/zero | tr '\\0' x")))


def test_exec_not_utf8():
    assert "is not UTF-8" in str(fail(sh("printf '\\377\\376'")))


# ---------------------------------------------------------------- the cache: TTL, rotation, failures, sharing

def test_ttl_rotation(tmp_path):
    p = tmp_path / "rot"
    p.write_text("v1\n")
    clock = FakeClock()
    store = SecretStore(ttl=300, clock=clock)
    src = parse_source(f"file://{p}")
    assert store.peek(src) is None
    assert run(store.get("T", src)) == "v1"
    assert store.peek(src) == "v1"
    p.write_text("v2\n")
    clock.now += 299.9
    assert run(store.get("T", src)) == "v1"  # cached
    clock.now += 0.2
    assert store.peek(src) is None  # stale
    assert run(store.get("T", src)) == "v2"  # re-read: rotation without restart
    assert store.peek(src) == "v2"


def test_invalidate(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("a1")
    b.write_text("b1")
    store = SecretStore()
    sa, sb = parse_source(f"file://{a}"), parse_source(f"file://{b}")
    run(store.get("A", sa)), run(store.get("B", sb))
    a.write_text("a2")
    b.write_text("b2")
    store.invalidate(sa.uri)
    assert store.peek(sa) is None and store.peek(sb) == "b1"
    assert run(store.get("A", sa)) == "a2"
    store.invalidate()
    assert store.peek(sa) is None and store.peek(sb) is None
    assert run(store.get("B", sb)) == "b2"


def test_ttl_zero_never_caches(tmp_path):
    p = tmp_path / "s"
    p.write_text("v1")
    store = SecretStore(ttl=0)
    assert get(store, f"file://{p}") == "v1"
    assert store.peek(parse_source(f"file://{p}")) is None
    p.write_text("v2")
    assert get(store, f"file://{p}") == "v2"


def test_failure_not_cached(tmp_path):
    p = tmp_path / "late"
    store = SecretStore(clock=FakeClock())
    fail(f"file://{p}", store=store)
    assert store.peek(parse_source(f"file://{p}")) is None
    p.write_text("now here\n")
    assert get(store, f"file://{p}") == "now here"  # retried at once, no TTL wait


def test_concurrent_gets_share_one_fetch(tmp_path):
    counter = tmp_path / "runs"
    uri = sh(f"echo run >> {counter}; sleep 0.3; echo {VALUE}")
    store = SecretStore()
    src = parse_source(uri)

    async def many():
        return await asyncio.gather(*(store.get(f"S{i}", src) for i in range(20)))

    assert run(many()) == [VALUE] * 20
    assert counter.read_text().splitlines() == ["run"]
    assert get(store, uri) == VALUE  # cached: still one run
    assert counter.read_text().splitlines() == ["run"]


def test_concurrent_failure_names_each_caller(tmp_path):
    counter = tmp_path / "runs"
    src = parse_source(sh(f"echo run >> {counter}; sleep 0.2; exit 4"))
    store = SecretStore()

    async def both():
        return await asyncio.gather(store.get("ONE", src), store.get("TWO", src), return_exceptions=True)

    one, two = run(both())
    assert isinstance(one, SecretBackendError) and one.secret == "ONE" and "exit code 4" in str(one)
    assert isinstance(two, SecretBackendError) and two.secret == "TWO"
    assert counter.read_text().splitlines() == ["run"]
    run(both())
    assert counter.read_text().splitlines() == ["run", "run"]  # not cached: the next get retried


def test_cancelled_waiter_does_not_cancel_the_shared_fetch(tmp_path):
    src = parse_source(sh(f"sleep 0.3; echo {VALUE}"))
    store = SecretStore()

    async def scenario():
        first = asyncio.create_task(store.get("A", src))
        second = asyncio.create_task(store.get("B", src))
        await asyncio.sleep(0.05)
        first.cancel()
        return await second

    assert run(scenario()) == VALUE
    assert store.peek(src) == VALUE


def test_invalidate_during_fetch_does_not_cache_the_old_read(tmp_path):
    p = tmp_path / "s"
    p.write_text("old")
    src = parse_source(sh(f"sleep 0.2; cat {p}"))
    store = SecretStore()

    async def scenario():
        t = asyncio.create_task(store.get("A", src))
        await asyncio.sleep(0.05)
        store.invalidate(src.uri)
        return await t

    assert run(scenario()) == "old"
    assert store.peek(src) is None


def test_store_backstop_timeout(monkeypatch, tmp_path):
    # a backend that ignores its own timeout still cannot hold a get() for longer than timeout + grace
    import gateway.secrets.backends as backends

    monkeypatch.setattr(backends, "_GRACE", 0.05)
    monkeypatch.setitem(backends._READERS, "file", lambda source, timeout: time.sleep(0.6) or VALUE)
    store = SecretStore(timeout=0.1)
    t0 = time.monotonic()
    err = fail(f"file://{tmp_path}/hang", store=store)
    assert "no answer within 0.15 s" in str(err)
    assert time.monotonic() - t0 < 1.0


def test_store_rejects_bad_settings():
    with pytest.raises(ValueError):
        SecretStore(ttl=-1)
    with pytest.raises(ValueError):
        SecretStore(timeout=0)


# ---------------------------------------------------------------- Vault (hvac against a faithful KV v2 endpoint)

@pytest.fixture(scope="module")
def vault():
    with FakeVault(token="root-token-for-tests") as v:
        yield v


@pytest.fixture
def vault_env(vault, monkeypatch):
    monkeypatch.setenv("VAULT_ADDR", vault.addr)
    monkeypatch.setenv("VAULT_TOKEN", vault.token)
    monkeypatch.delenv("VAULT_CACERT", raising=False)
    monkeypatch.delenv("VAULT_NAMESPACE", raising=False)
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    return vault


def test_vault_value(vault_env):
    vault_env.put("secret", "team/openai", {"api_key": VALUE, "org": "org-1"})
    assert get(SecretStore(), "vault://secret/team/openai#api_key") == VALUE
    assert get(SecretStore(), "vault://secret/team/openai#org") == "org-1"
    assert ("GET", "/v1/secret/data/team/openai") in vault_env.requests


def test_vault_wrong_token(vault_env, monkeypatch):
    vault_env.put("secret", "wt", {"k": VALUE})
    monkeypatch.setenv("VAULT_TOKEN", "not-the-token")
    err = fail("vault://secret/wt#k", name="OPENAI")
    assert err.scheme == "vault"
    assert "permission denied reading secret/wt" in str(err) and "HTTP 403" in str(err)
    assert "allows read on secret/data/wt" in err.fix


def test_vault_missing_path(vault_env):
    err = fail("vault://secret/does/not/exist#k")
    assert "no secret at secret/does/not/exist (HTTP 404)" in str(err)
    assert "KV version 2 mount" in err.fix


def test_vault_unknown_mount(vault_env):
    assert "no secret at nomount/x (HTTP 404)" in str(fail("vault://nomount/x#k"))


def test_vault_missing_key(vault_env):
    vault_env.put("secret", "mk", {"present": VALUE, "other": VALUE + "2"})
    err = fail("vault://secret/mk#absent")
    assert "key 'absent' not found in secret/mk (keys there: other, present)" in str(err)


def test_vault_non_string_value(vault_env):
    vault_env.put("secret", "ns", {"port": 5432})
    assert "key 'port' of secret/ns is a int, not a string" in str(fail("vault://secret/ns#port"))


def test_vault_deleted_and_destroyed(vault_env):
    vault_env.put("secret", "del", {"k": VALUE})
    vault_env.put("secret", "del", {"k": VALUE + "v2"})
    vault_env.delete_latest("secret", "del")
    assert "latest version (2) of secret/del is deleted (HTTP 404)" in str(fail("vault://secret/del#k"))
    vault_env.destroy_latest("secret", "del")
    assert "latest version (2) of secret/del is destroyed" in str(fail("vault://secret/del#k"))


def test_vault_rotation(vault_env):
    vault_env.put("secret", "rot", {"k": "v1"})
    clock = FakeClock()
    store = SecretStore(ttl=60, clock=clock)
    src = parse_source("vault://secret/rot#k")
    assert run(store.get("T", src)) == "v1"
    assert vault_env.put("secret", "rot", {"k": "v2"}) == 2  # version bump
    assert run(store.get("T", src)) == "v1"
    clock.now += 61
    assert run(store.get("T", src)) == "v2"


def test_vault_connection_refused(vault_env, monkeypatch):
    addr = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("VAULT_ADDR", addr)
    err = fail("vault://secret/x#k")
    assert f"cannot connect to Vault at {addr}" in str(err)


def test_vault_tls_failure(vault_env, monkeypatch):
    monkeypatch.setenv("VAULT_ADDR", vault_env.addr.replace("http://", "https://"))  # TLS to a plain-HTTP server
    err = fail("vault://secret/x#k")
    assert "TLS with Vault at https://127.0.0.1:" in str(err) and "VAULT_CACERT" in err.fix


def test_vault_env_missing(monkeypatch):
    monkeypatch.delenv("VAULT_ADDR", raising=False)
    assert "VAULT_ADDR is not set" in str(fail("vault://secret/x#k"))
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:1")
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    assert "VAULT_TOKEN is not set" in str(fail("vault://secret/x#k"))


# ---------------------------------------------------------------- AWS Secrets Manager (boto3 against moto's server)

@pytest.fixture(scope="module")
def moto_url():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(moto_url, monkeypatch, tmp_path):
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    import boto3

    return boto3.client("secretsmanager")


def test_aws_plain_string(aws):
    aws.create_secret(Name="egw/plain", SecretString=VALUE)
    assert get(SecretStore(), "aws-sm://egw/plain") == VALUE


def test_aws_json_key_and_arn(aws):
    arn = aws.create_secret(Name="egw/json", SecretString=json.dumps({"api_key": VALUE, "org": "o"}))["ARN"]
    assert ":" in arn
    assert get(SecretStore(), "aws-sm://egw/json#api_key") == VALUE
    assert get(SecretStore(), f"aws-sm://{arn}#org") == "o"
    assert json.loads(get(SecretStore(), f"aws-sm://{arn}")) == {"api_key": VALUE, "org": "o"}


def test_aws_missing_secret(aws):
    err = fail("aws-sm://egw/absent#k", name="DB")
    assert err.scheme == "aws-sm"
    assert "ResourceNotFoundException for secret id 'egw/absent'" in str(err)
    assert "check the secret id" in err.fix


def test_aws_key_problems(aws):
    aws.create_secret(Name="egw/keys", SecretString=json.dumps({"a": VALUE, "n": 5}))
    aws.create_secret(Name="egw/notjson", SecretString=VALUE + "{")
    assert "key 'zz' not found in secret 'egw/keys' (keys there: a, n)" in str(fail("aws-sm://egw/keys#zz"))
    assert "key 'n' of secret 'egw/keys' is a int" in str(fail("aws-sm://egw/keys#n"))
    assert "is not a JSON object, so it has no key 'a'" in str(fail("aws-sm://egw/notjson#a"))


def test_aws_binary_secret(aws):
    aws.create_secret(Name="egw/bin", SecretBinary=VALUE.encode())
    assert "has no SecretString" in str(fail("aws-sm://egw/bin"))


def test_aws_rotation(aws):
    aws.create_secret(Name="egw/rot", SecretString=json.dumps({"k": "v1"}))
    clock = FakeClock()
    store = SecretStore(ttl=60, clock=clock)
    src = parse_source("aws-sm://egw/rot#k")
    assert run(store.get("T", src)) == "v1"
    aws.put_secret_value(SecretId="egw/rot", SecretString=json.dumps({"k": "v2"}))
    assert run(store.get("T", src)) == "v1"
    clock.now += 60
    assert run(store.get("T", src)) == "v2"


def test_aws_endpoint_refused(aws, monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    t0 = time.monotonic()
    assert f"cannot connect to {url}" in str(fail("aws-sm://egw/x"))
    assert time.monotonic() - t0 < 5


def test_aws_no_region(aws, monkeypatch):
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    assert "no AWS region configured" in str(fail("aws-sm://egw/x"))


# ---------------------------------------------------------------- the value never leaks

def test_value_never_in_errors_reprs_or_logs(tmp_path, monkeypatch, caplog, vault_env, aws):
    seen: list[object] = []
    store = SecretStore()

    monkeypatch.setenv("EGW_T_LEAK", VALUE)
    (tmp_path / "f").write_text(VALUE)
    vault_env.put("secret", "leak", {"k": VALUE})
    aws.create_secret(Name="egw/leak", SecretString=json.dumps({"k": VALUE}))
    aws.create_secret(Name="egw/leak-notjson", SecretString=VALUE)
    caplog.set_level(logging.DEBUG)  # after the set-up: the test's own create_secret calls log the value
    vf = tmp_path / "f"  # the exec URIs read the value from here: a URI is not a place for a value
    good = ["env://EGW_T_LEAK", f"file://{vf}", f"exec://cat {vf}",
            "vault://secret/leak#k", "aws-sm://egw/leak#k", "aws-sm://egw/leak"]
    for uri in good:
        src = parse_source(uri)
        got = run(store.get("LEAK", src))
        assert VALUE in got
        seen += [src, store]

    (tmp_path / "big").write_text(VALUE * 5000)
    (tmp_path / "bin").write_bytes(VALUE.encode() + b"\xff")
    bad = [
        f"file://{tmp_path / 'big'}",
        f"file://{tmp_path / 'bin'}",
        sh(f"cat {vf}; exit 1"),
        sh(f"cat {vf}; printf x >&2; exit 2"),
        sh(f"cat {vf}; printf '\\377'"),
        "vault://secret/leak#other",
        "aws-sm://egw/leak#other",
        "aws-sm://egw/leak-notjson#k",
    ]
    for uri in bad:
        with pytest.raises(SecretBackendError) as info:
            run(store.get("LEAK", parse_source(uri)))
        seen += [info.value, info.value.reason, info.value.fix, parse_source(uri)]
        assert info.value.__context__ is None and info.value.__cause__ is None
    with pytest.raises(SecretBackendError) as info:
        read_source("LEAK", parse_source(sh(f"cat {vf}; exit 1")))
    seen.append(info.value)

    assert_clean(*seen)
    assert "GetSecretValue" in caplog.text and "/v1/secret/data/leak" in caplog.text  # the libraries did log
    assert VALUE not in caplog.text
    assert VALUE not in repr(store.__dict__.get("_cache"))
    assert isinstance(info.value, EgressgwError)
