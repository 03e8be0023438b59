"""The sandbox table as a raw nf_tables batch (netns/nftrules.py, netns/nftnl.py).

Encoding tests need nothing; the rest (marked netns, in a private gateway namespace) apply the
same table once through libnftables from its text and once as a raw batch, and compare what
`nft list table` prints."""

from __future__ import annotations

import struct

import pytest
from netns_testlib import make_sandbox

from netns import nft, nftnl, nftrules
from gateway.errors import SandboxError


make = make_sandbox


# ---- encoding --------------------------------------------------------------------------------------

@pytest.mark.parametrize("value,encoded", [
    (b"abc", struct.pack("=HH", 7, 1) + b"abc\0"),           # padded to 4 bytes, length unpadded
    ("ab", struct.pack("=HH", 7, 1) + b"ab\0\0"),            # strings NUL-terminated
    (b"abcd", struct.pack("=HH", 8, 1) + b"abcd"),
    (((2, b"\0\0\0\1"),), struct.pack("=HH", 12, 1 | 0x8000) + struct.pack("=HH", 8, 2) + b"\0\0\0\1"),
])
def test_attribute_encoding(value, encoded):
    assert nftnl._nla(1, value) == encoded


@pytest.mark.parametrize("text,udata", [
    ("spoofed source", b"\x00\x0fspoofed source\x00"),  # as `nft --debug=netlink` shows it
    ("", b"\x00\x01\x00"),
])
def test_comment_user_data(text, udata):
    assert nftrules.comment_udata(text) == udata


@pytest.mark.parametrize("name", ["", "x" * 16])
def test_interface_names_must_fit(name):
    with pytest.raises(ValueError, match="1 to 15 bytes"):
        nftrules.iifname(name)


def test_batch_is_framed_and_numbered():
    b = nft.batch(nft.table(make()))
    data = b.encode(seq=100)
    msgs = []
    off = 0
    while off < len(data):
        length, mtype, flags, seq, _pid = struct.unpack_from("=IHHII", data, off)
        family = data[off + 16]
        msgs.append((mtype, flags, seq, family))
        off += (length + 3) & ~3
    assert off == len(data)
    assert msgs[0][0] == nftnl.NFNL_MSG_BATCH_BEGIN and msgs[-1][0] == nftnl.NFNL_MSG_BATCH_END
    inner = msgs[1:-1]
    assert [m[2] for m in inner] == list(range(101, 101 + len(inner)))   # one sequence number each
    assert all(m[1] & nftnl.NLM_F_ACK and m[3] == nftnl.NFPROTO_INET for m in inner)
    kinds = [m[0] & 0xFF for m in inner]
    assert kinds[0] == nftnl.NFT_MSG_NEWTABLE and inner[0][1] & nftnl.NLM_F_EXCL   # create: exclusive
    assert kinds[1:5] == [nftnl.NFT_MSG_NEWCHAIN] * 4
    rules = sum(len(c.rules) for c in nft.table(make()).chains)
    assert kinds[5:] == [nftnl.NFT_MSG_NEWRULE] * rules


@pytest.mark.parametrize("kw", [{}, {"dns_port": 53}, {"host_if": "egwh16383", "transparent_port": 1}])
def test_text_and_model_are_one_table(kw):
    """render_rules is the model's text: every rule the batch sends is in the script, in order."""
    sb = make(**kw)
    script = nft.render_rules(sb, replace=False)
    lines = [ln.strip() for ln in script.splitlines()]
    for chain in nft.table(sb).chains:
        at = [lines.index(r.text()) for r in chain.rules]
        assert at == sorted(at) and len(set(at)) == len(at)


# ---- in a namespace ----------------------------------------------------------------------------------

def _listed(gw, table: str) -> str:
    return gw.sh(["nft", "list", "table", "inet", table]).stdout


@pytest.mark.netns
@pytest.mark.parametrize("kw", [{}, {"dns_port": 53},
                                {"name": "b", "table": "egressgw_b", "host_if": "egwh16383",
                                 "host_addr": "10.200.255.253", "sandbox_addr": "10.200.255.254",
                                 "transparent_port": 65535, "dns_port": 1}])
def test_raw_batch_makes_the_table_the_script_makes(gw, kw):
    sb = make(**kw)
    gw.call(nft.run_script, nft.render_rules(sb, replace=False), step="text")
    by_text = _listed(gw, sb.table)
    gw.call(nft.delete, [sb.table], step="delete")
    assert sb.table not in gw.call(nftnl.table_names)
    gw.call(nft.create, sb)
    by_batch = _listed(gw, sb.table)
    assert by_batch == by_text
    assert f'comment "egressgw sandbox {sb.name}; managed by egressgw, do not edit"' in by_batch


@pytest.mark.netns
def test_create_never_touches_an_existing_table(gw):
    sb = make()
    gw.sh(["nft", "add", "table", "inet", sb.table])
    gw.sh(["nft", "add", "chain", "inet", sb.table, "mine"])
    with pytest.raises(SandboxError, match=r"refused table egressgw_agent_7: File exists .*nothing of this"):
        gw.call(nft.create, sb)
    assert "chain mine" in _listed(gw, sb.table) and "chain raw" not in _listed(gw, sb.table)


@pytest.mark.netns
def test_a_refused_rule_leaves_nothing_behind(gw):
    sb = make()
    b = nft.batch(nft.table(sb))
    b.new_rule(sb.table, "no-such-chain", [nftrules.Expr("counter", ())], what="the bad rule")
    with pytest.raises(SandboxError, match="refused the bad rule: No such file or directory"):
        gw.call(b.commit, "test")
    assert sb.table not in gw.call(nftnl.table_names)   # one transaction: the table went too


@pytest.mark.netns
def test_delete_takes_tables_that_exist_and_ignores_those_that_do_not(gw):
    a, b = make(), make(name="b", table="egressgw_b", host_if="egwh4")
    gw.call(nft.create, a)
    gw.call(nft.create, b)
    gw.sh(["nft", "add", "table", "inet", "other"])
    gw.call(nft.delete, [a.table, "egressgw_never_made", b.table], step="delete")
    assert gw.call(nftnl.table_names) == ["other"]


@pytest.mark.netns
def test_delete_many_tables_at_once(gw):
    """A sweep of hundreds of orphans: every answer fits, in batches of at most DELETE_BATCH tables."""
    names = [f"egressgw_many_{i}" for i in range(2 * nft.DELETE_BATCH + 50)]
    gw.sh(["nft", "-f", "-"], input="".join(f"add table inet {n}\n" for n in names))
    assert len(gw.call(nft.list_tables)) == len(names)
    gw.call(nft.delete, names + ["egressgw_never_made"], step="delete")
    assert gw.call(nft.list_tables) == []


def test_batch_answers_get_room(monkeypatch):
    """The receive buffer is sized for every answer of the batch (they all come at once)."""
    asked = []
    real = nftnl.socket.socket

    class Spy(real):
        def setsockopt(self, level, opt, value):
            asked.append((opt, value))
            raise OSError("no")  # and a failure here is a SandboxError, never a raw OSError

    monkeypatch.setattr(nftnl.socket, "socket", Spy)
    b = nftnl.Batch()
    for i in range(300):
        b.delete_table(f"t{i}")
    with pytest.raises(SandboxError, match="netlink socket setup failed"):
        b.commit("test")
    assert asked[0] == (nftnl.SO_RCVBUFFORCE, 65536 + 1024 * 300)
