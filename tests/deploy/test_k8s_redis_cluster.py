"""The overlay with the optional Redis Cluster component (k8s/components/redis-cluster): rendered by
kustomize, validated offline, policy-checked, the network policies as narrow as claimed, and the
StatefulSet's own redis-server command line started for real on loopback (6 nodes), formed into a
cluster by the create Job's own script, with the server configured by the ConfigMap streaming on it."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from rnnserve.harness.launch import ServerProcess, free_port
from rnnserve.harness.redis import ping, redis_binary
from rnnserve.harness.rediscluster import parse_nodes
from rnnserve.service.settings import StreamSettings, cluster_node_urls, env_names
from tests.conftest import need_redis_cluster
from tests.deploy.test_k8s import checkov_passes_with_every_skip_justified, render, rendered_overlay, validate_strictly
from tests.deploy.test_k8s_redis import config, named

OVERLAY = "cpu-redis-cluster"
NODES = "rnnserve-redis-cluster"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    return rendered_overlay(OVERLAY, tmp_path_factory)


def test_every_object_validates_strictly(rendered):
    _, docs, path = rendered
    validate_strictly(path)
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} >= {
        ("Deployment", "rnnserve"), ("StatefulSet", NODES), ("Service", NODES), ("PodDisruptionBudget", NODES),
        ("Job", f"{NODES}-create"), ("NetworkPolicy", "rnnserve"), ("NetworkPolicy", NODES),
        ("NetworkPolicy", f"{NODES}-create")}
    assert not any(d["metadata"]["name"] == "rnnserve-redis" for d in docs)  # not both components
    assert all(d["metadata"].get("namespace") == "rnnserve" for d in docs if d["kind"] != "Namespace")


def test_checkov_passes_with_every_skip_justified(rendered):
    _, docs, path = rendered
    checkov_passes_with_every_skip_justified(docs, path, min_passed=250)


def test_the_servers_use_every_node_of_the_cluster(rendered):
    _, docs, _ = rendered
    data = config(docs)
    assert not sorted(set(data) - env_names())
    settings = StreamSettings(store=data["RNNSERVE_STREAMS__STORE"],
                              store_shards=int(data["RNNSERVE_STREAMS__STORE_SHARDS"]))
    assert settings.clustered and urlsplit(settings.store).scheme == "redis-cluster"
    nodes = [urlsplit(u) for u in cluster_node_urls(settings.store)]
    sts, svc = named(docs, "StatefulSet", NODES), named(docs, "Service", NODES)
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"] and svc["spec"]["clusterIP"] == "None"
    assert [n.hostname for n in nodes] == [f"{NODES}-{i}.{NODES}" for i in range(sts["spec"]["replicas"])]
    assert {n.port for n in nodes} == {svc["spec"]["ports"][0]["port"]} == {6379}
    assert settings.store_shards >= 3  # at least one shard per primary (the Job makes 3)
    job = named(docs, "Job", f"{NODES}-create")["spec"]["template"]["spec"]["containers"][0]
    job_nodes = next(e["value"] for e in job["env"] if e["name"] == "NODES").split()
    assert job_nodes == [f"{n.hostname}:{n.port}" for n in nodes]  # the Job forms the cluster the servers use
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    assert c["args"][c["args"].index("--cluster-require-full-coverage") + 1] == "no"


def test_only_the_serving_pods_and_the_nodes_themselves_reach_the_nodes(rendered):
    _, docs, _ = rendered
    for name in (NODES, f"{NODES}-create"):
        pod = named(docs, "StatefulSet" if name == NODES else "Job", name)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] and pod["automountServiceAccountToken"] is False
        (c,) = pod["containers"]
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] and sc["capabilities"]["drop"] == ["ALL"]
        assert not sc["allowPrivilegeEscalation"]
    labels = {n: named(docs, k, n)["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
              for k, n in (("Deployment", "rnnserve"), ("StatefulSet", NODES), ("Job", f"{NODES}-create"))}
    policy = named(docs, "NetworkPolicy", NODES)["spec"]
    ingress = sorted((tuple(sorted(s["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for s in r["from"])),
                      tuple(sorted(p["port"] for p in r["ports"]))) for r in policy["ingress"])
    assert ingress == [((labels["rnnserve"], labels[f"{NODES}-create"]), (6379,)), ((labels[NODES],), (6379, 16379))]
    (out,) = policy["egress"]
    assert out["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == labels[NODES]
    assert sorted(p["port"] for p in out["ports"]) == [6379, 16379]
    serving = named(docs, "NetworkPolicy", "rnnserve")["spec"]["egress"]
    assert sorted((p["port"], p["protocol"]) for e in serving for p in e["ports"]) == [
        (53, "TCP"), (53, "UDP"), (6379, "TCP")]
    create = named(docs, "NetworkPolicy", f"{NODES}-create")["spec"]
    assert create["ingress"] == [] and sorted(p["port"] for e in create["egress"] for p in e["ports"]) == [53, 53, 6379]


def start_nodes(args: list[str], count: int, workdir: Path) -> tuple[list[subprocess.Popen], list[int]]:
    """``count`` redis-servers with the StatefulSet's arguments, ports, data dirs and announced name moved
    to loopback."""
    procs, ports = [], []
    for i in range(count):
        a = list(args)
        port = free_port()
        a[a.index("--port") + 1] = str(port)
        a[a.index("--cluster-port") + 1] = str(free_port())
        data = workdir / f"node{i}"
        data.mkdir()
        a[a.index("--dir") + 1] = str(data)
        a[a.index("--cluster-config-file") + 1] = str(data / "nodes.conf")
        a[a.index("--cluster-announce-hostname") + 1] = "localhost"
        procs.append(subprocess.Popen([redis_binary(), *a, "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.STDOUT, start_new_session=True))
        ports.append(port)
    return procs, ports


@pytest.mark.e2e
def test_the_cluster_forms_and_serves_streams_as_the_manifests_run_it(tiny_bundle, reference):
    need_redis_cluster()
    docs = render(OVERLAY)
    (node,) = named(docs, "StatefulSet", NODES)["spec"]["template"]["spec"]["containers"]
    (job,) = named(docs, "Job", f"{NODES}-create")["spec"]["template"]["spec"]["containers"]
    workdir = Path(tempfile.mkdtemp(prefix="rnnserve-k8s-cluster-"))
    procs, ports = start_nodes(node["args"], named(docs, "StatefulSet", NODES)["spec"]["replicas"], workdir)
    try:
        deadline = time.time() + 20
        while not all(ping(p) for p in ports) and time.time() < deadline:
            assert all(p.poll() is None for p in procs), "redis-server refused the StatefulSet's arguments"
            time.sleep(0.05)
        env = {"PATH": f"{Path(shutil.which('redis-cli')).parent}:/usr/bin:/bin",
               "NODES": " ".join(f"127.0.0.1:{p}" for p in ports)}
        script = [*job["command"], job["args"][0]]
        first = subprocess.run(script, env=env, capture_output=True, text=True, timeout=60)
        assert first.returncode == 0, first.stdout + first.stderr
        import redis

        with redis.Redis(port=ports[0], decode_responses=True) as c:
            deadline = time.time() + 20
            while c.execute_command("CLUSTER INFO")["cluster_state"] != "ok" and time.time() < deadline:
                time.sleep(0.1)
            views = parse_nodes(c.execute_command("CLUSTER NODES"))
        assert sum(v.primary and bool(v.slots) for v in views) == 3 and len(views) == 6
        again = subprocess.run(script, env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and "the Redis Cluster exists already" in again.stdout  # idempotent
        data = config(docs)
        store = data["RNNSERVE_STREAMS__STORE"]
        for i, port in enumerate(ports):
            store = store.replace(f"{NODES}-{i}.{NODES}:6379", f"127.0.0.1:{port}")
        settings = {"RNNSERVE_STREAMS__STORE": store,
                    **{k: data[k] for k in ("RNNSERVE_STREAMS__STORE_SHARDS", "RNNSERVE_STREAMS__STORE_TIMEOUT_S")}}
        with ServerProcess("tiny", settings) as srv:
            import tritonclient.http as thttp

            client = thttp.InferenceServerClient(srv.url.removeprefix("http://"))
            seq = np.random.default_rng(0).standard_normal((9, 4)).astype(np.float32)
            for lo, hi in ((0, 4), (4, 9)):
                inp = thttp.InferInput("input", [1, hi - lo, 4], "FP32")
                inp.set_data_from_numpy(seq[None, lo:hi])
                got = client.infer("tiny", [inp], sequence_id="k8s", sequence_start=lo == 0, sequence_end=hi == 9,
                                   parameters={"sequence_offset": lo}).as_numpy("output")[0]
                np.testing.assert_allclose(got, reference(seq[:hi]), atol=1e-5)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:  # a primary waits up to Redis' shutdown-timeout (10 s) for replicas stopped beside it
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
