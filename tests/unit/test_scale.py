"""The traffic path's lookups cost the same with 10 or 1,000 sessions / rules (issue 6, fast paths).

Each test times the same operation against a small and a large structure and
asserts the large one is not much slower: an O(n) path in the number of
sessions, rules or placeholders would be ~100x slower, a flat one ~1x. The
bound (3x) leaves room for cache effects and a busy machine; timings take the
best of several repeats. Plus: 1,000 sessions, each found by its own source
address, with its own placeholders.
"""

from __future__ import annotations

import ipaddress
import time

from gateway.policy import load_policy_text
from gateway.secrets.model import parse_secrets
from gateway.secrets.placeholders import make_placeholder
from gateway.secrets.substitute import PlaceholderIndex
from gateway.sessions.registry import SessionRegistry

FLAT = 3.0   # the large case may be at most this many times slower than the small one

POLICY_HEAD = """\
apiVersion: egressgw.dev/v1alpha1
kind: EgressPolicy
metadata:
  name: scale
spec:
  egress:
"""


def policy_text(rules: int) -> str:
    """`rules` rules: exact names, one-level patterns, method and path restrictions; the last one names
    allowed.test (what every decision below asks about)."""
    out = [POLICY_HEAD]
    for i in range(rules - 1):
        if i % 3 == 0:
            out.append(f"    - name: r{i}\n      hosts: [{{matchName: h{i}.example.com}}]\n")
        elif i % 3 == 1:
            out.append(f"    - name: r{i}\n      hosts: [{{matchPattern: \"*.d{i}.example.net\"}}]\n"
                       "      methods: [GET]\n")
        else:
            out.append(f"    - name: r{i}\n      hosts: [{{matchName: api{i}.example.org}}]\n"
                       "      methods: [GET, POST]\n      paths: [\"/v1/*\"]\n")
    out.append("    - name: target\n      hosts: [{matchName: allowed.test}]\n      methods: [GET]\n"
               "      paths: [\"/v1/*\"]\n")
    return "".join(out)


SECRETS = parse_secrets([{"name": f"TOKEN_{k}", "source": f"env://T_{k}", "hosts": [{"matchName": "allowed.test"}]}
                         for k in "ABC"])


def best_rate(fn, n: int, repeats: int = 5) -> float:
    """Calls per second of fn() (best of `repeats` runs of n calls)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def addresses(n: int) -> list[str]:
    base = ipaddress.ip_address("10.214.0.2")
    return [str(base + i) for i in range(n)]


def registry_with(n: int, policy) -> tuple[SessionRegistry, list[str]]:
    reg = SessionRegistry()
    srcs = addresses(n)
    for i, src in enumerate(srcs):
        reg.create(f"s{i}", policy, [src], secrets=[(spec, make_placeholder("sk-proj-" + "a" * 48))
                                                   for spec in SECRETS])
    return reg, srcs


def test_by_source_is_flat_in_the_number_of_sessions():
    policy = load_policy_text(policy_text(20))
    small, small_srcs = registry_with(10, policy)
    large, large_srcs = registry_with(1000, policy)
    probe_small, probe_large = small_srcs[5], large_srcs[777]
    r_small = best_rate(lambda: small.by_source(probe_small), 20000)
    r_large = best_rate(lambda: large.by_source(probe_large), 20000)
    assert r_small / r_large < FLAT, (r_small, r_large)


def test_decisions_are_flat_in_the_number_of_rules():
    small = load_policy_text(policy_text(10))
    large = load_policy_text(policy_text(1000))
    from gateway.policy import Decider
    d_small, d_large = Decider(small), Decider(large)
    for d in (d_small, d_large):   # the same answers from both
        assert d.http("allowed.test", 443, "GET", "/v1/x", tls=True).allowed
        assert not d.http("allowed.test", 443, "GET", "/admin", tls=True).allowed
        assert not d.dns("nowhere.invalid").allowed
    assert d_large.http("x.d997.example.net", 443, "GET", "/", tls=True).allowed   # a pattern rule deep inside
    for call in (lambda d: d.http("allowed.test", 443, "GET", "/v1/items", tls=True),
                 lambda d: d.http("allowed.test", 443, "POST", "/v1/items", tls=True),   # denied: method
                 lambda d: d.tls("allowed.test", 443),
                 lambda d: d.dns("unknown.example.com")):                                # denied: no rule
        r_small = best_rate(lambda: call(d_small), 5000)
        r_large = best_rate(lambda: call(d_large), 5000)
        assert r_small / r_large < FLAT, (r_small, r_large)


def test_placeholder_scan_is_flat_in_the_number_of_placeholders():
    policy = load_policy_text(policy_text(5))
    small, _ = registry_with(10, policy)
    large, _ = registry_with(1000, policy)
    assert len(small.placeholders) == 30 and len(large.placeholders) == 3000
    def text(reg, i):   # four uses of one of session i's placeholders in a header-sized text
        mine = next(iter(reg.list()[i].secrets.values())).placeholder
        return f"Bearer {mine} and some other header text " * 4

    t_small, t_large = text(small, 5), text(large, 500)
    hits = large.placeholders.scan(t_large, "header")
    assert {h.secret.session_id for h in hits} == {large.list()[500].id} and not any(h.partial for h in hits)
    assert len(small.placeholders.scan(t_small, "header")) == len(hits) == 4
    r_small = best_rate(lambda: small.placeholders.scan(t_small, "header"), 5000)
    r_large = best_rate(lambda: large.placeholders.scan(t_large, "header"), 5000)
    assert r_small / r_large < FLAT, (r_small, r_large)
    assert isinstance(large.placeholders, PlaceholderIndex)


def test_a_thousand_sessions_each_found_by_its_own_source():
    policy = load_policy_text(policy_text(20))
    t0 = time.perf_counter()
    reg, srcs = registry_with(1000, policy)
    assert time.perf_counter() - t0 < 20
    assert len(reg) == 1000
    owners = [reg.by_source(src) for src in srcs]
    assert len({s.id for s in owners}) == 1000
    assert all(s.sources == frozenset([src]) for s, src in zip(owners, srcs))
    # each session's placeholders lead back to that session, and to no other
    for s in owners[::97]:
        for bound in s.secrets.values():
            (hit,) = reg.placeholders.scan(bound.placeholder, "header")
            assert hit.secret.session_id == s.id
    assert reg.by_source(str(ipaddress.ip_address(srcs[-1]) + 1)) is None
    # deleting one frees exactly its address and placeholders
    gone = owners[123]
    reg.delete(gone.id)
    assert reg.by_source(srcs[123]) is None and reg.by_source(srcs[124]) is owners[124]
    assert len(reg.placeholders) == 999 * 3


def test_known_values_of_a_deleted_session_are_forgotten_at_flat_cost(monkeypatch):
    import asyncio

    from gateway.exfil.known import KnownValues
    from gateway.secrets.backends import SecretStore

    for k in "ABC":
        monkeypatch.setenv(f"T_{k}", f"value-of-{k}-" + "x" * 20)
    policy = load_policy_text(policy_text(5))

    async def fill(n: int) -> tuple[KnownValues, list]:
        known = KnownValues(SecretStore())
        reg, _ = registry_with(n, policy)
        sessions = reg.list()
        for s in sessions:
            values = await known.of(s)
            assert {v.label for v in values} == {f"{kind}:TOKEN_{k}" for kind in ("secret", "placeholder")
                                                 for k in "ABC"}
        return known, sessions

    def forget_all(known, sessions) -> float:
        t0 = time.perf_counter()
        for s in sessions[:10]:
            known.forget(s.id)
        return time.perf_counter() - t0

    small = asyncio.run(fill(10))
    large = asyncio.run(fill(1000))
    t_small, t_large = forget_all(*small), forget_all(*large)
    assert t_large < FLAT * t_small + 0.001, (t_small, t_large)
    # forgotten: asking again rebuilds from the store, and the other sessions keep theirs
    known, sessions = large
    assert sessions[10].id in known._memo and sessions[3].id not in known._memo
    again = asyncio.run(known.of(sessions[3]))
    assert len(again) == 6
