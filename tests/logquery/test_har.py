"""gateway/logindex/har.py: HAR 1.2 from the log, nothing the log does not hold."""

from __future__ import annotations

from gateway.logindex.har import COMMENT, build_har, entry

HTTP = {"time": "2026-11-18T11:06:41.000000Z", "event": "http", "session": "s-1", "dest_host": "a.test",
        "dest_ip": "198.18.0.1", "dest_port": 443, "method": "POST", "url": "https://a.test/up?key=&x=", "status": 200,
        "bytes_out": 12, "bytes_in": 345, "duration_ms": 8.5, "decision": "allow", "rule": "api", "reason": "allowed",
        "secrets": ["OPENAI_API_KEY@headers"]}
DENIED = {"time": "2026-11-18T11:06:42.000000Z", "event": "http", "session": "s-1", "dest_host": "b.test",
          "method": "GET", "url": "https://b.test/", "status": 403, "decision": "deny", "reason": "host-not-allowed"}
OTHERS = [
    {"time": "2026-11-18T11:06:40.000000Z", "event": "dns", "session": "s-1", "dns_qname": "a.test"},
    {"time": "2026-11-18T11:06:43.000000Z", "event": "http", "session": "s-1", "method": "WEBSOCKET",
     "url": "https://a.test/ws"},
    {**HTTP, "session": "s-2"},
]

REQUIRED = {
    "log": {"version", "creator", "entries"},
    "entry": {"startedDateTime", "time", "request", "response", "cache", "timings"},
    "request": {"method", "url", "httpVersion", "cookies", "headers", "queryString", "headersSize", "bodySize"},
    "response": {"status", "statusText", "httpVersion", "cookies", "headers", "content", "redirectURL",
                 "headersSize", "bodySize"},
    "content": {"size", "mimeType"},
    "timings": {"send", "wait", "receive"},
}


def test_har_has_every_required_field():
    har = build_har("s-1", [(e, None) for e in [OTHERS[0], HTTP, DENIED, *OTHERS[1:]]])
    log = har["log"]
    assert REQUIRED["log"] <= set(log) and log["version"] == "1.2"
    assert [e["request"]["url"] for e in log["entries"]] == [HTTP["url"], DENIED["url"]]
    for e in log["entries"]:
        assert REQUIRED["entry"] <= set(e)
        assert REQUIRED["request"] <= set(e["request"]) and REQUIRED["response"] <= set(e["response"])
        assert REQUIRED["content"] <= set(e["response"]["content"])
        assert REQUIRED["timings"] <= set(e["timings"])
        assert e["request"]["headers"] == [] and e["response"]["headers"] == []  # not captured
    assert "2 other events" in log["comment"] and COMMENT in log["comment"]


def test_entry_keeps_what_the_log_has():
    e = entry(HTTP, "flows.jsonl:7")
    assert e["request"]["queryString"] == [{"name": "key", "value": ""}, {"name": "x", "value": ""}]
    assert e["request"]["bodySize"] == 12 and e["response"]["bodySize"] == 345
    assert e["response"]["content"]["comment"] == "body not captured"
    assert e["time"] == 8.5 and e["serverIPAddress"] == "198.18.0.1"
    assert e["_egressgw"]["secrets"] == ["OPENAI_API_KEY@headers"] and e["_egressgw"]["log"] == "flows.jsonl:7"
    d = entry(DENIED)
    assert d["response"]["status"] == 403 and d["comment"] == "deny: host-not-allowed"
    assert d["response"]["bodySize"] == -1  # unknown, as HAR spells it
