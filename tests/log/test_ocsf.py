"""gateway/log/ocsf.py and ecs.py: each native event kind maps to its OCSF class, losslessly."""

from __future__ import annotations

import pytest

from gateway.log import ecs, events, ocsf


def ev(kind, **kw):
    return events.make_event(kind, **kw)


# (event, class_uid, activity_id, action_id, disposition_id, extra checks on the record)
CASES = [
    (ev(events.HTTP, session="s-1", client="10.211.0.2:40000", dest_host="allowed.test", dest_ip="198.18.1.10",
        dest_port=443, sni="allowed.test", method="GET", url="https://allowed.test/a/b?token=&x=", status=200,
        bytes_out=5, bytes_in=24, decision="allow", rule="allowed-https", reason="allowed", duration_ms=10.4),
     4002, 3, 1, 1,
     {"http_request": {"http_method": "GET", "url": {"url_string": "https://allowed.test/a/b?token=&x=",
                                                     "scheme": "https", "hostname": "allowed.test", "path": "/a/b",
                                                     "query_string": "token=&x="}},
      "http_response": {"code": 200}, "traffic": {"bytes_in": 24, "bytes_out": 5},
      "src_endpoint": {"ip": "10.211.0.2", "port": 40000},
      "dst_endpoint": {"hostname": "allowed.test", "ip": "198.18.1.10", "port": 443},
      "firewall_rule": {"name": "allowed-https", "desc": "allowed"}, "policy": {"name": "session policy", "uid": "s-1"},
      "is_alert": False, "duration": 10, "status": "Success", "severity_id": 1}),
    (ev(events.HTTP, session="s-1", method="POST", url="http://denied.test:8080/x", status=403, decision="deny",
        reason="host-not-allowed"),
     4002, 6, 2, 2,
     {"http_request": {"http_method": "POST", "url": {"url_string": "http://denied.test:8080/x", "scheme": "http",
                                                      "hostname": "denied.test", "port": 8080, "path": "/x"}},
      "firewall_rule": {"name": "host-not-allowed", "desc": "host-not-allowed"}, "status": "Failure",
      "severity_id": 3}),
    (ev(events.HTTP, method="BREW", decision="report", rule="r", alert=True, secrets=["K@headers"]),
     4002, 99, 1, 17, {"is_alert": True, "severity_id": 4, "activity_name": "Other"}),
    (ev(events.DNS, session="s-1", client="[fd00::2]:5353", dns_qname="allowed.test", dns_qtype="A",
        dns_rcode="NOERROR", dns_answers=["198.18.1.10"], decision="allow"),
     4003, 2, 1, 1,
     {"query": {"hostname": "allowed.test", "type": "A", "class": "IN"}, "rcode_id": 0, "rcode": "NoError",
      "answers": [{"rdata": "198.18.1.10"}], "src_endpoint": {"ip": "fd00::2", "port": 5353}}),
    (ev(events.DNS, dns_qname="denied.test", dns_qtype="AAAA", dns_rcode="NXDOMAIN", decision="deny",
        reason="host-not-allowed"),
     4003, 2, 2, 2, {"rcode_id": 3, "rcode": "NXDomain"}),
    (ev(events.TLS, sni="denied.test", dest_ip="198.18.1.11", dest_port=443, decision="deny", reason="host-not-allowed"),
     4001, 5, 2, 2, {"tls": {"sni": "denied.test"}, "activity_name": "Refuse"}),
    (ev(events.TLS, sni="allowed.test", decision="allow", rule="r"), 4001, 1, 1, 1, {"activity_name": "Open"}),
    (ev(events.TCP, dest_ip="198.18.1.12", dest_port=22, bytes_out=10, bytes_in=20, decision="allow", rule="ssh"),
     4001, 6, 1, 1, {"traffic": {"bytes_in": 20, "bytes_out": 10}}),
    (ev(events.TCP, dest_ip="198.18.1.12", dest_port=25, decision="deny", reason="port-not-allowed"),
     4001, 5, 2, 2, {}),
    (ev(events.CONNECT, dest_host="allowed.test", dest_port=443, decision="allow", rule="r"), 4001, 1, 1, 1, {}),
    (ev(events.SESSION, session="s-1", rule="pol", detail="created: box1"), 4001, 99, None, None,
     {"activity_name": "Session created", "message": "created: box1"}),
]


def subset(expected: dict, actual: dict) -> None:
    for k, v in expected.items():
        assert actual.get(k) == v, (k, actual.get(k), v)


@pytest.mark.parametrize("event,class_uid,activity_id,action_id,disposition_id,extra", CASES,
                         ids=[f"{c[0]['event']}-{c[0].get('decision', '')}-{i}" for i, c in enumerate(CASES)])
def test_ocsf_mapping(event, class_uid, activity_id, action_id, disposition_id, extra):
    rec = ocsf.to_ocsf(event, seq=7)
    assert rec["class_uid"] == class_uid
    assert rec["category_uid"] == 4
    assert rec["activity_id"] == activity_id
    assert rec["type_uid"] == class_uid * 100 + activity_id
    assert rec.get("action_id") == action_id
    assert rec.get("disposition_id") == disposition_id
    assert rec["time"] == ocsf.epoch_ms(event["time"]) and rec["time"] > 1_700_000_000_000
    assert rec["metadata"] == {"version": "1.3.0", "product": ocsf.PRODUCT, "log_name": "flow", "sequence": 7}
    assert rec["unmapped"]["egressgw"] is event  # the native event rides along unchanged
    subset(extra, rec)


def test_unknown_native_fields_pass_through_unmapped():
    event = ev(events.HTTP, decision="deny", reason="secret-detected")
    event["detections"] = [{"detector": "aws-key", "where": "body", "redacted": "AKIA…"}]
    rec = ocsf.to_ocsf(event)
    assert rec["unmapped"]["egressgw"]["detections"] == event["detections"]
    doc = ecs.to_ecs(event)
    assert doc["egressgw"]["detections"] == event["detections"]


@pytest.mark.parametrize("event", [c[0] for c in CASES], ids=[c[0]["event"] for c in CASES])
def test_ecs_mapping_keeps_the_native_event(event):
    doc = ecs.to_ecs(event, seq=3)
    assert doc["ecs"] == {"version": ecs.ECS_VERSION}
    assert doc["@timestamp"] == event["time"]
    assert doc["egressgw"] is event
    assert doc["event"]["sequence"] == 3
    if event.get("decision") == "deny":
        assert doc["event"]["outcome"] == "failure" and "denied" in doc["event"]["type"]
    if event.get("alert"):
        assert doc["event"]["kind"] == "alert"
    if event["event"] == "dns":
        assert doc["dns"]["question"]["name"] == event["dns_qname"]
    if event["event"] == "http" and event.get("url"):
        assert doc["url"]["original"] == event["url"]
