"""deploy/kubernetes: every overlay renders (kubectl kustomize, offline), every object validates against the
Kubernetes 1.33 schemas (kubernetes-validate ships them), and the invariants hold. The sidecar's redirect
rules are loaded into a real nftables in a throwaway namespace and shown to exempt the gateway uid only."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
from gateway.config import config_from_dict

kubernetes_validate = pytest.importorskip("kubernetes_validate")
KUBECTL = shutil.which("kubectl")
K8S_VERSION = "1.33.0"  # native sidecars (init container restartPolicy: Always) are GA from 1.33
KUBE = DEPLOY / "kubernetes"
OVERLAYS = sorted(p.name for p in (KUBE / "overlays").iterdir())
GATEWAY_UID = 1337
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed (scripts/bootstrap)")


def render(overlay: str) -> list[dict]:
    r = subprocess.run([KUBECTL, "kustomize", str(KUBE / "overlays" / overlay)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def of_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def pod_specs(objs: list[dict]) -> list[tuple[dict, dict]]:
    return [(o, o["spec"]["template"]["spec"]) for o in objs if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]


def containers(spec: dict) -> list[dict]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def is_gateway(c: dict) -> bool:
    return c["name"].startswith("egressgw")


def test_both_modes_exist():
    assert OVERLAYS == ["gateway-service", "sidecar"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates(overlay):
    schema = json.loads((KUBE / "schemas" / "servicemonitor.json").read_text())
    objs = render(overlay)
    assert objs
    for obj in objs:
        if obj["kind"] == "ServiceMonitor":  # a CRD: kubernetes-validate has no schema; ours covers what we use
            jsonschema.validate(obj, schema)
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_pinned_secrets_mounted_gateway_unprivileged(overlay):
    for obj, spec in pod_specs(render(overlay)):
        assert spec.get("automountServiceAccountToken") is False, obj["metadata"]["name"]
        for c in containers(spec):
            image = c["image"]
            assert "@sha256:" in image or (":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest")), image
            for env in c.get("env", []):
                assert "secretKeyRef" not in env.get("valueFrom", {}), f"{c['name']}: secret in env {env['name']}"
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            added = set(sc["capabilities"].get("add", []))
            if sc.get("runAsUser", spec.get("securityContext", {}).get("runAsUser")) == 0:
                # Root only for one job each: writing the redirect rules, or chown of the copied secrets.
                assert (c["name"], frozenset(added)) in {("egressgw-redirect", frozenset({"NET_ADMIN"})),
                                                          ("egressgw-secrets", frozenset({"CHOWN"}))}
            else:
                assert not added, c["name"]
                assert sc.get("runAsNonRoot", spec.get("securityContext", {}).get("runAsNonRoot")) is True
            if is_gateway(c) and c["name"] not in ("egressgw-redirect", "egressgw-secrets"):
                assert sc["runAsUser"] == GATEWAY_UID
        secret_volumes = {v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
        if any(c["name"] == "egressgw" for c in containers(spec)):
            assert {"egressgw-ca", "egressgw-control-token"} <= secret_volumes


@pytest.mark.parametrize("overlay, configmap", [("sidecar", "egressgw-sidecar"), ("gateway-service", "egressgw-gateway")])
def test_gateway_config_is_one_the_gateway_accepts(overlay, configmap):
    cm = next(o for o in of_kind(render(overlay), "ConfigMap") if o["metadata"]["name"] == configmap)
    config = config_from_dict(yaml.safe_load(cm["data"]["config.yaml"]), f"{overlay}/{configmap}")
    if overlay == "gateway-service":
        assert config.session_store.startswith("redis://egressgw-redis.egressgw.svc:")
        assert str(config.proxy) == "0.0.0.0:3128" and config.transparent.host == "127.0.0.1"
    else:
        assert config.session_store.startswith("sqlite:///var/lib/egressgw/") and config.proxy is None


def test_sidecar_native_sidecar_order_and_uid_exemption():
    objs = render("sidecar")
    (_, spec), = pod_specs(objs)
    names = [c["name"] for c in spec["initContainers"]]
    assert names == ["egressgw-redirect", "egressgw-secrets", "egressgw", "egressgw-session"]
    gateway = spec["initContainers"][2]
    assert gateway["restartPolicy"] == "Always" and gateway["startupProbe"]
    assert all("restartPolicy" not in c for i, c in enumerate(spec["initContainers"]) if i != 2)
    # The workload never runs as the exempted uid, and has no way to change the rules.
    for c in spec["containers"]:
        uid = c["securityContext"].get("runAsUser", spec.get("securityContext", {}).get("runAsUser"))
        assert uid is not None and uid != GATEWAY_UID
        assert not c["securityContext"]["capabilities"].get("add")
        mounts = {m["name"] for m in c.get("volumeMounts", [])}
        assert not mounts & {"state", "run", "ca-secret", "token-secret", "config"}, mounts  # no key, token, socket
    rules = next(o for o in of_kind(objs, "ConfigMap") if o["metadata"]["name"] == "egressgw-sidecar")["data"]["redirect.nft"]
    assert f"meta skuid {GATEWAY_UID} return" in rules and f"meta skuid {GATEWAY_UID} accept" in rules
    assert "policy drop" in rules


def test_gateway_service_sandboxes_reach_only_the_gateway():
    objs = render("gateway-service")
    policies = {o["metadata"]["name"]: o for o in of_kind(objs, "NetworkPolicy")}
    sandbox_ns = {o["metadata"]["namespace"] for o, _ in pod_specs(objs) if o["metadata"]["name"] == "example-sandbox"}
    assert sandbox_ns == {"sandboxes"}
    np = policies["sandboxes-egress-only-via-egressgw"]
    assert np["metadata"]["namespace"] == "sandboxes" and np["spec"]["podSelector"] == {}  # every pod there
    assert set(np["spec"]["policyTypes"]) == {"Ingress", "Egress"} and not np["spec"].get("ingress")
    (rule,) = np["spec"]["egress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 3128}]  # no DNS (53), nothing else
    (peer,) = rule["to"]
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "egressgw"}
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "egressgw"}
    assert "ipBlock" not in peer
    # The selected pods are the gateway Deployment's, and the Service/PDB/HPA/ServiceMonitor point at it.
    deploy = next(o for o in of_kind(objs, "Deployment") if o["metadata"]["name"] == "egressgw")
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    for sel in (peer["podSelector"]["matchLabels"], of_kind(objs, "Service")[0]["spec"]["selector"],
                of_kind(objs, "PodDisruptionBudget")[0]["spec"]["selector"]["matchLabels"],
                of_kind(objs, "ServiceMonitor")[0]["spec"]["selector"]["matchLabels"]):
        assert sel.items() <= labels.items()
    hpa = of_kind(objs, "HorizontalPodAutoscaler")[0]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "egressgw" and hpa["minReplicas"] >= 2
    # Sandboxes: no cluster DNS; the proxy address is the Service's fixed IP; credentials from a mounted file.
    sandbox = next(spec for o, spec in pod_specs(objs) if o["metadata"]["name"] == "example-sandbox")
    assert sandbox["dnsPolicy"] == "None"
    svc = next(o for o in of_kind(objs, "Service") if o["metadata"]["name"] == "egressgw")
    ipaddress.ip_address(svc["spec"]["clusterIP"])  # fixed: reachable without DNS
    assert "secretName" in json.dumps(sandbox["volumes"]) 
    assert not {"HTTPS_PROXY", "HTTP_PROXY"} & {e["name"] for e in sandbox["containers"][0]["env"]}
    # Redis only from the gateway.
    redis_np = policies["egressgw-redis-ingress"]["spec"]
    assert redis_np["ingress"][0]["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "egressgw"}}}]


REDIRECT_PROBE = textwrap.dedent("""
    import os, socket, subprocess, sys
    rules, uid = sys.argv[1], int(sys.argv[2])
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)
    run("ip", "link", "set", "lo", "up")
    run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
    run("ip", "addr", "add", "192.0.2.10/24", "dev", "eth0")
    run("ip", "link", "set", "eth0", "up"); run("ip", "link", "set", "peer0", "up")
    run("ip", "route", "add", "default", "via", "192.0.2.1")
    run("nft", "-f", rules)
    listener = socket.socket(); listener.bind(("0.0.0.0", 15001)); listener.listen(8); listener.settimeout(1)
    def attempt(as_uid, kind):
        pid = os.fork()
        if pid == 0:
            os.setgid(as_uid); os.setuid(as_uid)
            try:
                if kind == "tcp":
                    s = socket.socket(); s.settimeout(0.5); s.connect(("198.51.100.7", 443)); s.close()
                else:
                    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(b"x", ("198.51.100.7", 9999))
                os._exit(0)
            except OSError:
                os._exit(1)
        return os.waitpid(pid, 0)[1] == 0
    results = {}
    results["sandbox_tcp_ok"] = attempt(65534, "tcp")
    try:
        conn, _ = listener.accept(); results["redirected"] = True; conn.close()
    except OSError:
        results["redirected"] = False
    results["gateway_tcp_ok"] = attempt(uid, "tcp")   # not redirected: goes to eth0, nobody answers
    try:
        listener.accept(); results["gateway_redirected"] = True
    except OSError:
        results["gateway_redirected"] = False
    results["sandbox_udp_ok"] = attempt(65534, "udp")
    results["gateway_udp_ok"] = attempt(uid, "udp")
    print(results)
""")


@pytest.mark.netns
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None, reason="needs root and nftables")
def test_sidecar_redirect_rules_exempt_only_the_gateway_uid(tmp_path):
    cm = next(o for o in of_kind(render("sidecar"), "ConfigMap") if o["metadata"]["name"] == "egressgw-sidecar")
    rules = tmp_path / "redirect.nft"
    rules.write_text(cm["data"]["redirect.nft"])
    probe = tmp_path / "probe.py"
    probe.write_text(REDIRECT_PROBE)
    r = subprocess.run(["unshare", "--net", "--", sys.executable, str(probe), str(rules), str(GATEWAY_UID)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = eval(r.stdout.strip(), {})  # a dict literal printed by the probe
    # A workload uid's TCP lands on the gateway's transparent port; the gateway uid's does not.
    assert got["sandbox_tcp_ok"] and got["redirected"]
    assert not got["gateway_tcp_ok"] and not got["gateway_redirected"]
    # Non-DNS UDP from the workload is dropped (EPERM); from the gateway it leaves.
    assert not got["sandbox_udp_ok"] and got["gateway_udp_ok"]
