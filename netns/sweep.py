"""Find and remove leftovers of crashed or interrupted runs.

An object is ours if a state file in this state dir names it, or (for
namespaces without a state file) if one of our host veths in this gateway
namespace leads into it. /run/netns is shared by every gateway namespace on
the machine, so an `egw-*` namespace we cannot attribute is left alone.
Callers hold the state-dir lock.
"""

from __future__ import annotations

import os

from gateway.errors import SandboxError

from . import attach, links, naming, nft, state
from .teardown import teardown


def _our_netns_names() -> set[str]:
    """egw-* names in /run/netns that really pin a namespace (an nsfs bind mount,
    not just the empty file a dead private mount namespace leaves behind)."""
    try:
        run_dev = os.stat(naming.NETNS_RUN_DIR).st_dev
        names = [n for n in os.listdir(naming.NETNS_RUN_DIR) if n.startswith(naming.NETNS_PREFIX)]
    except FileNotFoundError:
        return set()
    pinned = set()
    for n in names:
        try:
            if os.stat(naming.netns_path(n)).st_dev != run_dev:
                pinned.add(n)
        except FileNotFoundError:
            pass
    return pinned


def _is_host_if(name: str) -> bool:
    return naming.host_if_index(name) is not None


def sweep_locked(state_dir: str, *, full: bool = True) -> tuple[list[str], list[state.Record], dict[str, list[tuple[int, int]]]]:
    """Returns (what was removed, live records, the gateway namespace's interfaces: name -> its IPv4
    networks as (first, last) spans). Cheap when there is nothing to remove: the state files (parsed
    once, see state.py), /run/netns, and a netlink dump of tables and of links and addresses.

    full=False (what `up` does) reads interfaces from the address dump only: the link dump costs ~1 KB
    of kernel work and parsing per interface, a third of an `up` with 200 sandboxes present. It sees
    every interface with an address, which every veth of ours has unless an `up` died between making
    it and addressing it; such a veth is still removed through the state file that `up` left behind,
    and `up` checks the name it is about to use. As soon as it sees an interface no live state file
    claims, it sweeps again in full."""
    removed: list[str] = []
    errors: list[str] = []
    records, bad = state.read_all(state_dir)
    present = _our_netns_names()
    if full:
        g_links = links.snapshot()
        ifaces = {name: link.spans for name, link in g_links.items()}
    else:
        ifaces = links.addressed()
    tables = set(nft.list_tables())

    def alive(sb) -> bool:
        return links.exists(sb.host_if) if sb.kind == "tap" else sb.netns in present

    live = [r for r in records if r.status == state.READY and alive(r.sandbox)]
    live_ids = {id(r) for r in live}   # by identity: comparing records pairwise was O(n²), 25 ms at 200
    stale = [r for r in records if id(r) not in live_ids]
    claimed_ifs = {r.sandbox.host_if for r in live}
    claimed_tables = {r.sandbox.table for r in live}
    claimed_ns = {r.sandbox.netns for r in live}
    if not full and any(_is_host_if(n) and n not in claimed_ifs for n in ifaces):
        return sweep_locked(state_dir)

    # 1. State files whose namespace is gone, or left "creating" by a crashed up.
    for r in stale:
        sb = r.sandbox
        tap = sb.kind == "tap"  # a tap is the VMM's: released, never deleted
        errors += attach.release_tap(sb.host_if) if tap else []
        rm, err = teardown(host_ifs=[sb.host_if] if sb.host_if not in claimed_ifs and not tap else [],
                           netnses=[sb.netns] if sb.netns and sb.netns not in claimed_ns else [],
                           tables=[sb.table] if sb.table in tables else [],
                           step=f"sweep stale sandbox {sb.name}")
        tables.discard(sb.table)
        ifaces.pop(sb.host_if, None)
        present.discard(sb.netns)
        errors += err
        if not err:
            state.remove(state_dir, sb.name)
            rm.append(f"state {r.path}")
        removed += rm

    # 2. Objects no live state file claims.
    orphan_ifs = [n for n in ifaces if _is_host_if(n) and n not in claimed_ifs]
    orphan_tables = sorted(t for t in tables if t not in claimed_tables)
    orphan_ns = []
    # A namespace no state file claims is ours only if one of our unclaimed host veths leads into
    # it (a claimed veth leads into its own sandbox's namespace). Without such a veth there is
    # nothing to look up: other gateways' namespaces (the same /run/netns) are not even opened.
    ours = {g_links[n].peer_netnsid for n in orphan_ifs} - {None} if orphan_ifs else set()
    candidates = sorted(present - claimed_ns) if ours else []
    if candidates:
        ids = links.netns_ids(candidates)
        orphan_ns = [n for n in candidates if ids.get(n) is not None and ids[n] in ours]
    if orphan_ifs or orphan_tables or orphan_ns:
        rm, err = teardown(host_ifs=orphan_ifs, netnses=orphan_ns, tables=orphan_tables,
                           step="sweep orphans")
        removed += rm
        errors += err
        for n in orphan_ifs:
            ifaces.pop(n, None)

    # 3. Unreadable state files and temp files of interrupted writes.
    for path in bad:
        os.replace(path, path + ".bad")
        removed.append(f"unreadable state {path} (kept as {path}.bad)")
    d = state.sandboxes_dir(state_dir)
    if os.path.isdir(d):
        for n in os.listdir(d):
            if ".json.tmp." in n:
                os.unlink(os.path.join(d, n))

    if errors:
        raise SandboxError("sweep could not remove everything:\n" + "\n".join(errors))
    return removed, live, ifaces
