"""The overlays with the TLS components (k8s/components/tls, k8s/components/mtls) and the monitoring
objects for them: rendered by kustomize, validated offline, policy-checked, the Secret mounted where
the settings point, the probes and scraping as documented; and, under mutual TLS, the exec probes
from the rendered Deployment run for real against a server configured by the ConfigMap."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rnnserve.harness.access import Access
from rnnserve.harness.certs import Authority
from rnnserve.harness.launch import ROOT, ServerProcess
from rnnserve.service.settings import env_names
from tests.deploy.test_k8s import (
    checkov_passes_with_every_skip_justified,
    render,
    rendered_overlay,
    tool,
    validate_strictly,
)

OVERLAYS = ["cpu-tls", "cpu-mtls"]
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def one(docs, kind):
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def container(docs) -> dict:
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request, tmp_path_factory):
    return rendered_overlay(request.param, tmp_path_factory)


def test_every_object_validates_strictly(rendered):
    _, docs, path = rendered
    validate_strictly(path)
    assert {d["kind"] for d in docs} == {"Namespace", "ServiceAccount", "ConfigMap", "Service", "Deployment",
                                         "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"}


def test_checkov_passes_with_every_skip_justified(rendered):
    _, docs, path = rendered
    checkov_passes_with_every_skip_justified(docs, path, min_passed=80)


def test_the_settings_point_into_the_mounted_secret(rendered):
    overlay, docs, _ = rendered
    data = one(docs, "ConfigMap")["data"]
    assert not sorted(set(data) - env_names())
    c, pod = container(docs), one(docs, "Deployment")["spec"]["template"]["spec"]
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "tls"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert mount["readOnly"] and volume["secret"]["secretName"] == "rnnserve-tls"
    assert volume["secret"]["defaultMode"] == 0o440 and pod["securityContext"]["fsGroup"]  # readable by the pod
    files = {"RNNSERVE_SERVER__TLS_CERT": "tls.crt", "RNNSERVE_SERVER__TLS_KEY": "tls.key"}
    if overlay == "cpu-mtls":
        files["RNNSERVE_SERVER__TLS_CLIENT_CA"] = "ca.crt"
    else:
        assert "RNNSERVE_SERVER__TLS_CLIENT_CA" not in data
    for variable, name in files.items():
        assert data[variable] == f"{mount['mountPath']}/{name}"
    ports = {p["name"]: p.get("appProtocol") for p in one(docs, "Service")["spec"]["ports"]}
    assert ports == {"http": "https", "grpc": "https"}  # no longer h2c (cleartext HTTP/2)


def test_probes_and_scraping_speak_tls_and_exec_under_mutual_tls(rendered):
    overlay, docs, _ = rendered
    c = container(docs)
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scheme"] == "https"
    if overlay == "cpu-tls":
        assert all(c[p]["httpGet"]["scheme"] == "HTTPS" for p in PROBES)
        assert annotations["prometheus.io/scrape"] == "true"
        return
    assert all("httpGet" not in c[p] for p in PROBES)  # the kubelet presents no client certificate
    commands = {p: c[p]["exec"]["command"] for p in PROBES}
    assert commands["livenessProbe"][-1] == "/livez" and commands["readinessProbe"][-1] == "/readyz"
    assert all(cmd[:3] == ["python", "-m", "rnnserve.service.probe"] for cmd in commands.values())
    assert annotations["prometheus.io/scrape"] == "false"  # annotation scraping has no client certificate


@pytest.mark.parametrize("kustomization, client_cert", [("monitoring-tls", False), ("monitoring-mtls", True)])
def test_the_service_monitor_scrapes_https(kustomization, client_cert):
    kubectl = tool("kubectl", "kubectl kustomize renders the overlays (client-side only)")
    out = subprocess.run([kubectl, "kustomize", str(ROOT / "k8s" / kustomization)], capture_output=True, text=True,
                         check=True)
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert {d["kind"] for d in docs} == {"PrometheusRule", "ServiceMonitor", "ConfigMap"}
    (endpoint,) = one(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scheme"] == "https" and endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    tls = endpoint["tlsConfig"]
    assert tls["ca"]["secret"] == {"name": "rnnserve-scrape-tls", "key": "ca.crt"} and tls["serverName"]
    assert ("cert" in tls and "keySecret" in tls) == client_cert


@pytest.mark.e2e
def test_the_exec_probes_pass_against_a_mutual_tls_server_configured_by_the_configmap(tiny_bundle, tmp_path):
    """The Secret's files (a server certificate with the client-auth usage too, as the component asks)
    in a directory standing in for the mount; the server started with the ConfigMap's TLS settings
    pointed there; each probe's command line from the Deployment, run as the kubelet runs it."""
    docs = render("cpu-mtls")
    data, c = one(docs, "ConfigMap")["data"], container(docs)
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "tls"]
    ca = Authority(tmp_path / "ca")
    pair = ca.issue("server", client=True)
    secret = tmp_path / "secret"
    secret.mkdir()
    shutil.copy(pair.cert, secret / "tls.crt")
    shutil.copy(pair.key, secret / "tls.key")
    shutil.copy(ca.path, secret / "ca.crt")
    settings = {k: v.replace(mount["mountPath"], str(secret)) for k, v in data.items() if "__TLS_" in k}
    access = Access(ca.path, secret / "tls.crt", secret / "tls.key")
    with ServerProcess(tiny_bundle.name, settings, access=access) as srv:
        for probe in PROBES:
            command = [a.replace(mount["mountPath"], str(secret)) for a in c[probe]["exec"]["command"]]
            assert command[0] == "python"
            done = subprocess.run([sys.executable, *command[1:], "--port", str(srv.http_port)], capture_output=True,
                                  text=True, timeout=c[probe]["timeoutSeconds"] + 10, cwd=Path(srv.log.name).parent)
            assert done.returncode == 0, (probe, done.stderr)
        without = subprocess.run([sys.executable, "-m", "rnnserve.service.probe", "--port", str(srv.http_port),
                                  "/readyz"], capture_output=True, text=True, timeout=20)
        assert without.returncode == 1 and without.stderr.startswith("GET https://127.0.0.1:")
