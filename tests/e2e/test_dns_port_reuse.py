"""A sandbox resolver that reuses a UDP source port after the gateway's DNS connection for it went
idle still gets answers (CI finding: mitmproxy_rs kept the closed pair and dropped every later
datagram from that port, so ~1 lookup in 100 timed out after 10 s; gateway/addons/dnswire.py)."""

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
