"""Responses stream: a large download never sits whole in the gateway, and a real secret value that
comes back in a streamed body is masked (or the connection cut) before the sandbox sees any of it."""

from __future__ import annotations

import secrets
import sys

import pytest
import yaml

from gateway.lab.gateway import LabGateway

RULES = """
- name: allowed
  hosts: [{matchName: allowed.test}]
"""
REAL = "sk-proj-" + secrets.token_hex(20)


@pytest.fixture(scope="module")
def gateway(lab):
    gw = LabGateway(lab, extra_config={"secrets": {"cacheSeconds": 60}})
    gw.start(env={"EGW_TEST_STREAM": REAL})
    yield gw
    gw.stop()


def rss_mib(gw) -> float:
    return int(open(f"/proc/{gw.proc.pid}/status").read().split("VmRSS:")[1].split()[0]) / 1024


# Downloads `n` bytes, sampling nothing itself; prints the byte count.
DOWNLOAD = r"""
import os, ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
n = 0
with urllib.request.urlopen(sys.argv[1], context=ctx, timeout=120) as r:
    while chunk := r.read(1 << 20):
        n += len(chunk)
print(n)
"""


def test_a_large_download_streams_with_bounded_gateway_memory(gateway, sandboxes):
    import threading
    import time

    box = sandboxes.up(RULES)
    size = 300 << 20
    before = rss_mib(gateway)
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib(gateway))
            time.sleep(0.05)

    t = threading.Thread(target=sample)
    t.start()
    try:
        r = box.run(sys.executable, "-c", DOWNLOAD, f"https://allowed.test/bytes/{size}", user="root", timeout=300)
    finally:
        done.set()
        t.join()
    assert r.returncode == 0 and int(r.stdout) == size, r.stderr
    print(f"\n300 MiB download: gateway RSS {before:.0f} -> peak {peak[0]:.0f} MiB", file=sys.stderr)
    assert peak[0] - before < 64, (before, peak[0])  # was the whole body (+300 MiB and more) before
    event = box.events(event="http")[-1]
    assert event["decision"] == "allow" and event["bytes_in"] == size and event["status"] == 200


@pytest.fixture(scope="module")
def secret_box(sandboxes, tmp_path_factory):
    path = tmp_path_factory.mktemp("secrets") / "secrets.yaml"
    path.write_text(yaml.safe_dump([{"name": "OPENAI_API_KEY", "source": "env://EGW_TEST_STREAM",
                                     "hosts": [{"matchName": "allowed.test"}]}]))
    return sandboxes.up(RULES, "enforce", "--secrets", str(path))


@pytest.mark.parametrize("pad", [0, 3 << 20])  # buffered and masked whole / streamed and masked piece by piece
def test_a_real_value_coming_back_never_reaches_the_sandbox(secret_box, lab, pad):
    ph = secret_box.env["OPENAI_API_KEY"]
    r = secret_box.run("curl", "-sS", "-m", "60", "-H", f"Authorization: Bearer {ph}",
                       f"https://allowed.test/echo?pad={pad}", timeout=90)
    # the origin got the real value and echoed it back, after `pad` bytes
    assert any(REAL in str(rec.get("headers")) for rec in lab.records(kind="http", path=f"/echo?pad={pad}"))
    assert REAL not in r.stdout
    event = [e for e in secret_box.events(event="http") if e.get("url", "").startswith("https://allowed.test/echo")][-1]
    if len(ph) == len(REAL) or pad == 0:  # masked in place (or whole): the sandbox gets the placeholder
        assert ph in r.stdout and r.stdout.count(".") >= pad, r.stderr
    else:  # a fixed-length body cannot be rewritten: cut, logged, alert
        cut = [e for e in secret_box.events(event="http") if e.get("reason") == "secret-in-response"]
        assert cut and cut[-1]["alert"] is True and REAL not in str(cut[-1]), cut
    assert REAL not in str(event)
