"""gateway/audit.py + gateway/metrics.py: one path from a decision to the log and the counters."""

from __future__ import annotations

import json

import pytest

from gateway import metrics
from gateway.audit import GATEWAY_REASONS, Audit
from gateway.log import events, reader
from gateway.log.writer import FlowLog, LogWriteError
from gateway.policy import REASONS
from gateway.sessions.registry import SessionRegistry

from .helpers import policy


def sample(name: str, **labels) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels or None) or 0.0


@pytest.fixture
def audit(tmp_path):
    a = Audit(FlowLog(tmp_path / "flows.jsonl"))
    yield a
    a.close()


def records(audit) -> list[dict]:
    return [r.event for r in reader.iter_records([audit.flowlog.path])]


def test_emit_writes_then_counts_a_decision(audit):
    before = sample("egressgw_requests_total", protocol="http", action="deny", reason="host-not-allowed")
    written = sample("egressgw_log_records_total")
    event = events.make_event(events.HTTP, dest_host="denied.test", decision="deny", reason="host-not-allowed")
    audit.emit(event)
    assert records(audit) == [event]
    assert sample("egressgw_requests_total", protocol="http", action="deny", reason="host-not-allowed") == before + 1
    assert sample("egressgw_log_records_total") == written + 1
    assert audit.healthy


@pytest.mark.parametrize("kind", [events.TLS, events.HTTP, events.TCP, events.CONNECT])
@pytest.mark.parametrize("reason", [*REASONS, *GATEWAY_REASONS])
def test_every_known_reason_is_its_own_label(audit, kind, reason):
    before = sample("egressgw_requests_total", protocol=kind, action="deny", reason=reason)
    audit.emit(events.make_event(kind, decision="deny", reason=reason))
    assert sample("egressgw_requests_total", protocol=kind, action="deny", reason=reason) == before + 1


@pytest.mark.parametrize("reason", ["evil.test", "upstream said: 502 from 10.0.0.1", "Allowed", ""])
def test_unknown_reasons_become_other(audit, reason):
    before = sample("egressgw_requests_total", protocol="http", action="deny", reason="other")
    audit.emit(events.make_event(events.HTTP, decision="deny", reason=reason))
    assert sample("egressgw_requests_total", protocol="http", action="deny", reason="other") == before + 1
    assert f'reason="{reason}"' not in metrics.exposition().decode()


def test_missing_reason_and_decision_count_as_allowed_and_deny(audit):
    before = sample("egressgw_requests_total", protocol="tcp", action="deny", reason="allowed")
    audit.emit(events.make_event(events.TCP))
    assert sample("egressgw_requests_total", protocol="tcp", action="deny", reason="allowed") == before + 1


def test_host_names_and_urls_never_become_labels(audit):
    audit.emit(events.make_event(
        events.HTTP, session="s-secretsession", dest_host="leaky-host.test", sni="leaky-sni.test",
        url="https://leaky-host.test/leaky-path?x=", decision="allow", rule="leaky-rule", reason="allowed"))
    audit.emit(events.make_event(events.DNS, session="s-secretsession", dns_qname="leaky-dns.test",
                                 dns_answers=["198.18.1.10"], decision="allow", dns_rcode="NOERROR"))
    text = metrics.exposition().decode()
    for leak in ("leaky", "s-secretsession", "198.18.1.10"):
        assert leak not in text
    for line in text.splitlines():
        if line.startswith("egressgw_") and "{" in line:
            labels = {kv.split("=")[0] for kv in line[line.index("{") + 1:line.index("}")].split(",")}
            assert labels <= {"protocol", "action", "reason", "rcode", "limit", "le"}, line  # closed sets


def test_dns_events_count_by_action_and_rcode_not_as_requests(audit):
    dns_before = sample("egressgw_dns_queries_total", action="deny", rcode="NXDOMAIN")
    req_before = sample("egressgw_requests_total", protocol="dns", action="deny", reason="host-not-allowed")
    audit.emit(events.make_event(events.DNS, dns_qname="x.test", decision="deny", dns_rcode="NXDOMAIN",
                                 reason="host-not-allowed"))
    assert sample("egressgw_dns_queries_total", action="deny", rcode="NXDOMAIN") == dns_before + 1
    assert sample("egressgw_requests_total", protocol="dns", action="deny", reason="host-not-allowed") == req_before


def test_session_events_are_logged_but_not_counted_as_requests(audit):
    text_before = metrics.exposition().decode()
    audit.emit(events.make_event(events.SESSION, session="s-1", detail="created: x"))
    assert 'protocol="session"' not in metrics.exposition().decode()
    assert 'protocol="session"' not in text_before
    assert records(audit)[-1]["event"] == "session"


def test_log_write_error_propagates_and_counts(tmp_path):
    audit = Audit(FlowLog("/dev/full"))
    errors = sample("egressgw_log_write_errors_total")
    written = sample("egressgw_log_records_total")
    decisions = sample("egressgw_requests_total", protocol="http", action="allow", reason="allowed")
    with pytest.raises(LogWriteError):
        audit.emit(events.make_event(events.HTTP, decision="allow", reason="allowed"))
    assert sample("egressgw_log_write_errors_total") == errors + 1
    assert sample("egressgw_log_records_total") == written
    # an unlogged decision is not counted either: the log and the counters never disagree
    assert sample("egressgw_requests_total", protocol="http", action="allow", reason="allowed") == decisions
    assert not audit.healthy
    audit.close()


def test_healthy_again_after_a_successful_write(tmp_path):
    audit = Audit(FlowLog(tmp_path / "flows.jsonl"))
    audit.flowlog.close()
    with pytest.raises(LogWriteError):
        audit.emit(events.make_event(events.DNS))
    assert not audit.healthy
    audit.flowlog = FlowLog(tmp_path / "flows.jsonl")
    audit.emit(events.make_event(events.DNS))
    assert audit.healthy
    audit.close()


def test_session_changed_sets_active_sessions_and_logs(audit):
    registry = SessionRegistry()
    registry.subscribe(lambda what, s: audit.session_changed(what, s, len(registry)))
    a = registry.create("alpha", policy(), ["10.211.0.2"])
    assert sample("egressgw_active_sessions") == 1
    registry.create("beta", policy(), ["10.211.0.6"])
    assert sample("egressgw_active_sessions") == 2
    registry.delete(a.id)
    assert sample("egressgw_active_sessions") == 1
    got = records(audit)
    assert [(r["event"], r["detail"]) for r in got] == [
        ("session", "created: alpha"), ("session", "created: beta"), ("session", "deleted: alpha")]
    assert got[0]["session"] == a.id and got[0]["rule"] == "unit"
    assert all(a.token not in json.dumps(r) for r in got)


def test_exposition_declares_every_metric():
    text = metrics.exposition().decode()
    for name in ("egressgw_requests_total", "egressgw_dns_queries_total", "egressgw_active_sessions",
                 "egressgw_upstream_latency_seconds", "egressgw_log_records_total",
                 "egressgw_log_write_errors_total"):
        assert f"# TYPE {name.removesuffix('_total')}" in text
