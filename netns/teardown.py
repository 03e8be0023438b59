"""Remove sandbox objects from the kernel and /etc/netns, tolerating "already gone".

Order matters for safety: first the host-side veth is set down (over netlink), which cuts
the sandbox off at once (a down veth end passes nothing, and only the gateway
namespace can bring it up again), even if a process still holds the sandbox
namespace open. Then the veth, the namespace name and the nft table are
deleted. Deleting a link and deleting a table each wait for an RCU grace
period (10-30 ms here), so those two run in parallel.
Shared by down, up's rollback and sweep.
"""

from __future__ import annotations

import errno
import os
import shutil

from gateway.errors import SandboxError

from . import links, naming, nft, rtnl
from .run import failure, run, run_parallel


def teardown(*, host_ifs: list[str] = (), netnses: list[str] = (), tables: list[str] = (),
             step: str = "remove sandbox") -> tuple[list[str], list[str]]:
    """Delete what exists of the given objects. Returns (removed, errors); never fails
    for a missing object, so it can simply be retried until errors is empty."""
    removed: list[str] = []
    errors: list[str] = []
    ifs = [i for i in dict.fromkeys(host_ifs) if links.exists(i)]
    nss = [n for n in dict.fromkeys(netnses) if os.path.lexists(naming.netns_path(n))]
    tables = list(dict.fromkeys(tables))

    cut = True
    if ifs:
        try:
            with rtnl.Socket() as sock:
                for i in ifs:
                    rtnl.set_up(sock, i, False, ok=(errno.ENODEV,))  # gone already: cut as well
        except (SandboxError, OSError):
            cut = not any(links.exists(i) for i in ifs)

    def still_there() -> bool:
        return any(links.exists(i) for i in ifs) or any(
            os.path.lexists(naming.netns_path(n)) for n in nss)

    ip_job = nft_job = None
    batch = [f"link del dev {i}" for i in ifs] + [f"netns del {n}" for n in nss]
    if batch:
        ip_job = ([links.IP, "-force", "-batch", "-"], f"{step}: delete veth/namespace",
                  "\n".join(batch) + "\n")
    if tables:
        nft_job = (nft.DELETE, f"{step}: delete nftables table", nft.delete_script(tables))

    ip_res = nft_res = None
    if cut:   # nothing crosses a down veth: delete links and rules at the same time
        results = iter(run_parallel([j for j in (ip_job, nft_job) if j], check=False))
        ip_res = next(results) if ip_job else None
        nft_res = next(results) if nft_job else None
    else:     # could not cut the link: the rules go only once the veth is gone
        if ip_job:
            ip_res = run(ip_job[0], step=ip_job[1], input=ip_job[2], check=False)
        if nft_job and any(links.exists(i) for i in ifs):
            errors.append(f"{step}: kept nft tables {', '.join(tables)} because veth "
                          f"{', '.join(ifs)} could not be removed")
            tables = []
        elif nft_job:
            nft_res = run(nft_job[0], step=nft_job[1], input=nft_job[2], check=False)

    # A veth can vanish on its own between our check and the delete (async
    # namespace cleanup): a failed batch is only an error if something is left.
    if ip_res is not None and ip_res.returncode != 0 and still_there():
        errors.append(failure(ip_job[1], ip_res, ip_job[2]))
    if nft_res is not None and nft_res.returncode != 0:
        errors.append(failure(nft_job[1], nft_res, nft_job[2]))
        tables = []
    removed += [f"veth {i}" for i in ifs if not links.exists(i)]
    removed += [f"netns {n}" for n in nss if not os.path.lexists(naming.netns_path(n))]
    removed += [f"nft table inet {t}" for t in tables]

    for n in dict.fromkeys(netnses):
        d = naming.etc_dir(n)
        if os.path.lexists(d):
            try:
                shutil.rmtree(d)
                removed.append(f"dir {d}")
            except FileNotFoundError:
                pass
            except OSError as e:
                errors.append(f"{step}: cannot remove {d}: {e}")
    return removed, errors
