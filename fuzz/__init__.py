"""Coverage-guided fuzz harnesses (atheris/libFuzzer) for the gateway's parsers of hostile input.

    python -m fuzz dns --seconds 600        # the DNS path: mitmproxy's parser + dnswire + DnsGate
    python -m fuzz policy --seconds 600     # the policy loader
    python -m fuzz all --seconds 60         # each harness in turn (what `make fuzz` runs)

See docs/hardening.md. A crash leaves its input in fuzz/artifacts/ (replay: python -m fuzz dns --replay FILE).
"""
