"""CI smoke of the load test: real Locust, headless, against a real server, SLOs checked."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rnnserve.harness.launch import ROOT
from rnnserve.loadtests.run import check_slo

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def run_locust(out, *args: str) -> None:
    """`rnnserve.loadtests.run` against the tiny model (it starts its own server), bounded in time;
    a missed SLO or a failure is its non-zero exit."""
    run_locust_model(out, "tiny", *args)


def run_locust_model(out, model: str, *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "rnnserve.loadtests.run", "--model", model, *args, "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_locust_smoke_meets_its_slos_and_writes_reports(tiny_bundle, tmp_path):
    out = tmp_path / "loadtest"
    run_locust(out, "--profile", "step", "--duration", "20", "--peak-users", "12", "--max-length", "200",
               "--slo", "smoke")
    assert (out / "locust_stats.csv").stat().st_size > 0 and (out / "report.html").stat().st_size > 10_000
    report = json.loads((out / "slo.json").read_text())
    assert report["missed"] == [] and int(report["aggregate"]["Request Count"]) >= 100
    names = (out / "locust_stats.csv").read_text()
    for name in ("POST /predict", "POST /v2 infer", "ModelInfer"):
        assert name in names  # every transport took part


def test_locust_live_streams_meet_their_slo(tiny_bundle, tmp_path):
    out = tmp_path / "streams"
    run_locust(out, "--users", "streams", "--duration", "15", "--peak-users", "40", "--chunk-interval", "0.2",
               "--slo", "streams")
    names = (out / "locust_stats.csv").read_text()
    assert "stream chunk" in names and "stream end" in names and "POST /predict" not in names
    report = json.loads((out / "slo.json").read_text())
    assert report["missed"] == [] and int(report["aggregate"]["Failure Count"]) == 0


def test_slo_check_fails_when_an_objective_is_missed():
    stats = {"Request Count": "1000", "Failure Count": "20", "95%": "120", "99%": "900"}
    missed = check_slo(stats, {"p95_ms": 100, "p99_ms": 1000, "max_error_ratio": 0.01, "min_requests": 10})
    assert len(missed) == 2 and missed[0].startswith("p95_ms") and missed[1].startswith("error_ratio")


def test_locust_drives_a_users_own_token_model_from_its_signature(bentoml_home, tmp_path):
    """A user's token classifier (exported with export_model): the users read its v2 signature and
    vocabulary and its bundle's reference lengths; every transport's requests and its live streams
    (chunks of token ids) succeed."""
    import torch

    from rnnserve.export import export_model
    from tests.export.user_models import TokenClassifier, lengths3, tokens

    torch.manual_seed(5)
    reference = (tokens(64, 30), torch.randint(1, 31, (64,)))
    export_model(TokenClassifier(), "usertok", (tokens(), lengths3()), labels=["neg", "neutral", "pos"],
                 max_length=60, max_batch=4, reference=reference)
    out = tmp_path / "usertok"
    run_locust_model(out, "usertok", "--profile", "steady", "--duration", "10", "--peak-users", "8", "--users", "mixed",
                     "--chunk-interval", "0.2", "--slo", "smoke")
    report = json.loads((out / "slo.json").read_text())
    assert int(report["aggregate"]["Failure Count"]) == 0 and int(report["aggregate"]["Request Count"]) >= 50
    names = (out / "locust_stats.csv").read_text()
    for name in ("POST /predict", "POST /v2 infer", "ModelInfer", "stream chunk"):
        assert name in names


def test_locust_streams_a_users_per_step_model(bentoml_home, tmp_path):
    """A user's per-step GRU forecaster whose forward takes only x: live streams of feature rows, each
    chunk answered with its own steps' outputs, no failure."""
    import torch

    from rnnserve.export import export_model
    from tests.export.user_models import Forecaster, features

    torch.manual_seed(6)
    export_model(Forecaster(), "userfc", (features(),), max_length=60, max_batch=4)
    out = tmp_path / "userfc"
    run_locust_model(out, "userfc", "--users", "streams", "--duration", "10", "--peak-users", "8",
                     "--chunk-interval", "0.2", "--max-length", "60", "--slo", "streams")
    report = json.loads((out / "slo.json").read_text())
    assert int(report["aggregate"]["Failure Count"]) == 0 and int(report["aggregate"]["Request Count"]) >= 50
    names = (out / "locust_stats.csv").read_text()
    assert "stream chunk" in names and "stream end" in names


def test_locust_speaks_mutual_tls_and_sends_the_restricted_key(tiny_bundle, tmp_path):
    """The client options every benchmark and load test shares (rnnserve.harness.access): CA, client
    certificate and a header, against a server with mutual TLS and restricted inference; every
    transport's requests succeed, so each carried the certificate and the key."""
    from rnnserve.harness.access import Access, to_args
    from rnnserve.harness.certs import make_certs
    from rnnserve.harness.launch import ServerProcess

    certs = make_certs(tmp_path / "certs")
    access = Access(certs.ca, certs.client.cert, certs.client.key, {"x-api-key": "k3y"})
    settings = {"RNNSERVE_SERVER__TLS_CERT": str(certs.server.cert), "RNNSERVE_SERVER__TLS_KEY": str(certs.server.key),
                "RNNSERVE_SERVER__TLS_CLIENT_CA": str(certs.ca),
                "RNNSERVE_SERVER__RESTRICTED_API": "inference:x-api-key=k3y"}
    out = tmp_path / "tls"
    with ServerProcess("tiny", settings, access=access) as srv:
        run_locust(out, "--url", srv.url, "--grpc-target", srv.grpc_url, "--duration", "10", "--peak-users", "6",
                   "--max-length", "200", "--slo", "smoke", *to_args(access))
    report = json.loads((out / "slo.json").read_text())
    assert int(report["aggregate"]["Failure Count"]) == 0 and int(report["aggregate"]["Request Count"]) >= 50
    names = (out / "locust_stats.csv").read_text()
    assert all(name in names for name in ("POST /predict", "POST /v2 infer", "ModelInfer"))


def test_locust_generates_over_generate_stream(bentoml_home, tmp_path):
    """GenerateUsers against a character LM served with the step policy: every completion streams."""
    import torch

    from rnnserve.export import export_model
    from tests.e2e.service.test_generation import VOCAB, CharLSTM

    torch.manual_seed(3)
    export_model(CharLSTM(), "locust-char", (torch.randint(0, len(VOCAB), (3, 12)),), labels=VOCAB,
                 max_length=64, max_batch=8)
    out = tmp_path / "generate"
    run_locust_model(out, "locust-char", "--users", "generate", "--prompt", "abc", "--max-tokens", "16",
                     "--duration", "10", "--peak-users", "6", "--slo", "generate")
    report = json.loads((out / "slo.json").read_text())
    assert report["missed"] == [] and int(report["aggregate"]["Failure Count"]) == 0
    names = (out / "locust_stats.csv").read_text()
    assert "generate_stream" in names and "generate complete" in names and "POST /predict" not in names
