"""netns/rtnl.py and nsfs.py against the tools they replace: the same kernel state, read or made without `ip`."""

from __future__ import annotations

import ipaddress
import json
import os

import pytest

from netns import links, naming, nft, rtnl
from netns.links import parse_links
from netns_testlib import sh

pytestmark = pytest.mark.netns


def test_snapshot_matches_ip_json(gw):
    gw.up("a")
    gw.up("b")
    ours = gw.call(links.snapshot)
    theirs = parse_links(gw.call(lambda: sh(["ip", "-j", "-d", "addr", "show"]).stdout))
    assert ours == theirs
    assert sum(1 for link in ours.values() if link.kind == "veth" and link.peer_netnsid is not None) == 2


def test_address_dump_agrees_with_the_link_dump(gw):
    gw.up("a")
    gw.up("b")
    gw.sh(["ip", "link", "add", "egwh-x", "type", "veth", "peer", "name", "egwp-x"])  # egwp-x: no address
    gw.sh(["ip", "addr", "add", "192.0.2.9/24", "dev", "egwh-x"])
    gw.sh(["ip", "addr", "add", "192.0.2.77/28", "dev", "egwh-x"])   # a second one, same label
    snap = gw.call(links.snapshot)
    assert gw.call(links.addressed) == {name: link.spans for name, link in snap.items() if link.spans}
    assert snap["egwh-x"].nets == [ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("192.0.2.64/28")]


def test_netns_ids_match_ip_netns_list(gw):
    a, b = gw.up("a"), gw.up("b")
    ours = gw.call(links.netns_ids, [a.netns, b.netns, "no-such-namespace"])
    listed = {it["name"]: it["id"] for it in json.loads(gw.call(
        lambda: sh(["ip", "-j", "netns", "list"]).stdout) or "[]") if "id" in it}
    assert ours == {a.netns: listed[a.netns], b.netns: listed[b.netns]}
    # every sandbox's veth peer is in the namespace its nsid names
    snap = gw.call(links.snapshot)
    assert snap[a.host_if].peer_netnsid == ours[a.netns] and snap[b.host_if].peer_netnsid == ours[b.netns]


def test_sandbox_side_as_ip_would_have_made_it(gw):
    sb = gw.up("s")
    inside = json.loads(sh(["ip", "-n", sb.netns, "-j", "addr", "show"]).stdout)
    by_name = {it["ifname"]: it for it in inside}
    assert set(by_name) == {"lo", sb.sandbox_if}
    assert "UP" in by_name["lo"]["flags"] and "UP" in by_name[sb.sandbox_if]["flags"]
    assert [(a["local"], a["prefixlen"]) for a in by_name[sb.sandbox_if]["addr_info"] if a["family"] == "inet"] \
        == [(sb.sandbox_addr, sb.prefix)]
    assert not [a for it in inside for a in it["addr_info"] if a["family"] == "inet6"]   # IPv6 off inside
    routes = json.loads(sh(["ip", "-n", sb.netns, "-j", "route", "show", "default"]).stdout)
    assert [(r["gateway"], r["dev"]) for r in routes] == [(sb.host_addr, sb.sandbox_if)]
    host = json.loads(gw.call(lambda: sh(["ip", "-j", "addr", "show", "dev", sb.host_if]).stdout))[0]
    assert "UP" in host["flags"]
    assert [a["family"] for a in host["addr_info"]] == ["inet"]                      # no fe80:: on the host side
    assert gw.call(lambda: open(f"/proc/sys/net/ipv4/conf/{sb.host_if}/arp_ignore").read().strip()) == "1"


def test_kernel_errors_name_the_step(gw):
    def bad():
        with rtnl.Socket() as s:
            rtnl.set_up(s, "egwh-none")
    with pytest.raises(Exception) as e:
        gw.call(bad)
    assert "set egwh-none up failed" in str(e.value) and "No such device" in str(e.value)


def test_nft_batch_is_all_or_nothing(gw):
    script = "create table inet egressgw_tx\nadd chain inet egressgw_tx c\nadd rule inet egressgw_tx c oops\n"
    with pytest.raises(Exception) as e:
        gw.call(nft.run_script, script, step="bad batch")
    assert "bad batch failed" in str(e.value)
    assert gw.call(nft.list_tables) == []     # nothing of the failed transaction was committed


def test_nsfs_add_refuses_an_existing_name(gw):
    sb = gw.up("x")
    from netns import nsfs
    with pytest.raises(Exception) as e:
        gw.call(nsfs.add, sb.netns)
    assert "exists" in str(e.value)
    assert os.path.exists(naming.netns_path(sb.netns))   # the existing one untouched
