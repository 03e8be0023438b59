"""gateway/addons/dnsgate.py with the tunnel detector, and gateway/addons/dnswire.py.

The hook is called directly on mitmproxy's own DNS flows, with a real registry,
flow log, audit and metrics (the seam is the upstream resolver of test_addons).
"""

from __future__ import annotations

import base64
import struct

import pytest
from mitmproxy import dns as mdns

from gateway import metrics
from gateway.addons import dnswire
from gateway.addons.dnsgate import DnsGate
from gateway.detect.dnstunnel import DnsTunnelDetector, Settings
from gateway.secrets.backends import SecretStore

from .helpers import ALLOWED, policy, run
from .test_addons import Gateway, dns_flow

TUNNEL = (
    "    - name: tunnel-zone\n"
    "      hosts: [{matchPattern: '*.t.allowed.test'}]\n"
)
HANDSHAKE = ["yrbenv", "vaaaakaurwy", "lacowkj13scuih01avmplhrck4bhzdny", "yrbeny", "zenzaa", "sahen4", "oalen5"]


def gateway(tmp_path, mode="enforce", **settings) -> Gateway:
    gw = Gateway(tmp_path / "flows.jsonl", rules=(ALLOWED, TUNNEL), mode=mode)
    gw.dns = DnsGate(gw.registry, gw.resolver, gw.audit, DnsTunnelDetector(Settings(**settings)))
    return gw


def ask(gw, name, qtype=mdns.types.A):
    flow = dns_flow(questions=((name, qtype),))
    run(gw.dns.dns_request(flow))
    return flow


def detections(rule, action) -> float:
    return metrics.REGISTRY.get_sample_value("egressgw_detections_total", {"rule": rule, "action": action}) or 0.0


def test_tunnel_on_an_allowed_pattern_is_refused_with_one_alert(tmp_path):
    gw = gateway(tmp_path)
    before = detections("dns-tunnel:qtype", "block")
    rcodes = [ask(gw, f"{n}.t.allowed.test", mdns.types.NULL).response.response_code for n in HANDSHAKE]
    # NULL weighs 4 against a limit of 20: the 5th NULL query trips it
    assert rcodes == [mdns.response_codes.NXDOMAIN] * 4 + [mdns.response_codes.REFUSED] * 3
    assert len(gw.resolver.queries) == 4  # refused queries never go upstream
    events = [e for e in gw.flow_log("dns") if e.get("reason") == "dns-tunnel"]
    assert len(events) == 3
    alert, *rest = events
    assert alert["alert"] is True and alert["decision"] == "deny" and alert["dns_rcode"] == "REFUSED"
    assert alert["rule"] == "tunnel-zone" and alert["dns_qname"] == "zenzaa.t.allowed.test"
    assert alert["detections"] == [{"rule": "dns-tunnel:qtype", "part": "dns_qname", "action": "block"}]
    assert alert["detail"].startswith("dns tunnel under t.allowed.test: uncommon-type query weight 20 (limit 20")
    assert all("alert" not in e and "detections" not in e and e["dns_rcode"] == "REFUSED" for e in rest)
    assert detections("dns-tunnel:qtype", "block") == before + 1
    # the session's other names, and other sessions, are untouched
    assert ask(gw, "allowed.test").response.response_code == mdns.response_codes.NOERROR


def test_report_mode_alerts_and_answers(tmp_path):
    gw = gateway(tmp_path, mode="report")
    rcodes = [ask(gw, f"{n}.t.allowed.test", mdns.types.NULL).response.response_code for n in HANDSHAKE]
    assert mdns.response_codes.REFUSED not in rcodes
    assert len(gw.resolver.queries) == len(HANDSHAKE)
    alerts = [e for e in gw.flow_log("dns") if e.get("alert")]
    assert len(alerts) == 1 and alerts[0]["decision"] == "report" and alerts[0]["reason"] == "dns-tunnel"
    assert alerts[0]["detections"][0]["action"] == "alert"


def test_disabled_detection_forwards_everything(tmp_path):
    gw = gateway(tmp_path, enabled=False)
    for n in HANDSHAKE:
        ask(gw, f"{n}.t.allowed.test", mdns.types.NULL)
    assert len(gw.resolver.queries) == len(HANDSHAKE)
    assert not [e for e in gw.flow_log("dns") if e.get("reason") == "dns-tunnel"]


def test_denied_names_are_not_counted(tmp_path):
    gw = gateway(tmp_path, max_uncommon=2)
    for i in range(5):
        assert ask(gw, f"x{i}.denied.test", mdns.types.TXT).response.response_code == mdns.response_codes.NXDOMAIN
    assert gw.dns.tunnels.tracked() == 0


def test_deleting_a_session_forgets_its_block(tmp_path):
    gw = gateway(tmp_path, block=0)
    for n in HANDSHAKE:
        ask(gw, f"{n}.t.allowed.test", mdns.types.NULL)
    assert gw.dns.tunnels.blocked(gw.session.id, "t.allowed.test")
    gw.registry.delete(gw.session.id)
    assert not gw.dns.tunnels.blocked(gw.session.id, "t.allowed.test")


def test_a_replaced_policy_changes_the_base_domains(tmp_path):
    gw = gateway(tmp_path)
    assert gw.dns._pattern_suffixes(gw.session.policy) == ("t.allowed.test",)
    gw.registry.replace_policy(gw.session.id, policy(ALLOWED))
    assert gw.dns._pattern_suffixes(gw.session.policy) == ()


def test_a_failing_detector_fails_closed(tmp_path):
    class Broken(DnsTunnelDetector):
        def check(self, *args):
            raise RuntimeError("boom")

    gw = gateway(tmp_path)
    gw.dns = DnsGate(gw.registry, gw.resolver, gw.audit, Broken())
    assert ask(gw, "allowed.test").response.response_code == mdns.response_codes.REFUSED
    assert gw.resolver.queries == []


# ---- dnswire ----------------------------------------------------------------------------------------

def wire_query(labels: list[bytes], qtype: int = 10) -> bytes:
    name = b"".join(bytes([len(label)]) + label for label in labels) + b"\0"
    return struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", qtype, 1)


@pytest.mark.parametrize("label,text", [
    (b"zenzaA-J\xe4germeister", "zenzaA-J\\228germeister"),
    (b"a\\b", "a\\b"),  # ASCII decodes as before
    (b"\x80\xff", "\\128\\255"),
    (b"back\\slash\xe4", "back\\092slash\\228"),
])
def test_labels_with_non_idna_bytes_round_trip(label, text):
    dnswire.install()
    wire = wire_query([label, b"t", b"allowed", b"test"])
    msg = mdns.DNSMessage.unpack(wire)
    assert msg.question.name == text + ".t.allowed.test"
    assert msg.packed == wire


def test_a_non_idna_name_gets_nxdomain_and_the_socket_lives_on(tmp_path):
    gw = gateway(tmp_path)  # installs dnswire
    flow = dns_flow()
    flow.request = mdns.DNSMessage.unpack(wire_query([b"J\xe4ger", b"t", b"allowed", b"test"]))
    run(gw.dns.dns_request(flow))
    assert flow.response.response_code == mdns.response_codes.NXDOMAIN
    assert flow.response.packed[12:12 + 6] == b"\x05J\xe4ger"  # the question comes back as asked
    event = gw.flow_log("dns")[-1]
    assert event["reason"] == "host-not-allowed" and event["dns_qname"] == "J\\228ger.t.allowed.test"


def test_a_truly_broken_label_is_still_an_error():
    dnswire.install()
    with pytest.raises(struct.error):
        mdns.DNSMessage.unpack(wire_query([b"abc"])[:-6])  # cut inside the name


# ---- known values in query names --------------------------------------------------------------------

CANARY = b"canary-7f3a9c2e41d8b605"


def with_canary(tmp_path, **kw) -> Gateway:
    gw = Gateway(tmp_path / "flows.jsonl", rules=(ALLOWED, TUNNEL), **kw)
    gw.dns = DnsGate(gw.registry, gw.resolver, gw.audit, DnsTunnelDetector(), SecretStore())
    gw.session.add_canaries([CANARY])
    return gw


@pytest.mark.parametrize("label", [
    base64.b32encode(CANARY).decode().rstrip("=").lower(),
    CANARY.hex(),
    base64.urlsafe_b64encode(CANARY).decode().rstrip("="),
])
def test_a_known_value_in_an_allowed_name_is_refused_redacted_and_alerted(tmp_path, label):
    gw = with_canary(tmp_path)
    assert ask(gw, f"{label}.t.allowed.test").response.response_code == mdns.response_codes.REFUSED
    assert gw.resolver.queries == []
    event = gw.flow_log("dns")[-1]
    assert event["dns_qname"] == "[REDACTED:known-value].t.allowed.test" and event["alert"] is True
    assert event["detections"][0]["rule"] == "known-value" and event["detections"][0]["label"] == "canary:c1"
    assert label not in gw.flowlog.path.read_text()
    # the domain stays blocked for the session
    assert ask(gw, "www.t.allowed.test").response.response_code == mdns.response_codes.REFUSED
    assert ask(gw, "allowed.test").response.response_code == mdns.response_codes.NOERROR


def test_a_known_value_in_a_denied_name_is_redacted_in_the_log(tmp_path):
    gw = with_canary(tmp_path)
    label = CANARY.hex()
    name = ".".join(label[i:i + 20] for i in range(0, len(label), 20))  # split over labels: dots are removed
    assert ask(gw, f"{name}.denied.test").response.response_code == mdns.response_codes.NXDOMAIN
    event = gw.flow_log("dns")[-1]
    assert event["dns_qname"] == "[REDACTED:known-value].denied.test" and event["alert"] is True
    assert event["reason"] == "host-not-allowed" and name not in gw.flowlog.path.read_text()


def test_names_without_known_values_pass(tmp_path):
    gw = with_canary(tmp_path)
    assert ask(gw, "www.t.allowed.test").response.response_code == mdns.response_codes.NXDOMAIN  # upstream's answer
    assert gw.resolver.queries == ["www.t.allowed.test."]


# ---- the policy's spec.detection ----------------------------------------------------------------------

def with_detection(tmp_path, block: str) -> Gateway:
    from gateway.policy import load_policy_text

    from .helpers import policy_text

    gw = gateway(tmp_path)
    text = policy_text(ALLOWED, TUNNEL) + "  detection:\n" + block
    gw.registry.replace_policy(gw.session.id, load_policy_text(text))
    return gw


@pytest.mark.parametrize("block,refused,alerts", [
    ("    rules: {dns-tunnel: {action: alert}}\n", False, 1),
    ("    action: alert\n", False, 1),
    ("    rules: {dns-tunnel: {action: redact}}\n", True, 1),  # a name cannot be redacted: refused
    ("    rules: {dns-tunnel: {allow: [{matchPattern: '*.t.allowed.test'}]}}\n", False, 0),
    ("    enabled: false\n", False, 0),
])
def test_policy_detection_settings(tmp_path, block, refused, alerts):
    gw = with_detection(tmp_path, block)
    rcodes = [ask(gw, f"{n}.t.allowed.test", mdns.types.NULL).response.response_code for n in HANDSHAKE]
    assert (mdns.response_codes.REFUSED in rcodes) is refused
    found = [e for e in gw.flow_log("dns") if e.get("alert")]
    assert len(found) == alerts
    if found and not refused:
        assert found[0]["decision"] == "allow" and found[0]["detections"][0]["action"] == "alert"


@pytest.mark.parametrize("label", [b"xn--bc(her-kv", b"xn--", b"xn--a", b"xn--zz", b"xn--ab-"])
def test_an_ascii_label_that_is_not_punycode_reaches_the_hook(tmp_path, label):
    """Found by fuzz/dns.py: mitmproxy's parser let the idna codec's UnicodeError escape (not a struct.error),
    which crashed the DNS layer; now the label is escaped, packs back byte-exact and gets NXDOMAIN."""
    gw = gateway(tmp_path)  # installs dnswire
    wire = wire_query([label, b"t", b"allowed", b"test"])
    msg = mdns.DNSMessage.unpack(wire)
    assert msg.question.name.startswith(f"\\{label[0]:03d}") and msg.packed == wire
    flow = dns_flow()
    flow.request = msg
    run(gw.dns.dns_request(flow))
    assert flow.response.response_code == mdns.response_codes.NXDOMAIN
    assert flow.response.packed[12:12 + 1 + len(label)] == bytes([len(label)]) + label
    assert gw.flow_log("dns")[-1]["reason"] == "host-not-allowed"


@pytest.mark.parametrize("label, text", [(b"a.b", "a\\046b"), (b"xn--", None)])
def test_a_label_holding_a_dot_packs_back_as_one_label(tmp_path, label, text):
    """Found by fuzz/dns.py: the byte 0x2E inside ONE label decoded to "a.b", which packed back as two labels
    (or, next to an escaped label, not at all: the layer crashed sending the REFUSED answer)."""
    gw = gateway(tmp_path)
    wire = wire_query([b"J\xe4ger", label, b"allowed", b"test"])
    msg = mdns.DNSMessage.unpack(wire)
    if text:
        assert msg.question.name == "J\\228ger." + text + ".allowed.test"
    assert msg.packed == wire
    flow = dns_flow()
    flow.request = msg
    run(gw.dns.dns_request(flow))
    assert flow.response.response_code == mdns.response_codes.NXDOMAIN and flow.response.packed[12:] == wire[12:]
