"""Create and delete named network namespaces in-process (`ip netns add/del NAME`).

A fresh thread unshares its network namespace and bind-mounts it onto
/run/netns/NAME, which keeps it alive after the thread ends. `ip netns add`
also makes /run/netns a shared mount (so the pin is seen by every mount
namespace); when that is not in place yet (the first namespace on this host),
`ip netns add` is run once instead and sets it up.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading

from gateway.errors import SandboxError

from . import naming
from .run import run

MS_BIND = 4096
MNT_DETACH = 2
_shared_ok = False   # /run/netns seen as a shared mount point: stays so for the life of the host


def _run_netns_is_shared() -> bool:
    global _shared_ok
    if not _shared_ok:
        try:
            with open("/proc/self/mountinfo") as f:
                for line in f:
                    fields = line.split()
                    if len(fields) > 6 and fields[4] == naming.NETNS_RUN_DIR and any(
                            x.startswith("shared:") for x in fields[6:fields.index("-")]):
                        _shared_ok = True
                        break
        except (OSError, ValueError):
            return False
    return _shared_ok


def add(netns: str) -> None:
    """Create and pin network namespace `netns`; SandboxError if it exists or anything fails."""
    if not _run_netns_is_shared():
        run(["ip", "netns", "add", netns], step=f"create namespace {netns} (ip netns add)")
        return
    path = naming.netns_path(netns)
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0))
    except OSError as e:
        raise SandboxError(f"create namespace {netns} failed: {path}: {e.strerror}") from None
    box: dict[str, BaseException] = {}

    def make() -> None:   # this thread's namespace changes; it ends right after
        try:
            os.unshare(os.CLONE_NEWNET)
            libc = ctypes.CDLL(None, use_errno=True)
            src = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
            if libc.mount(src, path.encode(), None, MS_BIND, None) != 0:
                err = ctypes.get_errno()
                raise SandboxError(f"create namespace {netns} failed: bind mount onto {path}: {os.strerror(err)}")
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=make, name=f"netns-add:{netns}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        try:
            os.unlink(path)
        except OSError:
            pass
        e = box["error"]
        raise e if isinstance(e, SandboxError) else SandboxError(f"create namespace {netns} failed: {e}")


def delete(netns: str) -> None:
    """Unpin /run/netns/NETNS (`ip netns del`): the namespace goes once no process holds it. Gone already: fine."""
    path = naming.netns_path(netns)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(path.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):    # EINVAL: not a mount (left by a crash): just unlink
            raise SandboxError(f"delete namespace {netns} failed: umount {path}: {os.strerror(err)}")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise SandboxError(f"delete namespace {netns} failed: {path}: {e.strerror}") from None
