"""Secret values, read from where they live, named by a source URI, cached for a TTL.

    env://NAME                    the gateway's environment variable NAME
    file:///abs/path              a file's content (one trailing newline stripped, at most 64 KiB)
    exec://op read op://v/i/f     a command's stdout (shlex-split, no shell, one trailing newline stripped)
    vault://mount/path#key        HashiCorp Vault KV v2 (VAULT_ADDR, VAULT_TOKEN, optional VAULT_CACERT)
    aws-sm://secret-id[#key]      AWS Secrets Manager SecretString (with #key: a JSON object's key)

A value never appears in an exception message, a log line or a repr: errors
name the secret, the backend, the URI's parts (variable, path, command,
mount/path, secret id, key) and what went wrong, never what was read. A
failing command's stdout is never shown either (it may hold the value); its
exit code and the first line of its stderr are.

`SecretStore.get()` caches each URI's value for `ttl` seconds, so a rotated
secret is picked up without a restart; concurrent gets of one URI share one
read; failures are not cached. `peek()` answers from the cache only.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
import shlex
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.errors import EgressgwError

__all__ = [
    "SCHEMES",
    "DEFAULT_TIMEOUT",
    "MAX_VALUE_BYTES",
    "SecretBackendError",
    "Source",
    "parse_source",
    "read_source",
    "SecretStore",
]

logger = logging.getLogger("egressgw.secrets")


def _no_debug(record: logging.LogRecord) -> bool:
    return record.levelno > logging.DEBUG


# botocore logs every response body at DEBUG: GetSecretValue's holds the value. Drop those
# records where they are made (a logger's filter, so no level set elsewhere lets them through).
logging.getLogger("botocore.parsers").addFilter(_no_debug)

SCHEMES = ("env", "file", "exec", "vault", "aws-sm")
DEFAULT_TIMEOUT = 10.0  # seconds: a command, a Vault or AWS request, a file read
MAX_VALUE_BYTES = 64 * 1024
_STDERR_CAP = 200
_GRACE = 1.0  # the store's backstop waits this much longer than a backend's own timeout
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EXAMPLES = {
    "env": "env://OPENAI_API_KEY",
    "file": "file:///run/secrets/openai",
    "exec": "exec://op read op://vault/item/field",
    "vault": "vault://secret/team/openai#api_key",
    "aws-sm": "aws-sm://prod/openai#api_key",
}


class SecretBackendError(EgressgwError):
    """A secret could not be read. Names the secret, the backend and the reason; never the value."""

    def __init__(self, secret: str, scheme: str, reason: str, fix: str = ""):
        self.secret = secret
        self.scheme = scheme
        self.reason = reason
        self.fix = fix
        text = f"secret {secret}: {scheme} backend failed: {reason}"
        if fix:
            text += f" (fix: {fix})"
        super().__init__(text)


@dataclass(frozen=True)
class Source:
    """Where a secret lives: a parsed source URI. Holds no value."""

    uri: str
    scheme: str  # one of SCHEMES
    target: str = ""  # env: variable; file: absolute path; exec: command line; vault: path under mount; aws-sm: secret id
    mount: str = ""  # vault only
    key: str | None = None  # vault (required), aws-sm (optional): the key inside the secret
    argv: tuple[str, ...] = field(default=(), repr=False)  # exec only: the command line, split

    def __str__(self) -> str:
        return self.uri


def parse_source(uri: str) -> Source:
    """A source URI -> Source. ValueError says what is wrong and how to write it."""
    if not isinstance(uri, str):
        raise ValueError(f"source must be a URI string such as {_EXAMPLES['env']}, not {type(uri).__name__}")
    return _parse(uri)


@functools.lru_cache(maxsize=4096)
def _parse(uri: str) -> Source:
    known = ", ".join(f"{s}://" for s in SCHEMES)
    scheme, sep, rest = uri.partition("://")
    if not sep or not scheme:
        raise ValueError(f"source {uri!r} is not a URI (fix: write one of {known}, e.g. {_EXAMPLES['env']})")
    if scheme not in SCHEMES:
        raise ValueError(f"source {uri!r}: unknown scheme {scheme!r} (fix: use one of {known})")
    if any(c in uri for c in "\0\r\n"):
        raise ValueError(f"source {uri!r}: contains a NUL or line break (fix: write the URI on one line)")
    example = _EXAMPLES[scheme]

    if scheme == "env":
        if not _ENV_NAME.match(rest):
            raise ValueError(f"source {uri!r}: {rest!r} is not an environment variable name "
                             f"(fix: write env://NAME with letters, digits and '_', e.g. {example})")
        return Source(uri, scheme, target=rest)

    if scheme == "file":
        if not rest.startswith("/"):
            raise ValueError(f"source {uri!r}: the path must be absolute, with three slashes after 'file:' "
                             f"(fix: write file:///absolute/path, e.g. {example})")
        if rest.endswith("/"):
            raise ValueError(f"source {uri!r}: the path names a directory (fix: name a file, e.g. {example})")
        return Source(uri, scheme, target=rest)

    if scheme == "exec":
        try:
            argv = tuple(shlex.split(rest))
        except ValueError as e:
            raise ValueError(f"source {uri!r}: the command line cannot be split: {e} "
                             f"(fix: balance the quotes; it is split like a shell would, but run without one)") from None
        if not argv:
            raise ValueError(f"source {uri!r}: no command (fix: write exec://COMMAND ARGS..., e.g. {example})")
        return Source(uri, scheme, target=rest, argv=argv)

    # vault and aws-sm: split the key off at the LAST '#' (an AWS ARN contains ':' and may not contain '#').
    location, hashmark, key = rest.rpartition("#")
    if not hashmark:
        location, key = rest, None
    elif not key:
        raise ValueError(f"source {uri!r}: empty key after '#' (fix: name the key, e.g. {example}, or drop the '#')")

    if scheme == "vault":
        mount, _, path = location.strip("/").partition("/")
        path = path.strip("/")
        if not mount or not path:
            raise ValueError(f"source {uri!r}: needs a mount and a secret path "
                             f"(fix: write vault://MOUNT/PATH#KEY, e.g. {example})")
        if key is None:
            raise ValueError(f"source {uri!r}: names no key inside the secret "
                             f"(fix: add #KEY, e.g. {example}; a KV v2 secret holds several key/value pairs)")
        return Source(uri, scheme, target=path, mount=mount, key=key)

    # aws-sm
    if not location:
        raise ValueError(f"source {uri!r}: no secret id (fix: write aws-sm://NAME-OR-ARN or "
                         f"aws-sm://NAME-OR-ARN#KEY for a key of a JSON secret, e.g. {example})")
    return Source(uri, scheme, target=location, key=key)


class _Failure(Exception):
    """A backend's failure before it is given the secret's name: a reason and a fix, no value."""

    def __init__(self, reason: str, fix: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.fix = fix


def read_source(name: str, source: Source, *, timeout: float = DEFAULT_TIMEOUT) -> str:
    """Read a secret now, uncached and blocking. Raises SecretBackendError."""
    try:
        return _read(source, timeout)
    except _Failure as f:
        failure = f
    # Raised outside the except block: the error carries no __context__ that could hold a value.
    raise SecretBackendError(name, source.scheme, failure.reason, failure.fix)


def _read(source: Source, timeout: float) -> str:
    reader = _READERS[source.scheme]
    try:
        value = reader(source, timeout)
    except _Failure:
        raise
    except Exception as e:  # a backend library's surprise: name its type and message, which carry no value
        raise _Failure(f"unexpected {type(e).__name__}: {_cap(str(e))}") from None
    if not isinstance(value, str):
        raise _Failure(f"the value is a {type(value).__name__}, not a string",
                       "store the secret as a string")
    if value == "":
        raise _Failure("the value is empty", "store a non-empty value")
    return value


def _cap(text: str, n: int = _STDERR_CAP) -> str:
    text = text.strip()
    return text if len(text) <= n else text[: n - 3] + "..."


def _strip_newline(text: str) -> str:
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


def _decode(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    raise _Failure(f"{what} is not UTF-8 text", "store the secret as UTF-8 text")


# ---------------------------------------------------------------- env


def _read_env(source: Source, timeout: float) -> str:
    value = os.environ.get(source.target)
    if value is None:
        raise _Failure(f"environment variable {source.target} is not set",
                       f"set {source.target} in the gateway's environment")
    if value == "":
        raise _Failure(f"environment variable {source.target} is empty",
                       f"set {source.target} to the secret in the gateway's environment")
    return value


# ---------------------------------------------------------------- file


def _read_file(source: Source, timeout: float) -> str:
    path = source.target
    fix = f"make {path} a readable regular file for the gateway's user"
    try:
        # O_NONBLOCK: a FIFO at that path must not hang the read.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise _Failure(f"cannot read {path}: {e.strerror or type(e).__name__}", fix) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Failure(f"{path} is not a regular file", fix)
        if st.st_size > MAX_VALUE_BYTES:
            raise _Failure(f"{path} is larger than {MAX_VALUE_BYTES // 1024} KiB ({st.st_size} bytes)",
                           "point the source at a file holding only the secret")
        chunks, size = [], 0
        while size <= MAX_VALUE_BYTES:
            chunk = os.read(fd, MAX_VALUE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    except OSError as e:
        raise _Failure(f"cannot read {path}: {e.strerror or type(e).__name__}", fix) from None
    finally:
        os.close(fd)
    if len(data) > MAX_VALUE_BYTES:
        raise _Failure(f"{path} is larger than {MAX_VALUE_BYTES // 1024} KiB",
                       "point the source at a file holding only the secret")
    value = _strip_newline(_decode(data, f"the content of {path}"))
    if value == "":
        raise _Failure(f"{path} is empty", f"write the secret into {path}")
    return value


# ---------------------------------------------------------------- exec


def _read_exec(source: Source, timeout: float) -> str:
    cmd = source.argv[0]
    try:
        proc = subprocess.Popen(source.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, close_fds=True)
    except FileNotFoundError:
        raise _Failure(f"command {cmd!r} not found", "install it, put it on the gateway's PATH "
                       "or write its absolute path") from None
    except PermissionError:
        raise _Failure(f"command {cmd!r} is not executable", f"chmod +x {cmd}") from None
    except OSError as e:
        raise _Failure(f"cannot run {cmd!r}: {e.strerror or type(e).__name__}") from None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    else:
        timed_out = False
    if timed_out:
        _kill_group(proc)
        raise _Failure(f"command {cmd!r} did not finish within {timeout:g} s (killed)",
                       "check that it runs non-interactively (no prompt, no login) and quickly")
    if proc.returncode != 0:
        first = err.decode("utf-8", "replace").strip().splitlines()
        detail = f": {_cap(first[0])}" if first else " (no stderr)"
        how = f"exit code {proc.returncode}" if proc.returncode > 0 else f"signal {-proc.returncode}"
        raise _Failure(f"command {cmd!r} failed with {how}{detail}",
                       "run the command by hand as the gateway's user to see why")
    if len(out) > MAX_VALUE_BYTES:
        raise _Failure(f"command {cmd!r} printed more than {MAX_VALUE_BYTES // 1024} KiB",
                       "make it print only the secret")
    value = _strip_newline(_decode(out, f"the output of {cmd!r}"))
    if value == "":
        raise _Failure(f"command {cmd!r} printed nothing", "make it print the secret on stdout")
    return value


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the command and whatever it started
    except (ProcessLookupError, PermissionError):
        proc.kill()
    try:
        proc.communicate(timeout=2.0)
    except subprocess.TimeoutExpired:  # a grandchild that left the group holds the pipes: give up on them
        for pipe in (proc.stdout, proc.stderr):
            if pipe:
                pipe.close()
        proc.wait()


# ---------------------------------------------------------------- vault


def _read_vault(source: Source, timeout: float) -> str:
    addr = os.environ.get("VAULT_ADDR", "")
    token = os.environ.get("VAULT_TOKEN", "")
    where = f"{source.mount}/{source.target}"
    if not addr:
        raise _Failure("VAULT_ADDR is not set", "set VAULT_ADDR (e.g. https://vault.example.com:8200) "
                       "in the gateway's environment")
    if not token:
        raise _Failure("VAULT_TOKEN is not set", "set VAULT_TOKEN in the gateway's environment")
    import hvac  # here, not at import: only gateways that use Vault pay for it
    import hvac.exceptions
    import requests

    verify: bool | str = os.environ.get("VAULT_CACERT") or True
    client = hvac.Client(url=addr, token=token, verify=verify, timeout=timeout,
                         namespace=os.environ.get("VAULT_NAMESPACE") or None)
    fix_read = (f"check that VAULT_TOKEN is valid and its policy allows read on "
                f"{source.mount}/data/{source.target}")
    try:
        resp = client.secrets.kv.v2.read_secret_version(path=source.target, mount_point=source.mount,
                                                        raise_on_deleted_version=True)
    except hvac.exceptions.Forbidden:
        raise _Failure(f"permission denied reading {where} at {addr} (HTTP 403)", fix_read) from None
    except hvac.exceptions.Unauthorized:
        raise _Failure(f"unauthorized reading {where} at {addr} (HTTP 401)", fix_read) from None
    except hvac.exceptions.InvalidPath as e:
        meta = _vault_meta(e.json)
        if meta.get("destroyed"):
            reason = f"the latest version ({meta.get('version')}) of {where} is destroyed (HTTP 404)"
        elif meta.get("deletion_time"):
            reason = f"the latest version ({meta.get('version')}) of {where} is deleted (HTTP 404)"
        else:
            reason = f"no secret at {where} (HTTP 404)"
        raise _Failure(reason, f"write it (vault kv put -mount={source.mount} {source.target} "
                       f"{source.key}=...), or fix the path; {source.mount!r} must be a KV version 2 mount") from None
    except hvac.exceptions.VaultError as e:
        raise _Failure(f"Vault at {addr} answered {type(e).__name__}: {_cap(str(e))}",
                       "check the Vault server's state (sealed? standby?)") from None
    except requests.exceptions.SSLError:
        raise _Failure(f"TLS with Vault at {addr} failed",
                       "set VAULT_CACERT to the CA bundle that signed Vault's certificate, "
                       "and check that VAULT_ADDR's scheme (https/http) is Vault's") from None
    except requests.exceptions.Timeout:
        raise _Failure(f"Vault at {addr} did not answer within {timeout:g} s",
                       "check VAULT_ADDR and the network path to Vault") from None
    except requests.exceptions.ConnectionError:
        raise _Failure(f"cannot connect to Vault at {addr}",
                       "check VAULT_ADDR and that Vault is running and reachable from the gateway") from None
    try:
        data = resp["data"]["data"]
    except (KeyError, TypeError):
        data = None
    if not isinstance(data, dict):
        raise _Failure(f"the answer for {where} is not a KV version 2 secret",
                       f"check that {source.mount!r} is a KV version 2 mount")
    return _pick_key(data, source.key, where, "store the value as a string")


def _vault_meta(body: object) -> dict:
    try:
        meta = body["data"]["metadata"]  # type: ignore[index]
    except (KeyError, TypeError):
        return {}
    return meta if isinstance(meta, dict) else {}


# ---------------------------------------------------------------- aws-sm


def _read_aws(source: Source, timeout: float) -> str:
    import boto3  # here, not at import: only gateways that use AWS pay for it
    import botocore.config
    import botocore.exceptions

    sid = source.target
    config = botocore.config.Config(connect_timeout=min(timeout, 5.0), read_timeout=timeout,
                                    retries={"mode": "standard", "total_max_attempts": 2})
    try:
        client = boto3.client("secretsmanager", config=config)
        resp = client.get_secret_value(SecretId=sid)
    except botocore.exceptions.ClientError as e:
        err = e.response.get("Error", {})
        code = err.get("Code", "Unknown")
        message = _cap(str(err.get("Message", "")))
        fixes = {
            "ResourceNotFoundException": "check the secret id (name or ARN) and the region",
            "AccessDeniedException": "allow secretsmanager:GetSecretValue on it for the gateway's AWS identity",
            "DecryptionFailure": "allow kms:Decrypt on the secret's KMS key for the gateway's AWS identity",
            "UnrecognizedClientException": "check the AWS credentials in the gateway's environment",
            "InvalidRequestException": "check that the secret is not scheduled for deletion",
        }
        raise _Failure(f"{code} for secret id {sid!r}: {message}".rstrip(": "),
                       fixes.get(code, "")) from None
    except botocore.exceptions.NoRegionError:
        raise _Failure("no AWS region configured",
                       "set AWS_REGION or AWS_DEFAULT_REGION in the gateway's environment") from None
    except botocore.exceptions.NoCredentialsError:
        raise _Failure("no AWS credentials found", "give the gateway AWS credentials (AWS_ACCESS_KEY_ID/"
                       "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance/task role)") from None
    except botocore.exceptions.EndpointConnectionError as e:
        raise _Failure(f"cannot connect to {getattr(e, 'kwargs', {}).get('endpoint_url', 'the endpoint')}",
                       "check the region, AWS_ENDPOINT_URL and the network path to AWS") from None
    except (botocore.exceptions.ConnectTimeoutError, botocore.exceptions.ReadTimeoutError):
        raise _Failure(f"no answer within {timeout:g} s", "check the network path to AWS") from None
    except botocore.exceptions.BotoCoreError as e:
        raise _Failure(f"{type(e).__name__}: {_cap(str(e))}") from None
    text = resp.get("SecretString")
    if text is None:
        raise _Failure(f"secret {sid!r} has no SecretString (it is a binary secret)",
                       "store the secret as a string")
    if source.key is None:
        return text
    try:
        obj = json.loads(text)
    except ValueError:
        obj = _NOT_JSON  # the decode error holds the text: do not let it travel
    if obj is _NOT_JSON or not isinstance(obj, dict):
        raise _Failure(f"secret {sid!r} is not a JSON object, so it has no key {source.key!r}",
                       "store key/value pairs (JSON), or drop '#KEY' to use the whole string")
    return _pick_key(obj, source.key, f"secret {sid!r}", "store the value as a JSON string")


_NOT_JSON = object()


def _pick_key(data: dict, key: str, where: str, string_fix: str) -> str:
    """One field of a key/value secret (Vault KV data, a JSON secret): names the keys, never the values."""
    if key not in data:
        names = ", ".join(sorted(map(str, data))[:20]) or "none"
        raise _Failure(f"key {key!r} not found in {where} (keys there: {names})",
                       "fix the key after '#' in the source URI")
    value = data[key]
    if not isinstance(value, str):
        raise _Failure(f"key {key!r} of {where} is a {type(value).__name__}, not a string", string_fix)
    return value

_READERS: dict[str, Callable[[Source, float], str]] = {
    "env": _read_env,
    "file": _read_file,
    "exec": _read_exec,
    "vault": _read_vault,
    "aws-sm": _read_aws,
}


# ---------------------------------------------------------------- the store


@dataclass
class _Entry:
    value: str = field(repr=False)
    expires: float


class SecretStore:
    """Secret values by source URI, cached for `ttl` seconds (0: never cached)."""

    def __init__(self, ttl: float = 300.0, clock: Callable[[], float] = time.monotonic,
                 timeout: float = DEFAULT_TIMEOUT):
        if ttl < 0:
            raise ValueError(f"ttl must be >= 0 seconds, not {ttl}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, not {timeout}")
        self.ttl = float(ttl)
        self.timeout = float(timeout)
        self._clock = clock
        self._cache: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Task] = {}

    def __repr__(self) -> str:
        return f"<SecretStore ttl={self.ttl:g}s cached={len(self._cache)} reading={len(self._inflight)}>"

    def peek(self, source: Source) -> str | None:
        """The cached value if still fresh; never reads a backend."""
        entry = self._cache.get(source.uri)
        if entry is None:
            return None
        if self._clock() >= entry.expires:
            del self._cache[source.uri]
            return None
        return entry.value

    async def get(self, name: str, source: Source) -> str:
        """The value (cached, or read now). Raises SecretBackendError; a failure is not cached."""
        value = self.peek(source)
        if value is not None:
            return value
        loop = asyncio.get_running_loop()
        task = self._inflight.get(source.uri)
        if task is None or task.get_loop() is not loop:
            task = loop.create_task(self._fetch(source))
            self._inflight[source.uri] = task
            task.add_done_callback(functools.partial(self._fetched, source.uri))
        try:
            # shield: one caller giving up (cancelled) must not cancel the read the others wait for
            return await asyncio.shield(task)
        except _Failure as f:
            failure = f
        raise SecretBackendError(name, source.scheme, failure.reason, failure.fix)

    def invalidate(self, uri: str | None = None) -> None:
        """Forget one URI's value (or all); a read under way is not cached when it lands."""
        if uri is None:
            self._cache.clear()
            self._inflight.clear()
        else:
            self._cache.pop(uri, None)
            self._inflight.pop(uri, None)

    async def _fetch(self, source: Source) -> str:
        started = time.monotonic()
        if source.scheme == "env":  # no I/O: no thread
            value = _read(source, self.timeout)
        else:
            limit = self.timeout + _GRACE
            try:
                value = await asyncio.wait_for(asyncio.to_thread(_read, source, self.timeout), limit)
            except TimeoutError:
                raise _Failure(f"no answer within {limit:g} s",
                               "check that the backend is reachable and answers quickly") from None
        logger.debug("secret source %s read in %.1f ms", source.uri, (time.monotonic() - started) * 1000)
        return value

    def _fetched(self, uri: str, task: asyncio.Task) -> None:
        if self._inflight.get(uri) is not task:  # invalidated meanwhile: do not cache
            if not task.cancelled():
                task.exception()  # retrieved, so asyncio does not warn about it
            return
        del self._inflight[uri]
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            logger.debug("secret source %s failed: %s", uri, getattr(exc, "reason", type(exc).__name__))
            return
        if self.ttl > 0:
            self._cache[uri] = _Entry(task.result(), self._clock() + self.ttl)
