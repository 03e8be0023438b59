"""Tamper evidence for the flow log: a hash chain with keyed checkpoints.

Every record (line) carries chain fields `{"seq": n, "prev": sha256(previous line)}`;
the chain runs across rotated files and restarts. A checkpoint record adds
`reason` and an `hmac`: HMAC-SHA256, with a key kept outside the log
directory, over the canonical JSON of its own chain fields, which include the
hash of the line before it, so one valid checkpoint vouches for every record
before it. Someone who edits, drops or reorders lines must rewrite every later
`prev`, and cannot make the next checkpoint's HMAC match without the key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from pathlib import Path

from gateway.errors import ConfigError

GENESIS = "0" * 64  # `prev` of the very first record of a log
KEY_BYTES = 32


def line_hash(line: bytes) -> str:
    """SHA-256 of one line's bytes as written (newline included)."""
    return hashlib.sha256(line).hexdigest()


def _canonical(chain: dict) -> bytes:
    body = {k: v for k, v in chain.items() if k != "hmac"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign(key: bytes, chain: dict) -> str:
    return hmac.new(key, _canonical(chain), hashlib.sha256).hexdigest()


def check(key: bytes, chain: dict) -> bool:
    mac = chain.get("hmac")
    return isinstance(mac, str) and hmac.compare_digest(mac, sign(key, chain))


def _inside(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
    except ValueError:
        return False
    return True


def load_key(key_file: str | os.PathLike, log_dir: str | os.PathLike | None = None, *,
             create: bool = True, source: str = "config") -> bytes:
    """Read the checkpoint key (hex), creating it (0600) if missing and `create`.

    Refuses a key file inside the log directory (whoever can read the log could then forge it)
    and one readable or writable by group or others.
    """
    path = Path(key_file)
    if log_dir is not None and _inside(path, Path(log_dir)):
        raise ConfigError(
            f"{source}: log.hmacKeyFile {path} is inside the log directory {log_dir} "
            "(fix: keep the key outside it, e.g. /var/lib/egressgw/log.key)")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if not create:
            raise ConfigError(f"{source}: log.hmacKeyFile {path} does not exist "
                              "(fix: point --key-file at the key the gateway wrote)") from None
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(KEY_BYTES)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # created meanwhile by another process: read that one
            return load_key(path, log_dir, create=False, source=source)
        except OSError as e:
            raise ConfigError(f"{source}: cannot create log.hmacKeyFile {path}: {e.strerror}") from e
        with os.fdopen(fd, "w") as f:
            f.write(key.hex() + "\n")
        return key
    except OSError as e:
        raise ConfigError(f"{source}: cannot read log.hmacKeyFile {path}: {e.strerror}") from e
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{source}: log.hmacKeyFile {path} is not a regular file")
    if st.st_mode & 0o077:
        raise ConfigError(
            f"{source}: log.hmacKeyFile {path} has mode {stat.S_IMODE(st.st_mode):04o}: group or others may "
            f"read it (fix: chmod 600 {path})")
    try:
        text = path.read_text().strip()
    except OSError as e:
        raise ConfigError(f"{source}: cannot read log.hmacKeyFile {path}: {e.strerror}") from e
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise ConfigError(f"{source}: log.hmacKeyFile {path} does not hold a hex key of at least 16 bytes "
                          "(fix: delete it; a new key is created on the next start, or write `openssl rand -hex 32`)")
    return key
