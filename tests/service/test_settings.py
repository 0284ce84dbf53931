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


# ---- no silent settings ------------------------------------------------------------------------------

@pytest.mark.parametrize("variable, hint", [
    # a typo at the top level (the group's name)
    ("RNNSERVE_SERVR__HTTP_PORT", "did you mean RNNSERVE_SERVER__HTTP_PORT?"),
    ("RNNSERVE_MODLES", "did you mean RNNSERVE_MODELS?"),
    # a typo in a nested group (the key)
    ("RNNSERVE_SERVER__TLS_CRT", "did you mean RNNSERVE_SERVER__TLS_CERT?"),
    ("RNNSERVE_BATCHING__MAX_BATCHSIZE", "did you mean RNNSERVE_BATCHING__MAX_BATCH_SIZE?"),
    ("rnnserve_limits__max_lenght", "did you mean RNNSERVE_LIMITS__MAX_LENGTH?"),  # read in any case
    # removed: the CI switch that lived under the prefix, and a benchmark's one-off switch of the past
    ("RNNSERVE_REQUIRE_E2E_TOOLS", "renamed REQUIRE_E2E_TOOLS: not a server setting"),
    ("RNNSERVE_X_NO_BENTO_TIMEOUT", "did you mean RNNSERVE_"),
])
def test_an_unknown_variable_is_named_with_the_closest_setting(variable, hint):
    from rnnserve.service.settings import unknown_variables

    ((name, said),) = unknown_variables({variable: "1", "RNNSERVE_SERVER__HTTP_PORT": "3000"})
    assert name == variable and hint in said


def test_what_is_not_an_unknown_variable():
    from rnnserve.service.settings import env_names, unknown_variables

    environ = {name: "x" for name in env_names()}
    environ.update({"RNNSERVE_SERVER": '{"host": "0.0.0.0"}',  # a whole group as JSON is read too
                    "_RNNSERVE_STARTUP_REPORT": "/tmp/r",  # internal to one server's processes
                    "REQUIRE_E2E_TOOLS": "1", "PATH": "/bin", "XRNNSERVE_A": "1"})
    assert unknown_variables(environ) == []


def test_a_group_refuses_a_key_it_does_not_know():
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        Settings(server={"tls_crt": "/x"})


def test_tls_files_come_in_pairs():
    from rnnserve.service.settings import ServerSettings

    assert ServerSettings(tls_cert="/c", tls_key="/k").tls_cert == "/c"
    with pytest.raises(ValidationError, match="tls_cert is set without server.tls_key"):
        ServerSettings(tls_cert="/c")
    with pytest.raises(ValidationError, match="tls_key is set without server.tls_cert"):
        ServerSettings(tls_key="/k")
    with pytest.raises(ValidationError, match="tls_client_ca .mutual TLS. needs TLS"):
        ServerSettings(tls_client_ca="/ca")


def test_a_bad_restricted_api_value_is_refused_without_echoing_it():
    from rnnserve.service.startup import settings_error

    with pytest.raises(ValidationError) as info:
        Settings(server={"restricted_api": "inference,shell:x-api-key=hunter2"})
    line = settings_error(info.value)
    assert line.startswith("invalid setting RNNSERVE_SERVER__RESTRICTED_API: ") and "'shell'" in line
    assert "hunter2" not in line
