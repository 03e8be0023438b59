"""render_rules: the per-sandbox nft table, as text (no root needed), and nft -c on it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from netns_testlib import make_sandbox

from netns import render_rules


make = make_sandbox


def chain(script: str, name: str) -> str:
    m = re.search(r"\tchain " + name + r" \{\n(.*?)\n\t\}", script, re.S)
    assert m, f"chain {name} missing:\n{script}"
    return m.group(1)


def rules(script: str, name: str) -> list[str]:
    return [ln.strip() for ln in chain(script, name).splitlines()[1:] if ln.strip()]


def test_one_table_named_after_the_sandbox():
    s = render_rules(make())
    assert re.findall(r"^table inet (\S+) \{", s, re.M) == ["egressgw_agent_7"]
    assert 'comment "egressgw sandbox agent-7' in s
    assert [c for c in re.findall(r"\tchain (\w+) \{", s)] == ["raw", "nat", "input", "forward"]


def test_replace_is_idempotent_create_is_exclusive():
    replace = render_rules(make()).splitlines()
    assert replace[:2] == ["add table inet egressgw_agent_7", "delete table inet egressgw_agent_7"]
    create = render_rules(make(), replace=False).splitlines()
    assert create[0].startswith("create table inet egressgw_agent_7 { comment ")
    assert not any(ln.startswith("delete") for ln in create)


def test_chain_hooks_and_priorities():
    s = render_rules(make())
    assert "type filter hook prerouting priority raw;" in chain(s, "raw")
    assert "type nat hook prerouting priority dstnat;" in chain(s, "nat")
    assert "type filter hook input priority filter;" in chain(s, "input")
    assert "type filter hook forward priority filter;" in chain(s, "forward")


def test_every_rule_is_scoped_to_the_host_interface():
    s = render_rules(make())
    for name in ("raw", "nat", "input"):
        for r in rules(s, name):
            assert r.startswith('iifname "egwh3" '), r
    fwd = rules(s, "forward")
    assert fwd[0].startswith('iifname "egwh3" ') and "drop" in fwd[0]
    assert fwd[1].startswith('oifname "egwh3" ') and "drop" in fwd[1]
    assert "egwh0" not in s and "egws3" not in s   # sandbox side never named in G's rules


def test_raw_drops_ipv6_and_spoofed_sources():
    raw = rules(render_rules(make()), "raw")
    assert raw[0].startswith('iifname "egwh3" meta nfproto ipv6 counter drop')
    assert raw[1].startswith('iifname "egwh3" ip saddr != 10.211.0.14 counter drop')


def test_nat_redirects_dns_then_all_tcp():
    nat = rules(render_rules(make(transparent_port=8443, dns_port=5300)), "nat")
    assert nat == ['iifname "egwh3" udp dport 53 redirect to :5300',
                   'iifname "egwh3" tcp dport 53 redirect to :5300',
                   'iifname "egwh3" meta l4proto tcp redirect to :8443']


def test_input_accepts_only_redirected_flows_then_drops():
    inp = rules(render_rules(make(transparent_port=8443, dns_port=5300)), "input")
    accepts = [r for r in inp if r.endswith("accept")]
    assert accepts == [
        'iifname "egwh3" ip daddr 10.211.0.13 tcp dport 8443 ct status dnat accept',
        'iifname "egwh3" ip daddr 10.211.0.13 tcp dport 5300 ct status dnat accept',
        'iifname "egwh3" ip daddr 10.211.0.13 udp dport 5300 ct status dnat accept',
    ]
    assert inp[-1].startswith('iifname "egwh3" counter drop')


def test_dns_on_port_53_gets_a_direct_path():
    # Redirecting host_addr:53 to :53 changes nothing, so conntrack sets no dnat bit.
    inp = rules(render_rules(make(dns_port=53)), "input")
    assert 'iifname "egwh3" ip daddr 10.211.0.13 tcp dport 53 accept' in inp
    assert 'iifname "egwh3" ip daddr 10.211.0.13 udp dport 53 accept' in inp
    assert not any(r.endswith("dport 53 accept") for r in rules(render_rules(make()), "input"))


def _can_check() -> str | None:
    if os.geteuid() != 0:
        return "nft -c needs root"
    if not shutil.which("nft"):
        return "nft not installed"
    return None


@pytest.mark.skipif(_can_check() is not None, reason=str(_can_check()))
@pytest.mark.parametrize("kw", [{}, {"dns_port": 53}, {"name": "a", "table": "egressgw_a",
                                                      "host_if": "egwh16383"}])
@pytest.mark.parametrize("replace", [True, False])
def test_nft_accepts_the_script(kw, replace):
    # Check mode: parsed and validated by the kernel, never committed.
    script = render_rules(make(**kw), replace=replace)
    r = subprocess.run(["nft", "-c", "-f", "-"], input=script, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + script
