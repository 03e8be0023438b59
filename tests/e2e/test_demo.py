"""`make demo` runs what it promises: the README's first command."""

import subprocess
import sys


def test_demo_shows_one_allowed_and_refused_requests_and_cleans_up():
    r = subprocess.run([sys.executable, "-m", "gateway.lab.demo"], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "hello from allowed.test" in r.stdout
    assert "Could not resolve host: denied.test" in r.stdout
    assert "method not allowed" in r.stdout
    assert "egressgw_requests_total" in r.stdout and "demo ok" in r.stdout
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "egw-demo" not in left
