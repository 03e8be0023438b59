"""deploy/prometheus: promtool accepts the config and rules (and the rules' unit tests pass), and a real
Prometheus, started with that config pointed at a running lab gateway, scrapes it and loads the rules."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
PROMTOOL, PROMETHEUS = shutil.which("promtool"), shutil.which("prometheus")
PROM_PORT = 19090
pytestmark = pytest.mark.skipif(None in (PROMTOOL, PROMETHEUS), reason="needs prometheus (scripts/bootstrap)")


@pytest.mark.parametrize("argv", [
    ["check", "config", str(PROM / "prometheus.yml")],
    ["check", "rules", str(PROM / "rules" / "egressgw.rules.yml")],
    ["test", "rules", str(PROM / "rules" / "egressgw.rules.test.yml")],
])
def test_promtool(argv):
    r = subprocess.run([PROMTOOL, *argv], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


def _query(lab, path: str) -> dict:
    r = lab.run_in(lab.gw_ns, ["curl", "-sS", "-m", "5", f"http://127.0.0.1:{PROM_PORT}{path}"])
    return json.loads(r.stdout) if r.stdout.startswith("{") else {}


def test_real_prometheus_scrapes_the_gateway(gateway, lab, tmp_path):
    tmp_path.chmod(0o755)
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROM / f) for f in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job["static_configs"][0]["targets"] = [f"127.0.0.1:{gateway.METRICS_PORT}"]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{lab.gw_ns}", "--", PROMETHEUS, f"--config.file={path}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{PROM_PORT}",
         "--storage.tsdb.retention.time=1h"],
        stdout=log, stderr=log, start_new_session=True)
    try:
        up = urllib.parse.quote('up{job="egressgw"} == 1')
        deadline = time.monotonic() + 60
        result = []
        while time.monotonic() < deadline and not result:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            result = _query(lab, f"/api/v1/query?query={up}").get("data", {}).get("result", [])
            time.sleep(0.5)
        assert result, (tmp_path / "prometheus.log").read_text()[-3000:]
        assert result[0]["metric"]["instance"] == f"127.0.0.1:{gateway.METRICS_PORT}"
        # A metric of the gateway's own, and the rules loaded from deploy/prometheus/rules.
        sessions = _query(lab, "/api/v1/query?query=egressgw_active_sessions")["data"]["result"]
        assert sessions and sessions[0]["metric"]["job"] == "egressgw"
        store = _query(lab, "/api/v1/query?query=egressgw_session_store_up")["data"]["result"]
        assert store and store[0]["value"][1] == "1"
        groups = {g["name"] for g in _query(lab, "/api/v1/rules")["data"]["groups"]}
        assert groups == {"egressgw.recording", "egressgw.alerts"}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
