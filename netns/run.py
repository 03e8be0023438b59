"""Running things: `ip`/`nft` subprocesses, and Python code inside another netns.

Every failure becomes a SandboxError that names the step, the command and the
command's stderr. Commands run with LC_ALL=C so messages are stable.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from gateway.errors import SandboxError

T = TypeVar("T")
TIMEOUT = 30.0
_ENV = {**os.environ, "LC_ALL": "C"}


def _start(argv: Sequence[str], step: str) -> subprocess.Popen:
    try:
        return subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=_ENV)
    except FileNotFoundError:
        raise SandboxError(f"{step}: command {argv[0]!r} not found "
                           "(fix: install iproute2, nftables and util-linux)") from None
    except PermissionError as e:
        raise SandboxError(f"{step}: cannot run {argv[0]!r}: {e}") from None


def _finish(proc: subprocess.Popen, argv: Sequence[str], step: str, input: str | None,
            check: bool) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(input, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise SandboxError(f"{step}: `{shlex.join(argv)}` did not finish within {TIMEOUT:.0f}s") from None
    result = subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
    if check and proc.returncode != 0:
        raise SandboxError(failure(step, result, input))
    return result


def failure(step: str, result: subprocess.CompletedProcess, input: str | None = None) -> str:
    msg = f"{step} failed: `{shlex.join(result.args)}` exited {result.returncode}"
    detail = (result.stderr or "").strip() or (result.stdout or "").strip()
    if detail:
        msg += f": {detail}"
    if input and "-batch" in result.args:
        msg += "\nbatch was:\n" + input.rstrip()
    return msg


def run(argv: Sequence[str], *, step: str, input: str | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run one command; raise SandboxError naming `step` if it fails and check is set."""
    return _finish(_start(argv, step), argv, step, input, check)


def run_parallel(jobs: Sequence[tuple[Sequence[str], str, str | None]], *,
                 check: bool = True) -> list[subprocess.CompletedProcess]:
    """Run independent (argv, step, input) jobs at the same time, one thread each.

    Threads created here share the calling thread's network namespace, so the
    commands act where a plain run() would. With check, the first failure is
    raised after all jobs have finished.
    """
    results: list[subprocess.CompletedProcess | BaseException | None] = [None] * len(jobs)

    def one(k: int, argv: Sequence[str], step: str, text: str | None) -> None:
        try:
            results[k] = run(argv, step=step, input=text, check=check)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            results[k] = e

    threads = [threading.Thread(target=one, args=(k, *job), daemon=True)
               for k, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results  # type: ignore[return-value]


def in_netns(path: str, fn: Callable[..., T], *args, **kwargs) -> T:
    """Call fn in a fresh thread that has entered the network namespace at `path`.

    setns(CLONE_NEWNET) only changes the calling thread, so the rest of the
    process stays where it is. Sockets created, /proc/sys/net files opened and
    subprocesses started by fn all belong to that namespace.
    """
    box: dict[str, object] = {}

    def target() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.setns(fd, os.CLONE_NEWNET)
            finally:
                os.close(fd)
            box["result"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=target, name=f"netns:{os.path.basename(path)}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


def write_sysctl(key: str, value: str, *, missing_ok: bool = False) -> None:
    """Write net.* sysctl `key` (dotted) for the calling thread's network namespace."""
    path = "/proc/sys/" + key.replace(".", "/")
    try:
        with open(path, "w") as f:
            f.write(value)
    except FileNotFoundError:
        if not missing_ok:
            raise SandboxError(f"sysctl {key} does not exist ({path})") from None
    except OSError as e:
        raise SandboxError(f"cannot set sysctl {key}={value}: {e}") from None
