"""Restricted API categories (service/security.py): the setting's syntax, the one endpoint-to-category
table, the check and its refusal (naming the category and the key, never the value). The same checks
through real servers on both transports: tests/e2e/service/test_security.py."""

from __future__ import annotations

import pytest

from rnnserve.service.errors import Forbidden
from rnnserve.service.security import (
    CATEGORIES,
    ENDPOINT_CATEGORY,
    NO_ENDPOINT_HERE,
    Restrictions,
    parse_groups,
)
from rnnserve.service.transports.http import ROUTES, SYSTEM_ROUTES


def test_the_categories_are_tritons_plus_metrics():
    triton = {"health", "metadata", "inference", "shared-memory", "model-config", "model-repository",
              "statistics", "trace", "logging"}
    assert set(CATEGORIES) == triton | {"metrics"}
    assert set(ENDPOINT_CATEGORY.values()) == set(CATEGORIES) - NO_ENDPOINT_HERE


def test_every_endpoint_of_both_transports_has_a_category():
    """A new route or RPC must be placed in a category, or it would escape every restriction."""
    http = {name for _, _, _, name, _ in ROUTES} | set(SYSTEM_ROUTES.values())
    grpc_endpoints = {"live", "ready", "model_ready", "server_metadata", "model_metadata", "model_config",
                      "model_stats", "repository_index", "repository_load", "repository_unload", "infer",
                      "stream_infer", "grpc_health"}
    assert http | grpc_endpoints == set(ENDPOINT_CATEGORY)  # each RPC refused when restricted: test_*_servicer.py


@pytest.mark.parametrize("spec, groups", [
    ("inference:x-api-key=abc", [(("inference",), "x-api-key", "abc")]),
    (" model-repository, statistics : X-Admin = a=b:c ; health:probe=@/run/secrets/probe ;",
     [(("model-repository", "statistics"), "x-admin", " a=b:c"), (("health",), "probe", "@/run/secrets/probe")]),
    ("", []),
])
def test_the_syntax_is_tritons(spec, groups):
    assert [(g.categories, g.key, g.value) for g in parse_groups(spec)] == groups


@pytest.mark.parametrize("spec, message", [
    ("inference", "is not <api>"),
    ("inference:x-api-key", "is not <api>"),
    ("inference,shell:k=v", "unknown API category 'shell'"),
    ("inference:k=v;inference:j=w", "'inference' is in more than one group"),
    ("inference:=v", "header key ''"),
    ("inference:grpc-timeout=v", "not a usable header"),
    ("inference:key-bin=v", "not a usable header"),
    ("inference:k=", "empty value"),
])
def test_a_bad_spec_names_what_is_wrong_and_never_the_value(spec, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_groups(spec)
    assert "=v" not in str(info.value)


def test_the_check_refuses_without_the_key_or_with_a_wrong_value():
    r = Restrictions.parse("inference,health:x-api-key=s3cret;statistics:x-admin=adm")
    r.check("infer", {"x-api-key": "s3cret"})
    r.check("livez", {"x-api-key": "s3cret"})
    r.check("model_stats", {"x-admin": "adm"})
    r.check("model_metadata", None)  # not restricted
    r.check("infer", {"triton-grpc-protocol-x-api-key": "s3cret"})  # as Triton's gRPC clients send it
    for endpoint, headers in [("infer", None), ("infer", {}), ("predict", {"x-api-key": "s3cre"}),
                              ("stream_infer", {"x-api-key": "s3cret "}), ("model_stats", {"x-api-key": "s3cret"})]:
        with pytest.raises(Forbidden) as info:
            r.check(endpoint, headers)
        assert "restricted" in info.value.message and "s3cret" not in info.value.message
        assert "adm'" not in info.value.message
    with pytest.raises(Forbidden, match="category 'statistics'.*'x-admin'"):
        r.check("drift", {})
    assert r.categories() == ["health", "inference", "statistics"] and bool(r)
    assert not Restrictions.parse("")


def test_the_value_is_kept_as_a_digest_only():
    r = Restrictions.parse("inference:x-api-key=s3cret")
    assert "s3cret" not in repr(vars(r)) and b"s3cret" not in b"".join(x.digest for x in r.by_category.values())


def test_a_value_from_a_file_is_read_and_stripped(tmp_path):
    (tmp_path / "key").write_text("from-a-secret\n")
    r = Restrictions.parse(f"model-repository:x-admin=@{tmp_path / 'key'}")
    r.check("repository_load", {"x-admin": "from-a-secret"})
    with pytest.raises(OSError, match="cannot read the value of key 'x-api-key' from .*missing"):
        Restrictions.parse(f"inference:x-api-key=@{tmp_path / 'missing'}")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="empty or not printable"):
        Restrictions.parse(f"inference:x-api-key=@{tmp_path / 'empty'}")


def test_categories_without_an_endpoint_here_are_accepted_and_restrict_nothing():
    r = Restrictions.parse("trace,logging,shared-memory:k=v")
    assert r.categories() == ["logging", "shared-memory", "trace"]
    for endpoint in ENDPOINT_CATEGORY:
        r.check(endpoint, None)
