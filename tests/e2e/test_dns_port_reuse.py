"""A sandbox resolver that reuses a UDP source port after the gateway's DNS connection for it went
idle still gets answers (CI finding: mitmproxy_rs kept the closed pair and dropped every later
datagram from that port, so ~1 lookup in 100 timed out after 10 s; gateway/addons/dnswire.py), and a
query that repeats an earlier query's id on the same socket is decided and logged as a query of its own."""

from __future__ import annotations

import json

from gateway.lab.harness import Sandboxes

RULES = """
- name: allowed
  hosts: [{matchName: allowed.test}]
  ports: [443]
"""

# Queries allowed.test from one fixed source port, waits, queries again from it; prints the answers.
SAME_PORT = r"""
import json, random, socket, struct, sys, time
server = next(l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver"))
def ask(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.settimeout(3)
    qid = random.randrange(65536)
    s.sendto(struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + b"\x07allowed\x04test\x00\x00\x01\x00\x01",
             (server, 53))
    try:
        data, _ = s.recvfrom(2048)
        return data[:2] == struct.pack(">H", qid) and data[3] & 0x0F == 0  # NOERROR
    except socket.timeout:
        return False
    finally:
        s.close()
port = int(sys.argv[1])
answers = [ask(port)]
for gap in map(float, sys.argv[2:]):
    time.sleep(gap)
    answers.append(ask(port))
print(json.dumps(answers))
"""


def test_a_reused_source_port_is_answered_after_the_connection_went_idle(sandboxes: Sandboxes):
    box = sandboxes.up(RULES)
    # 25 s: past mitmproxy's UDP idle timeout (20 s), inside mitmproxy_rs's table lifetime (60 s)
    r = box.run("python3", "-c", SAME_PORT, "41999", "25", "1", user="root", timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [True, True, True], r.stdout
    queries = [e for e in box.events(event="dns") if e.get("client", "").endswith(":41999")]
    assert len(queries) == 3 and all(e["decision"] == "allow" for e in queries), queries


# Asks each name in turn on one socket, always with the same query id; prints (rcode, question) per answer.
SAME_ID = r"""
import json, socket, struct, sys
server = next(l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver"))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
out = []
for name in sys.argv[1:]:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    s.sendto(struct.pack(">HHHHHH", 4242, 0x0100, 1, 0, 0, 0) + labels + b"\x00\x00\x01\x00\x01", (server, 53))
    data = s.recv(2048)
    end = data.index(b"\x00", 12)
    question, pos = [], 12
    while data[pos]:
        question.append(data[pos + 1:pos + 1 + data[pos]].decode()); pos += 1 + data[pos]
    out.append([data[3] & 0x0F, ".".join(question)])
print(json.dumps(out))
"""


def test_a_repeated_query_id_on_one_socket_is_decided_and_logged_each_time(sandboxes: Sandboxes):
    """mitmproxy kept the first query's flow for its id: the second query got the first one's answer,
    undecided and unlogged (CI finding; gateway/addons/dnswire.py)."""
    box = sandboxes.up(RULES)
    names = ["allowed.test", "blocked.test", "allowed.test", "blocked.test"]
    r = box.run("python3", "-c", SAME_ID, *names, timeout=30)
    assert r.returncode == 0, r.stderr
    answers = json.loads(r.stdout)
    assert [q for _, q in answers] == names  # each answer is to its own question
    assert [rc == 0 for rc, _ in answers] == [True, False, True, False], answers
    logged = box.events_since(0, lambda ev: len([e for e in ev if e.get("event") == "dns"]) >= 4)
    queries = [(e["dns_qname"], e["decision"]) for e in logged if e.get("event") == "dns"]
    assert queries == [("allowed.test", "allow"), ("blocked.test", "deny")] * 2, queries
