"""Schema fuzzing of the HTTP API from its OpenAPI document (schemathesis): zero 5xx."""

from __future__ import annotations

import os
import shutil
import subprocess

import httpx
import pytest

from rnnserve.harness.launch import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SCHEMATHESIS = ROOT / ".venv-tools" / "bin" / "schemathesis"


def test_openapi_document_describes_the_routes(limited):
    doc = httpx.get(limited.url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.0")
    assert {"/predict", "/v2/models/{name}/infer", "/v2/health/ready"} <= set(doc["paths"])
    seq = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert seq["properties"]["sequences"]["maxItems"] == 8  # the configured limit


def test_schemathesis_finds_no_server_error(limited, tmp_path):
    if shutil.which(str(SCHEMATHESIS)) is None:
        if os.environ.get("REQUIRE_E2E_TOOLS") == "1":
            pytest.fail("schemathesis is required in CI (make tools)")
        pytest.skip("schemathesis not installed: make tools")
    report = tmp_path / "junit.xml"
    out = subprocess.run(
        [str(SCHEMATHESIS), "run", f"{limited.url}/openapi.json", "--checks", "not_a_server_error",
         "--max-examples", "60", "--seed", "1", "--report", "junit", "--report-junit-path", str(report),
         "--no-color"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    tail = out.stdout[-4000:] + out.stderr[-2000:]
    assert out.returncode == 0, tail
    import xml.etree.ElementTree as ET

    suites = ET.parse(report).getroot()
    cases = suites.findall(".//testcase")
    assert len(cases) >= 6, tail  # every operation was exercised
    assert not suites.findall(".//failure") and not suites.findall(".//error"), tail
    assert "generated" in tail
    assert httpx.get(limited.url + "/readyz").status_code == 200
