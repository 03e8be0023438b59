"""gateway/logindex/query.py: times, host globs, and the Python and SQL forms of a filter agreeing."""

from __future__ import annotations

import pytest

from gateway.commands.logquery import _scan
from gateway.logindex import QueryError
from gateway.logindex.index import LogIndex, log_files, search
from gateway.logindex.query import Filter, _glob_kind, event_time, host_of, is_alert, parse_time

NOW = 1_795_003_600.0  # 2026-11-18T12:06:40Z


@pytest.mark.parametrize("text, expected", [
    ("2026-11-18T12:06:40Z", NOW),
    ("2026-11-18T12:06:40.5Z", NOW + 0.5),
    ("2026-11-18T13:06:40+01:00", NOW),
    ("2026-11-18T12:06:40", NOW),  # no offset: UTC, like the log
    ("2026-11-18", NOW - (12 * 3600 + 6 * 60 + 40)),
    ("now", NOW),
    ("-15m", NOW - 900),
    ("15m", NOW - 900),
    ("-2h", NOW - 7200),
    ("-1.5h", NOW - 5400),
    ("-7d", NOW - 7 * 86400),
    ("-30s", NOW - 30),
    ("-1w", NOW - 7 * 86400),
    ("+10m", NOW + 600),
])
def test_parse_time(text, expected):
    assert parse_time(text, now=NOW) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["yesterday", "-15x", "2026-13-01", "", "15 minutes ago"])
def test_parse_time_refuses_with_the_fix(text):
    with pytest.raises(QueryError) as e:
        parse_time(text, now=NOW)
    assert "fix:" in str(e.value) and "-15m" in str(e.value)


@pytest.mark.parametrize("event, host", [
    ({"dest_host": "API.Example.com", "sni": "x"}, "api.example.com"),
    ({"sni": "sni.example.com"}, "sni.example.com"),
    ({"dns_qname": "q.example.com."}, "q.example.com"),
    ({}, ""),
])
def test_host_of(event, host):
    assert host_of(event) == host


@pytest.mark.parametrize("event, alert", [
    ({"alert": True}, True), ({"detections": [{"rule": "r"}]}, True), ({"detections": []}, False), ({}, False),
])
def test_is_alert(event, alert):
    assert is_alert(event) is alert


@pytest.mark.parametrize("glob, kind", [
    ("api.example.com", "exact"), ("*.example.com", "suffix"), ("*example.com", "suffix"),
    ("api.*", "scan"), ("a?i.example.com", "scan"), ("*.ex[a]mple.com", "scan"),
])
def test_glob_kinds(glob, kind):
    assert _glob_kind(glob)[0] == kind


def test_bad_values_are_refused():
    with pytest.raises(QueryError, match="allow, deny, report"):
        Filter(decision="denied")
    with pytest.raises(QueryError, match="dns, tls, http"):
        Filter(kind="udp")
    with pytest.raises(QueryError, match="swap"):
        Filter(since=NOW, until=NOW - 1)


def test_event_time():
    assert event_time({"time": "2026-11-18T12:06:40.000000Z"}) == NOW
    assert event_time({"time": "garbage"}) is None
    assert event_time({}) is None


def _filters(sessions):
    s0, s1 = sessions[0].id, sessions[1].id
    t0 = 1_795_000_000.0
    return [
        Filter(),
        Filter(sessions=(s0,)),
        Filter(sessions=(s0, s1), decision="deny"),
        Filter(kind="dns", decision="deny"),
        Filter(kind="http", decision="allow"),
        Filter(host="*.example.com"),
        Filter(host="*.tracker-3.example.net", decision="deny"),
        Filter(host=sessions[0].allowed[0]),
        Filter(host=sessions[0].allowed[0].upper() + "."),
        Filter(host="svc*.internal-1?.example.com"),
        Filter(host="*[0-9].example.net"),
        Filter(rule="ssh"),
        Filter(rule="ssh", kind="tcp"),
        Filter(alerts=True),
        Filter(alerts=True, sessions=(s0,)),
        Filter(since=t0 + 600, until=t0 + 1200),
        Filter(since=t0 + 600, kind="tls", decision="deny"),
        Filter(until=t0 + 300),
        Filter(kind="session"),
        Filter(decision="deny", host="*"),
    ]


def test_index_and_scan_agree(fleet_log, tmp_path):
    """Every filter: the SQL form over the index gives exactly the events the Python form finds in the log."""
    path, sessions = fleet_log
    files = log_files([path])
    everything = list(_scan(files, Filter(), None, False))  # the log in time order, read once
    filters = _filters(sessions)
    with LogIndex(tmp_path / "idx.sqlite") as index:
        index.update(files)
        nonempty = 0
        for n, flt in enumerate(filters):
            expected = [e for e in everything if flt.match(e)]
            if n % 5 == 0:  # the scan command path itself, for some
                assert list(_scan(files, flt, None, False)) == expected
                assert list(_scan(files, flt, 7, True)) == expected[::-1][:7]
            via_index = [h.event for h in search(index, flt, files)]
            assert via_index == expected, flt
            assert index.count(flt, files) == len(expected)
            assert [h.event for h in search(index, flt, files, 7, True)] == expected[::-1][:7]
            nonempty += bool(expected)
        assert nonempty == len(filters)  # the table exercises real matches, not empty sets


def test_describe_args_round_trip():
    flt = Filter(sessions=("s-1",), host="*.x.test", decision="deny", kind="http", rule="r", alerts=True,
                 since=NOW - 60, until=NOW)
    args = flt.describe_args()
    assert args[:2] == ["--session", "s-1"] and "--alerts" in args
    since = args[args.index("--since") + 1]
    assert parse_time(since) == pytest.approx(NOW - 60)
