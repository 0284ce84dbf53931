"""A real Prometheus (Debian package) scrapes a real server; drift shows up in its query API."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from rnnserve.harness.launch import ServerProcess
from rnnserve.harness.prometheus import Prometheus
from rnnserve.models.data import synthetic
from tests.conftest import need_tool

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def send(url: str, seqs) -> None:
    for i in range(0, len(seqs), 20):
        r = httpx.post(url + "/predict", json={"sequences": [s.tolist() for s in seqs[i:i + 20]]}, timeout=30)
        assert r.status_code == 200, r.text


def wait_for(fn, timeout=40.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(1)
    return fn()


def test_prometheus_sees_only_the_shifted_feature_drift(tiny_bundle):
    need_tool("prometheus")
    reference = tiny_bundle.read_json("reference.json")
    threshold = 0.1
    settings = {"RNNSERVE_DRIFT__INTERVAL_S": "1", "RNNSERVE_DRIFT__WINDOW_SEQUENCES": "200",
                "RNNSERVE_DRIFT__FEATURE_PSI_THRESHOLD": str(threshold)}
    with ServerProcess("tiny", settings) as server:
        prom = Prometheus(f"127.0.0.1:{server.http_port}")
        try:
            prom.wait_ready()
            normal = list(synthetic(200, num_features=4, seed=77).sequences)
            send(server.url, normal)
            settled = wait_for(lambda: len(prom.query('rnnserve_drift_psi{signal=~"feature_.*"}')) == 4 and
                               prom.query("rnnserve_drift_window_sequences").get("", 0) >= 200)
            assert settled, "drift gauges never reached Prometheus"
            time.sleep(2.5)  # one more evaluation + scrape of the full in-distribution window
            before = prom.query('rnnserve_drift_psi{signal=~"feature_.*"}')
            assert all(v < threshold for v in before.values()), before

            std = reference["features"][1]["std"]
            shift = np.array([0, std, 0, 0], np.float32)
            shifted = [s + shift for s in synthetic(200, num_features=4, seed=78).sequences]
            send(server.url, shifted)
            query = 'rnnserve_drift_psi{signal="feature_1"}'
            crossed = wait_for(lambda: prom.query(query).get("feature_1", 0) > threshold)
            assert crossed, prom.query('rnnserve_drift_psi')
            after = prom.query('rnnserve_drift_psi{signal=~"feature_.*"}')
            assert after["feature_1"] > threshold
            assert all(v < threshold for k, v in after.items() if k != "feature_1"), after
            assert prom.query("rnnserve_drift_score").get("", 0) > 1
            report = httpx.get(server.url + "/drift").json()
            assert report["enabled"] and "feature_1" in report["drifted"]
            # the scrape also carries latency, batching and padding series
            assert prom.query('sum(rnnserve_timesteps_total{kind="real"})')[""] > 0
            assert prom.query("sum(rnnserve_batch_sequences_count)")[""] > 0
        finally:
            prom.stop()
