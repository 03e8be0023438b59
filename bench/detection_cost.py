"""bench/run --only detection: what exfiltration detection costs a small request, same run, same gateway.

Two sandboxes of the one `egressgw run`: ON has the bench policy (the bench host also allows POST) with
detection at its defaults, OFF the same policy plus `spec.detection.enabled: false`. Both send the same
small API-like request with wrk: `POST /` over HTTPS keep-alive, 10 connections, a 626-byte JSON body and
6 headers (Host, Content-Length, User-Agent, Accept, Content-Type, Authorization with a token-shaped
random value). ON/OFF runs are interleaved; req/s and the gateway's CPU time per request (from /proc)
are compared. Target: detection adds <= 10% CPU per request.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

DET_TARGET = 1.10  # CPU/request with detection on <= 1.10 x off
DET_CASES = ("https_post_c10",)


def body() -> bytes:
    """A chat-completion-like JSON body of exactly 626 bytes (no secret, no credential shape)."""
    text = ("Summarise the quarterly report below and list the three main risks it mentions, "
            "with one sentence for each. Keep the answer under 120 words. ")
    doc = {"model": "gpt-4o-mini", "temperature": 0.2, "max_tokens": 256, "stream": False,
           "messages": [{"role": "system", "content": "You are a concise analyst."},
                        {"role": "user", "content": text * 4}]}
    raw = json.dumps(doc).encode()
    over = len(raw) - 626
    if over > 0:
        doc["messages"][1]["content"] = (text * 4)[:-over]
    else:
        doc["messages"][1]["content"] = text * 4 + "." * -over
    raw = json.dumps(doc).encode()
    assert len(raw) == 626, len(raw)
    return raw


HEADERS = ("User-Agent: python-httpx/0.27.0", "Accept: application/json", "Content-Type: application/json")


def auth_header() -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return "Authorization: Bearer tok_" + "".join(secrets.choice(alphabet) for _ in range(40))


def policies(policy: str) -> tuple[str, str]:
    """(ON, OFF) policy texts: the bench policy whose bench-origin rule also allows POST."""
    marker = "    - name: bench-origin\n"
    head, _, rule = policy.partition(marker)
    if not rule or "      methods: [GET]\n" not in rule:
        raise ValueError("bench policy changed: no bench-origin rule with `methods: [GET]`")
    on = head + marker + rule.replace("      methods: [GET]\n", "      methods: [GET, POST]\n", 1)
    if "\n  detection:\n" in on:  # the policy has its own detection section: switch it off there
        off = on.replace("\n  detection:\n", "\n  detection:\n    enabled: false\n", 1)
    else:
        off = on.rstrip("\n") + "\n  detection:\n    enabled: false\n"
    return on, off


def lua_script(report_lua: Path, out: Path, data: bytes) -> Path:
    """wrk script: POST with the body (headers come with -H), then the JSON report of wrk_report.lua."""
    quoted = data.decode().replace("\\", "\\\\").replace('"', '\\"')
    out.write_text(f'wrk.method = "POST"\nwrk.body = "{quoted}"\n' + report_lua.read_text())
    return out


def verify(events: list[dict], session: str) -> dict[str, Any]:
    evs = [e for e in events if e.get("session") == session]
    done = [e for e in evs if e.get("status") is not None]
    return {"http_events": len(evs), "answered": len(done),
            "denied": sum(1 for e in evs if e.get("decision") != "allow"),
            "detections": sum(1 for e in evs if e.get("detections")),
            "status_not_200": sum(1 for e in done if e.get("status") != 200)}


def wait_event(gw, session: str, before: int, timeout: float = 5) -> dict | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        evs = gw.events(event="http", session=session)[before:]
        if evs:
            return evs[-1]
        time.sleep(0.1)
    return None


def render(d: dict[str, Any]) -> list[str]:
    lines = ["", "## detection: the same small POST with detection on vs `spec.detection.enabled: false`", "",
             f"`POST /` HTTPS keep-alive, wrk -t2 -c10, {d['body_bytes']}-byte JSON body, "
             f"{d['headers']} headers; ON/OFF interleaved, {d['rounds']} x {d['duration_s']:g} s each, median",
             "", "| measure | detection off | detection on | on/off |", "|---|---|---|---|"]
    for r in d["rows"]:
        fmt = (lambda v: f"{v:.0f}") if r["unit"] in ("req/s", "us") else (lambda v: f"{v:.3f}")
        on, off = r["on"], r["off"]
        lines.append(f"| {r['metric']} | {fmt(off) if off is not None else '-'} {r['unit']} | "
                     f"{fmt(on) if on is not None else '-'} {r['unit']} | "
                     f"{r['ratio'] if r['ratio'] is not None else '-'}"
                     + (f" (target {r['target']}: **{r['result']}**)" if r.get("result") else "") + " |")
    if d.get("added_cpu_us") is not None:
        lines += ["", f"detection adds {d['added_cpu_us']:.0f} us of gateway CPU per request "
                      f"({d['added_cpu_pct']:+.1f}%)"]
    lines.append(f"checked: {d['verify']}")
    return lines
