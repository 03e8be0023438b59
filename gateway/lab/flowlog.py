"""Synthetic flow logs for tests and the log benchmark, written by the real writer.

`generate(path, n)` writes `n` events that look like a fleet of sandboxes at
work: per session a `session` event, DNS lookups (some refused, NXDOMAIN
bursts), TLS decisions (intercepted, passed through, refused at ClientHello),
HTTP requests (mostly allowed, some refused by host, path or method, some with
credentials substituted, a few placeholder misuses and exfiltration
detections), raw TCP flows, and a DNS tunnel in a few sessions. Deterministic
for a given seed. Event times are spread over `span` seconds; sessions overlap.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator
from dataclasses import dataclass

from gateway.log import events as ev
from gateway.log.writer import FlowLog

ALLOWED_BASE = ["api.github.com", "github.com", "codeload.github.com", "pypi.org", "files.pythonhosted.org",
                "registry.npmjs.org", "api.openai.com", "api.anthropic.com", "objects.githubusercontent.com",
                "proxy.golang.org", "crates.io", "static.crates.io", "index.crates.io", "deb.debian.org"]
DENIED_BASE = ["pastebin.com", "transfer.sh", "evil.example", "webhook.site", "ngrok.io", "169.254.169.254",
               "metadata.google.internal", "raw.githubusercontent.com", "gist.github.com", "s3.amazonaws.com"]
PATHS = ["/", "/simple/requests/", "/repos/acme/app/pulls", "/v1/chat/completions", "/v1/messages",
         "/packages/requests-2.32.3.tar.gz", "/lodash", "/login/oauth/access_token", "/upload", "/graphql"]
SECRETS = ["OPENAI_API_KEY@headers", "ANTHROPIC_API_KEY@headers", "GITHUB_TOKEN@headers", "NPM_TOKEN@headers"]


@dataclass
class Session:
    id: str
    name: str
    policy: str
    client: str
    allowed: list[str]
    denied: list[str]
    tunnel: bool
    nx_burst: bool


def _hosts(rng: random.Random, hosts: int) -> tuple[list[str], list[str]]:
    allowed = list(ALLOWED_BASE)
    denied = list(DENIED_BASE)
    i = 0
    while len(allowed) + len(denied) < hosts:
        i += 1
        if i % 3:
            allowed.append(f"svc{i}.internal-{i % 17}.example.com")
        else:
            denied.append(f"cdn{i}.tracker-{i % 11}.example.net")
    rng.shuffle(allowed)
    return allowed, denied


def sessions(n: int, hosts: int = 400, seed: int = 7) -> list[Session]:
    rng = random.Random(seed)
    allowed, denied = _hosts(rng, hosts)
    out = []
    for k in range(n):
        a = rng.sample(allowed, k=min(len(allowed), rng.randint(3, 25)))
        d = rng.sample(denied, k=min(len(denied), rng.randint(1, 6)))
        out.append(Session(id=f"s-{rng.getrandbits(64):016x}", name=f"agent-{k}", policy=rng.choice(
            ["python-packages", "github", "openai", "anthropic", "default"]),
            client=f"10.211.{k // 64}.{(k % 64) * 4 + 2}", allowed=a, denied=d,
            tunnel=(k % 97 == 13), nx_burst=(k % 53 == 5)))
    return out


def _times(rng: random.Random, start: float, count: int, span: float) -> Iterator[float]:
    """`count` increasing times from `start`, spread over about `span` seconds."""
    gap = span / max(count, 1)
    t = start
    for _ in range(count):
        t += rng.expovariate(1 / gap) if gap > 0 else 0
        yield t


def _stream(k: int, times: Iterator[float]) -> Iterator[tuple[float, int, int]]:
    for j, t in enumerate(times):
        yield t, k, j


def plan(n: int, n_sessions: int, span: float, t0: float, seed: int) -> tuple[list[Session], Iterator]:
    """Sessions, and (time, session index, event number) for every event, in time order."""
    rng = random.Random(seed)
    sess = sessions(n_sessions, seed=seed)
    weights = [1 / (k + 1) ** 0.6 for k in range(n_sessions)]  # a few busy sessions, a long tail
    rng.shuffle(weights)
    total = sum(weights)
    counts = [max(2, int(n * w / total)) for w in weights]
    diff = n - sum(counts)
    counts[max(range(n_sessions), key=lambda k: counts[k])] += diff  # exactly n events
    streams = []
    for k, c in enumerate(counts):
        start = t0 + rng.uniform(0, span * 0.6)
        dur = rng.uniform(span * 0.05, span * 0.4)
        r = random.Random(seed * 7919 + k)
        streams.append(_stream(k, _times(r, start, c, dur)))
    return sess, heapq.merge(*streams)


def make(rng: random.Random, s: Session, j: int, t: float) -> dict:
    """One event of session `s` (its j-th)."""
    if j == 0:
        e = ev.make_event(ev.SESSION, session=s.id, rule=s.policy, detail=f"created: {s.name}")
        e["time"] = ev.rfc3339(t)
        return e
    r = rng.random()
    if s.tunnel and r < 0.25:
        label = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(40))
        blocked = rng.random() < 0.7
        fields = dict(session=s.id, client=s.client, dns_qname=f"{label}.t.exfil-{s.name}.example.com",
                      dns_qtype="TXT", decision="deny" if blocked else "allow",
                      dns_rcode="REFUSED" if blocked else "NOERROR",
                      reason="dns-tunnel" if blocked else "allowed", rule="wildcard")
        e = ev.make_event(ev.DNS, **fields)
        if blocked and rng.random() < 0.05:
            e["alert"] = True
            e["detections"] = [{"rule": "dns-tunnel:entropy", "part": "dns_qname", "action": "block"}]
    elif s.nx_burst and r < 0.2:
        name = f"host{rng.randint(0, 10**6)}.corp.invalid"
        e = ev.make_event(ev.DNS, session=s.id, client=s.client, dns_qname=name, dns_qtype="A", decision="deny",
                          dns_rcode="NXDOMAIN", reason="host-not-allowed")
    elif r < 0.30:
        if rng.random() < 0.93:
            host = rng.choice(s.allowed)
            e = ev.make_event(ev.DNS, session=s.id, client=s.client, dns_qname=host, dns_qtype=rng.choice(["A", "AAAA"]),
                              dns_rcode="NOERROR", dns_answers=[f"198.18.{rng.randint(0, 255)}.{rng.randint(1, 254)}"],
                              decision="allow", rule="allowed", reason="allowed")
        else:
            host = rng.choice(s.denied)
            e = ev.make_event(ev.DNS, session=s.id, client=s.client, dns_qname=host, dns_qtype="A",
                              dns_rcode="NXDOMAIN", decision="deny", reason="host-not-allowed")
    elif r < 0.45:
        if rng.random() < 0.85:
            host = rng.choice(s.allowed)
            passthrough = rng.random() < 0.06
            e = ev.make_event(ev.TLS, session=s.id, client=s.client, sni=host, dest_host=host, dest_port=443,
                              decision="allow", rule="allowed", reason="allowed",
                              detail="passthrough" if passthrough else "intercept")
        else:
            host = rng.choice(s.denied)
            e = ev.make_event(ev.TLS, session=s.id, client=s.client, sni=host, dest_host=host, dest_port=443,
                              decision="deny", reason="host-not-allowed")
    elif r < 0.93:
        e = _http(rng, s)
    elif r < 0.99:
        host = rng.choice(s.allowed)
        if rng.random() < 0.8:
            e = ev.make_event(ev.TCP, session=s.id, client=s.client, dest_host=host, dest_ip="198.18.5.9",
                              dest_port=22, decision="allow", rule="ssh", reason="allowed", bytes_out=rng.randint(100, 90_000),
                              bytes_in=rng.randint(100, 900_000), detail="closed")
        else:
            e = ev.make_event(ev.TCP, session=s.id, client=s.client, dest_host=rng.choice(s.denied), dest_port=rng.choice(
                [22, 25, 6667, 3306]), decision="deny", reason="tcp-not-allowed")
    else:
        e = ev.make_event(ev.CONNECT, client=f"10.99.{rng.randint(0, 255)}.{rng.randint(1, 254)}:{rng.randint(1024, 65535)}",
                          decision="deny", reason="no-session")
    e["time"] = ev.rfc3339(t)
    return e


def _http(rng: random.Random, s: Session) -> dict:
    method = rng.choices(["GET", "POST", "PUT", "DELETE"], [70, 22, 5, 3])[0]
    path = rng.choice(PATHS)
    query = rng.choice(["", "", "?page=", "?q=&per_page="])
    x = rng.random()
    fields: dict = dict(session=s.id, client=s.client, dest_port=443, method=method)
    if x < 0.88:
        host = rng.choice(s.allowed)
        fields.update(dest_host=host, sni=host, dest_ip=f"198.18.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
                      decision="allow", rule="allowed", reason="allowed",
                      status=rng.choices([200, 201, 204, 304, 404, 500], [70, 8, 4, 8, 8, 2])[0],
                      bytes_out=rng.choice([0, 0, rng.randint(10, 4000), rng.randint(1000, 400_000)]) if method != "GET" else 0,
                      bytes_in=rng.randint(50, 2_000_000), duration_ms=round(rng.uniform(2, 900), 3))
        if "openai" in host or "anthropic" in host or "github" in host or rng.random() < 0.05:
            fields["secrets"] = [rng.choice(SECRETS)]
    elif x < 0.985:
        host = rng.choice(s.denied + s.allowed[:1])
        reason = "host-not-allowed" if host in s.denied else rng.choice(["path-not-allowed", "method-not-allowed"])
        fields.update(dest_host=host, sni=host, decision="deny", reason=reason, status=403,
                      bytes_out=rng.randint(0, 2000), bytes_in=120)
    elif x < 0.995:
        host = rng.choice(s.denied)
        fields.update(dest_host=host, sni=host, decision="deny", reason=rng.choice(
            ["placeholder-not-approved", "placeholder-wrong-part", "placeholder-foreign"]), status=403,
            secrets=[rng.choice(SECRETS)], alert=True, bytes_out=rng.randint(0, 5000), bytes_in=140)
    else:
        host = rng.choice(s.allowed)
        fields.update(dest_host=host, sni=host, decision="deny", reason="exfiltration", status=403, alert=True,
                      bytes_out=rng.randint(1000, 50_000), bytes_in=140, method="POST")
    fields["url"] = ev.strip_query_values(f"https://{fields['dest_host']}{path}{query}")
    e = ev.make_event(ev.HTTP, **fields)
    if fields.get("reason") == "exfiltration":
        e["detections"] = [{"rule": "aws-access-key", "label": "AWS access key id", "part": "body", "offset": 17,
                            "encoding": rng.choice(["plain", "base64", "url"]), "context": "key=AKIA[REDACTED:16]&x=",
                            "action": "block"}]
    return e


def generate(path, n: int, *, n_sessions: int = 1000, span: float = 86400.0, t0: float = 1_795_000_000.0,
             seed: int = 7, rotate_bytes: int = 0, key: bytes | None = None, format: str = "ocsf",
             keep: int = 0) -> list[Session]:
    """Write `n` events to a flow log at `path` with the real writer; returns the sessions."""
    rng = random.Random(seed + 1)
    sess, order = plan(n, n_sessions, span, t0, seed)
    log = FlowLog(path, format=format, rotate_bytes=rotate_bytes, keep=keep, key=key)
    try:
        for t, k, j in order:
            log.write(make(rng, sess[k], j, t))
    finally:
        log.close()
    return sess
