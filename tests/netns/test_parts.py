"""Pure parts of netns/: names, address blocks, state files, exec argv (no root needed)."""

from __future__ import annotations

import ipaddress
import json
import os
import threading

import pytest

from gateway.errors import SandboxError
from netns import Sandbox, exec_argv, naming
from netns import state as st
from netns.addresses import allocate, block, parse_pool, span
from netns.links import parse_links


@pytest.mark.parametrize("name", ["a", "agent-1", "0", "a" * 31, "x-y-z9"])
def test_valid_names(name):
    assert naming.validate_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", "A", "a_b", "a" * 32, "a/b", "a.b", "ä", None, 7])
def test_invalid_names_say_how_to_fix(name):
    with pytest.raises(SandboxError, match="fix:"):
        naming.validate_name(name)


def test_derived_names_fit_the_kernel():
    assert naming.netns_name("a-b") == "egw-a-b"
    assert naming.table_name("a-b-c") == "egressgw_a_b_c"
    assert naming.host_if(16383) == "egwh16383"
    assert len(naming.host_if(10**10)) == 15
    with pytest.raises(SandboxError):
        naming.host_if(10**11)


def test_blocks():
    pool = parse_pool("10.211.0.0/16")
    b = block(pool, 0)
    assert (str(b.host_addr), str(b.sandbox_addr), b.prefix) == ("10.211.0.1", "10.211.0.2", 30)
    b = block(pool, 5)
    assert (str(b.host_addr), str(b.sandbox_addr)) == ("10.211.0.21", "10.211.0.22")
    assert str(b.network) == "10.211.0.20/30"
    assert str(block(pool, 16383).sandbox_addr) == "10.211.255.254"
    with pytest.raises(SandboxError):
        block(pool, 16384)


@pytest.mark.parametrize("pool", ["10.211.0.1/16", "fd00::/64", "10.0.0.0/31", "nope"])
def test_bad_pools(pool):
    with pytest.raises(SandboxError, match="fix:"):
        parse_pool(pool)


def test_allocate_lowest_free():
    pool = parse_pool("10.211.0.0/16")
    assert allocate(pool, set(), []).index == 0
    assert allocate(pool, {0, 1, 3}, []).index == 2
    # Networks already present in the gateway namespace are skipped.
    taken = [span(ipaddress.ip_network("10.211.0.0/29")), span(ipaddress.ip_network("192.168.0.0/24"))]
    assert allocate(pool, set(), taken).index == 2
    assert allocate(pool, {2}, taken).index == 3


def test_allocate_exhausted():
    pool = parse_pool("10.0.0.0/29")
    assert allocate(pool, {0}, []).index == 1
    with pytest.raises(SandboxError, match="exhausted"):
        allocate(pool, {0, 1}, [])
    with pytest.raises(SandboxError, match="exhausted"):
        allocate(pool, set(), [span(ipaddress.ip_network("10.0.0.0/8"))])


def test_parse_links():
    out = json.dumps([
        {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]},
        {"ifname": "egwh0", "link_netnsid": 3, "linkinfo": {"info_kind": "veth"},
         "addr_info": [{"family": "inet", "local": "10.211.0.1", "prefixlen": 30},
                       {"family": "inet6", "local": "fe80::1", "prefixlen": 64}]},
    ])
    links = parse_links(out)
    assert links["egwh0"].peer_netnsid == 3 and links["egwh0"].kind == "veth"
    assert links["egwh0"].nets == [ipaddress.ip_network("10.211.0.0/30")]
    assert links["lo"].peer_netnsid is None


def sandbox(name="box") -> Sandbox:
    return Sandbox(name=name, netns=f"egw-{name}", host_if="egwh0", sandbox_if="egws0",
                   host_addr="10.211.0.1", sandbox_addr="10.211.0.2", prefix=30, index=0,
                   table=f"egressgw_{name}", transparent_port=8080, dns_port=5353,
                   session_id=None, created=1.5)


def test_state_roundtrip(tmp_path):
    d = str(tmp_path)
    sb = sandbox()
    with st.locked(d):
        st.write(d, sb, st.CREATING)
    rec = st.read(d, "box")
    assert rec.sandbox == sb and rec.status == st.CREATING
    st.write(d, sb, st.READY)
    assert oct(os.stat(st.state_path(d, "box")).st_mode & 0o777) == "0o600"
    recs, bad = st.read_all(d)
    assert [r.sandbox for r in recs] == [sb] and bad == []
    with open(st.state_path(d, "broken"), "w") as f:
        f.write("{not json")
    recs, bad = st.read_all(d)
    assert len(recs) == 1 and bad == [st.state_path(d, "broken")]
    assert st.remove(d, "box") and not st.remove(d, "box")


def test_lock_is_exclusive(tmp_path):
    d, order = str(tmp_path), []
    entered = threading.Event()

    def other():
        entered.set()
        with st.locked(d):
            order.append("other")

    with st.locked(d):
        t = threading.Thread(target=other)
        t.start()
        entered.wait()
        t.join(0.2)
        order.append("first")
    t.join()
    assert order == ["first", "other"]


def test_exec_argv_drops_privileges():
    argv = exec_argv(sandbox(), ["curl", "-s", "https://x"], env={"PATH": "/usr/bin", "HOME": "/tmp"})
    import pwd
    nobody = pwd.getpwnam("nobody")
    assert argv == ["ip", "netns", "exec", "egw-box", "setpriv", f"--reuid={nobody.pw_uid}",
                    f"--regid={nobody.pw_gid}", "--clear-groups", "--inh-caps=-all",
                    "--bounding-set=-all", "--no-new-privs", "--", "env", "-i",
                    "PATH=/usr/bin", "HOME=/tmp", "curl", "-s", "https://x"]


@pytest.mark.parametrize("user", [None, "root"])
def test_exec_argv_root_stays_root_inside_the_namespace(user):
    argv = exec_argv(sandbox(), ["id"], user=user, env={})
    assert argv == ["ip", "netns", "exec", "egw-box", "env", "-i", "id"]


@pytest.mark.parametrize("cmd,env,user", [([], {}, "nobody"), (["A=b"], {}, "nobody"),
                                          (["id"], {"-u": "x"}, "nobody"),
                                          (["id"], {"A": "x\0y"}, "nobody"),
                                          (["id"], {}, "no-such-user-egw")])
def test_exec_argv_rejects(cmd, env, user):
    with pytest.raises(SandboxError):
        exec_argv(sandbox(), cmd, user=user, env=env)
