"""gateway/workers.py and what workers need elsewhere: the `workers` key, each worker's ports and flow log,
pinning in the registry, the SQLite store a worker follows, merged metrics, reader.expand over worker logs."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time

import pytest

from gateway.config import Config, Listen, config_from_dict
from gateway.errors import ConfigError
from gateway.lab.harness import policy_text
from gateway.log import reader
from gateway.policy import load_policy_text
from gateway.sessions.registry import SessionRegistry
from gateway.sessions.store import FollowingSqliteStore, SqliteStore
from gateway.workers import merge_expositions, worker_config, worker_log_path

POLICY = policy_text("p", "- name: a\n  hosts: [{matchName: a.test}]\n")


def test_workers_default_is_one_process():
    assert Config().workers == 1
    assert config_from_dict({}).workers == 1


@pytest.mark.parametrize("value, want", [(1, 1), (2, 2), (64, 64), ("auto", max(1, min(os.cpu_count() or 1, 64)))])
def test_workers_values(value, want):
    assert config_from_dict({"workers": value, "sessions": {"store": "sqlite:///tmp/x.db"}}).workers == want


@pytest.mark.parametrize("value", [0, -1, 65, "two", 1.5, True, None, [2]])
def test_bad_workers_value_names_the_key_and_the_fix(value):
    with pytest.raises(ConfigError) as e:
        config_from_dict({"workers": value}, "cfg.yaml")
    msg = str(e.value)
    assert msg.startswith("cfg.yaml: workers") and "fix: workers: auto" in msg


@pytest.mark.parametrize("raw, words", [
    ({"listen": {"transparent": 15001, "dns": 15002}}, ["listen.transparent 15001-15004 overlaps listen.dns"]),
    ({"listen": {"metrics": 3130}}, ["listen.metrics port 3130", "listen.proxy"]),
    ({"listen": {"transparent": 65534}}, ["past port 65535"]),
    ({"sessions": {"store": "memory"}}, ["not memory", "sqlite://"]),
])
def test_worker_port_ranges_must_not_collide(raw, words):
    with pytest.raises(ConfigError) as e:
        config_from_dict({"workers": 4, **raw}, "cfg.yaml")
    for w in words:
        assert w in str(e.value)
    config_from_dict({"workers": 1, **raw}, "cfg.yaml")  # one process: no port ranges, no shared store needed


def test_worker_config_shifts_ports_and_log():
    config = config_from_dict({"workers": 3, "log": {"path": "/var/log/egressgw/flows.jsonl"}})
    w2 = worker_config(config, 2)
    assert (w2.transparent, w2.dns, w2.proxy) == (Listen("0.0.0.0", 15003), Listen("0.0.0.0", 15355),
                                                  Listen("127.0.0.1", 3130))
    assert w2.metrics is None and w2.log_path == "/var/log/egressgw/flows-w2.jsonl"
    assert worker_log_path("/l/flows.jsonl", 0) == "/l/flows-w0.jsonl"


def test_expand_reads_every_workers_log(tmp_path):
    live = tmp_path / "flows.jsonl"
    for name in ("flows.jsonl", "flows.jsonl.1", "flows-w0.jsonl", "flows-w1.jsonl.1", "flows-w1.jsonl",
                 "flows-w10.jsonl", "other-w1.jsonl"):
        (tmp_path / name).write_text("{}\n")
    names = [p.name for p in reader.expand(live)]
    assert names == ["flows.jsonl.1", "flows.jsonl", "flows-w0.jsonl", "flows-w1.jsonl.1", "flows-w1.jsonl",
                     "flows-w10.jsonl"]


def test_registry_of_a_worker_holds_only_its_sessions():
    policy = load_policy_text(POLICY)
    supervisor = SessionRegistry()
    s0 = supervisor.create("zero", policy, ["10.0.0.2"], policy_text=POLICY, worker=0)
    s1 = supervisor.create("one", policy, ["10.0.0.6"], policy_text=POLICY, worker=1)
    assert s1.record()["worker"] == 1 and s1.summary()["worker"] == 1
    w1 = SessionRegistry(worker=1)
    for s in (s0, s1):
        w1.apply(s.id, s.record())
    assert w1.ids() == {s1.id} and w1.by_source("10.0.0.2") is None and w1.by_source("10.0.0.6").id == s1.id
    # a record without a worker (made by a one-process gateway) belongs to worker 0
    legacy = {k: v for k, v in s0.record().items() if k != "worker"}
    w0 = SessionRegistry(worker=0)
    w0.apply(s0.id, legacy)
    assert w0.ids() == {s0.id}
    # a one-process registry keeps records as they were: no worker key
    assert "worker" not in SessionRegistry().create("x", policy, policy_text=POLICY).record()


def test_following_store_sees_changes_within_a_poll_and_fails_closed(tmp_path):
    path = str(tmp_path / "sessions.db")
    writer = SessionRegistry(SqliteStore(path))
    policy = load_policy_text(POLICY)
    follower = SessionRegistry(FollowingSqliteStore(path), worker=0)
    assert not follower.store.healthy()  # unverified until its first poll

    async def scenario():
        task = asyncio.ensure_future(follower.store.watch(follower.apply, follower.ids))
        try:
            await asyncio.sleep(0.15)
            assert follower.store.healthy() and len(follower) == 0
            s = writer.create("a", policy, ["10.0.0.2"], policy_text=POLICY, worker=0)
            start = time.monotonic()
            while s.id not in follower.ids():
                await asyncio.sleep(0.01)
                assert time.monotonic() - start < 1
            writer.replace_policy(s.id, load_policy_text(POLICY.replace("a.test", "b.test")),
                                  policy_text=POLICY.replace("a.test", "b.test"))
            start = time.monotonic()
            while "b.test" not in follower.get(s.id).policy_text:
                await asyncio.sleep(0.01)
                assert time.monotonic() - start < 1
            writer.delete(s.id)
            start = time.monotonic()
            while s.id in follower.ids():
                await asyncio.sleep(0.01)
                assert time.monotonic() - start < 1
            os.unlink(path)  # the store is gone: the worker cannot vouch for sessions any more
            await asyncio.sleep(0.25)
            assert not follower.store.healthy()
        finally:
            task.cancel()

    asyncio.run(scenario())


def test_merge_expositions_sums_counters_and_keeps_the_minimum_store_up():
    sup = ("# HELP egressgw_active_sessions x\n# TYPE egressgw_active_sessions gauge\negressgw_active_sessions 5.0\n"
           "# HELP egressgw_workers x\n# TYPE egressgw_workers gauge\negressgw_workers 2.0\n")
    w = ("# HELP egressgw_requests_total x\n# TYPE egressgw_requests_total counter\n"
         'egressgw_requests_total{action="allow",protocol="http",reason="allowed"} %d\n'
         "# HELP egressgw_active_sessions x\n# TYPE egressgw_active_sessions gauge\negressgw_active_sessions %d\n"
         "# HELP egressgw_session_store_up x\n# TYPE egressgw_session_store_up gauge\negressgw_session_store_up %d\n")
    text = merge_expositions([sup, w % (3, 2, 1), w % (4, 3, 0)]).decode()
    assert 'egressgw_requests_total{action="allow",protocol="http",reason="allowed"} 7.0' in text
    assert "egressgw_active_sessions 5.0" in text  # the workers' 2 + 3, not the supervisor's too
    assert "egressgw_session_store_up 0.0" in text
    assert "egressgw_workers 2.0" in text


def test_sqlite_data_version_changes_only_for_other_connections(tmp_path):
    """What FollowingSqliteStore relies on."""
    path = str(tmp_path / "d.db")
    a, b = sqlite3.connect(path, isolation_level=None), sqlite3.connect(path, isolation_level=None)
    a.execute("CREATE TABLE t (x)")
    before = b.execute("PRAGMA data_version").fetchone()[0]
    a.execute("INSERT INTO t VALUES (1)")
    assert b.execute("PRAGMA data_version").fetchone()[0] != before
