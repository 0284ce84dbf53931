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
