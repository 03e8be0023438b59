"""`egressgw sandbox attach`: a namespace made by hand, with a process already running inside, governed.

The process (a Python loop) starts in a fresh network namespace with nothing but
lo, and keeps fetching an allowed URL, a denied one and an origin by bare IP,
writing each result to a file. Before attach nothing gets out; after attach the
allowed one works and the others are refused; after `down` nothing gets out
again and every object attach made is gone, while the process lives on.
A microVM tap is attached and released the same way (no VM here: the test
checks the rules and the address, not traffic).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from netns import naming

POLICY = """
- name: allowed
  hosts: [{matchName: allowed.test}]
"""

LOOP = textwrap.dedent("""
    import json, socket, ssl, sys, time, urllib.request
    import dns.resolver
    out, bundle = sys.argv[1], sys.argv[2]
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = ["192.0.2.53"]  # any address: the sandbox's port 53 is redirected to the gateway
    res.lifetime = 1.5
    real = socket.getaddrinfo
    def lookup(host, *a, **kw):
        try:
            socket.inet_aton(host)
            return real(host, *a, **kw)
        except OSError:
            return real(res.resolve(host, "A")[0].address, *a, **kw)
    socket.getaddrinfo = lookup
    ctx = ssl.create_default_context(cafile=bundle)
    targets = {"allowed": "https://allowed.test/", "denied": "https://denied.test/",
               "direct": "http://198.18.1.11/"}
    while True:
        for name, url in targets.items():
            started = time.time()  # a request is counted from when it began: one sent mid-attach may time out after it
            try:
                with urllib.request.urlopen(url, timeout=2, context=ctx) as r:
                    result = str(r.status)
            except urllib.error.HTTPError as e:
                result = str(e.code)
            except Exception as e:
                result = "error: " + type(e).__name__
            with open(out, "a") as f:
                f.write(json.dumps({"t": started, "target": name, "result": result}) + "\\n")
        time.sleep(0.1)
""")


def _results(path: Path, since: float) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines() if path.exists() else ():
        rec = json.loads(line)
        if rec["t"] >= since:
            out.setdefault(rec["target"], []).append(rec["result"])
    return out


def _wait_rounds(path: Path, since: float, rounds: int = 2, timeout: float = 30) -> dict[str, list[str]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = _results(path, since)
        if all(len(got.get(k, [])) >= rounds for k in ("allowed", "denied", "direct")):
            return got
        time.sleep(0.2)
    raise AssertionError(f"the loop did not report {rounds} rounds: {_results(path, since)}")


@pytest.fixture
def hand_made(gateway, tmp_path):
    """A process in a namespace of its own (unshare --net), as a container runtime would leave it."""
    tmp_path.chmod(0o755)
    script, out = tmp_path / "loop.py", tmp_path / "results.jsonl"
    script.write_text(LOOP)
    bundle = gateway.dir / "ca" / "sandbox-ca-bundle.pem"
    proc = subprocess.Popen(["unshare", "--net", "--", sys.executable, str(script), str(out), str(bundle)],
                            start_new_session=True, stderr=open(tmp_path / "loop.stderr", "wb"))
    deadline = time.monotonic() + 5
    while os.readlink(f"/proc/{proc.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
        assert time.monotonic() < deadline, "unshare did not enter a new namespace"
        time.sleep(0.01)
    yield proc, out
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_attach_governs_a_running_process_and_down_cleans_up(gateway, sandboxes, hand_made, lab):
    proc, out = hand_made
    name = f"att{sandboxes.tag}"
    policy = sandboxes.policy_file(name, POLICY)
    # Before: only lo inside, nothing gets out.
    before = _wait_rounds(out, 0, rounds=1)
    assert not any(r == "200" for results in before.values() for r in results)

    r = gateway.cli("sandbox", "attach", name, "--policy", str(policy), "--netns-pid", str(proc.pid), "--json")
    info = json.loads(r.stdout)
    sandboxes.names.append(name)  # removed at module end if the test fails half way
    assert info["kind"] == "attached" and info["netns"] == f"egw-{name}"
    t0 = time.time()
    got = _wait_rounds(out, t0 + 0.5)
    assert set(got["allowed"]) == {"200"}, got
    assert all(r != "200" for r in got["denied"]) and all(r != "200" for r in got["direct"]), got
    assert not lab.records(host="denied.test")
    direct = gateway.events(session=info["session"], dest_host="198.18.1.11")
    assert direct and all(e["decision"] == "deny" for e in direct)
    assert not lab.records(host="198.18.1.11")
    assert gateway.events(session=info["session"], event="dns", dns_qname="denied.test", decision="deny")
    table = naming.table_name(name)
    listed = lab.run_in(lab.gw_ns, ["nft", "list", "table", "inet", table])
    assert listed.returncode == 0 and "redirect to :15001" in listed.stdout

    gateway.cli("sandbox", "down", name)
    t1 = time.time()
    after = _wait_rounds(out, t1 + 0.5)
    assert not any(r == "200" for results in after.values() for r in results), after
    assert proc.poll() is None  # the process (and its namespace) live on, with no way out
    assert not os.path.lexists(f"/run/netns/egw-{name}")
    assert lab.run_in(lab.gw_ns, ["nft", "list", "table", "inet", table]).returncode != 0
    assert not (gateway.dir / "state" / "sandboxes" / f"{name}.json").exists()
    assert json.loads(gateway.cli("sandbox", "list", "--json").stdout) == [] or \
        all(b["name"] != name for b in json.loads(gateway.cli("sandbox", "list", "--json").stdout))
    assert all(s["id"] != info["session"] for s in gateway.client().list_sessions())
    links = subprocess.run(["nsenter", f"--net=/proc/{proc.pid}/ns/net", "--", "ip", "-j", "link"],
                           capture_output=True, text=True).stdout
    assert [link["ifname"] for link in json.loads(links)] == ["lo"]


def test_attach_refuses_a_namespace_with_another_way_out_and_leaves_nothing(gateway, sandboxes, tmp_path):
    proc = subprocess.Popen(["unshare", "--net", "--", "sh", "-c", "ip link add side0 type veth peer name side1; sleep 60"],
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 5
        while "side0" not in subprocess.run(["nsenter", f"--net=/proc/{proc.pid}/ns/net", "--", "ip", "link"],
                                            capture_output=True, text=True).stdout:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        name = f"atx{sandboxes.tag}"
        r = gateway.cli("sandbox", "attach", name, "--policy", str(sandboxes.policy_file(name, POLICY)),
                        "--netns-pid", str(proc.pid), check=False)
        assert r.returncode != 0 and "side0" in r.stderr and "--network none" in r.stderr
        assert not os.path.lexists(f"/run/netns/egw-{name}")
        assert not (gateway.dir / "state" / "sandboxes" / f"{name}.json").exists()
        assert all(s["name"] != name for s in gateway.client().list_sessions())
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_attach_rejects_bad_targets_with_a_fix(gateway, sandboxes):
    policy = str(sandboxes.policy_file("bad", POLICY))
    r = gateway.cli("sandbox", "attach", "bad1", "--policy", policy, "--netns-pid", "999999999", check=False)
    assert r.returncode != 0 and "fix:" in r.stderr
    r = gateway.cli("sandbox", "attach", "bad2", "--policy", policy, "--netns-path", "/proc/self/ns/net", check=False)
    assert r.returncode != 0 and "gateway's own" in r.stderr
    r = gateway.cli("sandbox", "attach", "bad3", "--policy", policy, "--tap", "nosuchtap0", check=False)
    assert r.returncode != 0 and "does not exist" in r.stderr


def test_attach_a_microvm_tap_and_release_it(gateway, sandboxes, lab):
    tap = f"fctap{sandboxes.tag}"
    lab.run_in(lab.gw_ns, ["ip", "tuntap", "add", "dev", tap, "mode", "tap"], check=True)
    try:
        name = f"vm{sandboxes.tag}"
        r = gateway.cli("sandbox", "attach", name, "--policy", str(sandboxes.policy_file(name, POLICY)),
                        "--tap", tap, "--json")
        info = json.loads(r.stdout)
        sandboxes.names.append(name)
        assert info["kind"] == "tap" and info["tap"] == tap
        assert info["boot_args"] == f"ip={info['address']}::{info['gateway']}:255.255.255.252::eth0:off"
        addr = lab.run_in(lab.gw_ns, ["ip", "-j", "addr", "show", "dev", tap]).stdout
        assert info["gateway"] in addr
        rules = lab.run_in(lab.gw_ns, ["nft", "list", "table", "inet", naming.table_name(name)]).stdout
        assert f'iifname "{tap}"' in rules and f"ip saddr != {info['address']}" in rules
        exec_r = gateway.cli("sandbox", "exec", name, "--", "true", check=False)
        assert exec_r.returncode != 0 and "microVM" in exec_r.stderr

        gateway.cli("sandbox", "down", name)
        shown = json.loads(lab.run_in(lab.gw_ns, ["ip", "-j", "addr", "show", "dev", tap]).stdout)[0]
        assert shown["ifname"] == tap and "UP" not in shown["flags"] and not shown.get("addr_info")
        assert lab.run_in(lab.gw_ns, ["nft", "list", "table", "inet", naming.table_name(name)]).returncode != 0
        assert all(s["id"] != info["session"] for s in gateway.client().list_sessions())
    finally:
        lab.run_in(lab.gw_ns, ["ip", "link", "del", tap])


def test_attach_by_netns_path_leaves_the_original_name_alone(gateway, sandboxes, lab):
    ns = f"hand{sandboxes.tag}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        name = f"atp{sandboxes.tag}"
        r = gateway.cli("sandbox", "attach", name, "--policy", str(sandboxes.policy_file(name, POLICY)),
                        "--netns-path", f"/run/netns/{ns}", "--json")
        info = json.loads(r.stdout)
        sandboxes.names.append(name)
        assert os.stat(f"/run/netns/{ns}").st_ino == os.stat(f"/run/netns/egw-{name}").st_ino
        bundle = str(gateway.dir / "ca" / "sandbox-ca-bundle.pem")
        got = lab.run_in(ns, ["curl", "-sS", "-m", "5", "--cacert", bundle, "--resolve",
                              "allowed.test:443:198.18.1.10", "https://allowed.test/"])
        assert got.stdout.strip() == "hello from allowed.test", got.stderr
        assert gateway.events(session=info["session"], dest_host="allowed.test", decision="allow")
        gateway.cli("sandbox", "down", name)
        assert os.path.lexists(f"/run/netns/{ns}") and not os.path.lexists(f"/run/netns/egw-{name}")
        links = json.loads(subprocess.run(["ip", "-n", ns, "-j", "link"], capture_output=True, text=True).stdout)
        assert [link["ifname"] for link in links] == ["lo"]
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
