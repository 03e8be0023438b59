"""Map a native flow-log event to an OCSF 1.3.0 record (the default on-disk format).

One function, `to_ocsf(event)`. The native event (`events.make_event`) rides
along unchanged under `unmapped.egressgw`, so a reader gets it back losslessly
and fields added by other parts of the gateway (e.g. `detections`) are never
lost even before this mapper knows them.

| native `event` | OCSF class | activity |
|---|---|---|
| `http` | HTTP Activity (4002) | by method: Get 3, Post 6, ... Other 99 |
| `dns` | DNS Activity (4003) | Response 2 (the gateway answered), Query 1 (no answer) |
| `tls`, `tcp`, `connect` | Network Activity (4001) | Refuse 5 when denied; Open 1 (tls, connect) or Traffic 6 (tcp) |
| `session` | Network Activity (4001) | Other 99, `activity_name` "Session created" / "Session deleted" ... |
| chain checkpoint | Event Log Activity (1008) | Start 6 (open), Rotate 5, Stop 7, Other 99 (interval) |
"""

from __future__ import annotations

from datetime import datetime

from importlib import metadata as _metadata_lib

try:
    _VERSION = _metadata_lib.version("egressgw")
except _metadata_lib.PackageNotFoundError:  # running from a source tree
    _VERSION = "0.0.0"

OCSF_VERSION = "1.3.0"
PRODUCT = {"name": "egressgw", "vendor_name": "egressgw", "version": _VERSION}

NETWORK, HTTP, DNS, EVENT_LOG = 4001, 4002, 4003, 1008
_CLASS_NAMES = {NETWORK: "Network Activity", HTTP: "HTTP Activity", DNS: "DNS Activity",
                EVENT_LOG: "Event Log Activity"}

_HTTP_ACTIVITY = {"CONNECT": (1, "Connect"), "DELETE": (2, "Delete"), "GET": (3, "Get"), "HEAD": (4, "Head"),
                  "OPTIONS": (5, "Options"), "POST": (6, "Post"), "PUT": (7, "Put"), "TRACE": (8, "Trace")}
_RCODES = {"NOERROR": 0, "FORMERR": 1, "SERVFAIL": 2, "NXDOMAIN": 3, "NOTIMP": 4, "REFUSED": 5, "YXDOMAIN": 6,
           "YXRRSET": 7, "NXRRSET": 8, "NOTAUTH": 9, "NOTZONE": 10}
_RCODE_NAMES = {0: "NoError", 1: "FormError", 2: "ServError", 3: "NXDomain", 4: "NotImp", 5: "Refused",
                6: "YXDomain", 7: "YXRRSet", 8: "NXRRSet", 9: "NotAuth", 10: "NotZone"}

# decision -> (action_id, action, disposition_id, disposition)
_ACTIONS = {
    "allow": (1, "Allowed", 1, "Allowed"),
    "deny": (2, "Denied", 2, "Blocked"),
    # report mode: the policy would have refused it, the gateway let it through and logged it
    "report": (1, "Allowed", 17, "Logged"),
}

# Checkpoint reasons -> Event Log Activity activity.
_CHECKPOINT_ACTIVITY = {"open": (6, "Start"), "rotate": (5, "Rotate"), "stop": (7, "Stop")}


_SECOND: list = ["", 0]  # last `YYYY-MM-DDTHH:MM:SS` parsed and its epoch seconds


def epoch_ms(rfc3339: str | None) -> int:
    """Epoch milliseconds of an RFC 3339 time as events.rfc3339 writes it (any RFC 3339 time works)."""
    if not rfc3339:
        return 0
    head = rfc3339[:19]
    if head == _SECOND[0] and rfc3339[19:20] == "." and rfc3339.endswith("Z") and rfc3339[20:23].isdigit():
        return _SECOND[1] * 1000 + int(rfc3339[20:23])  # same second as the last one: skip the parse
    try:
        ts = datetime.fromisoformat(rfc3339).timestamp()  # 3.11+: "Z" is understood
    except ValueError:
        return 0
    if rfc3339.endswith("Z"):
        _SECOND[0], _SECOND[1] = head, int(ts)
    return int(ts * 1000)


def endpoint(addr: str | None) -> dict | None:
    """`ip:port` / `[v6]:port` (events.address) -> OCSF network endpoint."""
    if not addr:
        return None
    host, sep, port = addr.rpartition(":")
    if not sep:
        return {"ip": addr}
    out: dict = {"ip": host.strip("[]")}
    if port.isdigit():
        out["port"] = int(port)
    return out


def _url(url: str) -> dict:
    """OCSF url object of a URL the gateway built (`scheme://authority/path?names=`)."""
    out: dict = {"url_string": url}
    scheme, sep, rest = url.partition("://")
    if not sep:
        return out
    out["scheme"] = scheme
    slash = rest.find("/")
    authority, target = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    authority = authority.rpartition("@")[2]
    if authority.startswith("["):
        host, _, tail = authority[1:].partition("]")
        port = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port = authority.partition(":")
    if host:
        out["hostname"] = host.lower()
    if port.isdigit():
        out["port"] = int(port)
    path, _, query = target.partition("?")
    out["path"] = path.partition("#")[0] or "/"
    if query:
        out["query_string"] = query.partition("#")[0]  # names only: events.strip_query_values dropped the values
    return out


def _security(event: dict, rec: dict) -> None:
    """The security-control profile: action, disposition, policy, firewall rule, is_alert."""
    decision = event.get("decision")
    if decision in _ACTIONS:
        rec["action_id"], rec["action"], rec["disposition_id"], rec["disposition"] = _ACTIONS[decision]
    if event.get("rule") or event.get("reason"):
        rule: dict = {"name": event.get("rule") or event.get("reason")}
        if event.get("reason"):
            rule["desc"] = event["reason"]
        rec["firewall_rule"] = rule
    if event.get("session"):
        rec["policy"] = {"name": event.get("policy") or "session policy", "uid": event["session"]}
    alert = bool(event.get("alert"))
    rec["is_alert"] = alert
    if alert:
        rec["severity_id"], rec["severity"] = 4, "High"
    elif decision == "deny":
        rec["severity_id"], rec["severity"] = 3, "Medium"
    if decision == "deny" or (event.get("status") or 0) >= 500:
        rec["status_id"], rec["status"] = 2, "Failure"


_BASES: dict = {}


def _base(class_uid: int, activity: tuple[int, str], time_ms: int) -> dict:
    template = _BASES.get((class_uid, activity))
    if template is None:
        activity_id, activity_name = activity
        class_name = _CLASS_NAMES[class_uid]
        template = {
            "class_uid": class_uid,
            "class_name": class_name,
            "category_uid": class_uid // 1000,
            "category_name": "Network Activity" if class_uid // 1000 == 4 else "System Activity",
            "activity_id": activity_id,
            "activity_name": activity_name,
            "type_uid": class_uid * 100 + activity_id,
            "type_name": f"{class_name}: {activity_name}",
            "time": 0,
            "severity_id": 1,
            "severity": "Informational",
            "status_id": 1,
            "status": "Success",
        }
        if len(_BASES) < 512:  # session activity names vary; keep the cache bounded
            _BASES[(class_uid, activity)] = template
    rec = template.copy()
    rec["time"] = time_ms
    return rec


def _metadata(seq: int | None, log_name: str) -> dict:
    meta: dict = {"version": OCSF_VERSION, "product": PRODUCT, "log_name": log_name}
    if seq is not None:
        meta["sequence"] = seq
    return meta


def to_ocsf(event: dict, seq: int | None = None, log_name: str = "flow") -> dict:
    kind = event.get("event")
    decision = event.get("decision")
    if kind == "http":
        method = str(event.get("method") or "").upper()
        cls, activity = HTTP, _HTTP_ACTIVITY.get(method, (99, "Other"))
    elif kind == "dns":
        cls, activity = DNS, (2, "Response") if event.get("dns_rcode") else (1, "Query")
    elif kind == "session":
        what = str(event.get("detail") or "").split(":", 1)[0].strip() or "changed"
        cls, activity = NETWORK, (99, f"Session {what}")
    elif decision == "deny":
        cls, activity = NETWORK, (5, "Refuse")
    elif kind == "tcp":
        cls, activity = NETWORK, (6, "Traffic")
    else:  # tls, connect
        cls, activity = NETWORK, (1, "Open")
    rec = _base(cls, activity, epoch_ms(event.get("time")))
    rec["metadata"] = _metadata(seq, log_name)
    src = endpoint(event.get("client"))
    if src:
        rec["src_endpoint"] = src
    dst: dict = {}
    if event.get("dest_host"):
        dst["hostname"] = event["dest_host"]
    if event.get("dest_ip"):
        dst["ip"] = event["dest_ip"]
    if event.get("dest_port") is not None:
        dst["port"] = event["dest_port"]
    if dst:
        rec["dst_endpoint"] = dst
    if event.get("sni"):
        rec["tls"] = {"sni": event["sni"]}
    if kind == "http":
        req: dict = {}
        if event.get("method"):
            req["http_method"] = event["method"]
        if event.get("url"):
            req["url"] = _url(event["url"])
        if req:
            rec["http_request"] = req
        if event.get("status") is not None:
            rec["http_response"] = {"code": event["status"]}
    if kind == "dns":
        query: dict = {}
        if event.get("dns_qname"):
            query["hostname"] = event["dns_qname"]
        if event.get("dns_qtype"):
            query["type"] = event["dns_qtype"]
            query["class"] = "IN"
        if query:
            rec["query"] = query
        rcode = event.get("dns_rcode")
        if rcode:
            rcode_id = _RCODES.get(str(rcode).upper(), 99)
            rec["rcode_id"] = rcode_id
            rec["rcode"] = _RCODE_NAMES.get(rcode_id, str(rcode))
        if event.get("dns_answers"):
            rec["answers"] = [{"rdata": a} for a in event["dns_answers"]]
    if event.get("bytes_in") is not None or event.get("bytes_out") is not None:
        traffic: dict = {}
        if event.get("bytes_in") is not None:
            traffic["bytes_in"] = event["bytes_in"]
        if event.get("bytes_out") is not None:
            traffic["bytes_out"] = event["bytes_out"]
        rec["traffic"] = traffic
    if event.get("duration_ms") is not None:
        rec["duration"] = int(round(event["duration_ms"]))
    if event.get("detail") or event.get("reason"):
        rec["message"] = event.get("detail") or event.get("reason")
    _security(event, rec)
    rec["unmapped"] = {"egressgw": event}
    return rec


def checkpoint(chain: dict, time_ms: int, log_name: str = "flow") -> dict:
    """A chain checkpoint as an Event Log Activity record (its chain fields are added by the writer)."""
    reason = chain.get("reason", "interval")
    rec = _base(EVENT_LOG, _CHECKPOINT_ACTIVITY.get(reason, (99, "Checkpoint")), time_ms)
    rec["metadata"] = _metadata(chain.get("seq"), log_name)
    rec["message"] = f"flow-log checkpoint ({reason})"
    rec["unmapped"] = {}
    return rec
