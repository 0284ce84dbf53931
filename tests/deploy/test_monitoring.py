"""Alert rules (promtool), the Grafana dashboard's queries (a real Prometheus) and the metric docs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from rnnserve.harness.prometheus import Prometheus
from tests.conftest import need_tool

MON = Path(__file__).resolve().parents[2] / "k8s" / "monitoring"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md"


@pytest.fixture()
def rules_dir(tmp_path):
    rule = yaml.safe_load((MON / "prometheusrule.yaml").read_text())
    assert rule["kind"] == "PrometheusRule"
    (tmp_path / "rnnserve.rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    shutil.copy(MON / "tests" / "alerts.test.yaml", tmp_path)
    return tmp_path


def test_promtool_check_rules(rules_dir):
    out = subprocess.run([need_tool("promtool"), "check", "rules", "rnnserve.rules.yaml"], cwd=rules_dir,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 10 rules found" in out.stdout


def test_promtool_test_rules(rules_dir):
    out = subprocess.run([need_tool("promtool"), "test", "rules", "alerts.test.yaml"], cwd=rules_dir,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def dashboard_queries() -> list[str]:
    dash = json.loads((MON / "grafana-dashboard.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


@pytest.mark.e2e
def test_every_dashboard_query_is_valid_promql():
    need_tool("prometheus")
    prom = Prometheus("127.0.0.1:9")  # nothing to scrape: only the query parser is exercised
    try:
        prom.wait_ready()
        for expr in dashboard_queries():
            q = expr.replace("$__rate_interval", "1m").replace("$model", ".*")
            r = httpx.get(prom.url + "/api/v1/query", params={"query": q}, timeout=10).json()
            assert r["status"] == "success", (expr, r)
    finally:
        prom.stop()


def test_every_metric_is_documented():
    source = (Path(__file__).resolve().parents[2] / "service" / "observability" / "metrics.py").read_text()
    names = set(re.findall(r'"(rnnserve_[a-z_]+)"', source))
    docs = DOCS.read_text()
    assert len(names) >= 15
    missing = sorted(n for n in names if n not in docs)
    assert not missing, f"metrics missing from docs/OPERATIONS.md: {missing}"


def test_every_setting_is_documented():
    from rnnserve.service.settings import env_names

    docs = DOCS.read_text()
    missing = sorted(n for n in env_names() if f"`{n}`" not in docs)
    assert not missing, f"settings missing from docs/OPERATIONS.md: {missing}"
