"""The lab's namespaces, routes, lifecycle and optional nginx."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.lab import DEFAULT_HOSTS, Lab, LabError, cleanup
from labutil import request

pytestmark = pytest.mark.netns


def netns_list() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_routes_and_addresses(lab):
    routes = lab.run_in(lab.gw_ns, ["ip", "route", "show"]).stdout
    assert "default" not in routes
    assert f"198.18.0.0/15 via {lab.origin_addr}" in routes
    # a public address has no route: nothing aimed at it can leave (routing lookup only)
    probe = lab.run_in(lab.gw_ns, ["ip", "route", "get", "192.0.2.1"])
    assert probe.returncode != 0 and "unreachable" in probe.stderr.lower()
    assert "default" not in lab.run_in(lab.origin_ns, ["ip", "route", "show"]).stdout
    assert "10.211." not in lab.run_in(lab.origin_ns, ["ip", "route", "show"]).stdout
    addrs = lab.run_in(lab.origin_ns, ["ip", "-o", "addr", "show"]).stdout
    for addr in [*DEFAULT_HOSTS.values(), lab.foreign_resolver, lab.origin_addr]:
        assert f" {addr}/" in addrs
    assert len(lab.gw_if) <= 15 and len(lab.origin_if) <= 15
    assert lab.hosts == DEFAULT_HOSTS and lab.dns_addr == "198.18.0.2"


def test_names_resolve_inside_namespaces(lab):
    """`ip netns exec` programs use the lab DNS (/etc/netns/<ns>/resolv.conf)."""
    p = lab.run_in(
        lab.gw_ns,
        ["curl", "-sS", "--max-time", "5", "--cacert", lab.ca_cert, "https://api.allowed.test/", "http://shared.test/"],
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout == "hello from api.allowed.test\nhello from shared.test\n"


def test_info_file(lab):
    info = json.loads((lab.work / "lab.json").read_text())
    assert info["gw_ns"] == lab.gw_ns and info["ca_cert"] == str(lab.ca_cert)
    assert info["hosts"]["allowed.test"] == "198.18.1.10"
    assert "rebind.allowed.test" in info["dns_names"]


def test_prefix_validation():
    with pytest.raises(ValueError):
        Lab("this-prefix-is-too-long")
    with pytest.raises(ValueError):
        Lab("bad/name")


def test_lifecycle_custom_hosts_nginx_and_cleanup(tmp_path):
    lab = Lab(work=tmp_path / "w", hosts={"allowed.test": "198.18.1.10", "solo.test": "198.18.3.3"}, nginx=True)
    stray = None
    with lab:
        assert lab.start() is lab  # idempotent
        assert lab.gw_ns in netns_list() and lab.origin_ns in netns_list()
        assert Path(f"/etc/netns/{lab.gw_ns}/resolv.conf").exists()
        assert request(lab, "solo.test", path="/")[2] == b"hello from solo.test\n"
        # nginx: same certificates, h2 + http/1.1
        status, _, body = request(lab, "solo.test", path="/", port=lab.nginx_https_port, alpn=("http/1.1",))
        assert (status, body) == (200, b"ok\n")
        status, _, body = request(lab, "allowed.test", path="/bytes/1m", port=lab.nginx_https_port, alpn=("http/1.1",))
        assert status == 200 and len(body) == 1024 * 1024
        assert request(lab, "allowed.test", path="/", port=lab.nginx_http_port, tls=False)[0] == 200
        p = lab.run_in(lab.gw_ns, ["curl", "-sS", "--http2", "-o", "/dev/null", "-w", "%{http_version}",
                                   "--cacert", lab.ca_cert, f"https://solo.test:{lab.nginx_https_port}/"])
        assert p.stdout == "2", p.stderr
        # a second lab with the same prefix refuses to clobber this one
        with pytest.raises(LabError, match="already exists"):
            Lab(lab.prefix).start()
        assert lab.gw_ns in netns_list()
        # stray processes inside the namespaces are killed on stop
        stray = lab.popen_in(lab.gw_ns, [sys.executable, "-c", "import time; time.sleep(60)"])
    assert lab.prefix not in netns_list()
    assert not Path(f"/etc/netns/{lab.gw_ns}").exists()
    assert stray.wait(5) is not None
    assert (tmp_path / "w" / "ca" / "ca.pem").exists()  # a given work dir is kept
    lab.stop()  # idempotent

    # reusing the work dir reuses the CA
    pem = (tmp_path / "w" / "ca" / "ca.pem").read_bytes()
    with Lab(work=tmp_path / "w") as again:
        assert again.ca_cert.read_bytes() == pem

    # cleanup() removes namespaces left by a crashed lab
    crashed = Lab()
    crashed.start()
    crashed._procs.clear()  # pretend the owner died: nothing tracked
    crashed._created_ns.clear()
    assert set(cleanup(crashed.prefix)) == {crashed.gw_ns, crashed.origin_ns}
    assert crashed.prefix not in netns_list()
    crashed.stop()
    assert not crashed.work.exists()  # a temp work dir is removed
