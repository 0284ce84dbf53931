"""The overlays with the optional Redis component (k8s/components/redis): rendered by kustomize,
validated offline, policy-checked, the network policy as narrow as claimed, and Redis's own command
line from the Deployment started for real on loopback with the server configured by the ConfigMap."""

from __future__ import annotations

import subprocess
import time
from urllib.parse import urlsplit

import numpy as np
import pytest

from rnnserve.harness.launch import ServerProcess, free_port
from rnnserve.harness.redis import RedisServer, ping
from rnnserve.service.settings import env_names
from tests.conftest import need_redis
from tests.deploy.test_k8s import (
    checkov_passes_with_every_skip_justified,
    render,
    rendered_overlay,
    validate_strictly,
)

OVERLAYS = ["cpu-redis", "gpu-redis"]


def named(docs, kind, name):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


def config(docs):
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    return cm["data"]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request, tmp_path_factory):
    return rendered_overlay(request.param, tmp_path_factory)


def test_every_object_validates_strictly(rendered):
    _, docs, path = rendered
    validate_strictly(path)
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} >= {
        ("Deployment", "rnnserve"), ("Deployment", "rnnserve-redis"), ("Service", "rnnserve-redis"),
        ("NetworkPolicy", "rnnserve"), ("NetworkPolicy", "rnnserve-redis")}
    assert all(d["metadata"].get("namespace") == "rnnserve" for d in docs if d["kind"] != "Namespace")


def test_checkov_passes_with_every_skip_justified(rendered):
    _, docs, path = rendered
    checkov_passes_with_every_skip_justified(docs, path, min_passed=150)


def test_the_servers_use_the_in_cluster_redis(rendered):
    _, docs, _ = rendered
    data = config(docs)
    assert not sorted(set(data) - env_names())
    url = urlsplit(data["RNNSERVE_STREAMS__STORE"])
    svc = named(docs, "Service", "rnnserve-redis")
    assert url.scheme == "redis" and url.hostname == svc["metadata"]["name"]
    assert url.port == svc["spec"]["ports"][0]["port"] == 6379
    redis_pods = named(docs, "Deployment", "rnnserve-redis")["spec"]["template"]["metadata"]["labels"]
    assert all(redis_pods.get(k) == v for k, v in svc["spec"]["selector"].items())
    serving = named(docs, "Service", "rnnserve")["spec"]["selector"]
    assert not all(redis_pods.get(k) == v for k, v in serving.items())  # the model Service never routes to Redis


def test_redis_runs_restricted_and_only_the_serving_pods_reach_it(rendered):
    _, docs, _ = rendered
    assert named(docs, "Namespace", "rnnserve")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == \
        "restricted"
    pod = named(docs, "Deployment", "rnnserve-redis")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == \
        "RuntimeDefault" and pod["automountServiceAccountToken"] is False
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["capabilities"]["drop"] == ["ALL"]
    assert not sc["allowPrivilegeEscalation"]
    serving_labels = named(docs, "Deployment", "rnnserve")["spec"]["template"]["metadata"]["labels"]
    redis_labels = named(docs, "Deployment", "rnnserve-redis")["spec"]["template"]["metadata"]["labels"]
    np_redis = named(docs, "NetworkPolicy", "rnnserve-redis")["spec"]
    assert all(redis_labels.get(k) == v for k, v in np_redis["podSelector"]["matchLabels"].items())
    (rule,) = np_redis["ingress"]
    (source,) = rule["from"]
    assert set(source) == {"podSelector"}  # same namespace, by pod label only
    assert all(serving_labels.get(k) == v for k, v in source["podSelector"]["matchLabels"].items())
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}] and np_redis["egress"] == []
    egress = named(docs, "NetworkPolicy", "rnnserve")["spec"]["egress"]
    ports = sorted((p["port"], p["protocol"]) for e in egress for p in e["ports"])
    assert ports == [(53, "TCP"), (53, "UDP"), (6379, "TCP")]
    to_redis = [e for e in egress if any(p["port"] == 6379 for p in e["ports"])]
    assert to_redis[0]["to"][0]["podSelector"]["matchLabels"] == np_redis["podSelector"]["matchLabels"]


@pytest.mark.e2e
def test_redis_and_server_start_as_the_manifests_run_them(tiny_bundle, reference):
    """redis-server with the Deployment's own arguments (its data dir and port moved to a temporary
    one on loopback), and rnnserve with the ConfigMap's stream settings pointed at it."""
    need_redis()
    docs = render("cpu-redis")
    (c,) = named(docs, "Deployment", "rnnserve-redis")["spec"]["template"]["spec"]["containers"]
    args = list(c["args"])
    redis = RedisServer(port=free_port())
    args[args.index("--port") + 1] = str(redis.port)
    args[args.index("--dir") + 1] = str(redis.dir)
    proc = subprocess.Popen([redis.binary, *args, "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 20
        while not ping(redis.port) and time.time() < deadline:
            assert proc.poll() is None, "redis-server refused the Deployment's arguments"
            time.sleep(0.05)
        data = config(docs)
        store = data["RNNSERVE_STREAMS__STORE"].replace("rnnserve-redis:6379", f"127.0.0.1:{redis.port}")
        settings = {"RNNSERVE_STREAMS__STORE": store,
                    "RNNSERVE_STREAMS__STORE_TIMEOUT_S": data["RNNSERVE_STREAMS__STORE_TIMEOUT_S"]}
        with ServerProcess("tiny", settings) as srv:
            import tritonclient.http as thttp

            client = thttp.InferenceServerClient(srv.url.removeprefix("http://"))
            seq = np.random.default_rng(0).standard_normal((9, 4)).astype(np.float32)
            for lo, hi in ((0, 4), (4, 9)):
                inp = thttp.InferInput("input", [1, hi - lo, 4], "FP32")
                inp.set_data_from_numpy(seq[None, lo:hi])
                got = client.infer("tiny", [inp], sequence_id=77, sequence_start=lo == 0, sequence_end=hi == 9,
                                   parameters={"sequence_offset": lo}).as_numpy("output")[0]
                np.testing.assert_allclose(got, reference(seq[:hi]), atol=1e-5)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
