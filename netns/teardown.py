"""Remove sandbox objects from the kernel and /etc/netns, tolerating "already gone".

Order matters for safety: first the host-side veth is set down (over netlink), which cuts
the sandbox off at once (a down veth end passes nothing, and only the gateway
namespace can bring it up again), even if a process still holds the sandbox
namespace open. Then the veth, the namespace name and the nft table are
deleted, in-process (rtnetlink, umount, a raw nf_tables batch). Deleting a link and
deleting a table each wait for an RCU grace period (10-30 ms here), so those
two run in parallel threads.
Shared by down, up's rollback and sweep.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading

from gateway.errors import SandboxError

from . import links, naming, nft, nsfs, rtnl


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

    def drop_links_and_names() -> list[str]:
        errs = []
        try:
            with rtnl.Socket() as sock:
                for i in ifs:
                    rtnl.del_link(sock, i, ok=(errno.ENODEV,))   # vanished on its own: fine
        except (SandboxError, OSError) as e:
            errs.append(f"{step}: delete veth: {e}")
        for n in nss:
            try:
                nsfs.delete(n)
            except SandboxError as e:
                errs.append(f"{step}: {e}")
        return errs

    def drop_tables() -> list[str]:
        try:
            nft.delete(tables, step=f"{step}: delete nftables table")
            return []
        except SandboxError as e:
            return [str(e)]

    link_errs: list[str] = []
    nft_errs: list[str] = []
    if cut and tables:   # nothing crosses a down veth: delete links and rules at the same time
        box: list[list[str]] = []
        t = threading.Thread(target=lambda: box.append(drop_tables()), daemon=True)
        t.start()          # a new thread shares this thread's network namespace
        link_errs = drop_links_and_names() if ifs or nss else []
        t.join()
        nft_errs = box[0] if box else [f"{step}: delete nftables table: thread died"]
    else:     # could not cut the link: the rules go only once the veth is gone
        link_errs = drop_links_and_names() if ifs or nss else []
        if tables and any(links.exists(i) for i in ifs):
            errors.append(f"{step}: kept nft tables {', '.join(tables)} because veth "
                          f"{', '.join(ifs)} could not be removed")
            tables = []
        elif tables:
            nft_errs = drop_tables()

    # A veth can vanish on its own between our check and the delete (async
    # namespace cleanup): a failure is only an error if something is left.
    if link_errs and still_there():
        errors += link_errs
    if nft_errs:
        errors += nft_errs
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
