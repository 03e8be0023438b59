"""Host names, selectors and IP literals (gateway/policy/hosts.py)."""

import ipaddress

import pytest

from gateway.policy import Decider, load_policy_text
from gateway.policy.hosts import (
    HostError,
    name_selector,
    normalize_host,
    parent,
    parse_ip_literal,
    pattern_selector,
)

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address


@pytest.mark.parametrize(
    "name, expected",
    [
        ("example.com", "example.com"),
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("  api.example.com \n", "api.example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.Example", "xn--bcher-kva.example"),
        ("bücher\u3002example", "xn--bcher-kva.example"),  # ideographic full stop is a dot
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com", "example.com"),  # fullwidth letters
        ("_dmarc.example.com", "_dmarc.example.com"),
        ("a-b.example.com", "a-b.example.com"),
        ("localhost", "localhost"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
    ],
)
def test_normalize_host(name, expected):
    assert normalize_host(name) == expected


@pytest.mark.parametrize(
    "name, message",
    [
        ("", "empty host name"),
        (".", "empty host name"),
        ("example..com", "empty label"),
        ("example.com..", "empty label"),
        (".example.com", "empty label"),
        ("a" * 64 + ".com", "the limit is 63"),
        (".".join(["a" * 63] * 4), "the limit is 253"),
        ("exa mple.com", "not allowed"),
        ("example.com/path", "not allowed"),
        ("example.com:443", "not allowed"),
        ("ex*ample.com", "not allowed"),
        ("exa\x00mple.com", "not allowed"),
        ("user@example.com", "not allowed"),
    ],
)
def test_normalize_host_refuses(name, message):
    with pytest.raises(ValueError, match=message):
        normalize_host(name)


def test_host_errors_carry_a_fix():
    with pytest.raises(HostError) as info:
        normalize_host("example..com")
    assert info.value.fix == "remove the extra dot"


@pytest.mark.parametrize(
    "value, expected",
    [
        ("*.example.com", "*.example.com"),
        ("*.EXAMPLE.com.", "*.example.com"),
        ("*.a.b.example.com", "*.a.b.example.com"),
        ("*.bücher.example", "*.xn--bcher-kva.example"),
        ("*.co.uk", "*.co.uk"),
    ],
)
def test_pattern_accepted(value, expected):
    selector = pattern_selector(value)
    assert (selector.kind, selector.value) == ("pattern", expected)


@pytest.mark.parametrize(
    "value, message, fix",
    [
        ("*", "every host", "list the hosts"),
        ("*example.com", "badexample.com", '"*.example.com"'),
        ("*.com", "top-level domain 'com'", "*.example.com"),
        ("api.*.com", "only once, as the whole first label", "*.example.com"),
        ("a*.example.com", "only once, as the whole first label", "exactly one label"),
        ("**.example.com", "only once, as the whole first label", "exactly one label"),
        ("*.*.example.com", "only once, as the whole first label", "exactly one label"),
        ("example.com", "no wildcard", "matchName: example.com"),
        ("*.", "empty host name", "DNS name"),
        ("*.127.0.0.1", "IP address", "cidrs"),
        ("*.exa mple.com", "not allowed", "letters, digits"),
    ],
)
def test_pattern_refused(value, message, fix):
    with pytest.raises(HostError) as info:
        pattern_selector(value)
    assert message in str(info.value)
    assert fix in info.value.fix


@pytest.mark.parametrize(
    "value, message, fix",
    [
        ("*.example.com", "contains '*'", "matchPattern"),
        ("127.0.0.1", "is an IP address", "cidrs"),
        ("0x7f.1", "is an IP address", "cidrs"),
        ("[::1]", "is an IP address", "cidrs"),
        ("1.2.3.999", "is an IP address", "cidrs"),
    ],
)
def test_name_selector_refused(value, message, fix):
    with pytest.raises(HostError) as info:
        name_selector(value)
    assert message in str(info.value)
    assert fix in info.value.fix


def test_name_selector_normalises():
    assert name_selector("API.Example.com.").value == "api.example.com"


@pytest.mark.parametrize(
    "name, expected",
    [("a.example.com", "example.com"), ("example.com", "com"), ("com", None)],
)
def test_parent(name, expected):
    assert parent(name) == expected


@pytest.fixture(scope="module")
def one_label():
    return Decider(
        load_policy_text(
            """
apiVersion: egressgw.dev/v1alpha1
kind: EgressPolicy
metadata: {name: t}
spec:
  egress:
    - hosts: [{matchPattern: "*.example.com"}]
"""
        )
    )


@pytest.mark.parametrize(
    "name, allowed",
    [
        ("a.example.com", True),
        ("API.Example.COM.", True),
        ("xn--bcher-kva.example.com", True),
        ("bücher.example.com", True),
        ("a.b.example.com", False),  # one label only
        ("example.com", False),  # the parent itself is not covered
        ("badexample.com", False),
        ("a.example.com.evil.net", False),
        ("a.example.co", False),
    ],
)
def test_pattern_matches_exactly_one_label(one_label, name, allowed):
    assert one_label.dns(name).allowed is allowed


@pytest.mark.parametrize(
    "host, expected",
    [
        ("127.0.0.1", V4("127.0.0.1")),
        ("127.0.0.1.", V4("127.0.0.1")),
        (" 127.0.0.1 ", V4("127.0.0.1")),
        ("2130706433", V4("127.0.0.1")),  # decimal
        ("0x7f000001", V4("127.0.0.1")),  # hex
        ("0X7F000001", V4("127.0.0.1")),
        ("017700000001", V4("127.0.0.1")),  # octal, whole
        ("0177.0.0.1", V4("127.0.0.1")),  # octal part
        ("0x7f.0.0.1", V4("127.0.0.1")),
        ("127.1", V4("127.0.0.1")),  # a.b: b is 24 bits
        ("127.0.1", V4("127.0.0.1")),  # a.b.c: c is 16 bits
        ("0x7f.1", V4("127.0.0.1")),
        ("10.0x10203", V4("10.1.2.3")),
        ("0", V4("0.0.0.0")),
        ("0x", V4("0.0.0.0")),  # WHATWG reads an empty hex number as 0
        ("169.254.169.254", V4("169.254.169.254")),
        ("\uff11\uff12\uff17.0.0.1", V4("127.0.0.1")),  # fullwidth digits
        ("127\u30020\u30020\u30021", V4("127.0.0.1")),  # ideographic full stops
        ("::1", V6("::1")),
        ("[::1]", V6("::1")),
        ("[FE80::1%eth0]", V6("fe80::1")),  # zone id dropped
        ("fe80::1%25eth0", V6("fe80::1")),  # URL-encoded zone id
        ("[2001:db8::1]", V6("2001:db8::1")),
    ],
)
def test_parse_ip_literal(host, expected):
    assert parse_ip_literal(host) == expected


def test_ipv4_mapped_ipv6_is_returned_as_ipv6():
    address = parse_ip_literal("[::ffff:127.0.0.1]")
    assert isinstance(address, V6)
    assert address.ipv4_mapped == V4("127.0.0.1")


@pytest.mark.parametrize(
    "host",
    [
        "example.com",
        "cafe.be",
        "1.example.com",
        "0x7f.example",
        "localhost",
        "xn--bcher-kva.example",
        "1a.2b",
        "0x7g",
    ],
)
def test_parse_ip_literal_names(host):
    assert parse_ip_literal(host) is None


@pytest.mark.parametrize(
    "host",
    [
        "256.0.0.1",
        "1.2.3.4.5",
        "4294967296",
        "0x100000000",
        "1.256.3",
        "1.2.65536",
        "08.0.0.1",  # 8 is not an octal digit
        "example.123",  # ends in a number: an IP, and not a valid one
        "1..2",
        "[::1",
        "::1]",
        "[127.0.0.1]",
        "::g",
        "127.0.0.1:80",
    ],
)
def test_parse_ip_literal_refuses_ip_ish_junk(host):
    with pytest.raises(ValueError):
        parse_ip_literal(host)
