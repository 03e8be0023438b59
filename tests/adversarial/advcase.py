"""The shape of an adversarial case and how one is run and judged.

A case is a row of a class's table: an attack run inside a real sandbox (curl, a shell script, a
Python script), what must NOT reach the origin or the upstream DNS server (checked on their own
records, plus the packet counter on the origin namespace), and what the flow log must show.

Attack text may use `MARK` (a token unique to the case, e.g. in a path, so the origin's records
can be searched for it) and `{name}` fields from the run's `subst` (placeholders, secrets...).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from gateway.lab.records import match


@dataclass(frozen=True)
class Attack:
    kind: str  # "curl" | "sh" | "py" (the sandbox's python3) | "vpy" (the gateway venv's python: h2, wsproto; needs user="root")
    args: tuple[str, ...]
    user: str = "nobody"

    def render(self, subst: dict[str, str]) -> list[str]:
        out = []
        for a in self.args:
            a = a.replace("MARK", subst["MARK"])
            for k, v in subst.items():
                a = a.replace("{" + k + "}", v)
            out.append(a)
        return out


def curl(*args: str, user: str = "nobody") -> Attack:
    return Attack("curl", args, user)


def sh(script: str, user: str = "nobody") -> Attack:
    return Attack("sh", (script,), user)


def py(code: str, *args: str, user: str = "nobody") -> Attack:
    return Attack("py", (code, *args), user)


def vpy(code: str, *args: str, user: str = "nobody") -> Attack:
    return Attack("vpy", (code, *args), user)


@dataclass(frozen=True)
class Case:
    id: str
    attack: Attack
    forbid: dict[str, Any] = field(default_factory=dict)
    """Origin records (any kind) matching these filters must not appear; `{"dns": {...}}` for DNS
    records. Every case also forbids any record carrying MARK and any packet not from the gateway."""
    log: dict[str, Any] = field(default_factory=dict)
    """Some new flow-log event of the session must match these fields (values: equal, a set = one of,
    a callable = predicate; see `gateway.lab.records.match`)."""
    note: str = ""
    xfail: str = ""
    arrives: bool = False
    """The request is itself legitimate and reaches the origin (reflection, a redirect's first hop): only
    `forbid` and the secret checks apply, not the MARK check."""
    """A known gap (the attack is refused, or it succeeds, in a way the case does not accept): the
    case runs as `xfail(strict=True)` with this reason, so fixing the gap makes it fail loudly."""


def refused(*reasons: str) -> dict[str, Any]:
    """Log filter: a deny with one of `reasons` (any reason when none given)."""
    out: dict[str, Any] = {"decision": "deny"}
    if reasons:
        out["reason"] = set(reasons)
    return out


def table_ids(cases: list[Case]) -> list[str]:
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    return ids


def params(cases: list[Case]) -> list:
    """pytest parameters for a case table (known gaps marked xfail, strict)."""
    import pytest

    table_ids(cases)
    return [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else [])
            for c in cases]


def execute(box, case: Case, subst: dict[str, str], timeout: float = 30):
    argv = case.attack.render(subst)
    if case.attack.kind == "curl":
        return box.run("curl", "-sS", "-m", "5", "-w", "\n%{http_code}", *argv, user=case.attack.user, timeout=timeout)
    if case.attack.kind == "sh":
        return box.run("sh", "-c", argv[0], user=case.attack.user, timeout=timeout)
    python = "python3" if case.attack.kind == "py" else sys.executable
    return box.run(python, "-c", argv[0], *argv[1:], user=case.attack.user, timeout=timeout)


def run_case(case: Case, box, lab, leaked: Callable[[], int], subst: dict[str, str] | None = None,
             secrets: tuple[str, ...] = ()) -> Any:
    """Run `case` in `box` and assert: nothing forbidden arrived, no packet leaked, the log shows it.

    `secrets`: values that must appear in no origin or DNS record written during the case."""
    mark = f"adv{case.id.replace('-', '')}"
    subst = {"MARK": mark, **(subst or {})}
    t0 = time.time()
    start = len(box.events())
    leaks = leaked()
    drops = drop_count(box) if case.log is DROPPED else 0
    result = execute(box, case, subst)
    time.sleep(0.2)  # a late write to the origin (after the client gave up) still counts
    origin = [r for r in lab.records() if r.get("ts", 0) >= t0]
    dns = [r for r in lab.dns_records() if r.get("ts", 0) >= t0]
    out = f"stdout={result.stdout[-1500:]!r} stderr={result.stderr[-800:]!r}"
    filters = {k: v for k, v in case.forbid.items() if k != "dns"}
    if filters:
        bad = [r for r in origin if match(r, filters)]
        assert not bad, f"{case.id}: forbidden request reached the origin: {bad[:2]}\n{out}"
    if "dns" in case.forbid:
        bad = [r for r in dns if match(r, case.forbid["dns"])]
        assert not bad, f"{case.id}: forbidden query reached the DNS server: {bad[:2]}\n{out}"
    wire = json.dumps(origin) + json.dumps(dns)
    if not case.arrives:
        assert mark not in wire, f"{case.id}: the case's request reached the origin\n{out}"
    for value in secrets:
        if not case.arrives:  # a legitimate first hop (an approved origin) may get the real value
            assert value not in wire, f"{case.id}: a secret value reached the origin\n{out}"
        assert value not in result.stdout + result.stderr, f"{case.id}: a secret value came back to the sandbox"
    assert leaked() == leaks, f"{case.id}: packets from the sandbox reached the origin namespace directly"
    if case.log is DROPPED:
        assert drop_count(box) > drops, f"{case.id}: the sandbox's nftables table counted no drop\n{out}"
        return result
    if case.log is IPV6_OFF:
        assert ipv6_disabled_on_gateway_side(box), f"{case.id}: IPv6 is on at the gateway side\n{out}"
        return result
    events = box.events_since(start, lambda evs: any(match(e, case.log) for e in evs))
    assert any(match(e, case.log) for e in events), (
        f"{case.id}: no flow-log event matching {case.log}; got "
        f"{[{k: e.get(k) for k in ('event', 'decision', 'reason', 'dest_host', 'sni', 'url')} for e in events]}\n{out}")
    return result


DROPPED = {"__nft_drop__": True}
"""`Case.log` for traffic that never becomes a flow (UDP, ICMP, SCTP, IPv6): the evidence is the
sandbox's nftables drop counters in the gateway namespace, which the sandbox cannot touch."""


IPV6_OFF = {"__ipv6_off__": True}
"""`Case.log` for IPv6 from the sandbox: the gateway side of the sandbox's link has IPv6 disabled, so
the kernel discards every IPv6 frame before any hook could log it; the check is that it is disabled
(and, as for every case, that nothing reached the origin)."""


def ipv6_disabled_on_gateway_side(box) -> bool:
    gw = box.gw
    sb = next(s for s in json.loads(gw.cli("sandbox", "list", "--json").stdout) if s["name"] == box.name)
    r = gw.lab.run_in(gw.lab.gw_ns, ["cat", f"/proc/sys/net/ipv6/conf/{sb['host_if']}/disable_ipv6"],
                      capture_output=True, text=True)
    return r.stdout.strip() == "1"


def drop_count(box) -> int:
    """Packets the sandbox's own nftables table (in the gateway namespace) dropped so far."""
    from netns.naming import table_name

    gw = box.gw
    out = gw.lab.run_in(gw.lab.gw_ns, ["nft", "list", "table", "inet", table_name(box.name)],
                        capture_output=True, text=True, check=True).stdout
    return sum(int(line.split("packets ")[1].split()[0])
               for line in out.splitlines() if " drop" in line and "packets " in line)


RAW = r"""
import os, socket, ssl, sys
addr, port, sni, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
payload = payload.encode("latin-1").decode("unicode_escape").encode("latin-1")
s = socket.create_connection((addr, port), timeout=4)
if sni != "-":
    ctx = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE"))
    if sni == "none":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    s = ctx.wrap_socket(s, server_hostname=None if sni == "none" else sni)
out = b""
for part in payload.split(b"<PAUSE>"):
    s.sendall(part)
    try:
        out += s.recv(65536)
    except (TimeoutError, OSError):
        break
print(out[:400])
"""


def raw(payload: str, addr: str = "198.18.1.10", port: int = 80, sni: str = "-") -> Attack:
    """Bytes sent as they are (escapes like \\r\\n decoded) to addr:port, over TLS with `sni` unless
    "-" ("none": TLS without SNI). `<PAUSE>` splits the payload: the script reads an answer between
    parts (host switching on a kept-alive connection)."""
    return py(RAW, addr, str(port), sni, payload)


def req(host: str, path: str = "/MARK", method: str = "GET", extra: str = "", version: str = "HTTP/1.1") -> str:
    return f"{method} {path} {version}\\r\\nHost: {host}\\r\\n{extra}Connection: keep-alive\\r\\n\\r\\n"
