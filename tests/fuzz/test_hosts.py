"""Properties of host normalisation and matching (gateway/policy/hosts.py, Decider.dns/http)."""

from __future__ import annotations

import functools

import idna
from hypothesis import assume, given
from hypothesis import strategies as st

from gateway.policy import load_policy_text
from gateway.policy.decide import Decider
from gateway.policy.hosts import HostError, normalize_host, parse_ip_literal

LABEL = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12)
UNICODE_LABEL = st.text("abcxyzüößéñçåøæ中文日本ежик", min_size=1, max_size=10)
TLD = st.text("abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=6)  # a last label that is a number makes an IP
SUFFIX = st.tuples(st.lists(LABEL, min_size=1, max_size=3), TLD).map(lambda t: ".".join([*t[0], t[1]]))
CASE_AND_DOT = st.tuples(st.booleans(), st.booleans())


@functools.lru_cache(maxsize=512)
def decider(selector: str, value: str) -> Decider:
    text = ("apiVersion: egressgw.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: fuzz}\nspec:\n"
            f"  mode: enforce\n  egress:\n    - name: r\n      hosts: [{{{selector}: '{value}'}}]\n")
    return Decider(load_policy_text(text))


def spell(name: str, upper: bool, dot: bool) -> str:
    return (name.upper() if upper else name) + ("." if dot else "")


@given(st.text(max_size=80))
def test_normalize_is_idempotent_and_only_raises_host_error(text):
    try:
        once = normalize_host(text)
    except HostError:
        return
    assert normalize_host(once) == once
    assert once == once.lower() and once.isascii() and not once.endswith(".")
    assert len(once) <= 253 and all(0 < len(label) <= 63 for label in once.split("."))


@given(st.text(max_size=60))
def test_ip_literal_parse_never_raises_anything_but_value_error(text):
    try:
        parse_ip_literal(text)
    except ValueError:
        pass


@given(SUFFIX, LABEL, LABEL, CASE_AND_DOT)
def test_pattern_matches_exactly_one_label(suffix, a, b, spelling):
    d = decider("matchPattern", f"*.{suffix}")
    assert d.dns(spell(f"{a}.{suffix}", *spelling)).allowed
    assert not d.dns(spell(suffix, *spelling)).allowed
    assert not d.dns(spell(f"{a}.{b}.{suffix}", *spelling)).allowed
    assert d.http(spell(f"{a}.{suffix}", *spelling), 443, "GET", "/", tls=True).allowed


@given(SUFFIX, SUFFIX, LABEL, st.sampled_from(["matchName", "matchPattern"]))
def test_never_matches_a_different_suffix(suffix, other, a, selector):
    assume(other != suffix)
    value = f"*.{suffix}" if selector == "matchPattern" else suffix
    d = decider(selector, value)
    for name in (f"{a}.{other}", f"{a}{suffix}", f"{a}.{suffix}.{other}", f"{a}.{suffix}-{a}",
                 f"{a}-{suffix}", f"{suffix}.{other}", f"{a}.{suffix}\x00.{other}", f"{a}@{suffix}"):
        if selector == "matchName" and name == suffix:
            continue
        assert not d.dns(name).allowed, name
        assert not d.http(name, 443, "GET", "/", tls=True).allowed, name


@given(st.lists(UNICODE_LABEL, min_size=1, max_size=3), SUFFIX)
def test_idna_round_trip(labels, suffix):
    name = ".".join([*labels, suffix])
    try:
        ascii_form = normalize_host(name)
    except HostError:
        return  # not a valid international name: refused, never matched
    unicode_form = idna.decode(ascii_form)
    assert normalize_host(unicode_form) == ascii_form
    d = decider("matchName", ascii_form)
    assert d.dns(name).allowed and d.dns(unicode_form).allowed and d.dns(ascii_form.upper()).allowed
    if ascii_form != name.lower():
        # a rule written in Unicode matches the punycode a client sends, and the reverse
        assert decider("matchName", name).dns(ascii_form).allowed
