"""Print the README's adversarial-suite table from the case tables: class, cases, refused, known gaps.

    PYTHONPATH=. python tests/adversarial/summary.py
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CLASSES = [
    ("network", "test_network", "protocols, ports, IPv6/IPv4-in-IPv6, IP-literal encodings, special ranges, "
                                "foreign resolvers, rebinding, shared CDN IP, gateway listeners"),
    ("HTTP/TLS", "test_http_tls", "SNI/Host/:authority (h1, h2), absolute-form, kept-alive switch, smuggling, "
                                  "h2c/upgrades, CONNECT in tunnel, ECH, no SNI/Host, wrong cert"),
    ("host names", "test_hostnames", "case, trailing dot, IDN/punycode, userinfo, brackets, label boundaries, "
                                     "percent-encoding, backslash, duplicate Host"),
    ("placeholders", "test_placeholders", "every part, encodings, wrong part, partial, other session, redirects, "
                                          "reflection, Host spoof"),
    ("exfiltration", "test_exfiltration", "10 encodings x query/header/cookie/json/form/multipart/gzip/ws/h2/split"),
]


def main() -> None:
    rows = ["| class | covers | cases | refused and logged | known gaps (strict xfail) |", "|---|---|---:|---:|---|"]
    total = gaps_total = 0
    for name, module, covers in CLASSES:
        cases = importlib.import_module(module).CASES
        gaps = [c for c in cases if c.xfail]
        total += len(cases)
        gaps_total += len(gaps)
        rows.append(f"| {name} | {covers} | {len(cases)} | {len(cases) - len(gaps)} | "
                    f"{', '.join(c.id for c in gaps) or '-'} |")
    rows.append(f"| **all** | | **{total}** | **{total - gaps_total}** | {gaps_total} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
