"""gateway/limits.py: token buckets, connection counts, size checks and bounded state, on a fake clock."""

from __future__ import annotations

import pytest

from gateway import limits as lim
from gateway.policy.model import Limits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    "rate, burst, steps, expected",
    [
        # steps: (seconds to advance before the take, ...); expected: results of each take
        (1, 1, (0, 0), (True, False)),
        (1, 3, (0, 0, 0, 0), (True, True, True, False)),
        (2, 2, (0, 0, 0, 0.5, 0), (True, True, False, True, False)),
        (10, 1, (0, 0.05, 0.06), (True, False, True)),
        (1, 2, (0, 0, 100, 0, 0), (True, True, True, True, False)),  # refills to burst, never more
    ],
)
def test_token_bucket(rate, burst, steps, expected):
    clock = Clock()
    bucket = lim.TokenBucket(rate, burst, clock)
    got = []
    for advance in steps:
        clock.now += advance
        got.append(bucket.take())
    assert tuple(got) == expected


@pytest.mark.parametrize(
    "name, rate, takes, allowed",
    [
        ("requests", 5, 30, 10),  # burst is twice the rate
        ("dns", 1, 5, 2),
        ("tls", 50, 200, 100),
    ],
)
def test_rate_is_per_session(name, rate, takes, allowed):
    clock = Clock()
    limiter = lim.Limiter(clock=clock)
    a = [limiter.rate("A", name, rate) for _ in range(takes)]
    assert a.count(True) == allowed and a[:allowed] == [True] * allowed
    # B has its own bucket: A's flood costs B nothing.
    assert all(limiter.rate("B", name, rate) for _ in range(allowed))
    # and A's other kinds of traffic have their own buckets too
    assert limiter.rate("A", "other", rate)


def test_rate_change_applies_at_once():
    limiter = lim.Limiter(clock=Clock())
    assert [limiter.rate("A", "requests", 1) for _ in range(3)] == [True, True, False]
    assert limiter.rate("A", "requests", 100)  # a new policy: a new bucket at its own burst


@pytest.mark.parametrize(
    "limit, opens, closes, then_open",
    [
        (1, 1, 0, False),
        (1, 1, 1, True),
        (3, 3, 0, False),
        (3, 5, 0, False),
        (3, 3, 2, True),
    ],
)
def test_connections(limit, opens, closes, then_open):
    limiter = lim.Limiter()
    results = [limiter.open("A", limit) for _ in range(opens)]
    assert results.count(True) == min(opens, limit)
    for _ in range(closes):
        limiter.close("A")
    assert limiter.open("A", limit) is then_open
    assert limiter.open("B", limit)  # never another session's connections


def test_close_never_goes_negative():
    limiter = lim.Limiter()
    limiter.close("A")
    limiter.close("nobody")
    assert limiter.open_connections("A") == 0
    assert limiter.open("A", 1) and not limiter.open("A", 1)


def test_state_is_bounded_and_keeps_sessions_with_open_connections():
    limiter = lim.Limiter(max_sessions=100)
    assert limiter.open("busy", 1)
    for i in range(10_000):
        limiter.rate(f"s{i}", "requests", 1)
    assert len(limiter) <= 100
    assert limiter.open_connections("busy") == 1  # evicting it would let it open more than its limit
    assert not limiter.open("busy", 1)


def test_forget():
    limiter = lim.Limiter()
    limiter.rate("A", "requests", 1)
    limiter.rate("A", "requests", 1)
    assert not limiter.rate("A", "requests", 1)
    limiter.forget("A")
    assert len(limiter) == 0 and limiter.rate("A", "requests", 1)


LIMITS = Limits(header_count=3, header_bytes=100, url_bytes=50, body_bytes=1000)


@pytest.mark.parametrize(
    "sizes, expected",
    [
        ({}, None),
        ({"header_count": 3, "header_bytes": 100, "url_bytes": 50, "body_bytes": 1000}, None),
        ({"header_count": 4}, lim.HEADER_COUNT),
        ({"header_bytes": 101}, lim.HEADER_BYTES),
        ({"url_bytes": 51}, lim.URL),
        ({"body_bytes": 1001}, lim.BODY),
        ({"header_count": 4, "body_bytes": 1001}, lim.HEADER_COUNT),  # the first one found is named
    ],
)
def test_over_size(sizes, expected):
    assert lim.over_size(LIMITS, **sizes) == expected


@pytest.mark.parametrize("name", lim.NAMES)
def test_reason_names(name):
    assert lim.reason(name) == f"limit-{name}"


def test_no_mitmproxy_import():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(lim))
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.startswith("mitmproxy")]
