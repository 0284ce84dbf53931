"""Kubernetes manifests: rendered by kustomize, validated offline, policy-checked, and the
Deployment's own command line + ConfigMap started for real on loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from rnnserve.harness.launch import ROOT, free_port
from rnnserve.service.settings import env_names

K8S = ROOT / "k8s"
TOOLS = ROOT / ".venv-tools" / "bin"
REQUIRED = os.environ.get("REQUIRE_E2E_TOOLS") == "1"
KUBERNETES_VERSION = "1.31.0"


def tool(path: Path | str, why: str) -> str:
    found = shutil.which(str(path))
    if found is None:
        if REQUIRED:
            pytest.fail(f"{path} is required in CI: {why}")
        pytest.skip(f"{path} not available: {why}")
    return found


def render(overlay: str) -> list[dict]:
    kubectl = tool("kubectl", "kubectl kustomize renders the overlays (client-side only)")
    out = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True,
                         text=True, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def rendered_overlay(overlay: str, tmp_path_factory) -> tuple[str, list[dict], Path]:
    """The overlay's objects, and the file they were written to (for the offline validators)."""
    docs = render(overlay)
    path = tmp_path_factory.mktemp("k8s") / f"{overlay}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return overlay, docs, path


def validate_strictly(path: Path) -> None:
    kv = tool(TOOLS / "kubernetes-validate", "make tools installs kubernetes-validate")
    out = subprocess.run([kv, "--strict", "--quiet", "-k", KUBERNETES_VERSION, str(path)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def by_kind(docs, kind):
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def rendered(request, tmp_path_factory):
    return rendered_overlay(request.param, tmp_path_factory)


def test_every_object_validates_strictly(rendered):
    overlay, docs, path = rendered
    validate_strictly(path)
    kinds = {d["kind"] for d in docs}
    assert kinds == {"Namespace", "ServiceAccount", "ConfigMap", "Service", "Deployment",
                     "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"}


def checkov_passes_with_every_skip_justified(docs: list[dict], path: Path, min_passed: int) -> None:
    """checkov on the rendered file: no failed check, at least ``min_passed`` run, and every
    ``checkov.io/skip`` annotation names a check and says why."""
    checkov = tool(TOOLS / "checkov", "make tools installs checkov")
    out = subprocess.run([checkov, "--quiet", "--compact", "--skip-download", "--framework", "kubernetes",
                          "-o", "json", "-f", str(path)], capture_output=True, text=True)
    report = json.loads(out.stdout)
    summary = report["summary"]
    assert summary["failed"] == 0, [c["check_id"] for c in report["results"]["failed_checks"]]
    assert summary["passed"] >= min_passed
    for doc in docs:
        for key, value in (doc["metadata"].get("annotations") or {}).items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = value.partition("=")
                assert check.startswith("CKV") and len(reason) > 20, value


def test_checkov_passes_with_every_skip_justified(rendered):
    _, docs, path = rendered
    checkov_passes_with_every_skip_justified(docs, path, min_passed=80)


def test_configmap_names_only_real_settings(rendered):
    _, docs, _ = rendered
    data = by_kind(docs, "ConfigMap")["data"]
    unknown = sorted(set(data) - env_names())
    assert not unknown, f"not settings in service/settings.py: {unknown}"
    assert data["RNNSERVE_SERVER__HTTP_PORT"] == "3000" and data["RNNSERVE_SERVER__GRPC_PORT"] == "8001"


def test_deployment_posture(rendered):
    overlay, docs, _ = rendered
    dep = by_kind(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 3000, "grpc": 8001}
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert c["readinessProbe"]["httpGet"]["path"] == c["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["securityContext"]["runAsNonRoot"] and pod["automountServiceAccountToken"] is False
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["capabilities"]["drop"] == ["ALL"]
    assert not sc["allowPrivilegeEscalation"]
    assert c["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    config = by_kind(docs, "ConfigMap")["data"]
    assert pod["terminationGracePeriodSeconds"] > float(config["RNNSERVE_SERVER__REQUEST_TIMEOUT_S"])
    svc = by_kind(docs, "Service")
    assert {p["name"]: p.get("appProtocol") for p in svc["spec"]["ports"]} == {"http": "http",
                                                                             "grpc": "kubernetes.io/h2c"}
    hpa = by_kind(docs, "HorizontalPodAutoscaler")
    assert {m["type"] for m in hpa["spec"]["metrics"]} == {"Resource", "Pods"}
    assert hpa["spec"]["metrics"][1]["pods"]["metric"]["name"] == "rnnserve_requests_in_flight"
    if overlay == "gpu":
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"] and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert config["RNNSERVE_RUNTIME__PROVIDER"] == "cuda"
    else:
        assert "nvidia.com/gpu" not in c["resources"]["limits"]
        assert config["RNNSERVE_RUNTIME__PROVIDER"] == "cpu"


def test_adapter_rule_serves_the_hpa_metric():
    docs = [d for d in yaml.safe_load_all((K8S / "monitoring" / "prometheus-adapter-rules.yaml").read_text()) if d]
    rules = yaml.safe_load(docs[0]["data"]["config.yaml"])["rules"]
    assert rules[0]["name"]["as"] == "rnnserve_requests_in_flight"


@pytest.mark.e2e
def test_service_starts_as_the_deployment_runs_it(tiny_bundle, bentoml_home):
    docs = render("cpu")
    dep, config = by_kind(docs, "Deployment"), by_kind(docs, "ConfigMap")["data"]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["command"][:3] == ["python", "-m", "rnnserve.cli"]
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"  # start-up errors show in `describe pod`
    env = {**os.environ, **config}
    # Only what a test must change: loopback and free ports (house rule), the test model store.
    http_port, grpc_port = free_port(), free_port()
    env.update({"RNNSERVE_SERVER__HOST": "127.0.0.1", "RNNSERVE_SERVER__HTTP_PORT": str(http_port),
                "RNNSERVE_SERVER__GRPC_PORT": str(grpc_port), "RNNSERVE_MODEL__NAME": "tiny",
                "BENTOML_HOME": str(bentoml_home)})
    log = open(bentoml_home / "deploy-test.log", "w")
    proc = subprocess.Popen([sys.executable, *c["command"][1:]], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{http_port}"
    statuses = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                statuses.append(httpx.get(url + c["startupProbe"]["httpGet"]["path"], timeout=1).status_code)
                if statuses[-1] == 200:
                    break
            except httpx.HTTPError:
                statuses.append(None)
            time.sleep(0.05)
        output = (bentoml_home / "deploy-test.log").read_text()
        assert statuses and statuses[-1] == 200, output[-3000:]
        assert "warm-up done" in output  # logged before the first 200 from /readyz
        assert httpx.get(url + c["livenessProbe"]["httpGet"]["path"]).status_code == 200
        assert httpx.get(url + c["readinessProbe"]["httpGet"]["path"]).status_code == 200
        r = httpx.post(url + "/predict", json={"sequences": [[[0.1, 0.2, 0.3, 0.4]] * 5]})
        assert r.status_code == 200, r.text
    finally:
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
