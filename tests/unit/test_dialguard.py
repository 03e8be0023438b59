"""gateway/dialguard.py: which addresses the gateway dials."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.dialguard import DialGuard, Vetted, classify, embedded_ipv4
from gateway.policy import Decider
from gateway.resolver import DnsFailure

from .helpers import ALLOWED, INSIDE, SSH, policy, run

ip = ipaddress.ip_address


@pytest.mark.parametrize(
    "address, expected",
    [
        # IPv4
        ("0.0.0.0", "this-network"),
        ("0.1.2.3", "this-network"),
        ("10.0.0.1", "private"),
        ("10.255.255.255", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.254", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "cgnat"),
        ("100.127.255.254", "cgnat"),
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("169.254.169.254", "metadata"),
        ("169.254.1.1", "link-local"),
        ("192.0.0.9", "ietf-protocol"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        # IPv6
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("fd00:ec2::254", "metadata"),
        ("fd00::1", "unique-local"),
        ("fc00::1", "unique-local"),
        ("fe80::1", "link-local"),
        ("febf::1", "link-local"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        ("100::1", "discard"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "teredo"),
        # IPv6 forms that embed an IPv4 address are judged by the address inside
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "metadata"),
        ("::ffff:10.1.2.3", "private"),
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "metadata"),  # NAT64 of 169.254.169.254
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::1", "metadata"),  # 6to4 of 169.254.169.254
        ("2002:c0a8:101::", "private"),  # 6to4 of 192.168.1.1
        # Ordinary destinations. These are documentation (RFC 5737 / RFC 3849) and benchmarking
        # (RFC 2544, 198.18.0.0/15) ranges: nothing inside a host or a cloud answers there, and
        # the lab's origins live in 198.18.0.0/15, so they must be dialable. (Python's
        # ipaddress calls 198.18/15 "private"; the guard deliberately does not.)
        ("198.18.1.10", None),
        ("198.19.255.1", None),
        ("203.0.113.5", None),
        ("192.0.2.1", None),
        ("2001:db8::1", None),
        ("::ffff:203.0.113.5", None),
        ("64:ff9b::cb00:7105", None),  # NAT64 of 203.0.113.5
        ("2002:cb00:7105::", None),  # 6to4 of 203.0.113.5
        # edges just outside forbidden ranges
        ("100.63.255.255", None),
        ("100.128.0.0", None),
        ("172.15.255.255", None),
        ("172.32.0.0", None),
        ("169.253.255.255", None),
        ("223.255.255.255", None),
        ("fbff::1", None),
        ("2001:1::1", None),  # just past Teredo's /32
    ],
)
def test_classify(address, expected):
    assert classify(ip(address)) == expected


@pytest.mark.parametrize("address, inner", [
    ("::ffff:127.0.0.1", "127.0.0.1"),
    ("64:ff9b::7f00:1", "127.0.0.1"),
    ("2002:7f00:1::", "127.0.0.1"),
    ("2001:db8::1", None),
    ("127.0.0.1", None),
])
def test_embedded_ipv4(address, inner):
    got = embedded_ipv4(ip(address))
    assert (str(got) if got else None) == inner


class FakeResolver:
    """The resolver seam DialGuard needs: async addresses(name). Records what it was asked."""

    def __init__(self, answers: dict[str, tuple[str, ...] | Exception]):
        self.answers = answers
        self.asked: list[str] = []

    async def addresses(self, name: str) -> tuple[str, ...]:
        self.asked.append(name)
        answer = self.answers.get(name, ())
        if isinstance(answer, Exception):
            raise answer
        return answer


def vet(guard, host, decider, port=443) -> Vetted:
    return run(guard.vet(host, port, decider))


ENFORCE = Decider(policy(ALLOWED))


@pytest.mark.parametrize("literal, expected", [
    ("198.18.1.10", Vetted("198.18.1.10")),
    ("2001:db8::1", Vetted("2001:db8::1")),
    ("[2001:db8::1]", Vetted("2001:db8::1")),
    ("127.0.0.1", Vetted(None, "address-not-allowed", "loopback")),
    ("169.254.169.254", Vetted(None, "address-not-allowed", "metadata")),
    ("[::ffff:127.0.0.1]", Vetted(None, "address-not-allowed", "loopback")),
    ("10.9.1.1", Vetted(None, "address-not-allowed", "private")),
])
def test_ip_literal_is_judged_without_asking_dns(literal, expected):
    resolver = FakeResolver({})
    assert vet(DialGuard(resolver), literal, ENFORCE) == expected
    assert resolver.asked == []


@pytest.mark.parametrize("answers, expected", [
    (("198.18.1.10",), Vetted("198.18.1.10")),
    (("127.0.0.1",), Vetted(None, "address-not-allowed", "loopback")),
    (("169.254.169.254", "10.0.0.1"), Vetted(None, "address-not-allowed", "private")),
    # DNS rebinding with a mixed answer: the gateway dials the permitted address, never the other
    (("127.0.0.1", "198.18.1.10", "10.0.0.1"), Vetted("198.18.1.10")),
    (("fd00:ec2::254", "2001:db8::7"), Vetted("2001:db8::7")),
    ((), Vetted(None, "dns-failure", "name does not resolve")),
])
def test_names_resolve_and_every_address_is_judged(answers, expected):
    resolver = FakeResolver({"allowed.test": answers})
    assert vet(DialGuard(resolver), "allowed.test", ENFORCE) == expected
    assert resolver.asked == ["allowed.test"]


def test_dns_failure_is_a_refusal_with_the_reason():
    resolver = FakeResolver({"allowed.test": DnsFailure("upstream resolvers did not answer: Timeout")})
    assert vet(DialGuard(resolver), "allowed.test", ENFORCE) == Vetted(
        None, "dns-failure", "upstream resolvers did not answer: Timeout")


@pytest.mark.parametrize("ranges, address, ok", [
    (("10.0.0.0/8",), "10.1.2.3", True),
    (("10.1.0.0/16",), "10.2.0.1", False),
    (("127.0.0.0/8",), "127.0.0.1", True),
    (("fd00::/8",), "fd00::5", True),
    (("10.0.0.0/8",), "fd00::5", False),  # an IPv4 range never matches an IPv6 address
    (("169.254.0.0/16",), "169.254.169.254", True),  # an operator may open metadata, explicitly
])
def test_allow_ranges_from_the_config(ranges, address, ok):
    resolver = FakeResolver({"internal.test": (address,)})
    got = vet(DialGuard(resolver, ranges), "internal.test", ENFORCE)
    assert got == (Vetted(address) if ok else Vetted(None, "address-not-allowed", classify(ip(address))))


def test_a_cidrs_rule_naming_a_private_range_opens_it():
    decider = Decider(policy(ALLOWED, INSIDE))  # cidrs 10.9.0.0/16, port 443
    resolver = FakeResolver({"internal.test": ("10.9.1.1",), "other.test": ("10.8.1.1",)})
    guard = DialGuard(resolver)
    assert vet(guard, "internal.test", decider) == Vetted("10.9.1.1")
    assert vet(guard, "10.9.200.1", decider) == Vetted("10.9.200.1")
    # the IPv4-mapped form matches the rule too
    assert vet(guard, "[::ffff:10.9.0.1]", decider) == Vetted(str(ip("::ffff:10.9.0.1")))
    assert vet(guard, "other.test", decider) == Vetted(None, "address-not-allowed", "private")
    # only on the rule's ports
    assert vet(guard, "internal.test", decider, port=8443) == Vetted(None, "address-not-allowed", "private")


def test_a_tcp_cidrs_rule_opens_its_range_too():
    rule = "    - name: db\n      protocol: tcp\n      cidrs: ['10.7.0.0/24']\n      ports: [5432]\n"
    decider = Decider(policy(rule, SSH))
    guard = DialGuard(FakeResolver({}))
    assert vet(guard, "10.7.0.9", decider, port=5432) == Vetted("10.7.0.9")
    assert vet(guard, "10.7.0.9", decider, port=443) == Vetted(None, "address-not-allowed", "private")


def test_report_mode_never_opens_private_ranges():
    # In report mode the decider lets denials pass (allowed=True, action="report"),
    # but the inside stays closed: only a real "allow" opens an internal address.
    report = Decider(policy(ALLOWED, mode="report"))
    assert report.ip(ip("10.0.0.1"), 443).allowed  # what the guard must not be fooled by
    resolver = FakeResolver({"allowed.test": ("10.0.0.1",), "meta.test": ("169.254.169.254",)})
    guard = DialGuard(resolver)
    assert vet(guard, "allowed.test", report) == Vetted(None, "address-not-allowed", "private")
    assert vet(guard, "meta.test", report) == Vetted(None, "address-not-allowed", "metadata")
    assert vet(guard, "127.0.0.1", report) == Vetted(None, "address-not-allowed", "loopback")


def test_report_mode_cidrs_rule_still_opens_its_own_range():
    report = Decider(policy(INSIDE, mode="report"))
    assert vet(DialGuard(FakeResolver({})), "10.9.0.1", report) == Vetted("10.9.0.1")


def test_own_addresses_are_read_from_this_namespace():
    from gateway.dialguard import _read_own_addresses

    own = _read_own_addresses()
    assert "127.0.0.1" in own


@pytest.mark.parametrize("answers, expected", [
    (("198.18.0.1",), Vetted(None, "address-not-allowed", "gateway-self")),
    (("198.18.0.1", "198.18.1.10"), Vetted("198.18.1.10")),
    (("64:ff9b::c612:1",), Vetted(None, "address-not-allowed", "gateway-self")),
])
def test_the_gateways_own_addresses_are_refused(monkeypatch, answers, expected):
    """An allowed name whose upstream answer is the gateway's own interface (rebinding to the gateway)."""
    import math

    import gateway.dialguard as dg

    monkeypatch.setattr(dg, "_own", (math.inf, frozenset({"198.18.0.1"})))
    assert vet(DialGuard(FakeResolver({"allowed.test": answers})), "allowed.test", ENFORCE) == expected
    assert vet(DialGuard(FakeResolver({})), "198.18.0.1", ENFORCE) == Vetted(
        None, "address-not-allowed", "gateway-self")
