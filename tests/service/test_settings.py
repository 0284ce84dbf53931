"""The settings tree's own rules (start-up checks of whole servers are in tests/e2e/service/test_startup.py)."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from rnnserve.service.settings import BatchingSettings, Settings


def test_batching_policy_and_its_deprecated_name(monkeypatch, caplog):
    assert Settings().batching.policy == "buckets"
    monkeypatch.setenv("RNNSERVE_BATCHING__POLICY", "steps")
    assert Settings().batching.policy == "steps"
    monkeypatch.delenv("RNNSERVE_BATCHING__POLICY")
    monkeypatch.setenv("RNNSERVE_BATCHING__ENGINE", "steps")
    with caplog.at_level(logging.WARNING, logger="rnnserve.settings"):
        assert Settings().batching.policy == "steps"  # the old name keeps working ...
    assert "RNNSERVE_BATCHING__ENGINE is deprecated: use RNNSERVE_BATCHING__POLICY=steps" in caplog.text
    with pytest.raises(ValidationError, match="disagree"):
        BatchingSettings(engine="steps", policy="buckets")


def test_stream_store_urls_one_redis_or_a_cluster():
    from rnnserve.service.settings import StreamSettings, cluster_node_urls

    for ok in ("memory", "redis://h:6379/0", "rediss://u:p@h:6380/1", "unix:///run/redis.sock",
               "redis-cluster://a:7000", "redis-cluster://a:7000,b:7001,[::1]:7002", "rediss-cluster://u:p@a:7000/0"):
        assert StreamSettings(store=ok).store == ok
    assert cluster_node_urls("rediss-cluster://u:p@a:7000,b:7001/?ssl_cert_reqs=none") == [
        "rediss://u:p@a:7000/?ssl_cert_reqs=none", "rediss://u:p@b:7001/?ssl_cert_reqs=none"]
    for bad, why in (("redis-cluster://a:7000,b:x", "node 'b:x' of the cluster URL: expected host:port"),
                     ("redis-cluster://a:7000,,b:1", "node '' of the cluster URL"),
                     ("redis-cluster://a:7000/2", "a Redis Cluster has only database 0, not '2'"),
                     ("mongodb://h", "expected 'memory' or a Redis URL")):
        with pytest.raises(ValidationError, match=why):
            StreamSettings(store=bad)
    assert not StreamSettings(store="redis://h").clustered and StreamSettings(store="rediss-cluster://h:1").clustered


def test_a_cluster_store_needs_a_stream_budget_for_every_shard(monkeypatch):
    from rnnserve.service.settings import StreamSettings

    assert StreamSettings(store="redis://h", max_streams=2).max_streams == 2  # one primary: no shards
    assert StreamSettings(store="redis-cluster://h:1", max_streams=4, store_shards=4).store_shards == 4
    monkeypatch.setenv("RNNSERVE_STREAMS__STORE", "redis-cluster://h:7000")
    monkeypatch.setenv("RNNSERVE_STREAMS__MAX_STREAMS", "10")
    with pytest.raises(ValidationError, match="max_streams=10 is below store_shards=48: .* raise "
                                              "RNNSERVE_STREAMS__MAX_STREAMS or lower RNNSERVE_STREAMS__STORE_SHARDS"):
        Settings()
