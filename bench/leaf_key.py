"""The sandbox-facing TLS handshake's server CPU: the CA's RSA-2048 key in the leaf vs a P-256 key (ca.leafKey).

    .venv/bin/python bench/leaf_key.py [--handshakes 500] [--rounds 3]

In process, no network: the gateway's real `ca.TlsConfig` (leafKey `ca`, then `ecdsa`) builds the
server-side `SSL.Connection` with mitmproxy's `tls_start_client`, and Python's ssl (verifying the
chain and the name) handshakes with it over memory BIOs. The leaf is minted once (mitmproxy's cert
cache), as for every connection after a name's first. Only the server side is timed (CPU time of
`tls_start_client` and the server's handshake steps), the client's work is not. Two kinds: full
handshakes (the server signs with the leaf key), and resumed ones (the client offers the session of
an earlier handshake; mitmproxy's client-side SSL_CTX is cached, so its session tickets are
accepted: no certificate, no signature). Rounds alternate the two keys; the median per-handshake
figure of each is printed, for TLS 1.3 and TLS 1.2.
"""

from __future__ import annotations

import argparse
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mitmproxy import certs, connection, tls
from mitmproxy.proxy import context
from mitmproxy.test import taddons

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gateway import ca  # noqa: E402
from gateway.lab import tlsmem  # noqa: E402

NAME = "api.example.com"


def handshake(addon: ca.TlsConfig, opts, cctx: ssl.SSLContext, session: ssl.SSLSession | None = None,
              ) -> tuple[float, ssl.SSLSession]:
    """One handshake (resuming `session` if given): the server side's CPU seconds, the client's session."""
    client_conn = connection.Client(peername=("10.211.0.2", 40000), sockname=("10.211.0.1", 15001), sni=NAME,
                                    timestamp_start=0)
    ctx = context.Context(client_conn, opts)
    ctx.server.address = ("198.18.5.7", 443)
    data = tls.TlsData(conn=client_conn, context=ctx)
    t0 = time.process_time()
    addon.tls_start_client(data)
    start = time.process_time() - t0
    client, spent = tlsmem.handshake(data.ssl_conn, cctx, NAME, session)
    if session is not None:
        assert client.session_reused
    return start + spent, client.session


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--handshakes", type=int, default=500, help="per round, key and kind (default 500)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        certs.CertStore.create_store(Path(tmp), "mitmproxy", 2048)  # mitmproxy's CA, as without nameConstraints
        results: dict[tuple[str, str, str], list[float]] = {}
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            cctx = ssl.create_default_context(cafile=str(Path(tmp) / "mitmproxy-ca-cert.pem"))
            cctx.maximum_version = cctx.minimum_version = version
            for _ in range(args.rounds):
                for leaf_key in ("ca", "ecdsa"):
                    addon = ca.TlsConfig(leaf_key=leaf_key)
                    with taddons.context(addon) as tctx:
                        tctx.configure(addon, confdir=tmp)
                        _, session = handshake(addon, tctx.options, cctx)  # mints and caches the leaf
                        for kind, offer in (("full", None), ("resumed", session)):
                            per = [handshake(addon, tctx.options, cctx, offer)[0] for _ in range(args.handshakes)]
                            results.setdefault((version.name, kind, leaf_key), []).append(statistics.fmean(per) * 1e6)
        print("| TLS | handshake | leaf key | server CPU µs/handshake (median of rounds) | rounds |")
        print("|---|---|---|---:|---|")
        for (version, kind, leaf_key), rounds in results.items():
            label = "CA's RSA-2048 (leafKey: ca)" if leaf_key == "ca" else "P-256 (leafKey: ecdsa)"
            print(f"| {version} | {kind} | {label} | {statistics.median(rounds):.0f} | "
                  f"{', '.join(f'{r:.0f}' for r in rounds)} |")


if __name__ == "__main__":
    main()
