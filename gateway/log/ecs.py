"""Map a native flow-log event to an Elastic Common Schema 8.x document (`log.format: ecs`).

The native event rides along unchanged under the custom top-level object
`egressgw` (ECS reserves no such name), so a reader gets it back losslessly.
"""

from __future__ import annotations

from gateway.log.ocsf import PRODUCT, endpoint

ECS_VERSION = "8.11.0"

_OUTCOME = {"allow": "success", "report": "success", "deny": "failure"}
_TYPE = {"allow": ["allowed", "connection"], "report": ["allowed", "connection"], "deny": ["denied", "connection"]}


def _ep(addr: str | None) -> dict | None:
    ep = endpoint(addr)
    if not ep:
        return None
    out: dict = {"ip": ep["ip"], "address": addr}
    if "port" in ep:
        out["port"] = ep["port"]
    return out


def to_ecs(event: dict, seq: int | None = None, log_name: str = "flow") -> dict:
    kind = event.get("event")
    decision = event.get("decision")
    doc: dict = {
        "@timestamp": event.get("time"),
        "ecs": {"version": ECS_VERSION},
        "observer": {"product": PRODUCT["name"], "vendor": PRODUCT["vendor_name"], "version": PRODUCT["version"],
                     "type": "proxy"},
        "event": {
            "kind": "alert" if event.get("alert") else "event",
            "category": ["network", "web"] if kind == "http" else ["network"] if kind != "session" else ["session"],
            "type": _TYPE.get(decision, ["info"]),
            "action": f"{kind}-{decision}" if decision else str(kind),
            "dataset": f"egressgw.{log_name}",
            "module": "egressgw",
        },
        "log": {"logger": log_name},
    }
    if seq is not None:
        doc["event"]["sequence"] = seq
    if decision in _OUTCOME:
        doc["event"]["outcome"] = _OUTCOME[decision]
    if event.get("reason"):
        doc["event"]["reason"] = event["reason"]
    if event.get("duration_ms") is not None:
        doc["event"]["duration"] = int(event["duration_ms"] * 1_000_000)  # nanoseconds
    src = _ep(event.get("client"))
    if src:
        doc["source"] = src
    dst: dict = {}
    if event.get("dest_host"):
        dst["domain"] = event["dest_host"]
    if event.get("dest_ip"):
        dst["ip"] = event["dest_ip"]
    if event.get("dest_port") is not None:
        dst["port"] = event["dest_port"]
    if dst:
        doc["destination"] = dst
    if event.get("bytes_out") is not None:
        doc.setdefault("source", {})["bytes"] = event["bytes_out"]
    if event.get("bytes_in") is not None:
        doc.setdefault("destination", {})["bytes"] = event["bytes_in"]
    if event.get("sni"):
        doc["tls"] = {"client": {"server_name": event["sni"]}}
    if kind == "http":
        http: dict = {}
        if event.get("method"):
            http["request"] = {"method": event["method"]}
        if event.get("status") is not None:
            http["response"] = {"status_code": event["status"]}
        if http:
            doc["http"] = http
        if event.get("url"):
            doc["url"] = {"original": event["url"]}
    if kind == "dns":
        dns: dict = {"type": "answer" if event.get("dns_rcode") else "query"}
        question: dict = {}
        if event.get("dns_qname"):
            question["name"] = event["dns_qname"]
        if event.get("dns_qtype"):
            question["type"] = event["dns_qtype"]
        if question:
            dns["question"] = question
        if event.get("dns_rcode"):
            dns["response_code"] = event["dns_rcode"]
        if event.get("dns_answers"):
            dns["answers"] = [{"data": a} for a in event["dns_answers"]]
        doc["dns"] = dns
    if event.get("rule"):
        doc["rule"] = {"name": event["rule"]}
    if event.get("session"):
        doc["labels"] = {"session": event["session"]}
    if event.get("detail"):
        doc["message"] = event["detail"]
    doc["egressgw"] = event
    return doc


def checkpoint(chain: dict, time_ms: int, log_name: str = "flow") -> dict:
    from gateway.log.events import rfc3339

    return {
        "@timestamp": rfc3339(time_ms / 1000),
        "ecs": {"version": ECS_VERSION},
        "event": {"kind": "event", "category": ["configuration"], "type": ["info"],
                  "action": f"log-checkpoint-{chain.get('reason', 'interval')}", "dataset": f"egressgw.{log_name}",
                  "module": "egressgw", "sequence": chain.get("seq")},
        "message": f"flow-log checkpoint ({chain.get('reason', 'interval')})",
    }
