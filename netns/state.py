"""State files: <state_dir>/sandboxes/NAME.json, one per sandbox, and the lock.

A state file is written (status "creating") before anything is created in the
kernel, and rewritten with status "ready" when `up` has finished. Since `up`,
`down` and the sweep all hold the state-dir lock, a "creating" file seen under
the lock belongs to a run that crashed. Files are replaced atomically, so
readers (list, get) never need the lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

from gateway.errors import SandboxError

DEFAULT_STATE_DIR = "/run/egressgw"
CREATING, READY = "creating", "ready"


@dataclass(frozen=True)
class Sandbox:
    """Everything down/list/exec need to know about one sandbox."""

    name: str
    netns: str
    host_if: str
    sandbox_if: str
    host_addr: str
    sandbox_addr: str
    prefix: int
    index: int
    table: str
    transparent_port: int
    dns_port: int
    session_id: str | None
    created: float
    kind: str = "netns"  # "netns" (made by up), "attached" (an existing namespace), "tap" (a microVM's tap)


@dataclass(frozen=True)
class Record:
    sandbox: Sandbox
    status: str
    path: str


_FIELDS = {f.name for f in dataclasses.fields(Sandbox)}


def sandboxes_dir(state_dir: str) -> str:
    return os.path.join(state_dir, "sandboxes")


def state_path(state_dir: str, name: str) -> str:
    return os.path.join(sandboxes_dir(state_dir), f"{name}.json")


@contextlib.contextmanager
def locked(state_dir: str) -> Iterator[None]:
    """Exclusive fcntl (flock) lock on the state dir; works across processes and threads."""
    d = sandboxes_dir(state_dir)
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(d, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise SandboxError(f"cannot use state dir {state_dir}: {e} "
                           "(fix: run as root or pass a writable state_dir)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def write(state_dir: str, sb: Sandbox, status: str) -> None:
    path = state_path(state_dir, sb.name)
    tmp = f"{path}.tmp.{os.getpid()}"
    data = {**dataclasses.asdict(sb), "status": status}
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


# path -> (identity of the file: inode, size, mtime, ctime; its record). Writes replace the file
# (a new inode), so an unchanged identity is unchanged content; a long-lived caller then reads each of
# N state files once instead of on every `up` (200 files: ~15 ms of open + json per up, and ~2 ms of
# building the records again). Records are frozen, so handing out the same one is safe.
_parsed: dict[str, tuple[tuple[int, ...], Record]] = {}


def _load(path: str) -> Record | None:
    try:
        st = os.stat(path)
        ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        hit = _parsed.get(path)
        if hit is not None and hit[0] == ident:
            return hit[1]
        with open(path) as f:
            if os.fstat(f.fileno()).st_ino != st.st_ino:
                st = os.fstat(f.fileno())   # replaced between the stat and the open: key the new one
                ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        rec = Record(Sandbox(**{k: v for k, v in data.items() if k in _FIELDS}), str(data.get("status", READY)), path)
        _parsed[path] = (ident, rec)
        return rec
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as e:
        raise SandboxError(f"unreadable state file {path}: {e} "
                           "(fix: remove it and run `egressgw sandbox sweep`)") from None


def read(state_dir: str, name: str) -> Record | None:
    return _load(state_path(state_dir, name))


def read_all(state_dir: str) -> tuple[list[Record], list[str]]:
    """All records, plus the paths of files that could not be parsed."""
    d = sandboxes_dir(state_dir)
    try:
        names = sorted(n for n in os.listdir(d) if n.endswith(".json"))
    except FileNotFoundError:
        return [], []
    except PermissionError as e:
        raise SandboxError(f"cannot read state dir {d}: {e} (fix: run as root)") from None
    records, bad = [], []
    for n in names:
        path = os.path.join(d, n)
        try:
            rec = _load(path)
        except SandboxError:
            bad.append(path)
            continue
        if rec is not None:
            records.append(rec)
    if len(_parsed) > 2 * len(names) + 64:   # forget files that are gone: memory stays bounded, not a walk per call
        listed = set(names)
        for gone in [p for p in _parsed if os.path.dirname(p) == d and os.path.basename(p) not in listed]:
            _parsed.pop(gone, None)
    return records, bad


def remove(state_dir: str, name: str) -> bool:
    try:
        os.unlink(state_path(state_dir, name))
        return True
    except FileNotFoundError:
        return False
